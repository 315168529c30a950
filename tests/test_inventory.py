"""Inventory checks: the examples pass, and a broken copy per rule is caught with its message."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory import (
    problem,
    registry,
    rules,
    typecheck,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import Problem
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import (
    PLACEHOLDER,
    Removed,
)
from pacs_libre import inventory
from pacs_libre.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["lab", "example-ch200", "example-territory"]
CH200 = "example-ch200"
ARCHIVE = "pacs-archive.ch-exemple.fr"
PACSCTL = str(Path(sys.executable).parent / "pacsctl")


_MEMBERSHIP: dict[tuple[str, ...], dict[str, set[str]]] = {}


@pytest.fixture(autouse=True)
def _one_ansible_inventory_per_hosts_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the tests fast: ``ansible-inventory --graph`` runs once per distinct hosts.yml.

    Group membership depends only on the hosts files, which most tests leave alone.
    """
    real = inventory.read_membership

    def cached(path: Path) -> dict[str, set[str]]:
        hosts = sorted(path.glob("*.yml")) if path.is_dir() else []
        key = tuple(p.read_text() for p in hosts) if hosts else (str(path),)
        if key not in _MEMBERSHIP:
            _MEMBERSHIP[key] = real(path)
        return {host: set(groups) for host, groups in _MEMBERSHIP[key].items()}

    monkeypatch.setattr(inventory, "read_membership", cached)


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[str], Path]:
    """A throwaway copy of an example inventory, to break."""

    def make(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(ROOT / "inventories" / name, target)
        return target

    return make


def edit(path: Path, **changes: Any) -> None:
    """Set (or, with None, delete) top-level keys of a YAML vars file."""
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    data = data or {}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def only(problems: list[Problem], rule: str) -> list[Problem]:
    return [p for p in problems if p.rule == rule]


# ----------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_inventories_pass(name: str) -> None:
    assert inventory.check(ROOT / "inventories" / name) == []


@pytest.mark.parametrize("name", ["example-ch200", "example-territory"])
def test_examples_are_accepted_by_ansible_inventory(name: str) -> None:
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-inventory"),
            "-i",
            str(ROOT / "inventories" / name),
            "--list",
            "--export",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(proc.stdout)
    assert "pacs_archive" in data
    assert data["all"]["vars"]["pacs_inventory_is_example"] is True


@pytest.mark.parametrize("name", ["example-ch200", "example-territory"])
def test_examples_use_changeme_only_for_secrets(name: str) -> None:
    known = inventory.known()
    secrets = known.secrets()
    # Secret fields of list entries (a user's password): named by the field.
    secrets |= {
        field
        for spec in known.specs.values()
        for field, sub in (spec.get("options") or {}).items()
        if (sub or {}).get("no_log")
    }
    found = []
    for path in (ROOT / "inventories" / name).rglob("*.yml"):
        for line in path.read_text().splitlines():
            if "CHANGEME" in line and not line.lstrip().startswith("#"):
                found.append(line.split(":")[0].strip().removeprefix("- "))
    assert found
    assert set(found) <= secrets


@pytest.mark.parametrize("name", ["example-ch200", "example-territory"])
def test_example_sizing_is_what_pacsctl_size_writes(name: str, tmp_path: Path) -> None:
    """The sizing group_vars are generated: rerunning their command gives the same file."""
    sizing = ROOT / "inventories" / name / "group_vars/all/sizing.yml"
    header = [line for line in sizing.read_text().splitlines() if line.startswith("#   ")]
    command = " ".join(line[4:].rstrip("\\ ") for line in header)
    argv = shlex.split(command)[1:]
    out = tmp_path / "sizing.yml"
    argv[argv.index("--write-group-vars") + 1] = str(out)
    assert main([*argv, "--format", "json"]) == 0
    expected = sizing.read_text().split("# Do not edit by hand")[1]
    assert out.read_text().split("# Do not edit by hand")[1] == expected


def test_known_variables_come_from_every_source() -> None:
    known = inventory.known()
    assert known.owners["base_timezone"] == "role base"
    assert known.owners["base_firewall_owner"] == "role base"  # another entry point
    assert known.owners["preflight_check_storage"] == "role preflight"
    assert known.owners["pacs_sizing_archive_storage_tb"] == "pacsctl size"
    assert known.owners["postgresql_sizing_settings"] == "pacsctl size"
    assert known.owners["lab_ports"] == "lab"
    assert known.owners["pacs_archive_engine"] == "pacs-wide"
    assert "pacs_archive_admin_password" in known.secrets()


# ----------------------------------------------------------------------------- one rule each


def test_unknown_variable_suggests_the_closest_name(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    edit(inv / "group_vars/all/base.yml", base_timezon="Europe/Paris")
    problems = inventory.check(inv)
    assert problems == [
        Problem(
            f"{inv}/group_vars/all/base.yml",
            "base_timezon",
            "unknown variable: did you mean base_timezone?",
            "rename it to base_timezone",
            "unknown-variable",
        )
    ]
    assert str(problems[0]) == (
        f"{inv}/group_vars/all/base.yml: base_timezon: unknown variable: did you mean "
        "base_timezone? — fix: rename it to base_timezone"
    )


def test_unknown_variable_of_another_tool_is_allowed_by_its_prefix(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(CH200)
    edit(inv / "host_vars/pacs-db.ch-exemple.fr.yml", zabbix_proxy="zbx.ch-exemple.fr")
    [problem] = inventory.check(inv)
    assert problem.key == "zabbix_proxy"
    assert problem.file == f"{inv}/host_vars/pacs-db.ch-exemple.fr.yml"
    assert "pacs_inventory_foreign_prefixes" in problem.fix
    edit(inv / "group_vars/all/pacs.yml", pacs_inventory_foreign_prefixes=["zabbix_"])
    assert inventory.check(inv) == []


def test_the_removed_dependent_lists_point_to_the_consumer_entry_point(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(CH200)
    edit(
        inv / "host_vars/pacs-db.ch-exemple.fr.yml",
        postgresql_dependent_users=[{"name": "ris", "databases": ["ris"]}],
    )
    [problem] = inventory.check(inv)
    assert problem.rule == "removed-variable"
    assert problem.key == "postgresql_dependent_users"
    assert "tasks_from: consumer" in problem.message
    assert problem.fix == "delete it (docs/upgrade-notes.md)"


def test_removed_variable_names_its_replacement(
    copy_of: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        registry.REMOVED_VARIABLES,
        "pacs_aet",
        Removed(
            version="0.2.0",
            why="each host has its own AE title",
            new="pacs_dicom_aet",
            renamed=True,
        ),
    )
    inv = copy_of(CH200)
    edit(inv / "group_vars/pacs_archive/archive.yml", pacs_aet="PACS")
    [problem] = inventory.check(inv)
    assert problem.rule == "removed-variable"
    assert problem.key == "pacs_aet"
    assert problem.message == "removed in pacs-libre 0.2.0: each host has its own AE title"
    assert problem.fix == "rename it to pacs_dicom_aet (same value) (docs/upgrade-notes.md)"


BEFORE_0_1_0 = ROOT / "tests/fixtures/inventory-before-0.1.0"


def test_an_inventory_written_before_the_first_release_is_refused_with_the_fix(
    copy_of: Callable[[str], Path],
) -> None:
    """The fixture sets one removed and one renamed variable, in the files where an older
    inventory had them: each is named with its file, its key and the fix; the same inventory
    without them is accepted."""
    inv = copy_of(CH200)
    assert inventory.check(inv) == []
    for fixture in sorted(BEFORE_0_1_0.rglob("*.yml")):
        edit(inv / fixture.relative_to(BEFORE_0_1_0), **yaml.safe_load(fixture.read_text()))
    problems = {p.key: p for p in inventory.check(inv)}
    assert set(problems) == {"postgresql_dependent_users", "orthanc_tls_selfsigned_days"}
    assert {p.rule for p in problems.values()} == {"removed-variable"}

    removed = problems["postgresql_dependent_users"]
    assert removed.file == f"{inv}/host_vars/pacs-db.ch-exemple.fr.yml"
    assert removed.message.startswith("removed in pacs-libre 0.1.0: ")
    assert "tasks_from: consumer" in removed.message
    assert removed.fix == "delete it (docs/upgrade-notes.md)"

    renamed = problems["orthanc_tls_selfsigned_days"]
    assert renamed.file == f"{inv}/group_vars/pacs_archive/tls.yml"
    assert renamed.fix == "rename it to pki_certificate_days (same value) (docs/upgrade-notes.md)"

    # The fix applied: the renamed key under its new name, the removed one deleted.
    edit(
        inv / "group_vars/pacs_archive/tls.yml",
        orthanc_tls_selfsigned_days=None,
        pki_certificate_days=3650,
    )
    edit(inv / "host_vars/pacs-db.ch-exemple.fr.yml", postgresql_dependent_users=None)
    assert inventory.check(inv) == []


def test_the_cli_refuses_the_old_inventory_naming_file_key_and_fix(
    copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inv = copy_of(CH200)
    for fixture in sorted(BEFORE_0_1_0.rglob("*.yml")):
        edit(inv / fixture.relative_to(BEFORE_0_1_0), **yaml.safe_load(fixture.read_text()))
    assert main(["inventory", "check", str(inv)]) != 0
    out = " ".join((capsys.readouterr().out).split())
    for needle in (
        "group_vars/pacs_archive/tls.yml",
        "orthanc_tls_selfsigned_days",
        "rename it to pki_certificate_days",
        "host_vars/pacs-db.ch-exemple.fr.yml",
        "postgresql_dependent_users",
    ):
        assert needle in out, f"{needle!r} missing from: {out}"


def test_the_self_signed_tls_variables_name_the_deployment_ca(
    copy_of: Callable[[str], Path],
) -> None:
    """The TLS variables that roles/pki replaced are named, each with its replacement."""
    inv = copy_of(CH200)
    edit(
        inv / "group_vars/pacs_archive/archive.yml",
        orthanc_tls_cert_source="files",
        orthanc_tls_ca_file="/etc/ssl/hospital-ca.pem",
    )
    edit(inv / "group_vars/pacs_database/database.yml", postgresql_tls_selfsigned_days=3650)
    problems = {p.key: p for p in inventory.check(inv)}
    assert {p.rule for p in problems.values()} == {"removed-variable"}
    assert set(problems) == {
        "orthanc_tls_cert_source",
        "orthanc_tls_ca_file",
        "postgresql_tls_selfsigned_days",
    }
    assert problems["orthanc_tls_cert_source"].fix == (
        "delete it and set pki_supplied_certificates instead (docs/upgrade-notes.md)"
    )
    assert "pki_supplied_certificates" in problems["orthanc_tls_cert_source"].message
    assert problems["orthanc_tls_ca_file"].fix == (
        "delete it and set orthanc_tls_verify_peers instead (docs/upgrade-notes.md)"
    )
    assert problems["postgresql_tls_selfsigned_days"].fix == (
        "rename it to pki_certificate_days (same value) (docs/upgrade-notes.md)"
    )


def test_every_removed_variable_is_in_the_upgrade_notes_and_known_no_more() -> None:
    notes = (ROOT / "docs/upgrade-notes.md").read_text()
    known = inventory.known()
    for name, removed in registry.REMOVED_VARIABLES.items():
        assert f"`{name}`" in notes, f"{name} is not in docs/upgrade-notes.md"
        assert name not in known.specs, f"{name} is removed but a role still declares it"
        if removed.new:
            assert removed.new in known.specs, f"{name}: its replacement {removed.new} is unknown"
            assert f"`{removed.new}`" in notes, f"{name}: {removed.new} is not in the notes"


def test_upgrade_notes_point_at_the_removed_variables_table() -> None:
    assert "REMOVED_VARIABLES" in (ROOT / "docs/upgrade-notes.md").read_text()


def test_wrong_types_choices_and_fields(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    edit(
        inv / "group_vars/all/base.yml",
        base_admin_networks="10.20.250.0/24",
        base_ssh_port="twenty-two",
        base_firewall_enabled="maybe",
    )
    edit(inv / "group_vars/all/pacs.yml", pacs_archive_engine="pacs")
    archive = inv / "group_vars/pacs_archive/archive.yml"
    nodes = yaml.safe_load(archive.read_text())["pacs_dicom_nodes"]
    nodes[0]["kind"] = "scanner"
    del nodes[1]["port"]
    nodes[2]["hots"] = "10.20.30.99"
    edit(archive, pacs_dicom_nodes=nodes)
    problems = {(p.key, p.message): p for p in only(inventory.check(inv), "wrong-type")}
    assert set(problems) == {
        ("base_admin_networks", "expected a list, got a string ('10.20.250.0/24')"),
        ("base_ssh_port", "expected a whole number, got a string ('twenty-two')"),
        ("base_firewall_enabled", "expected true or false, got a string ('maybe')"),
        ("pacs_archive_engine", "'pacs' is not one of orthanc, dcm4chee"),
        ("pacs_dicom_nodes[0].kind", "'scanner' is not one of modality, workstation, peer"),
        ("pacs_dicom_nodes[1].port", "is missing"),
        ("pacs_dicom_nodes[2].hots", "unknown field"),
    }
    assert problems[
        "base_admin_networks", "expected a list, got a string ('10.20.250.0/24')"
    ].fix == (
        "write a YAML list: base_admin_networks: [a, b], or one '- item' per line under "
        "base_admin_networks"
    )
    assert problems["pacs_dicom_nodes[2].hots", "unknown field"].fix == "rename it to host"
    assert problems["pacs_archive_engine", "'pacs' is not one of orthanc, dcm4chee"].file == (
        f"{inv}/group_vars/all/pacs.yml"
    )


def test_a_quoted_number_is_a_number_as_in_ansible() -> None:
    assert typecheck.check_value("4242", {"type": "int"}, "k") == []
    assert typecheck.check_value(True, {"type": "int"}, "k")
    assert typecheck.check_value(typecheck.VAULTED, {"type": "int"}, "k") == []
    assert typecheck.check_value("{{ other }}", {"type": "int"}, "k") == []
    assert typecheck.check_value(None, {"type": "str", "default": "x"}, "k") == [
        (
            "k",
            "has no value",
            'give it a value, or delete the line to keep the default (default: "x")',
        )
    ]


def test_duplicate_ae_title(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    archive = inv / "group_vars/pacs_archive/archive.yml"
    nodes = yaml.safe_load(archive.read_text())["pacs_dicom_nodes"]
    nodes.append(
        {"name": "ct-2", "kind": "modality", "aet": "ct_urg", "host": "10.20.30.15", "port": 104}
    )
    nodes.append(
        {
            "name": "oops",
            "kind": "modality",
            "aet": "PACS_CHEXEMPLE",
            "host": "10.20.30.16",
            "port": 104,
        }
    )
    edit(archive, pacs_dicom_nodes=nodes)
    problems = only(inventory.check(inv), "duplicate-ae-title")
    assert [(p.key, p.message) for p in problems] == [
        (
            "pacs_dicom_nodes[9].aet",
            "AE title 'CT_URG' of node 'ct-2' is already used by node 'ct-urgences' "
            f"({archive}: pacs_dicom_nodes[0].aet) at another address or port",
        ),
        (
            "pacs_dicom_nodes[10].aet",
            f"AE title 'PACS_CHEXEMPLE' of node 'oops' is already used by the archive of {ARCHIVE} "
            f"({archive}: pacs_dicom_aet) at another address or port",
        ),
    ]
    assert all(p.file == str(archive) for p in problems)
    assert problems[0].fix.startswith("give each DICOM node its own AE title")


def test_the_same_node_described_twice_is_not_a_duplicate(copy_of: Callable[[str], Path]) -> None:
    """A relay may describe the main archive by hand (the relay role then routes to that node
    instead of its own main-archive): the archive's AE title again, at its address and DICOM
    TLS port, is the same node; elsewhere, a duplicate."""
    inv = copy_of("example-territory")
    relay = inv / "group_vars/pacs_relay/relay.yml"
    nodes = yaml.safe_load(relay.read_text())["pacs_dicom_nodes"]
    main = {
        "name": "pacs-principal",
        "kind": "peer",
        "aet": "PACS_GHT",
        "host": "pacs.ght-exemple.fr",
        "port": 4243,
        "tls": True,
        "rights": ["echo", "store", "find", "move"],
    }
    edit(relay, pacs_dicom_nodes=[*nodes, main])
    assert inventory.check(inv) == []
    edit(relay, pacs_dicom_nodes=[*nodes, {**main, "host": "10.10.1.99"}])  # somewhere else
    [problem] = inventory.check(inv)
    assert problem.rule == "duplicate-ae-title"
    assert "AE title 'PACS_GHT'" in problem.message


@pytest.mark.parametrize(
    ("aet", "message"),
    [
        ("PACS_CH_EXEMPLE_ARCHIVE", "has 23 characters; DICOM allows 16 at most"),
        ("PACS\\CH", "has characters DICOM forbids ('\\\\')"),
        ("PACS_CHÉ", "has characters DICOM forbids ('É')"),
        ("pacs ch", "must use only capital letters A-Z, digits and _ - ."),
        ("   ", "cannot be empty or only spaces"),
    ],
)
def test_ae_title_format(copy_of: Callable[[str], Path], aet: str, message: str) -> None:
    inv = copy_of(CH200)
    edit(inv / "group_vars/pacs_archive/archive.yml", pacs_dicom_aet=aet)
    [problem] = only(inventory.check(inv), "ae-title")
    assert problem.key == "pacs_dicom_aet"
    assert problem.file == f"{inv}/group_vars/pacs_archive/archive.yml"
    assert message in problem.message
    assert "A-Z, 0-9" in problem.fix


def test_ae_title_of_a_device_follows_dicom_only() -> None:
    assert rules.ae_title_problem("Horos lecture", strict=False) is None
    assert rules.ae_title_problem(" CT1 ", strict=False) is None
    assert "forbids ('\\t')" in str(rules.ae_title_problem("CT\t1", strict=False))
    assert rules.ae_title_problem("Horos lecture", strict=True)


def test_duplicate_port_on_one_host(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    edit(inv / "group_vars/pacs_archive/archive.yml", pacs_dicom_tls_port=22)
    [problem] = inventory.check(inv)
    assert problem.rule == "duplicate-port"
    assert problem.key == "pacs_dicom_tls_port"
    assert problem.file == f"{inv}/group_vars/pacs_archive/archive.yml"
    assert problem.message == (
        f"port 22 is also base_ssh_port (the default of role base) on {ARCHIVE}"
    )
    assert problem.fix == "give each service of a host its own port"


def test_duplicate_published_lab_port(tmp_path: Path) -> None:
    inv = tmp_path / "lab"
    shutil.copytree(ROOT / "inventories/lab", inv)
    (inv / "hosts.yml").write_text(
        "---\nall:\n  children:\n    pacs_servers:\n      hosts:\n        pacs1:\n        pacs2:\n"
    )
    # Two archive hosts and no relay: no site link either.
    (inv / "group_vars/all/site_links.yml").unlink(missing_ok=True)
    for host in ("pacs1", "pacs2"):
        edit(inv / f"host_vars/{host}.yml", lab_ports=[{"host": 4242, "container": 4242}])
    [problem] = inventory.check(inv)
    assert problem.rule == "duplicate-port"
    assert problem.file == f"{inv}/host_vars/pacs2.yml"
    assert problem.key == "lab_ports[0].host"
    assert problem.message == "127.0.0.1:4242/tcp is already published for pacs1"


def mounts(**sizes: float) -> dict[str, Any]:
    return {
        "ansible_mounts": [
            {"mount": "/" + name.replace("_", "/").strip("/"), "size_total": int(tb * 1e12)}
            for name, tb in sizes.items()
        ]
    }


def test_storage_must_fit_the_archive_filesystem(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    sized = yaml.safe_load((inv / "group_vars/all/sizing.yml").read_text())
    need = sized["pacs_sizing_archive_storage_tb"]
    # /srv is the longest mount holding /srv/pacs: it decides, not /.
    facts = {ARCHIVE: mounts(_=1000, srv=need * 0.5)}
    [problem] = inventory.check(inv, facts=facts)
    assert problem.rule == "storage"
    assert problem.file == f"{inv}/group_vars/all/sizing.yml"
    assert problem.key == "pacs_sizing_archive_storage_tb"
    assert problem.message == (
        f"{ARCHIVE}: the sizing needs {need:.2f} TB for the archive, but the filesystem "
        f"holding /srv/pacs (mounted at /srv) has {need * 0.5:.2f} TB"
    )
    assert "pacsctl size --years" in problem.fix
    assert inventory.check(inv, facts={ARCHIVE: mounts(_=1, srv=need * 1.01)}) == []


def test_storage_needs_a_filesystem_and_facts(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    [problem] = inventory.check(inv, facts={ARCHIVE: mounts(var_cache=100)})
    assert problem.key == "pacs_archive_storage_path"
    assert problem.message == f"no mounted filesystem of {ARCHIVE} holds /srv/pacs"
    report = inventory.check_report(inv)
    assert report.ok
    assert report.notices == [
        f"storage rule skipped for {ARCHIVE}: no facts of its filesystems "
        "(pass --facts DIR, or let the preflight role check it)"
    ]


def test_missing_empty_and_placeholder_secrets(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    vault = inv / "group_vars/all/vault.yml"
    edit(vault, pacs_backup_password=None, pacs_archive_admin_password="")
    problems = only(inventory.check(inv), "missing-secret")
    assert [(p.file, p.key, p.message) for p in problems] == [
        (str(vault), "pacs_archive_admin_password", "secret is empty"),
        (
            str(vault),
            "pacs_backup_password",
            "missing secret, needed by the hosts of group pacs_backup (pacs-backup.ch-exemple.fr)",
        ),
    ]
    assert "ansible-vault encrypt_string --stdin-name pacs_backup_password" in problems[1].fix
    # Outside an example, CHANGEME is not a secret.
    edit(
        vault, **dict.fromkeys(["pacs_backup_password", "pacs_archive_admin_password"], PLACEHOLDER)
    )
    edit(inv / "group_vars/all/pacs.yml", pacs_inventory_is_example=None)
    messages = {p.key: p.message for p in inventory.check(inv)}
    placeholder = messages["pacs_backup_password"]
    assert placeholder == (
        "secret is still the placeholder CHANGEME (set pacs_inventory_is_example: true only in "
        "an example inventory)"
    )


def test_vaulted_secrets_count_as_present_without_decrypting(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(CH200)
    edit(inv / "group_vars/all/pacs.yml", pacs_inventory_is_example=None)
    vault = inv / "group_vars/all/vault.yml"
    vault.write_text(
        "---\npacs_archive_admin_password: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6132\n"
    )
    # The other secret sits in a file encrypted as a whole: its keys cannot be read.
    (inv / "group_vars/all/vault-more.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n6132\n")
    assert inventory.check(inv) == []


def test_changeme_outside_secrets(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    edit(inv / "group_vars/all/pacs.yml", pacs_site_name="CHANGEME")
    [problem] = inventory.check(inv)
    assert problem.rule == "placeholder"
    assert problem.message == "CHANGEME is left in a variable that is not a secret"


def test_invalid_yaml_names_the_file_and_line(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    (inv / "group_vars/all/extra.yml").write_text("---\npacs_site_name: [oops\n")
    [problem] = inventory.check(inv)
    assert problem.file == f"{inv}/group_vars/all/extra.yml"
    assert problem.message.startswith("not valid YAML at line 3")


# ----------------------------------------------------------------------------- all together


def break_everything(inv: Path) -> None:
    edit(inv / "group_vars/all/base.yml", base_timezon="Europe/Paris", base_ssh_port="ssh")
    archive = inv / "group_vars/pacs_archive/archive.yml"
    nodes = yaml.safe_load(archive.read_text())["pacs_dicom_nodes"]
    nodes.append(
        {"name": "x", "kind": "modality", "aet": "CT_URG", "host": "10.9.9.9", "port": 104}
    )
    edit(
        archive,
        pacs_dicom_nodes=nodes,
        pacs_dicom_aet="PACS\\TOO_LONG_FOR_DICOM",
        pacs_dicom_tls_port=4242,
    )
    edit(inv / "group_vars/all/vault.yml", pacs_backup_password=None)


def test_every_rule_is_reported_at_once(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(CH200)
    break_everything(inv)
    problems = inventory.check(inv, facts={ARCHIVE: mounts(_=0.001)})
    assert {p.rule for p in problems} == {
        "unknown-variable",
        "wrong-type",
        "ae-title",
        "duplicate-ae-title",
        "duplicate-port",
        "storage",
        "missing-secret",
    }
    assert problems == sorted(problems, key=problem.problem_order)


def test_cli_prints_every_problem_and_exits_1(
    copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inv = copy_of(CH200)
    break_everything(inv)
    cache = tmp_path / "facts"
    cache.mkdir()
    payload = json.dumps(mounts(_=0.001))
    (cache / f"s1_{ARCHIVE}").write_text(json.dumps({"__payload__": payload}))
    assert main(["inventory", "check", str(inv), "--facts", str(cache)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{inv}: 7 problem(s) to fix"
    assert all(line.startswith(f"{inv}/") and " — fix: " in line for line in out[:-1])
    assert main(["inventory", "check", str(inv), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert {p["rule"] for p in data["problems"]} >= {"unknown-variable", "missing-secret"}


def test_cli_ok_line_and_bad_usage() -> None:
    ok = subprocess.run(
        [PACSCTL, "inventory", "check", str(ROOT / "inventories/lab")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0
    assert ok.stdout.strip().endswith("OK, 3 host(s) checked")
    missing = subprocess.run(
        [PACSCTL, "inventory", "check", "inventories/nowhere"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "pacsctl: error: inventory 'inventories/nowhere' does not exist: pass a folder under "
        "inventories/"
    ]


def test_a_secret_field_inside_a_list_may_be_a_placeholder_only_in_an_example(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(CH200)
    vault = inv / "group_vars/all/vault.yml"
    users = [{"name": "radiologue", "password": PLACEHOLDER, "rights": ["view"]}]
    edit(vault, pacs_services_users=users)
    assert only(inventory.check(inv), "placeholder") == []
    edit(vault, pacs_services_users=[{**users[0], "name": PLACEHOLDER}])
    [problem] = only(inventory.check(inv), "placeholder")
    assert problem.key == "pacs_services_users[0].name"
    edit(vault, pacs_services_users=users)
    edit(inv / "group_vars/all/pacs.yml", pacs_inventory_is_example=None)
    [problem] = only(inventory.check(inv), "placeholder")
    assert problem.key == "pacs_services_users[0].password"


# ----------------------------------------------------------------------------- site links

TERRITORY = "example-territory"
MAIN = "pacs.ght-exemple.fr"
RELAY = "pacs-relay.bourg.ght-exemple.fr"


def links_file(inv: Path) -> Path:
    return inv / "group_vars/all/site_links.yml"


def set_links(inv: Path, *links: dict[str, Any], **more: Any) -> None:
    edit(links_file(inv), site_links=list(links), **more)


def bourg(**changes: Any) -> dict[str, Any]:
    base = {"name": "bourg", "main": MAIN, "peripheral": RELAY, "tunnel": "10.200.1.0/30"}
    return {**base, **changes}


def not_an_example(inv: Path) -> None:
    edit(inv / "group_vars/all/pacs.yml", pacs_inventory_is_example=None)


def test_missing_site_link_keys_are_refused_outside_an_example(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(TERRITORY)
    report = inventory.check_report(inv)
    assert only(report.problems, "site-link") == []
    assert report.notices[-1] == (
        f"site link bourg: no keys in {inv}/site-link/bourg (main.key, peripheral.key, "
        f"preshared.key); an example inventory may lack them, your copy needs "
        f"`pacsctl site-link keys {inv}`"
    )
    not_an_example(inv)
    [problem] = only(inventory.check(inv), "site-link")
    assert problem == Problem(
        str(links_file(inv)),
        "site_links[0].name",
        f"the keys of link 'bourg' are missing in {inv}/site-link/bourg: main.key, "
        "peripheral.key, preshared.key",
        f"make them: `pacsctl site-link keys {inv}` (roles/site_link/README.md, 'Keys')",
        "site-link",
    )
    assert main(["site-link", "keys", str(inv)]) == 0
    assert only(inventory.check(inv), "site-link") == []
    # A folder of its own, named where it is set; a template only Ansible resolves is skipped.
    keys = inv / "group_vars/all/keys.yml"
    edit(keys, site_link_keys_dir="{{ inventory_dir }}/elsewhere")
    [problem] = only(inventory.check(inv), "site-link")
    assert (problem.file, problem.key) == (str(keys), "site_link_keys_dir")
    assert f"missing in {inv}/elsewhere/bourg" in problem.message
    edit(keys, site_link_keys_dir="keys")
    [problem] = only(inventory.check(inv), "site-link")
    assert problem.message == "keys is not an absolute path"
    edit(keys, site_link_keys_dir="{{ lookup('env', 'KEYS') }}")
    report = inventory.check_report(inv)
    assert only(report.problems, "site-link") == []
    assert any("site link keys not checked" in n for n in report.notices)


def test_site_link_ends_must_be_an_archive_and_a_relay_of_the_inventory(
    copy_of: Callable[[str], Path],
) -> None:
    inv = copy_of(TERRITORY)
    set_links(inv, bourg(main="pacs.ght-exemple.com", peripheral="pacs-db.ght-exemple.fr"))
    problems = only(inventory.check(inv), "site-link")
    assert [(p.file, p.key, p.message) for p in problems] == [
        (
            str(links_file(inv)),
            "site_links[0].main",
            "host 'pacs.ght-exemple.com' is not in the inventory: did you mean "
            "pacs.ght-exemple.fr?",
        ),
        (
            str(links_file(inv)),
            "site_links[0].peripheral",
            "pacs-db.ght-exemple.fr, the peripheral end of link 'bourg', is not in group "
            "pacs_relay: the peripheral end is the peripheral site's relay",
        ),
    ]
    assert "add pacs-db.ght-exemple.fr to group pacs_relay in hosts.yml" in problems[1].fix
    set_links(inv, bourg(main="pacs-db.ght-exemple.fr"))
    [problem] = only(inventory.check(inv), "site-link")
    assert problem.key == "site_links[0].main"
    assert "is not in group pacs_archive: the main end is the main site's archive host" in (
        problem.message
    )


def test_site_links_names_tunnels_and_ports(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(TERRITORY)
    set_links(
        inv,
        bourg(),
        bourg(name="Dole"),
        bourg(name="bourg", tunnel="10.200.2.0/30", port=51821),
        bourg(name="vienne", tunnel="10.200.1.0/29", port=51822),
        bourg(name="gex", tunnel="fd00:200::/64", port=51823),
        bourg(name="nantua", tunnel="10.200.9.0/31", port=51824),
    )
    found = {(p.key, p.message) for p in only(inventory.check(inv), "site-link")}
    assert found == {
        (
            "site_links[1].name",
            "link name 'Dole' is not 1 to 12 of a-z, 0-9 and '-', starting with a letter",
        ),
        (
            "site_links[1].tunnel",
            "tunnel 10.200.1.0/30 overlaps 10.200.1.0/30, the tunnel of site_links[0]",
        ),
        ("site_links[1].port", f"UDP port 51820 on {MAIN} is also the port of site_links[0]"),
        ("site_links[2].name", "link name 'bourg' is also site_links[0]"),
        (
            "site_links[3].tunnel",
            "tunnel 10.200.1.0/29 overlaps 10.200.1.0/30, the tunnel of site_links[0]",
        ),
        (
            "site_links[3].tunnel",
            "tunnel 10.200.1.0/29 overlaps 10.200.1.0/30, the tunnel of site_links[1]",
        ),
        (
            "site_links[4].tunnel",
            "tunnel 'fd00:200::/64' is not an IPv4 network (the links carry IPv4)",
        ),
        (
            "site_links[5].tunnel",
            "tunnel '10.200.9.0/31' has prefix /31: it needs two host addresses (a prefix of /30 "
            "or shorter)",
        ),
    }


def test_a_tunnel_must_not_overlap_the_sites_networks(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(TERRITORY)
    set_links(
        inv, bourg(tunnel="10.99.0.0/30"), bourg(name="dole", tunnel="10.10.250.4/30", port=51821)
    )
    problems = only(inventory.check(inv), "site-link")
    assert [(p.key, p.message) for p in problems] == [
        (
            "site_links[0].tunnel",
            "tunnel 10.99.0.0/30 overlaps 10.99.0.0/24, pacs_reading_networks[2] "
            f"({inv}/group_vars/all/pacs.yml)",
        ),
        (
            "site_links[1].tunnel",
            "tunnel 10.10.250.4/30 overlaps 10.10.250.0/24, base_admin_networks[0] "
            f"({inv}/group_vars/all/base.yml)",
        ),
    ]


def test_a_relay_without_a_link_is_allowed(copy_of: Callable[[str], Path]) -> None:
    """A relay on the main site's LAN needs no WireGuard link."""
    inv = copy_of(TERRITORY)
    hosts = inv / "hosts.yml"
    data = yaml.safe_load(hosts.read_text())
    relays = data["all"]["children"]["pacs_servers"]["children"]["pacs_relay"]["hosts"]
    relays["pacs-relay-lan.ght-exemple.fr"] = None
    hosts.write_text(yaml.safe_dump(data))
    assert only(inventory.check(inv), "site-link") == []


def test_a_relay_must_know_its_main_archive(copy_of: Callable[[str], Path]) -> None:
    inv = copy_of(TERRITORY)
    edit(links_file(inv), relay_main_archive="pacs-db.ght-exemple.fr")
    [problem] = only(inventory.check(inv), "relay-main-archive")
    assert problem == Problem(
        str(links_file(inv)),
        "relay_main_archive",
        f"relay_main_archive 'pacs-db.ght-exemple.fr' is not a host of group pacs_archive ({MAIN}) "
        f"(for {RELAY})",
        "set relay_main_archive to the inventory name of the relay's main archive, a host of "
        "group pacs_archive in hosts.yml",
        "relay-main-archive",
    )
    # Unset: the only archive host is the main archive.
    edit(links_file(inv), relay_main_archive=None)
    assert only(inventory.check(inv), "relay-main-archive") == []
    hosts = inv / "hosts.yml"
    data = yaml.safe_load(hosts.read_text())
    archives = data["all"]["children"]["pacs_servers"]["children"]["pacs_archive"]["hosts"]
    archives["pacs2.ght-exemple.fr"] = None
    hosts.write_text(yaml.safe_dump(data))
    [problem] = only(inventory.check(inv), "relay-main-archive")
    assert problem.file == f"{inv}/group_vars/pacs_relay/relay.yml"
    assert problem.message == (
        "relay_main_archive is not set and group pacs_archive has several hosts "
        f"(pacs.ght-exemple.fr, pacs2.ght-exemple.fr): which one the relay forwards to is not "
        f"declared (for {RELAY})"
    )
    assert problem.fix == f"set relay_main_archive to one of {MAIN}, pacs2.ght-exemple.fr"
    data["all"]["children"]["pacs_servers"]["children"]["pacs_archive"]["hosts"] = {}
    hosts.write_text(yaml.safe_dump(data))
    messages = [p.message for p in only(inventory.check(inv), "relay-main-archive")]
    assert messages == [
        f"the relay has no main archive: group pacs_archive has no host (for {RELAY})"
    ]
