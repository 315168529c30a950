"""An upgrade from the previous release loses nothing.

prepare.yml deployed the previous release (previous-release) with its own site.yml and
sent a study; converge.yml ran this checkout's playbooks/upgrade.yml. Here: every instance
the archive served before is served byte-identical, the services run, the upgrade's backups
are in the repositories, each server notes this release, and site.yml in check mode changes
nothing.
"""

from __future__ import annotations

import json
import os
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
from pacs_testlib import host_spec, lab_host, orthanc_credentials, run_check_mode

ARCHIVE, REPO = "pacs-mol-upgrade-archive", "pacs-mol-upgrade-repo"
SCENARIO = Path(__file__).resolve().parents[1]
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."))

testinfra_hosts = [host_spec(ARCHIVE)]


def served() -> dict[str, str]:
    archive = lab_host(ARCHIVE)
    user, password = orthanc_credentials(archive)
    script = (SCENARIO / "instances-md5.py").read_text()
    out = archive.check_output(
        f"python3 -c {shlex.quote(script)} {shlex.quote(user)} {shlex.quote(password)}"
    )
    return dict(json.loads(out))


def test_every_instance_is_served_byte_identical_after_the_upgrade() -> None:
    before = json.loads((EPHEMERAL / "served-before.json").read_text())
    assert len(before) >= 30 + 8, "the study sent by prepare.yml (30 CT, 8 MR and a CR)"
    after = served()
    assert sorted(after) == sorted(before), "instances missing or added"
    differ = [uid for uid in before if after[uid] != before[uid]]
    assert differ == [], f"{len(differ)} instances are not byte-identical"


@pytest.mark.parametrize(
    ("host", "units"),
    [
        (ARCHIVE, ["orthanc.service", "postgresql@17-main.service", "ssh.service"]),
        (REPO, ["ssh.service"]),
    ],
)
def test_the_services_run(host: str, units: list[str]) -> None:
    target = lab_host(host)
    for unit in units:
        assert target.service(unit).is_running, f"{unit} on {host}"
    failed = target.run(
        "systemctl list-units --state=failed --plain --no-legend"
        " 'pacs-*' 'orthanc*' 'postgresql*' 'stunnel@*' 'prometheus*'"
    ).stdout
    assert failed.strip() == "", f"failed units on {host}: {failed}"


def test_each_server_notes_this_release() -> None:
    for host in (ARCHIVE, REPO):
        assert lab_host(host).file("/etc/pacs-libre/release").content_string.strip() == version(
            "pacs-libre"
        )


def test_the_upgrade_took_its_backups() -> None:
    info = json.loads(
        lab_host(REPO).check_output(
            "runuser -u pgbackrest -- pgbackrest --stanza=pacs --output=json info"
        )
    )
    assert info[0]["status"]["code"] == 0
    assert len(info[0]["backup"]) >= 1
    snapshots = json.loads(
        lab_host(ARCHIVE).check_output("pacs-restic snapshots --json --tag pacs-files")
    )
    assert len(snapshots) >= 1
    assert any(t.startswith("restore-point:") for t in snapshots[-1]["tags"])


def test_a_rerun_of_site_yml_changes_nothing() -> None:
    recap, changed = run_check_mode(str(SCENARIO.parents[1] / "playbooks/site.yml"))
    assert set(recap) == {ARCHIVE, REPO}
    assert all(count == 0 for count in recap.values()), changed
