"""A Debian 12 hospital taken to Debian 13 by playbooks/dist-upgrade.yml loses nothing.

prepare.yml deployed it on Debian 12 with this checkout's site.yml and sent a study;
converge.yml ran playbooks/dist-upgrade.yml. Here: both servers run Debian 13, the index
is in PostgreSQL 17 with the PostgreSQL 15 cluster kept, stopped, as the rollback point,
every instance the archive served before is served byte-identical by Orthanc 1.12, the
pgBackRest stanza follows the new cluster and backs it up, and site.yml in check mode
changes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from pacs_testlib import host_spec, lab_host, orthanc_credentials, run_check_mode

ARCHIVE, REPO = "pacs-mol-dist-archive", "pacs-mol-dist-repo"
SCENARIO = Path(__file__).resolve().parents[1]
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."))
NOTES = "/var/lib/pacs-libre/upgrade"

testinfra_hosts = [host_spec(ARCHIVE)]


@pytest.mark.parametrize("host", [ARCHIVE, REPO])
def test_the_server_runs_debian_13_and_kept_its_debian_12_sources(host: str) -> None:
    target = lab_host(host)
    assert target.file("/etc/debian_version").content_string.startswith("13."), host
    assert target.file(f"{NOTES}/debian13-done").exists
    kept = target.check_output(f"tar -xzOf {NOTES}/apt-sources-debian12.tar.gz")
    assert "bookworm" in kept and "trixie" not in kept, kept
    sources = target.check_output(
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"
        " 2>/dev/null || true"
    )
    assert "trixie" in sources and "bookworm" not in sources, sources


def test_the_index_is_in_postgresql_17_and_the_15_cluster_is_kept_stopped() -> None:
    archive = lab_host(ARCHIVE)
    clusters = {
        (line.split()[0], line.split()[1]): line.split()
        for line in archive.check_output("pg_lsclusters --no-header").splitlines()
    }
    new, old = clusters[("17", "main")], clusters[("15", "main")]
    assert new[2] == "5432" and new[3] == "online", new
    assert new[5] == "/srv/pacs/postgresql/17/main", new
    assert old[3] == "down", old
    # pg_upgradecluster gave the old cluster another port (docs/upgrade.md, "Rolling back").
    assert old[2] != "5432", old
    assert archive.file("/etc/postgresql/15/main/start.conf").content_string.strip() == "manual"
    assert archive.file("/srv/pacs/postgresql/15/main/PG_VERSION").content_string.strip() == "15"
    assert not archive.service("postgresql@15-main.service").is_enabled
    assert archive.service("postgresql@17-main.service").is_enabled
    # Orthanc's index, with the study's instances, is in the new cluster.
    instances = archive.check_output(
        "runuser -u postgres -- psql -p 5432 -AtX -d orthanc"
        " -c 'SELECT count(*) FROM resources WHERE resourcetype = 3'"
    )
    assert int(instances) >= 39


def served() -> dict[str, str]:
    archive = lab_host(ARCHIVE)
    user, password = orthanc_credentials(archive)
    script = (SCENARIO.parent / "upgrade" / "instances-md5.py").read_text()
    out = archive.check_output(
        f"python3 -c {shlex.quote(script)} {shlex.quote(user)} {shlex.quote(password)}"
    )
    return dict(json.loads(out))


def test_every_instance_is_served_byte_identical_by_orthanc_1_12() -> None:
    archive = lab_host(ARCHIVE)
    user, password = orthanc_credentials(archive)
    # The running Orthanc's own answer, not its package's version (Debian 13 has no curl
    # by default: Python's urllib, as instances-md5.py).
    ask = (
        "import base64, json, sys, urllib.request; "
        "auth = base64.b64encode(sys.argv[1].encode()).decode(); "
        "request = urllib.request.Request('http://127.0.0.1:8042/system',"
        " headers={'Authorization': 'Basic ' + auth}); "
        "print(urllib.request.urlopen(request, timeout=60).read().decode())"
    )
    system = json.loads(
        archive.check_output(f"python3 -c {shlex.quote(ask)} {shlex.quote(user + ':' + password)}")
    )
    assert system["Version"].startswith("1.12."), system
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


def test_the_stanza_follows_postgresql_17_and_backs_it_up() -> None:
    repo = lab_host(REPO)
    info_command = "runuser -u pgbackrest -- pgbackrest --stanza=pacs --output=json info"
    before = json.loads(repo.check_output(info_command))[0]
    versions = [db["version"] for db in before["db"]]
    assert versions[0] == "15" and versions[-1] == "17", before["db"]
    # The upgrade's own backup, of PostgreSQL 15, stays: it restores the rollback point.
    assert any(b["database"]["id"] == before["db"][0]["id"] for b in before["backup"])
    # A backup of the new cluster: pgBackRest makes the first one after the
    # stanza upgrade a full one.
    repo.check_output("systemctl start pacs-backup-pg-diff.service")
    after = json.loads(repo.check_output(info_command))[0]
    assert after["status"]["code"] == 0, after["status"]
    newest = after["backup"][-1]
    assert newest["database"]["id"] == after["db"][-1]["id"], newest
    assert newest["type"] == "full" and not newest.get("error", False), newest


def test_a_rerun_of_site_yml_changes_nothing() -> None:
    recap, changed = run_check_mode(str(SCENARIO.parents[1] / "playbooks/site.yml"))
    assert set(recap) == {ARCHIVE, REPO}
    assert all(count == 0 for count in recap.values()), changed
