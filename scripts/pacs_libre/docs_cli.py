"""``pacsctl docs``: keep generated documentation in step with its sources."""

from __future__ import annotations

import typer

from pacs_libre import roledoc
from pacs_libre.errors import UserError
from pacs_libre.lab import project_root

app = typer.Typer(help="Generated documentation.", no_args_is_help=True)


@app.command("roles")
def roles_cmd(
    check: bool = typer.Option(
        False, "--check", help="Change nothing; fail if a README is out of date."
    ),
) -> None:
    """Write each role README's variable table from its meta/argument_specs.yml."""
    stale = []
    for role in roledoc.roles_with_specs(project_root()):
        if roledoc.update_readme(role, check=check):
            stale.append(role.name)
            typer.echo(f"{'out of date' if check else 'updated'}: roles/{role.name}/README.md")
    if check and stale:
        raise UserError(
            f"role README out of date ({', '.join(stale)}): run `pacsctl docs roles` and commit"
        )
    if not stale:
        typer.echo("role READMEs are up to date")
