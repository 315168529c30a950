"""``pacsctl inventory``: check an inventory before any host is touched."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pacs_libre import inventory

app = typer.Typer(help="Inventories: check them before deploying.", no_args_is_help=True)


class CheckFormat(StrEnum):
    """How ``pacsctl inventory check`` prints its result."""

    TEXT = "text"
    JSON = "json"


@app.command("check")
def check_cmd(
    path: Annotated[
        Path, typer.Argument(metavar="INVENTORY", help="Inventory folder, e.g. inventories/lab.")
    ],
    facts: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Ansible fact cache (jsonfile) of the hosts, for the storage rule; "
            "e.g. ~/.cache/pacs-libre/ansible-facts.",
        ),
    ] = None,
    output_format: Annotated[
        CheckFormat, typer.Option("--format", case_sensitive=False, help="Output format.")
    ] = CheckFormat.TEXT,
) -> None:
    """Report every problem of an inventory: each with its file, key and fix.

    Exits 1 when there are problems, 0 when there are none.
    """
    view = inventory.load_view(path)
    if facts is not None:
        view.facts = inventory.load_facts(facts.expanduser(), view.hosts)
    report = inventory.check_view(view)
    if output_format is CheckFormat.JSON:
        typer.echo(
            json.dumps(
                {
                    "inventory": report.inventory,
                    "ok": report.ok,
                    "example": report.example,
                    "hosts": report.hosts,
                    "problems": [p.as_dict() for p in report.problems],
                    "notices": report.notices,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for problem in report.problems:
            typer.echo(str(problem))
        for notice in report.notices:
            typer.echo(f"note: {notice}", err=True)
        typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
