"""playbooks/upgrade.yml: its plays, their order and their refusals.

The upgrade itself runs on real hosts in molecule/upgrade; here, the playbook's shape is read
from its YAML, and its first play (on the controller, before any host is reached) is run by
the real ansible-playbook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
UPGRADE = ROOT / "playbooks/upgrade.yml"


def plays() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(UPGRADE.read_text())
    assert isinstance(loaded, list)
    return loaded


def tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    """The play's tasks, with the tasks of its blocks."""
    found: list[dict[str, Any]] = []
    for task in play.get("tasks", []):
        found.append(task)
        found += task.get("block", [])
    return found


def number(play: dict[str, Any]) -> tuple[int, int]:
    match = re.match(r"^\((\d)/(\d)\) ", play["name"])
    assert match, f"play {play['name']!r} is not numbered"
    return int(match[1]), int(match[2])


def test_the_plays_are_numbered_in_order_and_fail_together() -> None:
    numbers = [number(p) for p in plays()]
    assert [n for n, _ in numbers] == [1, 2, 3, 4, 4, 5, 6]
    assert {total for _, total in numbers} == {6}
    for play in plays():
        if "ansible.builtin.import_playbook" not in play:
            assert play.get("any_errors_fatal") is True, f"{play['name']}: any_errors_fatal"
    # site.yml's own plays stop only the failing server: the verify play starts by refusing
    # a run in which any server dropped out.
    first = tasks(plays()[5])[0]
    assert first["name"] == "Refuse a run where the configuration failed on a server"
    assert "ansible_play_hosts_all | difference(ansible_play_hosts)" in str(first)


def test_the_order_is_request_health_backup_upgrade_configuration_verify_report() -> None:
    names = [p["name"] for p in plays()]
    expected = [
        "Check the request",
        "Check the inventory and every server's health, before anything changes",
        "Back up first",
        "Upgrade one server at a time",
        "Apply the configuration of this release (site.yml)",
        "Verify",
        "Report",
    ]
    for name, start in zip(names, expected, strict=True):
        assert start in name, f"{name!r} should be the play that does {start!r}"


def test_the_first_plays_check_the_inventory_before_any_change() -> None:
    request, health = plays()[0], plays()[1]
    assert request["hosts"] == "localhost"
    assert health["hosts"] == "all"
    assert health["pre_tasks"][0]["name"] == "Refuse a run whose request was not checked"
    assert [r["role"] for r in health["roles"]] == ["preflight"]
    assert health["roles"][0]["tags"] == ["always"]
    assert any(
        "upgrade-health.yml" in str(t.get("ansible.builtin.include_tasks")) for t in tasks(health)
    )


def test_servers_are_upgraded_one_at_a_time_then_site_yml_configures_them() -> None:
    upgrade, configuration = plays()[3], plays()[4]
    assert upgrade["hosts"] == "pacs_servers"
    assert upgrade["serial"] == 1
    assert upgrade["max_fail_percentage"] == 0
    names = [t["name"] for t in tasks(upgrade)]
    assert names[0].startswith("Drain the archive")
    assert any("ansible.builtin.apt" in t for t in tasks(upgrade))
    assert [h["name"] for h in upgrade["handlers"]] == ["Restart the services on the new packages"]
    assert "upgrade-health.yml" in str(tasks(upgrade)[-1].get("ansible.builtin.include_tasks"))
    assert configuration["ansible.builtin.import_playbook"] == "site.yml"
    assert (ROOT / "playbooks/site.yml").exists()


