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


def test_every_role_is_checked():
    """Every folder of roles/ with tasks is a role with specs, so none escapes these tests."""
    on_disk = sorted(p.parent.parent.name for p in ROOT.glob("roles/*/tasks/main.yml"))
    assert {"base", "preflight", "postgresql", "orthanc"} <= set(on_disk)
    assert sorted(r.name for r in ROLES) == on_disk


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
    """Whole files from templates: nowhere in a role (tasks, handlers, molecule playbooks)."""
    files = sorted(role.rglob("*.yml"))
    assert any(f.parent.name == "tasks" for f in files)
    for path in files:
        found = re.search(r"\b(lineinfile|blockinfile|replace):", path.read_text())
        assert not found, f"{path}: {found.group(1)} edits a file in place; template it whole"


def test_templates_start_with_ansible_managed():
    for template in ROOT.glob("roles/*/templates/*.j2"):
        head = "".join(template.read_text().splitlines(keepends=True)[:3])
        assert "ansible_managed" in head, f"{template} does not say it is managed"


def test_render_table_refuses_a_file_without_specs(tmp_path):
    bad = tmp_path / "argument_specs.yml"
    bad.write_text("something: else\n")
    with pytest.raises(UserError, match="argument_specs"):
        roledoc.render_table(bad)


def _tasks(path):
    """Every task of a task file, blocks opened, each with the blocks around it."""

    def walk(items, parents):
        for item in items or []:
            yield item, parents
            for key in ("block", "rescue", "always"):
                if key in item:
                    yield from walk(item[key], [*parents, item])

    return list(walk(yaml.safe_load(path.read_text()), []))


def _conditions(task):
    when = task.get("when")
    return [str(c) for c in (when if isinstance(when, list) else [when] if when else [])]


def _guard_sources(role):
    """The registered results that the role's derived guards (vars/ `__<role>_check_*`) read."""
    derived = (
        yaml.safe_load((role / "vars/main.yml").read_text())
        if (role / "vars/main.yml").exists()
        else {}
    ) or {}
    sources = {f"__{role.name}_packages_result"}
    for name, value in derived.items():
        if name.startswith(f"__{role.name}_check_"):
            sources |= set(re.findall(rf"__{role.name}_\w+", str(value)))
    return {s for s in sources if not s.startswith(f"__{role.name}_check_")}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_the_check_mode_guard_is_on_blocks_and_imports_not_on_tasks(role):
    """`__<role>_check_fresh` (and any `__<role>_check_*`) is derived once and guards whole
    blocks or task files.

    The one task that says what check mode would do instead (`when: <guard>`, alone) is
    not a repeat of the guard.
    """
    guard = re.compile(rf"__{role.name}_check_\w+")
    for path in sorted((role / "tasks").glob("*.yml")):
        for task, _ in _tasks(path):
            repeated = [
                found.group(0)
                for c in _conditions(task)
                if (found := guard.search(c)) and not guard.fullmatch(c.strip())
            ]
            if repeated:
                opens = "block" in task or any(
                    k.endswith(("import_tasks", "include_tasks")) for k in task
                )
                assert opens, (
                    f"{path}: task {task.get('name')!r} repeats {repeated[0]}; guard its block"
                )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_the_check_mode_guard_is_not_spelled_out_again(role):
    """`not (ansible_check_mode and __<role>_packages_result is changed)` is the guard itself,
    written out: it is derived once in vars/ (`__<role>_check_fresh`) and named, on blocks and
    imports as on tasks, and in the handlers.
    """
    sources = "|".join(sorted(_guard_sources(role)))
    spelled = re.compile(rf"ansible_check_mode\s+and\s+(not\s+)?\(?\s*({sources})\b")
    for path in sorted([*(role / "tasks").glob("*.yml"), *(role / "handlers").glob("*.yml")]):
        for task, _ in _tasks(path):
            for condition in _conditions(task):
                found = spelled.search(condition)
                assert not found, (
                    f"{path}: {task.get('name')!r} spells out the check-mode guard"
                    f" ({found.group(0)!r}); name the one derived in vars/"
                )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_a_check_mode_condition_is_not_repeated_on_tasks(role):
    """A check-mode condition of its own (`ansible_check_mode and <a result> is changed`)
    goes on the block of the tasks it guards, not on each of them."""
    spelled = re.compile(r"ansible_check_mode\s+and\s+.*\bis\s+changed")
    for path in sorted((role / "tasks").glob("*.yml")):
        seen: dict[str, str] = {}
        for task, _ in _tasks(path):
            if "block" in task:
                continue
            for condition in _conditions(task):
                if spelled.search(condition):
                    key = " ".join(condition.split())
                    assert key not in seen, (
                        f"{path}: {task.get('name')!r} repeats {key!r} of {seen[key]!r};"
                        " put both in one block that carries it"
                    )
                    seen[key] = str(task.get("name"))


def test_orthanc_waits_for_every_protocol_it_serves():
    """After a (re)start, the role waits for HTTP, DICOM and DICOM TLS, not HTTP alone."""
    tasks = [t for t, _ in _tasks(ROOT / "roles/orthanc/tasks/service.yml")]
    waited = {
        str(t["ansible.builtin.wait_for"]["port"]) for t in tasks if "ansible.builtin.wait_for" in t
    }
    assert waited == {"{{ __orthanc_dicom_port }}", "{{ __orthanc_dicom_tls_port }}"}
    assert any(
        "ansible.builtin.uri" in t and "/system" in t["ansible.builtin.uri"]["url"] for t in tasks
    )


def test_postgresql_connects_locally_through_module_defaults():
    """One socket variable, given once per task file by module_defaults, not on each task."""
    for path in sorted((ROOT / "roles/postgresql/tasks").glob("*.yml")):
        text = path.read_text()
        assert "/var/run/postgresql" not in text, path
        if path.name in ("objects.yml", "service.yml", "monitoring.yml"):
            assert "login_unix_socket" not in text.split("block:", 1)[-1], path


def test_orthanc_readme_says_where_the_index_connection_has_tls():
    """orthanc.json turns EnableSsl off on the Unix socket: the README must not claim TLS there."""
    readme = (ROOT / "roles/orthanc/README.md").read_text()
    assert "Orthanc connects with TLS (`EnableSsl`)." not in readme
    assert "Unix socket" in readme
    # The socket: no TLS (EnableSsl false); over TCP, libpq verifies the server.
    template_vars = (ROOT / "roles/orthanc/vars/main.yml").read_text()
    assert "'EnableSsl': false" in template_vars
    assert "'sslmode': 'verify-full'" in template_vars
    assert "verify-full" in readme


def test_stunnels_file_is_read_by_stunnel_before_it_lands():
    """The tunnel's file is validated by the checker, installed before it even on a fresh host."""
    tasks = [t for t, _ in _tasks(ROOT / "roles/orthanc/tasks/service.yml")]
    templates = [t.get("ansible.builtin.template", {}) for t in tasks]
    dests = [t.get("dest", "") for t in templates]
    writes = [i for i, dest in enumerate(dests) if dest.startswith("/etc/stunnel/")]
    assert len(writes) == 1
    assert templates[writes[0]]["validate"] == "/usr/local/sbin/pacs-stunnel-check %s"
    checker = dests.index("/usr/local/sbin/pacs-stunnel-check")
    assert checker < writes[0]
    assert templates[checker]["src"] == "pacs-stunnel-check.j2"
    # Outside every block: check mode on a fresh host shows it too.
    assert not [
        parents
        for t, parents in _tasks(ROOT / "roles/orthanc/tasks/service.yml")
        if t is tasks[checker] and parents
    ]
