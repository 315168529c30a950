"""pacsctl, the pacs-libre command line.

Each command group lives in its own module and is mounted here.
"""

from __future__ import annotations

import sys

import typer

# Typer 0.29 ships its own copy of click: its exceptions are the ones raised.
from typer._click import exceptions as click_exc

from pacs_libre import __version__
from pacs_libre.audit_cli import audit_cmd
from pacs_libre.bench_cli import app as bench_app
from pacs_libre.dicom_cli import app as dicom_app
from pacs_libre.docs_cli import app as docs_app
from pacs_libre.errors import UserError
from pacs_libre.inventory_cli import app as inventory_app
from pacs_libre.lab_cli import app as lab_app
from pacs_libre.report_cli import app as report_app
from pacs_libre.site_link_cli import app as site_link_app
from pacs_libre.size_cli import size_cmd

app = typer.Typer(
    name="pacsctl",
    help="pacs-libre: deploy and operate an open-source hospital PACS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(lab_app, name="lab")
app.add_typer(docs_app, name="docs")
app.add_typer(inventory_app, name="inventory")
app.command("size")(size_cmd)
app.add_typer(dicom_app, name="dicom")
app.add_typer(bench_app, name="bench")
app.add_typer(report_app, name="report")
app.add_typer(site_link_app, name="site-link")
app.command("audit")(audit_cmd)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"pacsctl {__version__}")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run pacsctl. Bad input exits 2 with a one-line message and no traceback."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="pacsctl", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            print(exc.ctx.get_help())
        return 0
    except click_exc.UsageError as exc:
        where = f" (in '{exc.ctx.command_path}')" if exc.ctx else ""
        print(f"pacsctl: error: {exc.format_message()}{where}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("pacsctl: aborted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"pacsctl: error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
