"""The file backup jobs (roles/dicom_backup) on the archive the drills restored.

The dicom_backup role has no scenario of its own: its hosts would be this
scenario's archive and backup host, converged the same way by site.yml. This
module runs after test_backup_restore.py (pytest takes the files in name order),
so it also shows that the backups go on working on an archive restored in place:
a file backup paired with its PostgreSQL restore point, the SFTP-only account,
the encrypted repository, the retention and check jobs, and a failure where the
monitoring and the on-call technician look. Check mode from scratch is the
scenario's `check` step, over site.yml with the backup roles.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from pacs_testlib import host_spec, lab_host

ARCHIVE, REPO = "pacs-mol-backup-archive", "pacs-mol-backup-repo"
testinfra_hosts = [host_spec(ARCHIVE)]


def metric(host, job: str, name: str) -> float:  # type: ignore[no-untyped-def]
    path = f"/var/lib/prometheus/node-exporter/pacs_backup_{job.replace('-', '_')}.prom"
    text = host.check_output(f"cat {path}")
    match = re.search(rf'^{name}{{job="{job}"}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def run_job(host, job: str) -> None:  # type: ignore[no-untyped-def]
    result = host.run(f"systemctl start pacs-backup-{job}.service")
    log = host.run(f"journalctl -u pacs-backup-{job} -n 40 --no-pager").stdout
    assert result.rc == 0, log


@pytest.fixture(scope="module")
def archive():  # type: ignore[no-untyped-def]
    host = lab_host(ARCHIVE)
    # A DICOM-like file in the storage folder, as Orthanc lays them out. Both
    # folders are Orthanc's (install -d would make the first one root's, and
    # Orthanc could then not write the instances whose names start with "ab").
    host.check_output(
        "install -d -o orthanc -g orthanc /srv/pacs/orthanc/ab /srv/pacs/orthanc/ab/cd && "
        "head -c 300000 /dev/urandom > /srv/pacs/orthanc/ab/cd/abcd-test && "
        "chown orthanc:orthanc /srv/pacs/orthanc/ab/cd/abcd-test"
    )
    return host


def test_a_file_backup_is_paired_with_an_archived_restore_point(archive) -> None:  # type: ignore[no-untyped-def]
    before = time.time()
    run_job(archive, "dicom-files")
    assert (
        metric(archive, "dicom-files", "pacs_backup_last_success_timestamp_seconds") >= before - 1
    )
    snapshots = json.loads(archive.check_output("pacs-restic snapshots --json --tag pacs-files"))
    assert snapshots
    tags = snapshots[-1]["tags"]
    points = [t for t in tags if t.startswith("restore-point:pacs-files-")]
    assert len(points) == 1, tags
    # The job waited until the restore point's WAL was archived.
    log = archive.check_output("journalctl -u pacs-backup-dicom-files -n 40 --no-pager")
    assert f"restore point {points[0].removeprefix('restore-point:')} archived" in log
    listing = archive.check_output(f"pacs-restic ls {snapshots[-1]['short_id']}")
    assert "/srv/pacs/orthanc/ab/cd/abcd-test" in listing


def test_retention_and_the_data_check_run(archive) -> None:  # type: ignore[no-untyped-def]
    for job in ("dicom-forget", "dicom-check"):
        before = time.time()
        run_job(archive, job)
        assert metric(archive, job, "pacs_backup_last_success_timestamp_seconds") >= before - 1
    log = archive.check_output("journalctl -u pacs-backup-dicom-check -n 40 --no-pager")
    assert "no errors were found" in log


def test_the_archive_key_may_only_run_sftp(archive) -> None:  # type: ignore[no-untyped-def]
    shell = archive.run(
        "ssh -F /etc/pacs-libre/backup/ssh_config pacs-backup-repo 'echo SHELL-OPENED'"
    )
    assert "SHELL-OPENED" not in shell.stdout
    repo = lab_host(REPO)
    keys = repo.check_output("cat /srv/backup/restic/.ssh/authorized_keys")
    assert 'command="/usr/lib/openssh/sftp-server"' in keys and "restrict," in keys


def test_each_job_ends_with_restic(archive) -> None:  # type: ignore[no-untyped-def]
    """restic 0.14 can exit before its ssh: the job still ends then, not 90 s later as failed.

    On the lab's Debian 12 hosts (systemd 252 on cgroup v1, not told when the last
    process ends) about one check job in two fails so; this catches it there.
    """
    for _ in range(6):
        # Six starts in a row would hit systemd's start limit (5 in 10 s).
        archive.check_output("systemctl reset-failed pacs-backup-dicom-check.service")
        started = time.time()
        run_job(archive, "dicom-check")
        assert time.time() - started < 60


def test_the_repository_refuses_another_key(archive) -> None:  # type: ignore[no-untyped-def]
    repository = archive.check_output(
        "sed -n 's/^RESTIC_REPOSITORY=//p' /etc/pacs-libre/backup/restic.env"
    ).strip()
    ssh = "ssh -F /etc/pacs-libre/backup/ssh_config pacs-backup-repo -s sftp"
    wrong = archive.run(
        f"RESTIC_PASSWORD=not-the-key restic -r {repository} -o sftp.command='{ssh}' cat config"
    )
    assert wrong.rc != 0
    assert "wrong password" in (wrong.stderr + wrong.stdout).lower(), wrong.stderr


def test_a_failed_backup_is_seen_by_prometheus_and_in_the_journal(archive) -> None:  # type: ignore[no-untyped-def]
    since = archive.check_output("date '+%Y-%m-%d %H:%M:%S'").strip()
    success = metric(archive, "dicom-files", "pacs_backup_last_success_timestamp_seconds")
    repo = lab_host(REPO)
    # The backup host's repository folder becomes unwritable (a full or broken disk).
    repo.check_output(f"chmod 000 /srv/backup/restic/{ARCHIVE}")
    try:
        assert archive.run("systemctl start pacs-backup-dicom-files.service").rc != 0
    finally:
        repo.check_output(f"chmod 700 /srv/backup/restic/{ARCHIVE}")
    assert metric(archive, "dicom-files", "pacs_backup_last_failure_timestamp_seconds") > success
    assert metric(archive, "dicom-files", "pacs_backup_last_success_timestamp_seconds") == success
    deadline, log = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        log = archive.check_output(f"journalctl -t pacs-backup -p err --since '{since}' --no-pager")
        if "pacs-backup-dicom-files.service FAILED" in log:
            break
        time.sleep(1)
    assert "backup job dicom-files FAILED" in log, log
    assert "pacs-backup-dicom-files.service FAILED" in log, log
