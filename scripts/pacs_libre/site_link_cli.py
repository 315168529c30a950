"""``pacsctl site-link``: the keys of the WireGuard links between the sites (roles/site_link)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ansible_collections.pacs_libre.core.plugins.module_utils import site_link
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.site_rules import (
    site_link_settings,
)
from pacs_libre import inventory
from pacs_libre.errors import UserError

app = typer.Typer(help="Site links: WireGuard between the main site and each peripheral site.")
out = Console(width=None, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Site links: WireGuard between the main site and each peripheral site."""


@app.command("keys")
def keys_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="INVENTORY", help="Inventory folder, e.g. inventories/my-territory."
        ),
    ],
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            "--keys-dir",
            metavar="DIR",
            help="Where the keys go, when site_link_keys_dir is a template pacsctl cannot "
            "resolve (default: site_link_keys_dir, i.e. INVENTORY/site-link).",
        ),
    ] = None,
) -> None:
    """Make the missing keys of every link of site_links; never replace one.

    Each link gets INVENTORY/site-link/<name>/{main,peripheral,preshared}.key (folder 0700, files
    0600): the two ends' private keys and their preshared key. The public keys are derived
    from the private keys when the role runs.
    """
    view = inventory.load_view(path)
    found = site_link_settings(view)
    if not found:
        raise UserError(
            f"{path}: no site_links: declare the links in {path}/group_vars/all/site_links.yml "
            "(roles/site_link/README.md)"
        )
    rows = []
    for settings in found:
        problems = site_link.link_problems(settings.links)
        if problems:
            raise UserError(f"{settings.file}: {problems[0]}")
        if not isinstance(settings.links, list):
            raise UserError(f"{settings.file}: site_links is not a list of links")
        folder = keys_dir or settings.keys_dir
        if folder is None:
            raise UserError(
                f"{settings.keys_dir_file or settings.file}: site_link_keys_dir "
                f"({settings.keys_dir_value}) is a template that only Ansible resolves: "
                "pass --keys-dir DIR, the folder it names"
            )
        names = [str(link["name"]) for link in settings.links]
        rows += site_link.ensure_keys(folder.expanduser().absolute(), names)
    table = Table("key", "", box=None, pad_edge=False)
    for key, made in rows:
        table.add_row(str(key), "[green]made[/]" if made else "kept (already there)")
    out.print(table)
    count = sum(1 for _, was_made in rows if was_made)
    out.print(
        f"{count} key(s) made, {len(rows) - count} kept. They are secrets: keep them out of git, "
        "or encrypt each with `ansible-vault encrypt FILE` before committing it."
    )