def test_the_backup_play_runs_the_backup_roles_own_jobs_and_verifies_them() -> None:
    backup = plays()[2]
    commands = [
        t["ansible.builtin.command"]["argv"]
        for t in tasks(backup)
        if "ansible.builtin.command" in t
    ]
    started = [argv[-1] for argv in commands if argv[:2] == ["systemctl", "start"]]
    assert started == [
        "pacs-backup-pg-diff.service",
        "pacs-backup-pg-check.service",
        "pacs-backup-dicom-files.service",
    ]
    # Those units are the roles' own jobs (roles/backup_health names them pacs-backup-NAME).
    jobs = {
        job["name"]
        for role in ("pgbackrest", "dicom_backup")
        for job in yaml.safe_load((ROOT / f"roles/{role}/vars/main.yml").read_text())[
            f"__{role}_jobs"
        ]
    }
    for unit in started:
        assert unit.removeprefix("pacs-backup-").removesuffix(".service") in jobs
    refusals = [t["name"] for t in tasks(backup) if "ansible.builtin.assert" in t]
    assert refusals == [
        "Refuse to go on without a new, complete backup of the index",
        "Refuse to go on without a new snapshot of the images in a sound repository",
    ]


def test_the_verify_play_compares_the_archive_and_asks_by_qido_and_c_find() -> None:
    verify = plays()[5]
    text = yaml.safe_dump(verify)
    assert "upgrade-census.py compare" in text
    assert "census-before.json" in yaml.safe_dump(plays()[1])
    assert "dicom" in text and "find" in text
    census = (ROOT / "playbooks/files/upgrade-census.py").read_text()
    assert "/dicom-web/studies" in census


def test_each_server_restarts_only_the_services_it_has() -> None:
    """A database server has no nginx.service: systemctl's 5 (no such unit) is not a failure."""
    (handler,) = plays()[3]["handlers"]
    assert handler["ansible.builtin.command"]["argv"][:2] == ["systemctl", "try-restart"]
    assert handler["failed_when"] == f"{handler['register']}.rc not in [0, 5]"
    assert handler["changed_when"] == f"{handler['register']}.rc == 0"


DIST_UPGRADE = ROOT / "playbooks/dist-upgrade.yml"


def test_dist_upgrade_is_upgrade_yml_asking_for_debian_13() -> None:
    (play,) = yaml.safe_load(DIST_UPGRADE.read_text())
    assert play["ansible.builtin.import_playbook"] == "upgrade.yml"
    assert play["vars"] == {"upgrade_debian_major": "13"}


def test_the_release_upgrade_is_checked_first_and_replaces_the_package_upgrade() -> None:
    health, upgrade = plays()[1], plays()[3]
    (check,) = [t for t in tasks(health) if "dist-upgrade-check.yml" in str(t)]
    assert "hostvars['localhost'].upgrade_to_debian13 | bool" in check["when"]
    (release,) = [t for t in tasks(upgrade) if "dist-upgrade-host.yml" in str(t)]
    (packages,) = [t for t in tasks(upgrade) if "ansible.builtin.apt" in t]
    assert release["when"] == "__upgrade_dist_here | bool"
    assert packages["when"] == "not __upgrade_dist_here | bool"
    names = [t["name"] for t in tasks(upgrade)]
    assert names.index(release["name"]) == 1, "the release upgrade comes right after the drain"
    # The server's own answer from play 2, and the request from play 1.
    assert "upgrade_dist_pending" in upgrade["vars"]["__upgrade_dist_here"]
    assert "upgrade_to_debian13" in upgrade["vars"]["__upgrade_dist_here"]
    for name in ("dist-upgrade-check", "dist-upgrade-host", "dist-upgrade-postgresql"):
        assert (ROOT / f"playbooks/tasks/{name}.yml").exists()


