"""pacsctl bench restore: what it makes of the host's measures, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pacs_libre import bench_restore
from pacs_libre.errors import UserError

SAMPLE = {
    "disk": {"bytes": 536870912, "seconds": 4.0},
    "files": {
        "bytes": 274901666,
        "files": 531,
        "seconds": 17.5,
        "snapshot": "3bbcb076",
        "cpu": {"user": 20.1, "system": 5.0, "wait": 7.0},
    },
    "link": {"bytes": 280000000, "seconds": 7.0, "cpu": {"user": 3.0, "system": 2.6, "wait": 0.7}},
    "postgresql": {
        "bytes": 34140412,
        "seconds": 9.7,
        "cpu": {"user": 1.5, "system": 0.5, "wait": 0.0},
    },
}


def fake_ssh(stdout: str, rc: int = 0) -> Any:
    def run(args: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ["ssh", "-F"]
        assert args[-2:] == [bench_restore.SCRATCH, "512"]
        return subprocess.CompletedProcess(args, rc, stdout=stdout, stderr="boom")

    return run


@pytest.fixture
def sample_measures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bench_restore.Measure]:
    """What run() makes of SAMPLE, as the host would print it."""
    config = tmp_path / "config"
    config.write_text("Host x\n")
    monkeypatch.setattr(subprocess, "run", fake_ssh(json.dumps(SAMPLE)))
    return bench_restore.run("x", config, size_mb=512)


def test_the_measures_are_rates_over_the_same_run(
    sample_measures: list[bench_restore.Measure],
) -> None:
    disk, files, link, pg = sample_measures
    assert round(disk.mb_per_s, 1) == 134.2
    assert round(files.mb_per_s, 1) == 15.7
    assert "531 files" in files.detail
    assert link.mb_per_s == 40.0
    assert pg.as_dict()["mb_per_s"] == 3.5


def test_each_restore_says_how_busy_its_processes_kept_the_cpu(
    sample_measures: list[bench_restore.Measure],
) -> None:
    disk, files, link, pg = sample_measures
    assert disk.cpu_share is None and disk.as_dict()["cpu_share"] is None
    assert files.cpu_seconds == pytest.approx(25.1)
    assert files.as_dict()["cpu_share"] == round(25.1 / 17.5, 2)
    assert link.as_dict()["cpu_share"] == 0.8
    assert pg.cpu_share == pytest.approx(2.0 / 9.7)
    # And how long its threads waited for a core.
    assert disk.wait_share is None and disk.as_dict()["wait_share"] is None
    assert files.as_dict()["wait_share"] == 0.4
    assert link.wait_seconds == pytest.approx(0.7)
    assert pg.as_dict()["wait_share"] == 0.0


def probe(tmp_path: Path, *command: str) -> tuple[float, float, float]:
    """Run the host's PROBE here, for real, around COMMAND: (user, system, wait) seconds."""
    out = tmp_path / "probe"
    subprocess.run(
        ["python3", "-c", bench_restore.PROBE, str(out), *command], check=True, timeout=120
    )
    user, system, wait = (float(x) for x in out.read_text().split())
    return user, system, wait


BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"


def test_the_probe_counts_the_cpu_of_the_whole_tree_and_its_wait_for_a_core(
    tmp_path: Path,
) -> None:
    """Two busy children pinned to one core: each has the CPU about half the time.

    The probe sees both (the grandchildren of the command it ran), their CPU seconds
    (a second each, by construction) and a wait for the core that only sharing it explains.
    """
    shared = f"python3 -c '{BUSY}' & python3 -c '{BUSY}'; wait"
    core = str(min(os.sched_getaffinity(0)))
    user, system, wait = probe(tmp_path, "taskset", "-c", core, "sh", "-c", shared)
    assert user + system >= 1.9, (user, system)
    assert wait >= 0.5, f"two busy processes on one core waited only {wait} s"


def test_the_probe_passes_the_command_s_exit_status(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["python3", "-c", bench_restore.PROBE, str(tmp_path / "p"), "sh", "-c", "exit 3"],
        check=False,
        timeout=60,
    )
    assert proc.returncode == 3
    assert len((tmp_path / "p").read_text().split()) == 3


def test_the_host_script_is_valid_shell_and_measures_each_part() -> None:
    """The script the host runs parses (sh -n) and times the transport with restic's SSH."""
    proc = subprocess.run(["sh", "-n"], input=bench_restore.SCRIPT, text=True, check=False)
    assert proc.returncode == 0
    assert '-F "$etc/ssh_config"' in bench_restore.SCRIPT
    assert bench_restore.PROBE.strip() in bench_restore.SCRIPT
    for part in ('"files"', '"link"', '"postgresql"'):
        assert part in bench_restore.SCRIPT


def test_no_snapshot_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("Host x\n")
    monkeypatch.setattr(subprocess, "run", fake_ssh('{"error": "no DICOM snapshot: run x"}'))
    with pytest.raises(UserError, match="no DICOM snapshot"):
        bench_restore.run("x", config, size_mb=512)


def test_a_failed_run_and_a_missing_config_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="no ssh config"):
        bench_restore.run("x", tmp_path / "absent")
    config = tmp_path / "config"
    config.write_text("Host x\n")
    monkeypatch.setattr(subprocess, "run", fake_ssh("", rc=255))
    with pytest.raises(UserError, match="failed: boom"):
        bench_restore.run("x", config, size_mb=512)
