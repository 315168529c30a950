"""``pacsctl dicom``: make a synthetic study, send it, find it, echo the archive.

Where to connect: ``--target HOST:PORT``, ``--aet`` (the archive's AE title) and
``--calling-aet`` (ours). Left out, they come from the lab's DICOM endpoint
(``pacsctl lab status --format json`` → ``endpoints.dicom``), or with ``--site
peripheral`` from the peripheral site's relay (``endpoints.dicom_peripheral``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
from pydicom.multival import MultiValue
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from pacs_libre.cli_options import (
    AET_OPT,
    CALLING_OPT,
    FORMAT_OPT,
    INVENTORY_OPT,
    SITE_OPT,
    TARGET_OPT,
    TableOrJson,
)
from pacs_libre.dicom import net, synth
from pacs_libre.dicom.target import resolve_target
from pacs_libre.errors import UserError

app = typer.Typer(
    help="DICOM test tools: synthetic studies, C-STORE, C-FIND and C-ECHO.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()


# ------------------------------------------------------------------------- synth


@app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the study into."),
    *,
    ct: int = typer.Option(300, "--ct", help="CT images (512x512, 16 bits)."),
    mr: int = typer.Option(40, "--mr", help="MR images (256x256)."),
    cr: bool = typer.Option(True, "--cr/--no-cr", help="One CR chest radiograph."),
    patient: str = typer.Option(synth.DEFAULT_PATIENT, "--patient", help="PatientName, DICOM PN."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Write a deterministic synthetic study (CT, MR, CR) and its manifest.json."""
    if ct < 0 or mr < 0:
        raise UserError("--ct and --mr must be zero or more")
    if ct + mr == 0 and not cr:
        raise UserError("nothing to make: give --ct or --mr more than 0, or keep --cr")
    if len(patient) > 64 or not patient.strip():
        raise UserError(f"--patient '{patient}' is not a DICOM person name (1 to 64 characters)")
    total = ct + mr + (1 if cr else 0)
    with _progress() as bar:
        task = bar.add_task("writing", total=total)
        manifest = synth.make_study(
            out_dir,
            ct_images=ct,
            mr_images=mr,
            cr=cr,
            patient=patient,
            seed=seed,
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    summary = {
        "manifest": str(out_dir / "manifest.json"),
        "instances": len(manifest.instances),
        "megabytes": round(manifest.total_bytes / 1e6, 1),
        "study_instance_uid": manifest.study_instance_uid,
        "accession_number": manifest.accession_number,
        "study_date": manifest.study_date,
        "patient_name": manifest.patient_name,
        "patient_id": manifest.patient_id,
    }
    if fmt == "json":
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    _kv_table("synthetic study", summary)


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def _kv_table(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, str(value))
    out.print(table)


# -------------------------------------------------------------------------- send


@app.command("send")
def send_cmd(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (walked)."),
    *,
    target: str | None = TARGET_OPT,
    aet: str | None = AET_OPT,
    calling_aet: str | None = CALLING_OPT,
    inventory: Path = INVENTORY_OPT,
    site: str = SITE_OPT,
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """C-STORE files to the archive over one association; exit 1 if any failed."""
    files = net.expand_paths(paths)
    if not files:
        raise UserError("nothing to send: no files under the given paths")
    where = resolve_target(target, aet, calling_aet, inventory, site)
    with _progress() as bar:
        task = bar.add_task(f"C-STORE to {where.aet}", total=len(files))
        report = net.send(
            files,
            where.host,
            where.port,
            where.aet,
            where.calling_aet,
            progress=lambda _r: bar.advance(task),
        )
    data = {"target": str(where), **report.as_dict()}
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        mb = report.bytes_sent / 1e6
        rate = len(report.results) / report.seconds if report.seconds else 0.0
        out.print(
            f"sent {report.sent}/{len(report.results)} instances ({mb:.1f} MB) to {where} "
            f"in {report.seconds:.1f} s ({rate:.0f} images/s)"
        )
        for failure in data["failures"]:
            out.print(f"[red]failed[/] {failure['path']}: {failure['status']} {failure['error']}")
    if report.failed:
        raise typer.Exit(1)


# -------------------------------------------------------------------------- find

_DATE = re.compile(r"\d{8}")


def parse_date(value: str) -> str:
    """``YYYYMMDD``, a range ``YYYYMMDD-YYYYMMDD`` (either side may be open); ISO dashes ok."""
    text = value.strip()
    iso = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text)
    if iso:
        return "".join(iso.groups())
    parts = text.split("-")
    ok = (len(parts) == 1 and _DATE.fullmatch(parts[0])) or (
        len(parts) == 2 and any(parts) and all(p == "" or _DATE.fullmatch(p) for p in parts)
    )
    if not ok:
        raise UserError(f"--date '{value}' is not a DICOM date: use YYYYMMDD or YYYYMMDD-YYYYMMDD")
    return text


@app.command("find")
def find_cmd(
    *,
    patient: str | None = typer.Option(
        None, "--patient", help="PatientName, wildcards * and ? (e.g. 'DUPRÉ*')."
    ),
    patient_id: str | None = typer.Option(None, "--patient-id", help="PatientID."),
    accession: str | None = typer.Option(None, "--accession", help="AccessionNumber."),
    date: str | None = typer.Option(
        None, "--date", help="StudyDate YYYYMMDD or a range YYYYMMDD-YYYYMMDD."
    ),
    study_uid: str | None = typer.Option(None, "--study-uid", help="StudyInstanceUID."),
    level: str = typer.Option("STUDY", "--level", help="STUDY, SERIES or IMAGE."),
    target: str | None = TARGET_OPT,
    aet: str | None = AET_OPT,
    calling_aet: str | None = CALLING_OPT,
    inventory: Path = INVENTORY_OPT,
    site: str = SITE_OPT,
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """C-FIND (Study Root) on the archive; accented names match (UTF-8 query)."""
    level = level.upper()
    if level not in net.RETURN_KEYS:
        raise UserError(f"--level '{level}' is not supported: use STUDY, SERIES or IMAGE")
    if level != "STUDY" and not study_uid:
        raise UserError(f"--level {level} needs --study-uid (Study Root model)")
    keys: dict[str, Any] = {}
    if patient is not None:
        keys["PatientName"] = patient
    if patient_id is not None:
        keys["PatientID"] = patient_id
    if accession is not None:
        keys["AccessionNumber"] = accession
    if date is not None:
        keys["StudyDate"] = parse_date(date)
    if study_uid is not None:
        keys["StudyInstanceUID"] = study_uid
    where = resolve_target(target, aet, calling_aet, inventory, site)
    matches = net.find(where.host, where.port, where.aet, where.calling_aet, level=level, **keys)
    columns = net.RETURN_KEYS[level]
    rows = [{k: _text(ds.get(k)) for k in columns} for ds in matches]
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(rows)} match(es) at {where}")
    shown = [c for c in columns if any(r[c] for r in rows)] or list(columns)
    for column in shown:
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    out.print(table)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


# -------------------------------------------------------------------------- echo


@app.command("echo")
def echo_cmd(
    *,
    target: str | None = TARGET_OPT,
    aet: str | None = AET_OPT,
    calling_aet: str | None = CALLING_OPT,
    inventory: Path = INVENTORY_OPT,
    site: str = SITE_OPT,
) -> None:
    """C-ECHO the archive: does it answer, and does it accept our AE title?"""
    where = resolve_target(target, aet, calling_aet, inventory, site)
    seconds = net.echo(where.host, where.port, where.aet, where.calling_aet)
    out.print(f"C-ECHO {where}: success in {seconds * 1000:.0f} ms")