def run_request(
    tmp_path: Path, inventory: str, *args: str, playbook: Path = UPGRADE
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "hosts.yml").write_text(inventory)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STRATEGY="linear")
    venv_bin = Path(sys.executable).parent
    return subprocess.run(
        [
            str(venv_bin / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(playbook),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# A server that is never reached: the first play runs on the controller only.
NO_BACKUP_HOST = """\
all:
  children:
    pacs_servers:
      children:
        pacs_archive:
          hosts:
            pacs-upgrade-test:
              ansible_host: 192.0.2.1
"""


def test_without_a_backup_host_the_upgrade_refuses_before_any_host(tmp_path: Path) -> None:
    proc = run_request(tmp_path, NO_BACKUP_HOST)
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    assert "The inventory has no backup host (group pacs_backup)" in out
    assert "-e upgrade_without_backup=true" in out
    assert "Nothing was changed" in out
    assert "(2/6)" not in out, "a host was reached after the refusal"


def test_check_mode_and_limit_are_refused(tmp_path: Path) -> None:
    proc = run_request(tmp_path, NO_BACKUP_HOST, "--check", "-e", "upgrade_without_backup=true")
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    assert "The upgrade cannot run in check mode" in out
    assert "(2/6)" not in out
    proc = run_request(tmp_path, NO_BACKUP_HOST, "--limit", "pacs-upgrade-test")
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    assert "play 1/6 did not run: --limit pacs-upgrade-test leaves it out" in out
    assert "Read the servers' facts" not in out, "a host was reached after the refusal"


@pytest.mark.parametrize("flag", ["upgrade_without_backup=true"])
def test_the_flag_lets_it_go_on_and_says_that_no_backup_is_taken(tmp_path: Path, flag: str) -> None:
    proc = run_request(
        tmp_path,
        NO_BACKUP_HOST.replace("192.0.2.1", "127.0.0.1\n              ansible_port: 1"),
        "-e",
        flag,
    )
    out = " ".join(proc.stdout.split())
    assert "THIS UPGRADE TAKES NO BACKUP" in out
    assert "(2/6)" in out
    # The only host cannot be reached (port 1): the run stops there, having changed nothing.
    assert proc.returncode != 0
    assert "changed=0" in out


@pytest.mark.parametrize("value", ["10m", "5", "-600", "six hundred"])
def test_a_drain_timeout_that_is_not_seconds_is_refused_before_any_host(
    tmp_path: Path, value: str
) -> None:
    proc = run_request(tmp_path, NO_BACKUP_HOST, "-e", f"upgrade_drain_timeout='{value}'")
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    assert f'upgrade_drain_timeout is "{value}": it must be a whole number of seconds' in out, out
    assert "Nothing was changed" in out
    assert "(2/6)" not in out, "a host was reached after the refusal"


def test_a_drain_timeout_from_the_inventory_is_checked_too(tmp_path: Path) -> None:
    inventory = NO_BACKUP_HOST + "  vars:\n    upgrade_drain_timeout: 10m\n"
    proc = run_request(tmp_path, inventory, "-e", "upgrade_without_backup=true")
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    assert 'upgrade_drain_timeout is "10m"' in out, out


def test_a_drain_timeout_in_seconds_goes_on(tmp_path: Path) -> None:
    proc = run_request(tmp_path, NO_BACKUP_HOST, "-e", "upgrade_drain_timeout=900")
    out = " ".join(proc.stdout.split())
    # Past the timeout's check, the request stops at the next one: no backup host.
    assert "upgrade_drain_timeout is" not in out, out
    assert "The inventory has no backup host (group pacs_backup)" in out, out


@pytest.mark.parametrize("value", ["14", "12", "trixie"])
def test_a_debian_release_other_than_13_is_refused_before_any_host(
    tmp_path: Path, value: str
) -> None:
    proc = run_request(tmp_path, NO_BACKUP_HOST, "-e", f"upgrade_debian_major={value}")
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0, out
    expected = f'upgrade_debian_major is "{value}": pacs-libre upgrades servers from Debian 12'
    assert expected in out, out
    assert "Nothing was changed" in out
    assert "(2/6)" not in out, "a host was reached after the refusal"


def test_dist_upgrade_says_that_it_takes_the_servers_to_debian_13(tmp_path: Path) -> None:
    proc = run_request(
        tmp_path,
        NO_BACKUP_HOST.replace("192.0.2.1", "127.0.0.1\n              ansible_port: 1"),
        "-e",
        "upgrade_without_backup=true",
        playbook=DIST_UPGRADE,
    )
    out = " ".join(proc.stdout.split())
    assert "and Debian 13 (those still on Debian 12), one server at a time" in out, out
    # Unreachable (port 1): it stops in play 2, before any change.
    assert proc.returncode != 0
    assert "changed=0" in out
