"""``pacsctl report``: reports for the hospital's management, from Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pacs_libre import report
from pacs_libre.errors import UserError

app = typer.Typer(
    help="Reports for the hospital's management, read from Prometheus.", no_args_is_help=True
)


@app.command("storage")
def storage_cmd(
    *,
    out: Path = typer.Option(
        Path("storage-report.html"), "--out", "-o", help="The HTML page to write."
    ),
    prometheus: str = typer.Option(
        "http://127.0.0.1:9090",
        "--prometheus",
        help="Prometheus' URL (on the monitoring host; from elsewhere, through an SSH tunnel).",
    ),
    days: float = typer.Option(
        365.0, "--days", min=0.001, help="How far back the report looks, in days."
    ),
    hospital: str = typer.Option("the hospital", "--hospital", help="The name in the title."),
    record: Path | None = typer.Option(
        None, "--record", help="Also keep Prometheus' answers in this JSON file."
    ),
    replay: Path | None = typer.Option(
        None, "--replay", help="Draw from answers kept with --record, without asking Prometheus."
    ),
) -> None:
    """Storage used against the sizing plan, the date it is full, and the studies per month."""
    if replay is not None:
        answers = report.load_answers(replay)
    else:
        end = time.time()
        start = end - days * 86400
        # About 300 points whatever the period.
        answers = report.fetch(prometheus, start, end, step=max(15.0, (end - start) / 300))
    if record is not None:
        report.save_answers(answers, record)
    built = report.build(answers)
    if not built.used:
        raise UserError(
            f"{prometheus}: no orthanc_disk_size_mb in the last {days:g} days: is the archive "
            "monitored (roles/monitoring) and Prometheus the right one?"
        )
    try:
        out.write_text(report.render_html(built, hospital))
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report: {exc}") from None
    typer.echo(f"pacsctl: wrote {out}")
