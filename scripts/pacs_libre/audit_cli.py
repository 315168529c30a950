"""pacsctl audit: who accessed a patient's (or a study's) images, on every web host.

Each host of the inventory's ``pacs_web`` group keeps its own access audit trail
(roles/pacs_services, docs/audit.md). This command runs ``pacs-web audit ... --json``
on each of them over SSH with Ansible's ad-hoc ``command`` module, so that it reaches
the hosts exactly as the playbooks do (the inventory's addresses, users and keys),
and merges their answers into one table sorted by time, each line naming its host.
For a patient, each host also resolves the patient's studies at its archive, so that
accesses recorded before the ``patient`` field existed are found too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pacs_libre import lab
from pacs_libre.cli_options import DEFAULT_INVENTORY, FORMAT_OPT, TableOrJson
from pacs_libre.errors import UserError

GROUP = "pacs_web"
# What pacs-web itself accepts: a PatientID without DICOM wildcards, a UID.
PATIENT = re.compile(r"[^\\*?\x00-\x1f]{1,64}")
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
COLUMNS = ("time", "host", "user", "auth", "event", "outcome", "studies", "patient", "client")


@dataclass
class HostAnswer:
    """What one host answered: its audit records, or why it could not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def remote_command(
    *, patient: str | None, study: str | None, since: str | None, user: str
) -> list[str]:
    """The ``pacs-web audit`` command line that each host runs (checked first)."""
    if (patient is None) == (study is None):
        raise UserError("give --patient ID or --study UID (one of the two)")
    argv = ["pacs-web", "audit"]
    if patient is not None:
        if not PATIENT.fullmatch(patient):
            raise UserError(f"--patient {patient!r}: 1-64 characters, no * ? or \\")
        argv += ["--patient", patient]
    if study is not None:
        if len(study) > 64 or not UID.fullmatch(study):
            raise UserError(f"--study {study!r} is not a DICOM UID (digits and dots)")
        argv += ["--study", study]
    if since is not None:
        try:
            datetime.fromisoformat(since)
        except ValueError as exc:
            raise UserError(
                f"--since {since!r}: give a date, 2026-12-01 or 2026-12-01T08:00"
            ) from exc
        argv += ["--since", since]
    return [*argv, "--json", "--user", user]


def parse_adhoc(output: str) -> dict[str, HostAnswer]:
    """Each host's answer from the output of Ansible's JSON callback (ansible.posix.json)."""
    try:
        data = json.loads(output)
        hosts = data["plays"][0]["tasks"][0]["hosts"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"ansible gave no answer that can be read ({exc})") from exc
    answers: dict[str, HostAnswer] = {}
    for name, result in hosts.items():
        if result.get("unreachable") or result.get("failed") or result.get("rc", 0) != 0:
            why = str(result.get("stderr") or result.get("msg") or "failed").strip()
            answers[name] = HostAnswer(error=why.splitlines()[-1] if why else "failed")
            continue
        try:
            records = json.loads(result.get("stdout") or "[]")
        except ValueError:
            answers[name] = HostAnswer(error="pacs-web audit did not answer JSON")
            continue
        answers[name] = HostAnswer(records=[r for r in records if isinstance(r, dict)])
    return answers


def merge(answers: Mapping[str, HostAnswer]) -> list[dict[str, Any]]:
    """Every host's records in one list, each with its ``host``, sorted by time then host."""
    rows = [
        {**record, "host": host} for host, answer in answers.items() for record in answer.records
    ]
    return sorted(rows, key=lambda r: (str(r.get("time", "")), r["host"]))


def cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    out = Table(title=title)
    for column in COLUMNS:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*(cell(row.get(c)) for c in COLUMNS))
    return out


def run_on_hosts(
    inventory: Path, argv: Sequence[str], *, become: bool, limit: str | None
) -> dict[str, HostAnswer]:
    """``argv`` on each host of pacs_web (ansible ad-hoc, JSON callback)."""
    command = [
        lab.tool("ansible"),
        GROUP,
        "-i",
        str(inventory.resolve()),
        "-m",
        "ansible.builtin.command",
        "-a",
        json.dumps({"argv": list(argv)}),
    ]
    if become:
        command.append("--become")
    if limit:
        command += ["--limit", limit]
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        # One command per host: Ansible's own strategy, nothing to keep open.
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_NOCOLOR": "1",
    }
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=lab.project_root(), check=False
    )
    if not proc.stdout.strip():
        raise UserError(f"ansible failed: {proc.stderr.strip()[-1000:] or proc.returncode}")
    return parse_adhoc(proc.stdout)


def audit_cmd(
    *,
    inventory: Path = typer.Option(
        DEFAULT_INVENTORY,
        "--inventory",
        "-i",
        help="The hospital's inventory (its pacs_web hosts).",
    ),
    patient: str | None = typer.Option(None, "--patient", help="A PatientID."),
    study: str | None = typer.Option(None, "--study", help="A StudyInstanceUID."),
    since: str | None = typer.Option(None, "--since", help="From this date (UTC), 2026-12-01."),
    fmt: TableOrJson = FORMAT_OPT,
    become: bool = typer.Option(
        False, "--become", help="Run pacs-web audit with sudo (when you connect as another user)."
    ),
    limit: str | None = typer.Option(None, "--limit", help="Only these hosts (Ansible pattern)."),
) -> None:
    """Who accessed a patient's or a study's images: every web host's audit trail, merged."""
    if not inventory.exists():
        raise UserError(f"{inventory}: no such inventory")
    user = os.environ.get("USER") or "operator"
    argv = remote_command(patient=patient, study=study, since=since, user=f"pacsctl:{user}")
    answers = run_on_hosts(inventory, argv, become=become, limit=limit)
    rows = merge(answers)
    failed = {host: a.error for host, a in answers.items() if a.error}
    if fmt == TableOrJson.JSON:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        what = f"patient {patient}" if patient else f"study {study}"
        Console().print(table(rows, f"Accesses to {what} ({len(rows)} lines)"))
    for host, why in sorted(failed.items()):
        typer.echo(f"pacsctl: {host}: no answer ({why})", err=True)
    if failed:
        raise typer.Exit(1)
