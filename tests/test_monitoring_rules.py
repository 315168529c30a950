"""The monitoring role's alert rules: promtool checks them, and each alert has a unit test.

The rule files are Jinja templates (roles/monitoring/templates/rules/), rendered here
with the role's defaults as Ansible renders them, then checked with Debian's promtool
(`promtool check rules`) and run against their unit tests
(roles/monitoring/files/rules-tests/, `promtool test rules`). The role's verify runs the
same unit tests on a real host against the deployed files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "monitoring"
RULES = sorted((ROLE / "templates" / "rules").glob("*.rules.yml.j2"))
TESTS = ROLE / "files" / "rules-tests"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian's prometheus package: make prereqs)"
)
DOCS = {
    "en": ROOT / "docs" / "monitoring.md",
    "fr": ROOT / "docs" / "fr" / "surveillance.md",
}


def _name(template: Path) -> str:
    return template.name.removesuffix(".rules.yml.j2")


def render(template: Path, overrides: dict[str, Any] | None = None) -> str:
    """The rule file as the role writes it, with its defaults (and ``overrides``)."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(  # noqa: S701 (YAML, not HTML)
        variable_start_string="[[",
        variable_end_string="]]",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["comment"] = lambda text: f"#\n# {text}\n#"
    lines = template.read_text().splitlines(keepends=True)
    assert lines[0].startswith("#jinja2:"), f"{template}: the first line sets the delimiters"
    return env.from_string("".join(lines[1:])).render(
        {**defaults, "ansible_managed": "Ansible managed", **(overrides or {})}
    )


def _alerts(text: str) -> list[dict[str, Any]]:
    groups = yaml.safe_load(text)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rules")
    for template in RULES:
        (folder / f"{_name(template)}.rules.yml").write_text(render(template))
    for test in TESTS.glob("*.test.yml"):
        shutil.copy(test, folder / test.name)
    return folder


def test_there_are_rule_files_and_each_has_its_tests():
    names = {_name(t) for t in RULES}
    assert {"services", "storage", "database", "backups", "tls", "archive"} <= names
    assert names == {t.name.removesuffix(".test.yml") for t in TESTS.glob("*.test.yml")}
    listed = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__monitoring_rule_files"]
    assert set(listed) == names, "vars/main.yml __monitoring_rule_files lists every rule file"


@needs_promtool
@pytest.mark.parametrize("template", RULES, ids=_name)
def test_promtool_checks_the_rules(template, rendered):
    path = rendered / f"{_name(template)}.rules.yml"
    command = [PROMTOOL, "check", "rules", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
@pytest.mark.parametrize("template", RULES, ids=_name)
def test_promtool_unit_tests_pass(template, rendered):
    test = f"{_name(template)}.test.yml"
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", test], capture_output=True, text=True, cwd=rendered, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("template", RULES, ids=_name)
def test_every_alert_has_a_unit_test_a_summary_and_a_runbook(template):
    tested = {
        case["alertname"]
        for test in yaml.safe_load((TESTS / f"{_name(template)}.test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    for alert in _alerts(render(template)):
        name = alert["alert"]
        assert name in tested, f"{template.name}: {name} has no promtool unit test"
        annotations = alert["annotations"]
        assert annotations.get("summary"), f"{name} has no summary"
        assert annotations.get("description"), f"{name} has no description"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert annotations["runbook_url"].endswith(f"#{name.lower()}"), name


@pytest.mark.parametrize("language", sorted(DOCS))
def test_every_alert_has_its_runbook_section(language):
    text = DOCS[language].read_text()
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', text))
    missing = [
        alert["alert"]
        for template in RULES
        for alert in _alerts(render(template))
        if alert["alert"].lower() not in anchors
    ]
    assert not missing, f"{DOCS[language]}: no runbook section for {missing}"


def test_short_scenario_durations_keep_the_rules_valid(tmp_path):
    """The whole-stack scenario shortens the ranges; the rules render and parse the same."""
    short = {
        "monitoring_alert_down_for": "30s",
        "monitoring_storage_forecast_range": "2m",
        "monitoring_storage_forecast_for": "0s",
        "monitoring_growth_range": "5m",
        "monitoring_growth_for": "0s",
    }
    for template in RULES:
        text = render(template, short)
        assert [a["alert"] for a in _alerts(text)] == [
            a["alert"] for a in _alerts(render(template))
        ]
        if PROMTOOL:
            path = tmp_path / f"{_name(template)}.rules.yml"
            path.write_text(text)
            proc = subprocess.run(
                [PROMTOOL, "check", "rules", str(path)], capture_output=True, check=False
            )
            assert proc.returncode == 0, proc.stdout
