"""pgBackRest between a database host and a backup host (Debian 12).

What only this scenario shows (molecule/backup-restore restores on Debian 13):
the stanza and its first full backup, WAL pushed asynchronously, the scheduled
jobs, a job's failure where the monitoring and the on-call technician look,
the peer-only SSH keys, and check mode that changes nothing.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from pacs_testlib import host_spec, lab_host, run_check_mode

DB, REPO = "pacs-mol-backup-pg-db", "pacs-mol-backup-pg-repo"
testinfra_hosts = [host_spec(REPO)]


def pgbackrest_info(repo) -> dict:  # type: ignore[no-untyped-def]
    out = repo.check_output("runuser -u pgbackrest -- pgbackrest --stanza=pacs --output=json info")
    return dict(json.loads(out)[0])


def metric(host, job: str, name: str) -> float:  # type: ignore[no-untyped-def]
    text = host.check_output(
        f"cat /var/lib/prometheus/node-exporter/pacs_backup_{job.replace('-', '_')}.prom"
    )
    match = re.search(rf'^{name}{{job="{job}"}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


@pytest.fixture(scope="module")
def repo():  # type: ignore[no-untyped-def]
    host = lab_host(REPO)
    # The first full backup started in the background at converge: wait for it.
    host.run("systemctl start pacs-backup-pg-full.service")
    return host


def test_the_stanza_has_a_full_backup(repo) -> None:  # type: ignore[no-untyped-def]
    info = pgbackrest_info(repo)
    assert info["status"]["code"] == 0, info["status"]
    assert [b for b in info["backup"] if b["type"] == "full"], info
    assert info["cipher"] == "aes-256-cbc"


def test_wal_is_pushed_to_the_repository(repo) -> None:  # type: ignore[no-untyped-def]
    db = lab_host(DB)
    # A WAL record first: on an idle cluster pg_switch_wal() switches nothing, and
    # names the next segment, which is never archived until it is written.
    segment = db.check_output(
        "runuser -u postgres -- psql -XAt"
        " -c \"SELECT pg_logical_emit_message(false, 'pacs-test', 'wal')\""
        " -c 'SELECT pg_walfile_name(pg_switch_wal())'"
    ).split()[-1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        archived = db.check_output(
            "runuser -u postgres -- psql -XAtc 'SELECT last_archived_wal FROM pg_stat_archiver'"
        ).strip()
        if archived >= segment:
            break
        time.sleep(2)
    assert archived >= segment, f"{segment} not archived (last: {archived})"
    info = pgbackrest_info(repo)
    assert info["archive"][0]["max"] >= segment


def test_a_differential_backup_and_verify_record_their_success(repo) -> None:  # type: ignore[no-untyped-def]
    for job in ("pg-diff", "pg-verify", "pg-check"):
        before = time.time()
        result = repo.run(f"systemctl start pacs-backup-{job}.service")
        assert result.rc == 0, repo.run(f"journalctl -u pacs-backup-{job} -n 40 --no-pager").stdout
        assert metric(repo, job, "pacs_backup_last_success_timestamp_seconds") >= before - 1
    assert [b for b in pgbackrest_info(repo)["backup"] if b["type"] == "diff"]


def test_every_job_has_a_timer(repo) -> None:  # type: ignore[no-untyped-def]
    timers = repo.check_output("systemctl list-timers --all --no-legend 'pacs-backup-*'")
    for job in ("pg-full", "pg-diff", "pg-check", "pg-verify"):
        assert f"pacs-backup-{job}.timer" in timers


def test_a_failed_job_is_seen_by_prometheus_and_in_the_journal(repo) -> None:  # type: ignore[no-untyped-def]
    since = repo.check_output("date '+%Y-%m-%d %H:%M:%S'").strip()
    success = metric(repo, "pg-check", "pacs_backup_last_success_timestamp_seconds")
    # The repository becomes unreadable (a broken disk, a wrong mount).
    repo.check_output("chmod 000 /srv/backup/pgbackrest")
    try:
        result = repo.run("systemctl start pacs-backup-pg-check.service")
        assert result.rc != 0
    finally:
        repo.check_output("chmod 750 /srv/backup/pgbackrest")
    assert metric(repo, "pg-check", "pacs_backup_last_failure_timestamp_seconds") > success
    # The last success is kept.
    assert metric(repo, "pg-check", "pacs_backup_last_success_timestamp_seconds") == success
    deadline = time.monotonic() + 30
    log = ""
    while time.monotonic() < deadline:
        log = repo.check_output(f"journalctl -t pacs-backup -p err --since '{since}' --no-pager")
        if "pacs-backup-pg-check.service FAILED" in log and "backup job pg-check FAILED" in log:
            break
        time.sleep(1)
    assert "backup job pg-check FAILED" in log, log
    assert "pacs-backup-pg-check.service FAILED" in log, log  # OnFailure=


def test_the_database_host_accepts_only_the_repository_key_from_its_address(repo) -> None:  # type: ignore[no-untyped-def]
    db = lab_host(DB)
    keys = db.check_output("cat /var/lib/postgresql/.ssh/authorized_keys")
    lines = [line for line in keys.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith('restrict,from="')
    # The repository's account reaches postgres, with its pinned host key.
    address = repo.check_output("awk '{print $1}' /var/lib/pgbackrest/.ssh/known_hosts").strip()
    out = repo.check_output(
        f"runuser -u pgbackrest -- ssh -o BatchMode=yes postgres@{address} id -un"
    )
    assert out.strip() == "postgres"


def test_check_mode_on_converged_hosts_reports_no_change() -> None:
    recap, changed = run_check_mode()
    assert recap and all(count == 0 for count in recap.values()), changed
