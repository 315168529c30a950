"""Where a DICOM command connects, and as whom: explicit options, else the lab's endpoint.

``pacsctl dicom`` and ``pacsctl bench`` both resolve their ``--target``, ``--aet`` and
``--calling-aet`` here; left out, they come from the lab's DICOM endpoint (``pacsctl lab status
--format json`` -> ``endpoints.dicom``), or with ``--site peripheral`` from that site's relay
(``endpoints.dicom_peripheral``): this machine then sends like a peripheral modality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs_libre import lab
from pacs_libre.cli_options import DEFAULT_INVENTORY
from pacs_libre.errors import UserError


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


MAIN_SITE = "main"


def endpoint_key(site: str) -> str:
    """The key of a site's DICOM endpoint in ``lab status``: ``dicom`` for the main site's
    archive, ``dicom_<site>`` for a peripheral site's relay."""
    return "dicom" if site == MAIN_SITE else f"dicom_{site}"


def lab_dicom_endpoint(inventory: Path, site: str = MAIN_SITE) -> dict[str, Any] | None:
    """A site's DICOM endpoint in the lab (host, port, aet, test_calling_aets), or None."""
    path = inventory if inventory.exists() else lab.project_root() / inventory
    if not path.exists():
        return None
    try:
        endpoint = lab.status(lab.load_lab(path))["endpoints"].get(endpoint_key(site))
    except UserError:
        return None
    return endpoint if isinstance(endpoint, dict) else None


def resolve_target(
    target: str | None,
    aet: str | None,
    calling_aet: str | None,
    inventory: Path = DEFAULT_INVENTORY,
    site: str = MAIN_SITE,
) -> Target:
    """Explicit options win; what is missing comes from the lab (the archive of the main
    site, or the relay of ``site``); else a one-line error."""
    endpoint: dict[str, Any] | None = None
    if target is None or aet is None or calling_aet is None:
        endpoint = lab_dicom_endpoint(inventory, site)
    lab_note = (
        "the lab publishes no DICOM endpoint (`pacsctl lab status`)"
        if site == MAIN_SITE
        else f"the lab publishes no DICOM endpoint for site '{site}' "
        f"(`pacsctl lab status` lists {endpoint_key(site)} when it has that site)"
    )
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
