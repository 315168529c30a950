"""Action plugin of the preflight role: pacs-libre's inventory rules, on the controller.

The rules live once, in the shared Python of the collection ``pacs_libre.core``
(``plugins/module_utils/inventory``, docs/architecture.md "Shared Python"); ``pacsctl inventory
check`` runs them on the files. Here they run on what Ansible holds: the inventory files (to
name the file of each key), the variables of every host (templated and decrypted) and their
facts. Every problem is reported in one failure; nothing is ever changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.pacs_libre.core.plugins.module_utils.errors import UserError
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory import (
    registry,
    report,
    sources,
)

ROLES_DIR = Path(__file__).resolve().parents[2]


def _shown(path: str) -> str:
    """A path relative to the working folder when it is under it, as people typed it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class ActionModule(ActionBase):
    """Fail with every inventory problem at once; never change anything."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("check_storage",))

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        check_storage = boolean(self._task.args.get("check_storage", True), strict=False)
        hostvars = task_vars["hostvars"]
        groups: Mapping[str, list[str]] = task_vars.get("groups", {})

        read = sources.Sources()
        for source in task_vars.get("ansible_inventory_sources", []):
            if os.path.exists(source):
                found = sources.read_sources(Path(source), _shown(source))
                read.definitions += found.definitions
                read.encrypted += found.encrypted
                read.problems += found.problems
                for group, parents in found.parents.items():
                    read.parents.setdefault(group, set()).update(parents)

        membership: dict[str, set[str]] = {host: set() for host in groups.get("all", [])}
        for group, hosts in groups.items():
            for host in hosts:
                membership.setdefault(host, set()).add(group)

        def value_of(host: str, key: str) -> Any:
            host_vars = hostvars[host]
            if key not in host_vars:
                raise KeyError(key)
            return host_vars[key]

        facts: dict[str, Mapping[str, Any]] | None = None
        if check_storage:
            facts = {}
            for host in membership:
                host_facts = hostvars[host].get("ansible_facts") or {}
                if "mounts" in host_facts:
                    facts[host] = {"mounts": host_facts["mounts"]}

        try:
            known = registry.known_variables(ROLES_DIR)
        except UserError as exc:
            result.update(failed=True, changed=False, msg=str(exc))
            return result
        view = sources.build_view(
            "the inventory",
            read,
            membership,
            value_of=value_of,
            facts=facts,
            deploying=True,
            keys=known.secrets(),
        )
        if task_vars.get("inventory_dir"):
            view.shown = _shown(str(task_vars["inventory_dir"]))
            view.inventory_dir = Path(str(task_vars["inventory_dir"]))
        checked = report.check_view(view, known)
        notices = checked.notices if check_storage else []

        result["changed"] = False
        result["notices"] = notices
        if checked.problems:
            lines = [f"- {problem}" for problem in checked.problems]
            result["failed"] = True
            result["msg"] = "\n".join(
                [
                    f"{len(checked.problems)} inventory problem(s); no host was changed. "
                    "Fix them all, then run the playbook again "
                    "(`pacsctl inventory check INVENTORY` shows them without Ansible):",
                    *lines,
                ]
            )
        else:
            result["msg"] = f"inventory OK: {len(checked.hosts)} host(s), every rule checked" + (
                f" ({'; '.join(notices)})" if notices else ""
            )
        return result
