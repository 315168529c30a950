"""The options that several ``pacsctl`` commands share, and the one way ``--format`` is checked.

Every ``--format`` is a :class:`~enum.StrEnum` of the formats that command prints, declared here
with :func:`format_option`: Typer refuses any other value itself, with one line naming the
option and its choices (``pacsctl: error: Invalid value for '--format': 'xml' is not one of
'table', 'json'.``). A command compares the value with its enum's members.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

DEFAULT_INVENTORY = Path("inventories/lab")


class TableOrJson(StrEnum):
    """A table for people, or JSON for scripts (``dicom``, ``bench``, ``lab status``)."""

    TABLE = "table"
    JSON = "json"


class SizeFormat(StrEnum):
    """How ``pacsctl size`` prints its result."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


class CheckFormat(StrEnum):
    """How ``pacsctl inventory check`` prints its result."""

    TEXT = "text"
    JSON = "json"


def format_option(default: StrEnum) -> Any:
    """``--format``, limited to the members of ``default``'s enum (any case)."""
    choices = ", ".join(member.value for member in type(default))
    return typer.Option(
        default, "--format", case_sensitive=False, help=f"Output format: {choices}."
    )


FORMAT_OPT = format_option(TableOrJson.TABLE)
SIZE_FORMAT_OPT = format_option(SizeFormat.TABLE)
CHECK_FORMAT_OPT = format_option(CheckFormat.TEXT)

# Where a DICOM command connects (pacs_libre.dicom.target resolves them).
TARGET_OPT = typer.Option(
    None, "--target", help="Archive DICOM address HOST:PORT (default: the lab's endpoint)."
)
AET_OPT = typer.Option(None, "--aet", help="The archive's AE title (default: the lab's).")
CALLING_OPT = typer.Option(
    None, "--calling-aet", help="Our AE title, declared on the archive (default: the lab's)."
)
SITE_OPT = typer.Option(
    "main",
    "--site",
    help="The lab's site whose DICOM node is the default target: main (the archive) or "
    "peripheral (its relay, as a peripheral modality).",
)
INVENTORY_OPT = typer.Option(
    DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory that gives the defaults."
)
LAB_SITE_OPT = typer.Option(
    "main",
    "--site",
    help="The lab's site whose DICOM node is the default target: main (the archive) or "
    "peripheral (its relay, as a peripheral modality).",
)
INVENTORY_OPT = typer.Option(DEFAULT_INVENTORY, "--inventory", "-i", help="Lab inventory.")
