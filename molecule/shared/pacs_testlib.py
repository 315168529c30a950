"""Helpers shared by the testinfra verifiers of every Molecule scenario.

Each scenario's tests/conftest.py puts this folder on sys.path.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import testinfra

RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=\d+\s+changed=(?P<changed>\d+)\s", re.M)


def lab_host(name: str) -> testinfra.host.Host:
    """A scenario host, reached the way the lab reaches it (podman exec)."""
    return testinfra.get_host(f"podman://{name}")


def address_of(host: testinfra.host.Host) -> str:
    """The host's IPv4 address on its scenario network."""
    out = host.check_output("ip -4 -o addr show scope global")
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, f"no global IPv4 address in: {out}"
    return match.group(1)


def tcp_connects(
    client: testinfra.host.Host, address: str, port: int, timeout: float = 3.0
) -> bool:
    """True if ``client`` completes a TCP handshake with address:port."""
    script = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        f"sys.exit(0 if s.connect_ex(('{address}', {port})) == 0 else 1)\n"
    )
    return client.run(f"python3 -c {_quote(script)}").rc == 0


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def run_check_mode(playbook: str | None = None) -> tuple[dict[str, int], str]:
    """Run the scenario's converge playbook in check mode.

    Returns the changed count per host and the tasks that changed.

    Uses the inventory and Ansible settings that Molecule gives the verifier.
    """
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    play = playbook or str(scenario / "converge.yml")
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            play,
            "--check",
            "--diff",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert proc.returncode == 0, f"check mode failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(proc.stdout)}
    assert recap, f"no PLAY RECAP in:\n{proc.stdout[-2000:]}"
    return recap, _changed_tasks(proc.stdout)


def _changed_tasks(output: str) -> str:
    """The tasks that reported a change, to explain a failed assertion."""
    task, found = "", []
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            found.append(f"{task} {line}")
    return "\n".join(found)


def run_playbook(playbook: str, *args: str, inventories: Sequence[str] = ()) -> tuple[int, str]:
    """Run a playbook on the scenario's hosts; return its exit status and its output.

    Uses Molecule's inventory and Ansible settings, plus ``inventories`` (more inventory
    sources layered on top, e.g. a folder that overrides some host variables).
    """
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    for extra in inventories:
        command += ["-i", extra]
    proc = subprocess.run(
        [*command, playbook, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    return proc.returncode, proc.stdout + proc.stderr
