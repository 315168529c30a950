"""``pacsctl lab``: build, start, inspect and remove the local lab."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyotp
import typer
from rich.console import Console
from rich.status import Status
from rich.table import Table

from ansible_collections.pacs_libre.core.plugins.module_utils import site_link
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.site_rules import (
    site_link_settings,
)
from pacs_libre import inventory as inventory_checks
from pacs_libre import lab
from pacs_libre.cli_options import DEFAULT_INVENTORY, FORMAT_OPT, TableOrJson
from pacs_libre.errors import UserError

app = typer.Typer(
    help="The local lab: real systemd hosts in podman containers.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()


def _inventory(path: Path) -> Path:
    """Resolve an inventory path from the current folder, else from the project root."""
    if path.exists():
        return path
    candidate = lab.project_root() / path
    return candidate if candidate.exists() else path


def _retry_hint(step: str, command: str) -> str:
    return f"{step} failed. Fix the cause above, then retry with `{command}`."


@app.command("image")
def image_cmd(
    debian: str = typer.Option(
        lab.DEFAULT_DEBIAN, "--debian", help="Debian major version: 13 (trixie) or 12 (bookworm)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the recipe is unchanged."),
    preloaded: bool = typer.Option(
        False,
        "--preloaded",
        help="The image with the archive core's packages installed (debian13-preloaded).",
    ),
) -> None:
    """Build the systemd base image from a debootstrap root filesystem (cached by recipe).

    With --preloaded, the image that role scenarios start from: the base, pki,
    postgresql and orthanc roles' packages already installed (docs/testing.md).
    """
    recipe = lab.ImageRecipe.for_debian(debian, preloaded=preloaded)
    _build(recipe, force=force)
    # Scenarios mount the shared apt cache too: have it ready, dated right.
    lab.apt_cache_mount()


class _Progress:
    """Report a long step: a live spinner on a terminal, a line every few seconds in logs."""

    def __init__(self, spinner: Status, every: float = 15.0) -> None:
        self.spinner = spinner
        self.every = every
        self.last = 0.0

    def __call__(self, text: str) -> None:
        self.spinner.update(text)
        now = time.monotonic()
        if not console.is_terminal and now - self.last >= self.every:
            self.last = now
            console.print(text, markup=False, highlight=False)


def _build(recipe: lab.ImageRecipe, *, force: bool = False) -> None:
    with console.status(f"[bold]building {recipe.image}[/]") as spinner:
        report = _Progress(spinner)

        def progress(line: str) -> None:
            report(f"{recipe.image}: {line[:100]}")

        try:
            built = lab.build_image(recipe, force=force, progress=progress)
        except lab.LabStepError as exc:
            retry = f"pacsctl lab image --debian {recipe.debian}"
            retry += " --preloaded" if recipe.preload else ""
            raise UserError(f"{exc} — {_retry_hint('the image build', retry)}") from exc
    if built:
        console.print(f"[green]built[/] {recipe.image} (recipe {recipe.digest})")
    else:
        console.print(f"[green]up to date[/] {recipe.image} (recipe {recipe.digest})")


@app.command("up")
def up_cmd(
    inventory: Path = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory."),
    converge: bool = typer.Option(
        True, "--converge/--no-converge", help="Run the playbook on the hosts."
    ),
    playbook: Path = typer.Option(
        Path("playbooks/site.yml"), "--playbook", help="Playbook to converge the lab with."
    ),
) -> None:
    """Create one systemd host per inventory host, then run playbooks/site.yml."""
    inv = _inventory(inventory)
    the_lab = lab.load_lab(inv)
    for debian in sorted({h.debian for h in the_lab.hosts}):
        _build(lab.ImageRecipe.for_debian(debian))
    retry = f"pacsctl lab up --inventory {inventory}"
    try:
        with console.status("[bold]starting lab hosts[/]") as spinner:
            lab.start(the_lab, progress=spinner.update, report=_plain_line)
    except lab.LabStepError as exc:
        raise UserError(f"{exc} — {_retry_hint('starting the lab', retry)}") from exc
    _site_link_keys(inv)
    if converge:
        _converge(inv, _inventory(playbook), retry)


def _site_link_keys(inventory: Path) -> None:
    """The keys of the lab's site links, made once beside the inventory (roles/site_link)."""
    view = inventory_checks.load_view(inventory)
    for settings in site_link_settings(view):
        if not isinstance(settings.links, list) or settings.keys_dir is None:
            continue
        names = [str(link["name"]) for link in settings.links if isinstance(link, dict)]
        made = site_link.ensure_keys(settings.keys_dir.absolute(), names)
        for key, was_made in made:
            if was_made:
                _plain_line(f"site link: made {key}")


