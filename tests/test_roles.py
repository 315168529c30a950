"""Every role keeps its contract: argument specs, defaults and README agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pacs_libre import roledoc
from pacs_libre.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ROLES = roledoc.roles_with_specs(ROOT)


def test_there_are_roles_to_check():
    assert "base" in [r.name for r in ROLES]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_readme_table_is_generated_from_the_specs(role):
    assert not roledoc.update_readme(role, check=True), (
        f"roles/{role.name}/README.md is out of date: run `pacsctl docs roles`"
    )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_defaults_and_specs_declare_the_same_variables(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    declared = set(specs["argument_specs"]["main"]["options"])
    assert set(defaults) <= declared, f"undocumented defaults: {set(defaults) - declared}"
    documented_defaults = {
        name for name, opt in specs["argument_specs"]["main"]["options"].items() if "default" in opt
    }
    assert documented_defaults == set(defaults), (
        f"specs give a default that defaults/main.yml lacks: {documented_defaults - set(defaults)}"
    )
    for name, opt in specs["argument_specs"]["main"]["options"].items():
        if name in defaults:
            assert opt["default"] == defaults[name], f"{name}: specs and defaults disagree"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_variable_carries_the_role_prefix(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    for name in defaults:
        assert name.startswith(f"{role.name}_"), f"{name} lacks the prefix {role.name}_"
    derived = (
        yaml.safe_load((role / "vars/main.yml").read_text())
        if (role / "vars/main.yml").exists()
        else {}
    )
    for name in derived or {}:
        assert name.startswith(f"__{role.name}_"), f"vars/{name} lacks the prefix __{role.name}_"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_no_config_file_is_edited_with_lineinfile(role):
    for task_file in (role / "tasks").glob("*.yml"):
        assert not re.search(r"\blineinfile\b", task_file.read_text()), task_file


def test_templates_start_with_ansible_managed():
    for template in ROOT.glob("roles/*/templates/*.j2"):
        head = "".join(template.read_text().splitlines(keepends=True)[:3])
        assert "ansible_managed" in head, f"{template} does not say it is managed"


def test_render_table_refuses_a_file_without_specs(tmp_path):
    bad = tmp_path / "argument_specs.yml"
    bad.write_text("something: else\n")
    with pytest.raises(UserError, match="argument_specs"):
        roledoc.render_table(bad)
