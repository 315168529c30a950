"""A skip is never silent: make test fails on any, and a skip without a reason always fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_suite(tmp_path: Path, body: str, strict: bool) -> subprocess.CompletedProcess[str]:
    """Run a small suite with this folder's conftest, as make test runs tests/."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((ROOT / "tests/conftest.py").read_text())
    (suite / "test_it.py").write_text(body)
    env = dict(os.environ, PACS_LIBRE_STRICT_SKIPS="1" if strict else "0")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )


SKIP_WITH_REASON = (
    "import pytest\n"
    "def test_runs(): assert True\n"
    "@pytest.mark.skipif(True, reason='needs a thing: apt-get install thing')\n"
    "def test_needs_a_thing(): assert True\n"
)


def test_a_skip_with_its_reason_passes_outside_make_test(tmp_path: Path) -> None:
    proc = _run_suite(tmp_path, SKIP_WITH_REASON, strict=False)
    assert proc.returncode == 0, proc.stdout
    assert "test_needs_a_thing: needs a thing: apt-get install thing" in proc.stdout


def test_make_test_fails_on_any_skip_and_names_it(tmp_path: Path) -> None:
    proc = _run_suite(tmp_path, SKIP_WITH_REASON, strict=True)
    assert proc.returncode == 1, proc.stdout
    assert "skips that fail this run" in proc.stdout
    assert "test_needs_a_thing: needs a thing: apt-get install thing" in proc.stdout


def test_a_skip_without_a_reason_always_fails(tmp_path: Path) -> None:
    body = "import pytest\n@pytest.mark.skip\ndef test_quiet(): assert True\n"
    proc = _run_suite(tmp_path, body, strict=False)
    assert proc.returncode == 1, proc.stdout
    assert "no reason given" in proc.stdout or "unconditional skip" in proc.stdout


SUITE = sorted(p for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_skips.py")


@pytest.mark.parametrize("path", SUITE, ids=lambda p: p.name)
def test_every_skip_in_the_suite_says_what_it_needs(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "pytest.skip(allow_module_level" not in text, f"{path.name}: skip per test, with reason="
    for line in text.splitlines():
        if "mark.skipif(" in line or "mark.skip(" in line:
            assert "reason=" in line or "reason=" in text.split(line, 1)[1][:300], (
                f"{path.name}: {line.strip()} gives no reason="
            )
