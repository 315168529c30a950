"""scripts/run-tests (make test): which scenarios it runs, and in what order.

``scripts/run-tests --list`` prints the scenarios in the order they start and runs nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed() -> list[str]:
    proc = subprocess.run(
        [str(ROOT / "scripts/run-tests"), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line for line in proc.stdout.splitlines() if not line.startswith("----")]


def on_disk() -> set[str]:
    found = {
        str(f.parent.relative_to(ROOT))
        for pattern in ("molecule/*/molecule.yml", "roles/*/molecule/*/molecule.yml")
        for f in ROOT.glob(pattern)
    }
    return {d for d in found if not (ROOT / d / "outside-make-test").exists()}


def test_every_scenario_runs_once_except_those_outside_make_test() -> None:
    order = listed()
    assert len(order) == len(set(order))
    assert set(order) == on_disk()
    assert "molecule/dist-upgrade" not in order


def test_the_long_ones_start_first_and_the_short_ones_fill_the_end() -> None:
    order = listed()
    assert order[0] == "molecule/single-host"
    stacks = [d for d in order if d.startswith("molecule/")]
    assert order[: len(stacks)] == stacks, "the whole-stack scenarios start before the roles'"
    assert order[-1] == "roles/preflight/molecule/default", "the shortest ends the run"
    assert order.index("roles/pki/molecule/default") < order.index("roles/base/molecule/default")


def test_listing_runs_nothing_and_keeps_the_last_logs() -> None:
    logs = ROOT / ".cache/test-logs"
    marker = logs / "kept-by-list.log"
    logs.mkdir(parents=True, exist_ok=True)
    marker.write_text("the last make test's log\n")
    try:
        listed()
        assert marker.exists(), "--list removed the last run's logs"
    finally:
        marker.unlink(missing_ok=True)
