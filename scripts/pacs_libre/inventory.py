"""Reading an inventory on disk for ``pacsctl inventory check``.

The rules themselves live once, in the Python that the roles share
(``ansible_collections.pacs_libre.core.plugins.module_utils.inventory``): the preflight role runs
them on what Ansible holds, this module on the files. The inventory's structure (which host is in
which group) comes from ``ansible-inventory --graph``, which accepts every inventory Ansible
accepts and never needs the vault password; its variables come from walking its YAML files, so
that every problem names the file that defines the key.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import Problem
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import (
    Known,
    known_variables,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.report import (
    Report,
    check_view,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.sources import (
    InventoryView,
    build_view,
    read_sources,
)
from pacs_libre.errors import UserError
from pacs_libre.lab import project_root, tool


def _parse_graph(text: str) -> dict[str, set[str]]:
    """host -> groups, from ``ansible-inventory --graph``."""
    membership: dict[str, set[str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("@"):
            stack = [line[1:].rstrip(":")]
            continue
        marker = line.find("|--")
        if marker < 0:
            continue
        level = marker // 3 + 1
        name = line[marker + 3 :].strip()
        del stack[level:]
        if name.startswith("@"):
            stack.append(name[1:].rstrip(":"))
        else:
            membership.setdefault(name, set()).update(stack[:level])
    return membership


def read_membership(inventory: Path) -> dict[str, set[str]]:
    """Which host is in which group, as Ansible reads the inventory (no vault password needed)."""
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(project_root() / "ansible.cfg"))
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    try:
        proc = subprocess.run(
            [tool("ansible-inventory"), "-i", str(inventory), "--graph"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
    except OSError as exc:
        raise UserError(f"cannot run ansible-inventory: {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines() or ["ansible-inventory failed"]
        raise UserError(f"cannot read inventory '{inventory}': {detail[-1]}")
    membership = _parse_graph(proc.stdout)
    if not membership:
        raise UserError(
            f"inventory '{inventory}' declares no hosts: describe them in {inventory}/hosts.yml"
        )
    return membership


def load_view(inventory: Path, facts: dict[str, Mapping[str, Any]] | None = None) -> InventoryView:
    """Read an inventory folder (or file) for the rules."""
    if not inventory.exists():
        raise UserError(f"inventory '{inventory}' does not exist: pass a folder under inventories/")
    membership = read_membership(inventory)
    sources = read_sources(inventory)
    view = build_view(str(inventory), sources, membership, facts=facts)
    view.inventory_dir = inventory if inventory.is_dir() else inventory.parent
    return view


def load_facts(folder: Path, hosts: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """Facts of the hosts from an Ansible jsonfile fact cache (``fact_caching_connection``)."""
    if not folder.is_dir():
        raise UserError(f"--facts: '{folder}' is not a folder (an Ansible jsonfile fact cache)")
    facts: dict[str, Mapping[str, Any]] = {}
    for host in hosts:
        candidates = [folder / host, *sorted(folder.glob(f"*_{host}"))]
        for path in candidates:
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and isinstance(data.get("__payload__"), str):
                    data = json.loads(data["__payload__"])
            except (OSError, ValueError) as exc:
                raise UserError(f"--facts: cannot read '{path}': {exc}") from None
            if isinstance(data, dict):
                facts[host] = data
                break
    return facts


def known() -> Known:
    """Every variable an inventory may set, from this checkout's roles."""
    return known_variables(project_root() / "roles")


def check_report(
    inventory_path: Path,
    facts: dict[str, Mapping[str, Any]] | None = None,
    *,
    facts_dir: Path | None = None,
) -> Report:
    """Check an inventory on disk (``pacsctl inventory check``).

    ``facts``: host -> its Ansible facts; or ``facts_dir``, an Ansible jsonfile fact cache.
    """
    view = load_view(inventory_path, facts=facts)
    if facts_dir is not None:
        view.facts = load_facts(facts_dir, view.hosts)
    return check_view(view, known())


def check(inventory_path: Path, facts: dict[str, Mapping[str, Any]] | None = None) -> list[Problem]:
    """Every problem of an inventory on disk. ``facts``: host -> its Ansible facts."""
    return check_report(inventory_path, facts).problems
