"""The roles and pacsctl share Python one way: the collection pacs_libre.core's module_utils.

docs/architecture.md, "Shared Python". Ansible finds the collection through ansible.cfg's
``collections_path`` alone (not through this venv's sys.path), the shared modules need nothing
beyond the standard library and PyYAML, and no plugin patches sys.path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.pacs_libre.core.plugins.module_utils.pgtune import postgresql_settings

ROOT = Path(__file__).resolve().parents[1]
MODULE_UTILS = ROOT / "scripts/ansible_collections/pacs_libre/core/plugins/module_utils"
PLUGIN_FILES = sorted(
    [
        *ROOT.glob("roles/*/*_plugins/*.py"),
        *ROOT.glob("plugins/*/*.py"),
        *MODULE_UTILS.rglob("*.py"),
    ]
)


def _module_names() -> list[str]:
    names = []
    for path in sorted(MODULE_UTILS.rglob("*.py")):
        parts = path.relative_to(ROOT / "scripts").with_suffix("").parts
        names.append(".".join(p for p in parts if p != "__init__"))
    return names


def test_the_shared_modules_need_only_the_standard_library_and_yaml() -> None:
    """What Ansible's own Python has: no pydantic, Typer, Rich, nor pacsctl's package."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {_module_names()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('pydantic', 'typer', 'rich', 'pacs_libre', "
        "'matplotlib', 'pydicom') if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert len(_module_names()) >= 9
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_plugin_patches_sys_path_or_imports_pacsctl(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "sys.path" not in text, f"{path}: import the shared Python as a collection instead"
    assert not re.search(r"^\s*(from|import) pacs_libre\b", text, re.M), (
        f"{path}: plugins import ansible_collections.pacs_libre.core.plugins.module_utils.*, "
        "not pacsctl's package"
    )


def _ansible_playbook(playbook: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with this checkout's ansible.cfg, finding collections by its path only."""
    full = dict(os.environ)
    full.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_STRATEGY="linear",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="pacs_libre_hints",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        **env,
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=full,
    )


def test_the_pgtune_filter_runs_the_shared_formulas_in_ansible(tmp_path: Path) -> None:
    playbook, written = tmp_path / "pgtune.yml", tmp_path / "settings.json"
    playbook.write_text(
        "- hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        content: \"{{ 8192 | postgresql_pgtune(4, disk='hdd', workload='oltp') }}\"\n"
        f"        dest: {written}\n"
        "        mode: '0600'\n"
    )
    proc = _ansible_playbook(
        playbook,
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        ANSIBLE_FILTER_PLUGINS=str(ROOT / "roles/postgresql/filter_plugins"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = postgresql_settings(8192 * 2**20, 4, "hdd", 100, workload="oltp", pg_version=17)
    assert json.loads(written.read_text()) == expected


def test_the_preflight_action_runs_the_shared_rules_in_ansible(tmp_path: Path) -> None:
    """An example inventory (CHANGEME secrets) is refused when deploying, rule by rule."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(
        "- hosts: all\n"
        "  gather_facts: false\n"
        "  connection: local\n"
        "  tasks:\n"
        "    - pacs_preflight:\n"
        "        check_storage: false\n"
        "      run_once: true\n"
    )
    proc = _ansible_playbook(
        playbook,
        "-i",
        str(ROOT / "inventories/example-ch200"),
        ANSIBLE_ACTION_PLUGINS=str(ROOT / "roles/preflight/action_plugins"),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stdout
    assert "inventory problem(s); no host was changed" in message
    assert "placeholder CHANGEME (an example inventory cannot be deployed)" in message


def test_ancestors_lists_the_folders_above_a_path() -> None:
    from ansible_collections.pacs_libre.core.plugins.filter.paths import ancestors  # noqa: PLC0415

    assert ancestors("/srv/pacs/orthanc") == ["/srv", "/srv/pacs"]
    assert ancestors("/srv/pacs/postgresql/17") == ["/srv", "/srv/pacs", "/srv/pacs/postgresql"]
    assert ancestors("/srv") == []
    with pytest.raises(ValueError, match="absolute"):
        ancestors("srv/pacs")
