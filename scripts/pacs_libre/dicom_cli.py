"""``pacsctl dicom``: make a synthetic study, send it, find it, echo the archive.

Where to connect: ``--target HOST:PORT``, ``--aet`` (the archive's AE title) and
``--calling-aet`` (ours). Left out, they come from the lab's DICOM endpoint
(``pacsctl lab status --format json`` → ``endpoints.dicom``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydicom.multival import MultiValue
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from pacs_libre import lab
from pacs_libre.dicom import net, synth
from pacs_libre.errors import UserError

app = typer.Typer(
    help="DICOM test tools: synthetic studies, C-STORE, C-FIND and C-ECHO.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()

DEFAULT_INVENTORY = Path("inventories/lab")

TARGET_OPT = typer.Option(
    None, "--target", help="Archive DICOM address HOST:PORT (default: the lab's endpoint)."
)
AET_OPT = typer.Option(None, "--aet", help="The archive's AE title (default: the lab's).")
CALLING_OPT = typer.Option(
    None, "--calling-aet", help="Our AE title, declared on the archive (default: the lab's)."
)
INVENTORY_OPT = typer.Option(
    DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory that gives the defaults."
)
FORMAT_OPT = typer.Option("table", "--format", help="table or json.")


@dataclass(frozen=True)
class Target:
    """Where a DICOM command connects, and as whom."""

    host: str
    port: int
    aet: str
    calling_aet: str

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port} (as {self.calling_aet})"


def parse_hostport(value: str, option: str = "--target") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) or a one-line error naming the option."""
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UserError(f"{option} '{value}' is not HOST:PORT (for example 127.0.0.1:4242)")
    return match.group(1), int(match.group(2))


def lab_dicom_endpoint(inventory: Path) -> dict[str, Any] | None:
    """The lab's ``endpoints.dicom`` (host, port, aet, test_calling_aets), or None."""
    path = inventory if inventory.exists() else lab.project_root() / inventory
    if not path.exists():
        return None
    try:
        endpoint = lab.status(lab.load_lab(path))["endpoints"].get("dicom")
    except UserError:
        return None
    return endpoint if isinstance(endpoint, dict) else None


def resolve_target(
    target: str | None,
    aet: str | None,
    calling_aet: str | None,
    inventory: Path = DEFAULT_INVENTORY,
) -> Target:
    """Explicit options win; what is missing comes from the lab; else a one-line error."""
    endpoint: dict[str, Any] | None = None
    if target is None or aet is None or calling_aet is None:
        endpoint = lab_dicom_endpoint(inventory)
    lab_note = "the lab publishes no DICOM endpoint (`pacsctl lab status`)"
    if target is not None:
        host, port = parse_hostport(target)
    elif endpoint and endpoint.get("host") and endpoint.get("port"):
        host, port = str(endpoint["host"]), int(endpoint["port"])
    else:
        raise UserError(f"{lab_note}: pass --target HOST:PORT")
    if aet is None:
        if endpoint and endpoint.get("aet"):
            aet = str(endpoint["aet"])
        else:
            raise UserError(f"{lab_note}: pass --aet with the archive's AE title")
    if calling_aet is None:
        callers = (endpoint or {}).get("test_calling_aets") or []
        if callers:
            calling_aet = str(callers[0])
        else:
            raise UserError(f"{lab_note}: pass --calling-aet with an AE title the archive knows")
    return Target(host, port, aet, calling_aet)


def _check_format(fmt: str) -> None:
    if fmt not in {"table", "json"}:
        raise UserError(f"--format '{fmt}' is not supported: use table or json")


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
    fmt: str = FORMAT_OPT,
) -> None:
    """Write a deterministic synthetic study (CT, MR, CR) and its manifest.json."""
    _check_format(fmt)
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
    fmt: str = FORMAT_OPT,
) -> None:
    """C-STORE files to the archive over one association; exit 1 if any failed."""
    _check_format(fmt)
    files = net.expand_paths(paths)
    if not files:
        raise UserError("nothing to send: no files under the given paths")
    where = resolve_target(target, aet, calling_aet, inventory)
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
    fmt: str = FORMAT_OPT,
) -> None:
    """C-FIND (Study Root) on the archive; accented names match (UTF-8 query)."""
    _check_format(fmt)
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
    where = resolve_target(target, aet, calling_aet, inventory)
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
) -> None:
    """C-ECHO the archive: does it answer, and does it accept our AE title?"""
    where = resolve_target(target, aet, calling_aet, inventory)
    seconds = net.echo(where.host, where.port, where.aet, where.calling_aet)
    out.print(f"C-ECHO {where}: success in {seconds * 1000:.0f} ms")