def _plain_line(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def _converge(inventory: Path, playbook: Path, retry: str) -> None:
    console.print(f"[bold]converging:[/] {playbook} on {inventory}")
    try:
        lab.converge(inventory, playbook)
    except lab.LabStepError as exc:
        raise UserError(f"{exc} — {_retry_hint('the converge', retry)}") from exc


@app.command("down")
def down_cmd(
    inventory: Path = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory."),
    purge: bool = typer.Option(
        False, "--purge", help="Also remove the hosts' volumes (their data) and the network."
    ),
) -> None:
    """Remove the lab's hosts; --purge also removes their volumes."""
    the_lab = lab.load_lab(_inventory(inventory))
    done = lab.down(the_lab, purge=purge)
    for line in done or ["nothing to remove"]:
        console.print(line)


@app.command("shell")
def shell_cmd(
    host: str = typer.Argument(..., help="Inventory host name."),
    inventory: Path = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory."),
) -> None:
    """Open a login shell on a lab host."""
    the_lab = lab.load_lab(_inventory(inventory))
    match = [h for h in the_lab.hosts if h.name == host]
    if not match:
        names = ", ".join(h.name for h in the_lab.hosts)
        raise UserError(f"no host '{host}' in {inventory}: the lab has {names}")
    env = lab.podman_env()
    # Replace pacsctl by the interactive shell; the arguments are a fixed list.
    os.execvpe("podman", ["podman", "exec", "-it", match[0].container, "bash", "-l"], env)  # noqa: S606


@app.command("totp")
def totp_cmd(
    user: str = typer.Argument(..., help="A lab user (group_vars/pacs_web: sso_lab_totp_secrets)."),
    inventory: Path = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory."),
) -> None:
    """Print a lab user's current TOTP code, as a TOTP application would show it."""
    code, left = lab_totp(_inventory(inventory), user)
    out.print(code)
    console.print(f"{user}: valid for {left} more seconds")


def lab_totp(inventory: Path, user: str, now: float | None = None) -> tuple[str, int]:
    """The current TOTP code of a lab user, from the secret beside the lab's inventory."""
    secret_file = inventory / ".credentials" / "totp" / user
    if not secret_file.is_file():
        known = (
            sorted(p.name for p in secret_file.parent.glob("*"))
            if secret_file.parent.is_dir()
            else []
        )
        raise UserError(
            f"{secret_file}: no TOTP secret for {user!r}"
            + (f" (the lab's users: {', '.join(known)})" if known else "")
            + ". Fix: name a user of sso_lab_totp_secrets (group_vars/pacs_web);"
            " the secrets are made by the first `make lab`."
        )
    totp = pyotp.TOTP(secret_file.read_text(encoding="utf-8").strip())
    at = time.time() if now is None else now
    return totp.at(at), int(totp.interval - at % totp.interval)


@app.command("status")
def status_cmd(
    inventory: Path = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory."),
    fmt: TableOrJson = FORMAT_OPT,
) -> None:
    """Show the hosts, their state and the service endpoints."""
    data = lab.status(lab.load_lab(_inventory(inventory)))
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    networks = data["networks"]
    where = f"network {networks[0]}" if len(networks) == 1 else f"networks {', '.join(networks)}"
    table = Table(title=f"lab '{data['lab']}' on {where}")
    for column in ("site", "host", "container", "state", "address", "debian", "published"):
        table.add_column(column)
    for host in data["hosts"]:
        published = ", ".join(f"{p['host']}->{p['container']}/{p['proto']}" for p in host["ports"])
        colour = "green" if host["state"] == "running" else "red"
        table.add_row(
            host["site"],
            host["name"],
            host["container"],
            f"[{colour}]{host['state']}[/]",
            host["address"] or "-",
            host["debian"],
            published or "-",
        )
    out.print(table)
    ends = Table(title="endpoints")
    ends.add_column("service")
    ends.add_column("where")
    for host in data["hosts"]:
        if host["ssh"]:
            ends.add_row(f"ssh {host['name']}", host["ssh"])
    for service, where in endpoint_rows(data["endpoints"]):
        ends.add_row(service, where)
    if ends.row_count:
        out.print(ends)
    if not data["endpoints"]:
        out.print("services: none yet (they are listed here as their roles land)")


def endpoint_rows(endpoints: dict[str, Any]) -> list[tuple[str, str]]:
    """One readable row per service: a URL as it is, a DICOM node as AE title @ host:port,
    a service with a ``url`` key as that URL, and the other keys of a service as rows of
    their own."""
    rows: list[tuple[str, str]] = []
    for service, value in endpoints.items():
        if not isinstance(value, dict):
            rows.append((service, str(value)))
            continue
        details = dict(value)
        if "host" in details and "port" in details:
            where = f"{details.pop('host')}:{details.pop('port')}"
            if "aet" in details:
                where = f"AE title {details.pop('aet')} at {where}"
            rows.append((service, where))
        elif "url" in details:
            rows.append((service, str(details.pop("url"))))
        for key, item in details.items():
            rows.append((f"  {key.replace('_', ' ')}", _plain(item)))
    return rows


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    return str(value)


scenario_app = typer.Typer(
    help="Hosts of a Molecule scenario (its create and destroy playbooks call these).",
    no_args_is_help=True,
)
app.add_typer(scenario_app, name="scenario")


def _scenario(platforms: str, ssh_dir: Path) -> lab.Lab:
    try:
        data = json.loads(platforms)
    except json.JSONDecodeError as exc:
        raise UserError(f"--platforms is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise UserError("--platforms must be the JSON list of molecule.yml's platforms")
    return lab.scenario_lab(data, ssh_dir)


@scenario_app.command("up")
def scenario_up_cmd(
    platforms: str = typer.Option(..., "--platforms", help="molecule.yml's platforms, as JSON."),
    ssh_dir: Path = typer.Option(..., "--ssh-dir", help="Where the scenario's SSH files go."),
) -> None:
    """Start a scenario's hosts and let Ansible in over SSH."""
    try:
        lab.start(_scenario(platforms, ssh_dir), report=_plain_line)
    except lab.LabStepError as exc:
        raise UserError(f"{exc} — the scenario's create step failed; rerun the scenario") from exc


@scenario_app.command("down")
def scenario_down_cmd(
    platforms: str = typer.Option(..., "--platforms", help="molecule.yml's platforms, as JSON."),
    ssh_dir: Path = typer.Option(..., "--ssh-dir", help="Where the scenario's SSH files are."),
) -> None:
    """Remove a scenario's hosts, network and SSH files."""
    for line in lab.scenario_down(_scenario(platforms, ssh_dir)) or ["nothing to remove"]:
        console.print(line)
