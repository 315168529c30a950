"""Say what to do when Ansible cannot reach a pacs-libre host.

SSH's own message ("Connection timed out", "Permission denied (publickey)",
"Host key verification failed") is kept, but a tired technician also needs the
host, its address, and the next command: ``pacsctl lab status`` and
``pacsctl lab up`` for the lab, the scenario's own rerun for a Molecule host, and
the checks of a real server otherwise.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ansible import constants as C
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: pacs_libre_hints
type: aggregate
short_description: Name the host, its address and the fix when a host is unreachable
description:
  - On an unreachable host, prints one line with the host, the address SSH tried,
    what SSH said, and what to do next; repeats them at the end of the run.
requirements:
  - enable in callbacks_enabled (pacs-libre's ansible.cfg does)
"""

ADDRESS = re.compile(r"connect to host (?P<address>\S+) port (?P<port>\d+)")


def _reason(message: str) -> str:
    """The part of SSH's message that says what went wrong, on one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if "ssh:" in line or "Permission denied" in line or "verification failed" in line:
            return line.rsplit("ssh: ", 1)[-1]
    return lines[-1] if lines else "no answer"


def hint(host: str, address: str, reason: str, host_vars: dict[str, Any]) -> str:
    """The line printed for an unreachable host."""
    where = f"{host} ({address})" if address and address != host else host
    if "verification failed" in reason or "REMOTE HOST IDENTIFICATION" in reason:
        pinned = "its host key is not the one pinned for it"
    else:
        pinned = ""
    if "lab_name" in host_vars:
        inventory = host_vars.get("inventory_dir") or "inventories/lab"
        fix = (
            f"`pacsctl lab status --inventory {inventory}` shows whether it runs and its address; "
            f"`pacsctl lab up --inventory {inventory}` starts it, installs the lab's key and pins "
            "its host key again"
        )
    elif os.environ.get("MOLECULE_SCENARIO_NAME"):
        fix = (
            "the scenario's host is gone or was recreated: rerun the scenario "
            "(`make molecule SCENARIO=...`, whose first step removes leftovers)"
        )
    else:
        fix = (
            "check that the server is up, that `ssh <user>@<address>` works from this machine "
            "(the machine's network in base_admin_networks, its key in base_admins), and that "
            "the host key in your known_hosts is the server's"
        )
    what = f"{pinned}; " if pinned else ""
    return f"cannot reach {where}: {reason}. {what}Fix: {fix}."


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pacs_libre_hints"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._variables: Any = None
        self._hints: dict[str, str] = {}

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._variables = play.get_variable_manager()

    def v2_runner_on_unreachable(self, result: Any) -> None:
        host = result._host
        message = str(result._result.get("msg", ""))
        match = ADDRESS.search(message)
        address = match["address"] if match else ""
        host_vars: dict[str, Any] = {}
        if self._variables is not None:
            try:
                host_vars = dict(self._variables.get_vars(host=host, include_hostvars=False))
            except Exception:  # a hint must never break the run
                host_vars = {}
        line = hint(host.get_name(), address, _reason(message), host_vars)
        self._hints[host.get_name()] = line
        self._display.display(line, color=C.COLOR_ERROR, stderr=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for line in self._hints.values():
            self._display.display(line, color=C.COLOR_ERROR, stderr=True)
