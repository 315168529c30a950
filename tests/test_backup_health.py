"""pacs-backup-metric: how a backup job's end becomes Prometheus textfile metrics.

The script runs on the hosts as the jobs' ExecStartPre= and ExecStopPost=; here it
runs the same way, with the environment systemd gives it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "roles" / "backup_health" / "files" / "pacs-backup-metric"
LINE = re.compile(r'^(\w+)\{job="([a-z0-9-]+)"\} (\S+)$', re.M)


def run(
    folder: Path, job: str, *args: str, result: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SERVICE_RESULT", "EXIT_STATUS"}}
    if result is not None:
        env |= {"SERVICE_RESULT": result, "EXIT_STATUS": "0" if result == "success" else "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), job, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def metrics(folder: Path, job: str) -> dict[str, float]:
    text = (folder / f"pacs_backup_{job.replace('-', '_')}.prom").read_text()
    return {name: float(value) for name, label, value in LINE.findall(text) if label == job}


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start stamp goes to /run/pacs-backup on a host; to a scratch folder here."""
    source = SCRIPT.read_text().replace(
        'RUN_DIR = "/run/pacs-backup"', f'RUN_DIR = "{tmp_path}/run"'
    )
    copy = tmp_path / "pacs-backup-metric"
    copy.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SCRIPT", copy)


def test_a_success_records_its_time_and_duration(tmp_path: Path) -> None:
    assert run(tmp_path, "pg-full", "start").returncode == 0
    assert run(tmp_path, "pg-full", result="success").returncode == 0
    values = metrics(tmp_path, "pg-full")
    assert values["pacs_backup_last_success_timestamp_seconds"] > 1.7e9
    assert values["pacs_backup_last_failure_timestamp_seconds"] == 0
    assert 0 <= values["pacs_backup_last_duration_seconds"] < 60


def test_a_failure_keeps_the_last_success(tmp_path: Path) -> None:
    run(tmp_path, "dicom-files", result="success")
    success = metrics(tmp_path, "dicom-files")["pacs_backup_last_success_timestamp_seconds"]
    run(tmp_path, "dicom-files", result="exit-code")
    values = metrics(tmp_path, "dicom-files")
    assert values["pacs_backup_last_success_timestamp_seconds"] == success
    assert values["pacs_backup_last_failure_timestamp_seconds"] >= success


def test_the_file_is_valid_prometheus_text(tmp_path: Path) -> None:
    run(tmp_path, "pg-check", result="success")
    text = (tmp_path / "pacs_backup_pg_check.prom").read_text()
    for name in (
        "pacs_backup_last_success_timestamp_seconds",
        "pacs_backup_last_failure_timestamp_seconds",
        "pacs_backup_last_duration_seconds",
    ):
        assert f"# TYPE {name} gauge" in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(samples) == 3 and all(LINE.match(line) for line in samples)


def test_a_bad_job_name_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path, "../etc", result="success")
    assert result.returncode == 2
    assert not list(tmp_path.glob("*.prom"))
