"""Skips are never silent.

Every skip must say why (``reason=``: what the test needs and how to get it). With
``PACS_LIBRE_STRICT_SKIPS=1``, which ``make test`` (scripts/run-tests) and so CI set, any skip
fails the run: ``make test`` installs everything the suite needs (dcmtk, podman, root), so a
skip there means a test that did not run. A plain ``pytest tests`` on a developer's machine
still skips, and lists each skipped test with its reason at the end.
"""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("PACS_LIBRE_STRICT_SKIPS", "") not in ("", "0")

_skipped: list[tuple[str, str]] = []


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skipped.append((report.nodeid, _reason(report)))


def _unexplained(reason: str) -> bool:
    return reason.strip() in ("", "unconditional skip", "<Skipped instance>")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bad = [(node, why) for node, why in _skipped if STRICT or _unexplained(why)]
    if bad and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped:
        return
    unexplained = [(node, why) for node, why in _skipped if _unexplained(why)]
    if STRICT or unexplained:
        terminalreporter.section("skips that fail this run", red=True)
        if STRICT:
            terminalreporter.write_line(
                "PACS_LIBRE_STRICT_SKIPS is set (make test, CI): every test must run here."
            )
        for node, why in _skipped if STRICT else unexplained:
            terminalreporter.write_line(f"{node}: {why or 'no reason given: say what it needs'}")
    else:
        terminalreporter.section("skipped (PACS_LIBRE_STRICT_SKIPS=1 would fail them)")
        for node, why in _skipped:
            terminalreporter.write_line(f"{node}: {why}")
