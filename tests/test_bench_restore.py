"""pacsctl bench restore: what it makes of the host's measures, and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pacs_libre import bench_restore
from pacs_libre.errors import UserError

SAMPLE = {
    "disk": {"bytes": 536870912, "seconds": 4.0},
    "files": {"bytes": 274901666, "files": 531, "seconds": 17.5, "snapshot": "3bbcb076"},
    "postgresql": {"bytes": 34140412, "seconds": 9.7},
}


def fake_ssh(stdout: str, rc: int = 0) -> Any:
    def run(args: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ["ssh", "-F"]
        assert args[-2:] == [bench_restore.SCRATCH, "512"]
        return subprocess.CompletedProcess(args, rc, stdout=stdout, stderr="boom")

    return run


def test_the_measures_are_rates_over_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text("Host x\n")
    monkeypatch.setattr(subprocess, "run", fake_ssh(json.dumps(SAMPLE)))
    disk, files, pg = bench_restore.run("x", config, size_mb=512)
    assert round(disk.mb_per_s, 1) == 134.2
    assert round(files.mb_per_s, 1) == 15.7
    assert "531 files" in files.detail
    assert pg.as_dict()["mb_per_s"] == 3.5


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
