"""Time a ``changed=0`` rerun of a playbook over each way of reaching the hosts.

The same lab, the same playbook, one path after the other in turn (A B C A B C ...),
so that the machine's drift touches every path alike:

``podman``
    the ``containers.podman.podman`` connection with Ansible's linear strategy: what
    the lab used before it was reached over SSH (no pipelining; several ``podman``
    processes per task);
``ssh``
    SSH with pipelining and ControlPersist, Ansible's linear strategy;
``ssh+mitogen``
    SSH with Mitogen's linear strategy: what ansible.cfg uses.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pacs_libre import lab
from pacs_libre.errors import UserError

RECAP = re.compile(
    r"^\S+\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unr>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


@dataclass(frozen=True)
class Route:
    """One way of reaching the hosts: extra variables and environment for ansible-playbook."""

    name: str
    extra_vars: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


PATHS: tuple[Route, ...] = (
    Route(
        "podman",
        (
            "ansible_connection=containers.podman.podman",
            "ansible_host={{ lab_name }}-{{ inventory_hostname }}",
        ),
        (("ANSIBLE_STRATEGY", "linear"),),
    ),
    Route("ssh", (), (("ANSIBLE_STRATEGY", "linear"),)),
    Route("ssh+mitogen", (), ()),
)


@dataclass
class Timing:
    path: str
    seconds: list[float] = field(default_factory=list)
    tasks: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_once(inventory: Path, playbook: Path, path: Route) -> tuple[float, int]:
    """One rerun; returns its wall time and the tasks it ran. Refuses a run that changed."""
    command = [lab.tool("ansible-playbook"), "-i", str(inventory), str(playbook)]
    for extra in path.extra_vars:
        command += ["-e", extra]
    env = {**lab.podman_env(), **dict(path.env), "ANSIBLE_NOCOLOR": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=lab.project_root(), check=False
    )
    seconds = time.monotonic() - start
    recaps = list(RECAP.finditer(proc.stdout))
    if proc.returncode != 0 or not recaps:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError(f"the {path.name} run failed (exit {proc.returncode}): " + " | ".join(tail))
    changed = sum(int(m["changed"]) for m in recaps)
    if changed:
        raise UserError(
            f"the {path.name} run changed {changed} thing(s): the benchmark times reruns with "
            "changed=0 only; converge the lab first (`make lab`)"
        )
    return seconds, sum(int(m["ok"]) for m in recaps)


def compare(
    inventory: Path,
    playbook: Path,
    runs: int,
    paths: Sequence[Route] = PATHS,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[Timing]:
    timings = {p.name: Timing(p.name) for p in paths}
    for run in range(1, runs + 1):
        for path in paths:
            progress(f"run {run}/{runs}: {path.name}")
            seconds, tasks = run_once(inventory, playbook, path)
            timings[path.name].seconds.append(seconds)
            timings[path.name].tasks = tasks
    return list(timings.values())
