"""The monitoring role's probes (roles/monitoring/files/), run here as the hosts run them.

- pacs-dicom-echo against a real DICOM node (dcmtk's storescp, which answers C-ECHO):
  success for the AE title it answers, failure for a closed port; the file it writes
  parses as Prometheus' text format, with the archive named in the label archive.
- pacs-archive-metrics' pure parts: Orthanc's sample timestamps are dropped (the
  textfile collector refuses them), the month windows of the studies count.

The archive probe's HTTP side runs against the real Orthanc in molecule/monitoring.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dcmtk_servers import free_port, storescp

FILES = Path(__file__).resolve().parents[1] / "roles" / "monitoring" / "files"


def _load(name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(FILES / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value, for the sample lines of a text-format file."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.mark.skipif(
    shutil.which("storescp") is None or not Path("/usr/bin/echoscu").exists(),
    reason="needs dcmtk's storescp and /usr/bin/echoscu",
)
def test_the_echo_probe_tells_an_answering_archive_from_a_closed_port(tmp_path):
    closed = free_port()
    (tmp_path / "inbox").mkdir()
    with storescp(tmp_path / "inbox", "MOLARCHIVE") as port:
        targets = tmp_path / "targets.json"
        targets.write_text(
            json.dumps(
                [
                    {"host": "pacs1", "address": "127.0.0.1", "port": port, "aet": "MOLARCHIVE"},
                    {"host": "pacs2", "address": "127.0.0.1", "port": closed, "aet": "GONE"},
                ]
            )
        )
        (tmp_path / "out").mkdir()
        proc = subprocess.run(
            [sys.executable, str(FILES / "pacs-dicom-echo"), "PACSMONITOR", str(targets),
             str(tmp_path / "out")],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "GONE" in proc.stderr, "a failed echo is named on stderr, for the journal"
    samples = _samples((tmp_path / "out" / "dicom_echo.prom").read_text())
    ok = f'pacs_dicom_echo_success{{archive="pacs1",aet="MOLARCHIVE",target="127.0.0.1:{port}"}}'
    gone = f'pacs_dicom_echo_success{{archive="pacs2",aet="GONE",target="127.0.0.1:{closed}"}}'
    assert samples[ok] == 1
    assert samples[gone] == 0
    assert any(k.startswith("pacs_probe_last_run_timestamp_seconds") for k in samples)
    assert not list((tmp_path / "out").glob(".*")), "no temporary file is left behind"


def test_orthanc_sample_timestamps_are_dropped():
    probe = _load("pacs-archive-metrics")
    text = "# TYPE orthanc_count_instances gauge\northanc_count_instances 42 1764600000000\n\n"
    assert probe.without_timestamps(text) == [
        "# TYPE orthanc_count_instances gauge",
        "orthanc_count_instances 42",
        "",
    ]


def test_the_studies_are_counted_for_this_month_and_the_last():
    probe = _load("pacs-archive-metrics")
    # 2027-01-15: December 2026 and January 2027.
    assert probe.month_windows(1_800_000_000) == [
        ("2026-12", "20261201-20261231"),
        ("2027-01", "20270101-20270131"),
    ]
    assert probe.month_windows(1_780_000_000)[0][0] == "2026-04"  # 2026-05-28


def test_labels_are_escaped():
    probe = _load("pacs-archive-metrics")
    assert probe.label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
