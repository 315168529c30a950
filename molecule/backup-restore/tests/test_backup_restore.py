"""Backups proven by a restore: the archive's images and index come back byte-identical.

The steps of the scenario, in order (one module, one archive):
1. site.yml deployed the archive and its backups; a first study is sent with
   dcmtk's storescu, as the modality.
2. The backups are taken: a full pgBackRest backup, then a file backup (restic,
   with its PostgreSQL restore point).
3. A second study is sent. It comes after the last full backup: only WAL and the
   next file backup cover it. That file backup is taken.
4. playbooks/restore-drill.yml restores onto the scratch host (group
   pacs_restore), with no flag, while the modality checks every few seconds that
   the archive answers (C-ECHO). Both studies are byte-identical there, the
   scratch archive declares no modality and no peer, its cluster does not archive,
   and neither the archive's services nor the repository's WAL timelines changed.
   Once it is over, the scratch host can no longer reach the repositories (SSH
   and restic from there time out or are refused), the backup host accepts
   neither of its keys and its firewall no longer names it; the backups' part
   of site.yml, run again, changes nothing and gives nothing back.
5. The archive's images and database are destroyed.
6. The drill restores onto the archive itself, to the restore point of the last
   file backup, with the wipe flag and the typed confirmation.
7. Both studies are complete, and every instance is byte-identical to what the
   archive served before the disaster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra
from pacs_testlib import (
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_config,
    orthanc_credentials,
    run_playbook,
)

from pacs_libre.dicom.synth import StudyManifest, make_study

ARCHIVE, REPO, SCRATCH = (
    "pacs-mol-backup-archive",
    "pacs-mol-backup-repo",
    "pacs-mol-backup-scratch",
)
AET, MODALITY = "MOLBACKUP", "MOLMODALITY"
ROOT = Path(os.environ.get("PACS_LIBRE_ROOT", Path(__file__).resolve().parents[3]))

testinfra_hosts = [host_spec(ARCHIVE)]

# Read every instance through Orthanc's REST API, on the archive host itself
# (its HTTP answers that host only): SOPInstanceUID -> MD5 of the file served.
INSTANCES_MD5 = r"""
import base64, hashlib, json, sys, urllib.request
user, password = sys.argv[1], sys.argv[2]
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
def get(path):
    req = urllib.request.Request(
        "http://127.0.0.1:8042" + path, headers={"Authorization": "Basic " + auth}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
out = {}
for item in json.loads(get("/instances?expand")):
    uid = item["MainDicomTags"]["SOPInstanceUID"]
    out[uid] = hashlib.md5(get("/instances/" + item["ID"] + "/file")).hexdigest()
print(json.dumps(out))
"""


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# What an archive declares it may send to, and whether its cluster archives WAL.
DECLARED = r"""
import base64, json, sys, urllib.request
user, password = sys.argv[1], sys.argv[2]
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
def get(path):
    req = urllib.request.Request(
        "http://127.0.0.1:8042" + path, headers={"Authorization": "Basic " + auth}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())
print(json.dumps({"modalities": get("/modalities"), "peers": get("/peers")}))
"""

# On the backup host: the stanza's WAL timelines (a promoted copy that archived
# would add a .history file), and the archive's services, by when they started.
HISTORY = "find /srv/backup/pgbackrest/archive/pacs -name '*.history' | sort"
STARTED = (
    "systemctl show -p ActiveEnterTimestampMonotonic --value"
    " orthanc.service 'postgresql@17-main.service'"
)


# What the scratch host keeps of its access to the backups once the drill is
# over: a real SSH login to each repository account with its own key, and a
# restic read of the archive's repository, each given 10 s to connect; the
# keys that the backup host still accepts, and its firewall's ruleset.
SCRATCH_ATTEMPTS = {
    "pgbackrest": (
        "runuser -u postgres -- ssh -o ConnectTimeout=10 -i /var/lib/postgresql/.ssh/id_ed25519"
        " pgbackrest@{repo} true </dev/null"
    ),
    "restic-ssh": (
        "ssh -F /etc/pacs-libre/backup/ssh_config -o ConnectTimeout=10"
        " pacs-backup-repo true </dev/null"
    ),
    "restic": (
        "set -a; . /etc/pacs-libre/backup/restic.env; set +a; timeout 120 restic --no-lock"
        " -o sftp.command='ssh -F /etc/pacs-libre/backup/ssh_config -o ConnectTimeout=10"
        " pacs-backup-repo -s sftp' snapshots"
    ),
}
REPO_KEYS = "cat /var/lib/pgbackrest/.ssh/authorized_keys /srv/backup/restic/.ssh/authorized_keys"
SCRATCH_KEYS = "cat /var/lib/postgresql/.ssh/id_ed25519.pub /etc/pacs-libre/backup/id_ed25519.pub"


class Stack:
    def __init__(self) -> None:
        self.archive = lab_host(ARCHIVE)
        self.repo = lab_host(REPO)
        self.scratch = lab_host(SCRATCH)
        self.address = address_of(self.archive)
        self.user, self.password = orthanc_credentials(self.archive)

    def send(self, study: StudyManifest) -> None:
        result = subprocess.run(
            [
                dcmtk("storescu"),
                *("-aet", MODALITY, "-aec", AET, "+sd", "+r", self.address, "4242"),
                *[str(d) for d in sorted(study.out_dir.iterdir()) if d.is_dir()],
            ],
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]

    def instances(self, host: testinfra.host.Host | None = None) -> dict[str, str]:
        """SOPInstanceUID -> MD5 of the file served, by the archive (or another host's Orthanc)."""
        target = host or self.archive
        user, password = orthanc_credentials(target)
        out = target.check_output(
            f"python3 -c {quote(INSTANCES_MD5)} {quote(user)} {quote(password)}"
        )
        return dict(json.loads(out))

    def declared(self, host: testinfra.host.Host) -> dict[str, list[str]]:
        """The DICOM modalities and Orthanc peers that ``host``'s Orthanc declares."""
        user, password = orthanc_credentials(host)
        out = host.check_output(f"python3 -c {quote(DECLARED)} {quote(user)} {quote(password)}")
        return dict(json.loads(out))

    def echo(self) -> bool:
        """One C-ECHO to the archive, as the modality."""
        result = subprocess.run(
            [dcmtk("echoscu"), "-to", "10", "-aet", MODALITY, "-aec", AET, self.address, "4242"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def pgbackrest_info(self) -> dict[str, Any]:
        """The stanza's pgBackRest info, read on the repository host."""
        out = self.repo.check_output(
            "runuser -u pgbackrest -- pgbackrest --stanza=pacs --output=json info"
        )
        return dict(json.loads(out)[0])

    def scratch_access(self) -> dict[str, Any]:
        """What the scratch host still reaches of the backups, and what the backup host grants."""
        repo = address_of(self.repo)
        attempts = {}
        for name, command in SCRATCH_ATTEMPTS.items():
            # ssh's own failure is 255, which testinfra takes for its own: say the status.
            result = self.scratch.run(f'({command.format(repo=repo)}) 2>&1; echo "exit status $?"')
            output, _, status = result.stdout.strip().rpartition("exit status ")
            attempts[name] = (int(status), output.strip()[-500:])
        blobs = [line.split()[1] for line in self.scratch.check_output(SCRATCH_KEYS).splitlines()]
        granted = self.repo.check_output(REPO_KEYS)
        return {
            "attempts": attempts,
            "scratch_keys": blobs,
            "keys_granted": [blob for blob in blobs if blob in granted],
            "ruleset": self.repo.check_output("nft list ruleset"),
            "scratch_address": address_of(self.scratch),
            "dropins": self.repo.check_output("ls /etc/nftables.d"),
        }

    def run_job(self, host: str, job: str) -> None:
        """Start a backup job as its timer would, and wait until it ends."""
        target = self.archive if host == ARCHIVE else self.repo
        result = target.run(f"systemctl start pacs-backup-{job}.service")
        assert result.rc == 0, (
            f"pacs-backup-{job} failed: {result.stderr}\n"
            + target.run(f"journalctl -u pacs-backup-{job}.service -n 60 --no-pager").stdout
        )


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyManifest, StudyManifest]:
    first = make_study(
        tmp_path_factory.mktemp("first"), ct_images=40, mr_images=10, cr=True, seed=1
    )
    second = make_study(
        tmp_path_factory.mktemp("second"),
        ct_images=30,
        mr_images=5,
        cr=False,
        patient="MARTIN^Zoé",
        seed=2,
    )
    return first, second


class EchoWhile:
    """C-ECHO the archive every few seconds in the background; count the answers."""

    def __init__(self, stack: Stack, every: float = 3.0) -> None:
        self.stack, self.every = stack, every
        self.answered = self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.stack.echo():
                self.answered += 1
            else:
                self.missed += 1
            self._stop.wait(self.every)

    def __enter__(self) -> EchoWhile:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def restored(studies: tuple[StudyManifest, StudyManifest]) -> Iterator[dict[str, object]]:
    """Run the whole story once; the tests below read what it left."""
    stack = Stack()
    first, second = studies
    # 1. A first study.
    stack.send(first)
    # 2. A full backup of PostgreSQL, then a file backup with its restore point.
    stack.run_job(REPO, "pg-full")
    stack.run_job(ARCHIVE, "dicom-files")
    # 3. A second study after the full backup, then the next file backup.
    stack.send(second)
    stack.run_job(ARCHIVE, "dicom-files")
    before = stack.instances()
    # 4. The drill onto the scratch host, as local IT runs it on a live hospital.
    live_started = stack.archive.check_output(STARTED)
    history = stack.repo.check_output(HISTORY)
    with EchoWhile(stack) as echoes:
        scratch_rc, scratch_output = run_playbook(str(ROOT / "playbooks" / "restore-drill.yml"))
    assert scratch_rc == 0, scratch_output[-6000:]
    scratch = {
        "instances": stack.instances(stack.scratch),
        "declared": stack.declared(stack.scratch),
        "config": orthanc_config(stack.scratch),
        "archive_mode": stack.scratch.check_output(
            "runuser -u postgres -- psql -XAtc 'SHOW archive_mode'"
        ).strip(),
        "echoes": (echoes.answered, echoes.missed),
        "live_unchanged": stack.archive.check_output(STARTED) == live_started,
        "live_instances": stack.instances(),
        "history_unchanged": stack.repo.check_output(HISTORY) == history,
        "output": scratch_output,
        "access_after": stack.scratch_access(),
    }
    # A rerun of the backups' part of site.yml changes nothing and gives nothing back.
    scratch["site_rc"], scratch["site_output"] = run_playbook(
        str(ROOT / "playbooks" / "site.yml"), "--tags", "backups"
    )
    scratch["access_after_site"] = stack.scratch_access()
    # 5. The disaster: the images and the database are gone.
    data = stack.archive.check_output(
        "runuser -u postgres -- psql -XAtc 'SHOW data_directory'"
    ).strip()
    stack.archive.check_output("systemctl stop orthanc postgresql.service 'postgresql@*'")
    stack.archive.check_output(f"rm -rf {data} /srv/pacs/orthanc/*")
    # 6. The drill onto the archive itself, with the flag and the confirmation.
    rc, output = run_playbook(
        str(ROOT / "playbooks" / "restore-drill.yml"),
        "-e",
        f"restore_drill_target={ARCHIVE}",
        "-e",
        "restore_drill_wipe=true",
        "-e",
        f"restore_drill_confirm={ARCHIVE}",
    )
    assert rc == 0, output[-6000:]
    after = stack.instances()
    yield {"before": before, "after": after, "output": output, "stack": stack, "scratch": scratch}


def test_both_studies_were_in_the_archive_before_the_disaster(
    restored: dict[str, object], studies: tuple[StudyManifest, StudyManifest]
) -> None:
    before = restored["before"]
    assert isinstance(before, dict)
    expected = {r.sop_instance_uid for s in studies for r in s.instances}
    assert set(before) == expected


def test_both_studies_come_back_byte_identical(restored: dict[str, object]) -> None:
    before, after = restored["before"], restored["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert len(after) == len(before)
    different = {uid for uid in before if after.get(uid) != before[uid]}
    assert not different, f"{len(different)} instances differ or are missing after the restore"


def test_the_scratch_drill_restored_both_studies_byte_identical(
    restored: dict[str, object],
) -> None:
    before, scratch = restored["before"], restored["scratch"]
    assert isinstance(before, dict) and isinstance(scratch, dict)
    on_scratch = scratch["instances"]
    assert len(on_scratch) == len(before)
    different = {uid for uid in before if on_scratch.get(uid) != before[uid]}
    assert not different, f"{len(different)} instances differ or are missing on the scratch host"
    output = " ".join(str(scratch["output"]).split())
    assert re.search(r"RTO achieved: \d+ s", output), output[-3000:]
    assert "0 mismatched, 0 unreadable" in output
    assert "were not touched" in output


def test_the_archive_kept_serving_and_was_not_touched_during_the_scratch_drill(
    restored: dict[str, object],
) -> None:
    scratch, before = restored["scratch"], restored["before"]
    assert isinstance(scratch, dict) and isinstance(before, dict)
    answered, missed = scratch["echoes"]
    assert answered >= 5 and missed == 0, (
        f"C-ECHO during the drill: {answered} answered, {missed} missed"
    )
    # Neither Orthanc nor PostgreSQL of the archive was restarted, and it still holds both studies.
    assert scratch["live_unchanged"]
    assert scratch["live_instances"] == before


def test_the_scratch_archive_is_isolated(restored: dict[str, object]) -> None:
    """No modality, no peer, no routing rule, and a cluster that never archives its WAL."""
    scratch = restored["scratch"]
    assert isinstance(scratch, dict)
    assert scratch["declared"] == {"modalities": [], "peers": []}
    config = scratch["config"]
    assert config["DicomModalities"] == {} and config["OrthancPeers"] == {}
    assert config["PacsLibre"]["Routing"]["Rules"] == []
    assert config["SaveJobs"] is False
    assert scratch["archive_mode"] == "off"
    # A promoted copy that archived would have added its timeline's .history file.
    assert scratch["history_unchanged"]


@pytest.mark.parametrize("when", ["access_after", "access_after_site"])
def test_the_scratch_host_cannot_read_the_backups_once_the_drill_is_over(
    restored: dict[str, object], when: str
) -> None:
    """The drill took the scratch host's keys back and closed SSH to it; site.yml gives none."""
    scratch = restored["scratch"]
    assert isinstance(scratch, dict)
    access = scratch[when]
    # The drill itself read both repositories from there: the access was given, then taken back.
    assert "restored onto the scratch host" in " ".join(str(scratch["output"]).split())
    for name, (rc, output) in access["attempts"].items():
        assert rc != 0, f"{name}: the scratch host still reaches the backup host: {output}"
        # The plain SSH logins say why they were refused. restic runs ssh as its
        # sftp transport and may report only the closed pipe ("unexpected EOF"),
        # without ssh's own message: the same refusal, seen from restic.
        refused = ["timed out", "Permission denied"]
        if name == "restic":
            refused += ["unexpected EOF", "closed connection"]
        assert any(reason in output for reason in refused), f"{name}: {output}"
    assert len(access["scratch_keys"]) == 2
    assert access["keys_granted"] == [], "the backup host still accepts the scratch host's keys"
    address = re.escape(access["scratch_address"])
    assert not re.search(rf"(?<![\d.]){address}(?!\d)", access["ruleset"]), access["ruleset"]
    assert "restore-drill.nft" not in access["dropins"].split(), access["dropins"]


def test_site_yml_after_the_drill_changes_nothing(restored: dict[str, object]) -> None:
    scratch = restored["scratch"]
    assert isinstance(scratch, dict)
    output = str(scratch["site_output"])
    assert scratch["site_rc"] == 0, output[-4000:]
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)
    assert {host for host, _ in recap} >= {ARCHIVE, REPO}, output[-2000:]
    assert all(changed == "0" for _, changed in recap), output[-4000:]


def test_the_drill_refuses_what_would_wipe_the_archive_by_mistake(
    restored: dict[str, object],
) -> None:
    """With a scratch host in the inventory: the wipe flag alone, the backup host, check mode."""
    drill = str(ROOT / "playbooks" / "restore-drill.yml")
    rc, output = run_playbook(drill, "-e", "restore_drill_wipe=true")
    assert rc != 0 and "leave out restore_drill_wipe" in " ".join(output.split()), output[-3000:]
    rc, output = run_playbook(drill, "-e", f"restore_drill_target={REPO}")
    assert rc != 0 and "cannot be the scratch host" in output, output[-3000:]
    rc, output = run_playbook(drill, "--check")
    assert rc != 0 and "cannot run in check mode" in " ".join(output.split()), output[-3000:]


def test_the_drill_prints_its_rpo_and_rto(restored: dict[str, object]) -> None:
    # The result callback may wrap long lines: compare words, not lines.
    output = " ".join(str(restored["output"]).split())
    assert re.search(r"RPO achieved: \d+ s", output), output[-3000:]
    assert re.search(r"RTO achieved: \d+ s", output), output[-3000:]
    assert "0 mismatched, 0 unreadable" in output


def test_the_second_study_came_back_through_wal_and_the_second_file_backup(
    restored: dict[str, object], studies: tuple[StudyManifest, StudyManifest]
) -> None:
    """The full backup was taken before the second study: its rows came from WAL."""
    stack = restored["stack"]
    assert isinstance(stack, Stack)
    info = stack.pgbackrest_info()
    full = [b for b in info["backup"] if b["type"] == "full"]
    assert full, info
    snapshots = json.loads(
        stack.archive.check_output("pacs-restic snapshots --json --tag pacs-files")
    )
    assert len(snapshots) >= 2
    # The drill chose the restore point of the last file backup, made after the full backup.
    last_point = sorted(t for s in snapshots for t in s["tags"] if t.startswith("restore-point:"))[
        -1
    ]
    assert last_point.removeprefix("restore-point:") in str(restored["output"])
    second_uids = {r.sop_instance_uid for r in studies[1].instances}
    after = restored["after"]
    assert isinstance(after, dict)
    assert second_uids <= set(after)


def test_each_job_recorded_its_success_for_prometheus(restored: dict[str, object]) -> None:
    stack = restored["stack"]
    assert isinstance(stack, Stack)
    for host, job in ((stack.repo, "pg_full"), (stack.archive, "dicom_files")):
        text = host.check_output(f"cat /var/lib/prometheus/node-exporter/pacs_backup_{job}.prom")
        success = re.search(
            r'^pacs_backup_last_success_timestamp_seconds\{job="[a-z-]+"\} (\S+)$', text, re.M
        )
        assert success and float(success.group(1)) > 0, text


def test_the_repositories_are_encrypted(restored: dict[str, object]) -> None:
    """pgBackRest's repository is AES-256 encrypted; restic's cannot be opened without its key."""
    stack = restored["stack"]
    assert isinstance(stack, Stack)
    info = stack.pgbackrest_info()
    assert info["cipher"] == "aes-256-cbc"
    ssh = "ssh -F /etc/pacs-libre/backup/ssh_config pacs-backup-repo -s sftp"
    repository = stack.archive.check_output(
        "sed -n 's/^RESTIC_REPOSITORY=//p' /etc/pacs-libre/backup/restic.env"
    ).strip()
    wrong = stack.archive.run(
        f"RESTIC_PASSWORD=not-the-key restic -r {repository} "
        f"-o sftp.command={quote(ssh)} cat config"
    )
    assert wrong.rc != 0 and "wrong password" in (wrong.stderr + wrong.stdout).lower(), wrong.stderr
