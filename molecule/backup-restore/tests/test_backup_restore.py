"""Backups proven by a restore: the archive's images and index come back byte-identical.

The steps of the scenario, in order (one module, one archive):
1. site.yml deployed the archive and its backups; a first study is sent with
   dcmtk's storescu, as the modality.
2. The backups are taken: a full pgBackRest backup, then a file backup (restic,
   with its PostgreSQL restore point).
3. A second study is sent. It comes after the last full backup: only WAL and the
   next file backup cover it. That file backup is taken.
4. The archive's images and database are destroyed.
5. playbooks/restore-drill.yml restores to the restore point of the last file
   backup, with the wipe flag and the typed confirmation.
6. Both studies are complete, and every instance is byte-identical to what the
   archive served before the disaster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pacs_testlib import address_of, dcmtk, host_spec, lab_host, orthanc_credentials, run_playbook

from pacs_libre.dicom.synth import StudyManifest, make_study

ARCHIVE, REPO = "pacs-mol-backup-archive", "pacs-mol-backup-repo"
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


class Stack:
    def __init__(self) -> None:
        self.archive = lab_host(ARCHIVE)
        self.repo = lab_host(REPO)
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

    def instances(self) -> dict[str, str]:
        out = self.archive.check_output(
            f"python3 -c {quote(INSTANCES_MD5)} {quote(self.user)} {quote(self.password)}"
        )
        return dict(json.loads(out))

    def pgbackrest_info(self) -> dict[str, Any]:
        """The stanza's pgBackRest info, read on the repository host."""
        out = self.repo.check_output(
            "runuser -u pgbackrest -- pgbackrest --stanza=pacs --output=json info"
        )
        return dict(json.loads(out)[0])

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
    # 4. The disaster: the images and the database are gone.
    data = stack.archive.check_output(
        "runuser -u postgres -- psql -XAtc 'SHOW data_directory'"
    ).strip()
    stack.archive.check_output("systemctl stop orthanc postgresql.service 'postgresql@*'")
    stack.archive.check_output(f"rm -rf {data} /srv/pacs/orthanc/*")
    # 5. The drill, as local IT runs it, with the flag and the confirmation.
    rc, output = run_playbook(
        str(ROOT / "playbooks" / "restore-drill.yml"),
        "-e",
        "restore_drill_wipe=true",
        "-e",
        f"restore_drill_confirm={ARCHIVE}",
    )
    assert rc == 0, output[-6000:]
    after = stack.instances()
    yield {"before": before, "after": after, "output": output, "stack": stack}


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
