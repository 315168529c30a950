"""``pacsctl inventory``: check an inventory before any host is touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pacs_libre import inventory
from pacs_libre.cli_options import CHECK_FORMAT_OPT, CheckFormat

app = typer.Typer(help="Inventories: check them before deploying.", no_args_is_help=True)


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
    output_format: CheckFormat = CHECK_FORMAT_OPT,
) -> None:
    """Report every problem of an inventory: each with its file, key and fix.

    Exits 1 when there are problems, 0 when there are none.
    """
    report = inventory.check_report(path, facts_dir=facts.expanduser() if facts else None)
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
