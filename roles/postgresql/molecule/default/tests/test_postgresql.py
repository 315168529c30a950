"""Behaviour of the postgresql role on real systemd hosts.

The server runs the role; the client declared the archive's database through the consumer
entry point and connects to it over the scenario's network.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import subprocess
from pathlib import Path

import pytest
from pacs_testlib import address_of, host_spec, lab_host, run_playbook

from pacs_libre.sizing import postgresql_settings

SERVER = "pacs-mol-postgresql-server"
CLIENT = "pacs-mol-postgresql-client"
CHECKER = "/usr/local/sbin/pacs-pg-check-config"
ROOT_CERT = "/root/.postgresql/root.crt"

testinfra_hosts = [host_spec(SERVER)]

_UNIT_BYTES = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 2**20, "GB": 2**30}


def sql(host, query: str, db: str = "postgres") -> str:
    """Run one statement as the postgres superuser on the server's socket."""
    return host.check_output(
        f"runuser -u postgres -- psql -XAtq -d {db} -c {shlex.quote(query)}"
    ).strip()


def password_of(user: str) -> str:
    """The password that the role generated on the controller for ``user``."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    inventory_dir = inventory if inventory.is_dir() else inventory.parent
    return (inventory_dir / ".credentials" / SERVER / "postgresql" / user).read_text().strip()


def client_psql(conninfo: str, query: str, user: str, password: str | None = None):
    """psql from the client host over the network; the command's result."""
    secret = password if password is not None else password_of(user)
    return lab_host(CLIENT).run(
        f"PGPASSWORD={shlex.quote(secret)} PGCONNECT_TIMEOUT=5 psql "
        f"{shlex.quote(f'{conninfo} user={user}')} -XAtq -c {shlex.quote(query)}"
    )


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)(B|kB|MB|GB)", size)
    assert match, f"not a PostgreSQL size: {size}"
    return int(match[1]) * _UNIT_BYTES[match[2]]


@pytest.fixture(scope="module")
def version(host) -> int:
    return int(sql(host, "SHOW server_version_num")) // 10000


@pytest.fixture(scope="module")
def server_address(host) -> str:
    return address_of(host)


@pytest.fixture(scope="module")
def tls_client(host) -> str:
    """The deployment's CA (on the controller, beside the inventory), copied to the client
    as the root it trusts: the client then verifies the server's certificate with it."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    ca = (inventory if inventory.is_dir() else inventory.parent) / "pki" / "ca.crt"
    encoded = base64.b64encode(ca.read_bytes()).decode()
    lab_host(CLIENT).check_output(
        f"mkdir -p /root/.postgresql && echo {encoded} | base64 -d > {ROOT_CERT}"
    )
    return ROOT_CERT


def test_settings_follow_the_formulas_for_the_hosts_ram(host, version):
    meminfo = host.file("/proc/meminfo").content_string
    memtotal_kb = int(re.search(r"^MemTotal:\s+(\d+) kB$", meminfo, re.M)[1])
    cpus = int(host.check_output("grep -c ^processor /proc/cpuinfo"))
    # Ansible's memtotal_mb is MemTotal in whole MiB; a container sees the machine's RAM.
    expected = postgresql_settings(
        (memtotal_kb // 1024) * 2**20, cpus, "ssd", 100, workload="oltp", pg_version=version
    )
    rows = sql(host, "SELECT name, setting, coalesce(unit, '') FROM pg_settings")
    in_effect = {
        name: (setting, unit) for name, setting, unit in (r.split("|") for r in rows.splitlines())
    }
    assert set(expected) <= set(in_effect)
    for name, want in expected.items():
        setting, unit = in_effect[name]
        if unit in _UNIT_BYTES:
            # PostgreSQL keeps sizes in its own unit (8 kB pages for some): one unit of slack.
            got = int(setting) * _UNIT_BYTES[unit]
            assert abs(got - _bytes(want)) < _UNIT_BYTES[unit], (name, setting, unit, want)
        else:
            assert setting == want, (name, setting, want)


def test_inventory_and_role_settings_are_in_effect(host):
    # A host setting of the inventory wins over the role's default (500ms).
    assert sql(host, "SHOW log_min_duration_statement") == "250ms"
    assert sql(host, "SHOW log_lock_waits") == "on"
    assert sql(host, "SHOW log_checkpoints") == "on"
    assert sql(host, "SHOW password_encryption") == "scram-sha-256"
    assert "pg_stat_statements" in sql(host, "SHOW shared_preload_libraries")
    # The extension is loaded and its view answers, for the exporter.
    assert int(sql(host, "SELECT count(*) FROM pg_stat_statements")) >= 0
    assert sql(host, "SELECT pg_has_role('pacs_monitor', 'pg_monitor', 'member')") == "t"


def test_cluster_has_checksums_and_utf8_on_the_data_volume(host, version):
    assert sql(host, "SHOW data_checksums") == "on"
    assert sql(host, "SHOW server_encoding") == "UTF8"
    assert sql(host, "SHOW data_directory") == f"/srv/pacs/postgresql/{version}/main"
    assert host.check_output("pg_lsclusters --no-header").split()[:4] == [
        str(version),
        "main",
        "5432",
        "online",
    ]
    if version >= 17:
        # Builtin collation: sorting never changes when glibc does.
        assert (
            sql(host, "SELECT datlocprovider FROM pg_database WHERE datname = 'pacs_archive'")
            == "b"
        )


def test_plain_connection_from_another_host_is_refused(server_address):
    result = client_psql(
        f"host={server_address} dbname=pacs_archive sslmode=disable", "SELECT 1", "pacs_archive"
    )
    assert result.rc != 0
    assert "no pg_hba.conf entry" in result.stderr
    assert "no encryption" in result.stderr


def test_tls_connection_from_another_host_works_for_the_declared_user(server_address, tls_client):
    # verify-full: the client checks the certificate and that it names the address.
    conninfo = (
        f"host={server_address} dbname=pacs_archive sslmode=verify-full sslrootcert={tls_client}"
    )
    result = client_psql(
        conninfo,
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        "pacs_archive",
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "pacs_archive|t"
    # The owner writes its index; the reader reads it and cannot write.
    write = client_psql(
        conninfo,
        "CREATE TABLE IF NOT EXISTS probe (id int); INSERT INTO probe VALUES (1)",
        "pacs_archive",
    )
    assert write.rc == 0, write.stderr
    read = client_psql(conninfo, "SELECT count(*) > 0 FROM probe", "pacs_archive_reader")
    assert read.rc == 0, read.stderr
    assert read.stdout.strip() == "t"
    denied = client_psql(conninfo, "INSERT INTO probe VALUES (2)", "pacs_archive_reader")
    assert denied.rc != 0
    assert "permission denied" in denied.stderr


def test_the_server_certificate_comes_from_the_deployment_ca(host):
    pki = "/etc/pacs-libre/pki"
    verify = host.run(
        f"openssl verify -CAfile {pki}/ca.crt -purpose sslserver {pki}/postgresql.crt"
    )
    assert verify.rc == 0, verify.stdout + verify.stderr
    key = host.file(f"{pki}/postgresql.key")
    assert (key.user, key.group, key.mode) == ("root", "postgres", 0o640)
    assert sql(host, "SHOW ssl_cert_file") == f"{pki}/postgresql.crt"
    assert sql(host, "SHOW ssl_ca_file") == f"{pki}/ca.crt"


def test_a_client_that_trusts_another_ca_is_refused(server_address, tmp_path):
    """verify-full with another root: the server cannot prove who it is, the client stops."""
    other = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(tmp_path / "other-ca.key"), "-subj", "/CN=another CA",
         "-days", "1", "-out", str(other)],
        check=True, capture_output=True,
    )  # fmt: skip
    encoded = base64.b64encode(other.read_bytes()).decode()
    lab_host(CLIENT).check_output(
        f"mkdir -p /root/.postgresql && echo {encoded} | base64 -d > /root/.postgresql/other-ca.crt"
    )
    conninfo = (
        f"host={server_address} dbname=pacs_archive sslmode=verify-full "
        "sslrootcert=/root/.postgresql/other-ca.crt"
    )
    result = client_psql(conninfo, "SELECT 1", "pacs_archive")
    assert result.rc != 0
    assert "certificate verify failed" in result.stderr


def test_wrong_password_is_refused(server_address, tls_client):
    conninfo = (
        f"host={server_address} dbname=pacs_archive sslmode=verify-full sslrootcert={tls_client}"
    )
    result = client_psql(conninfo, "SELECT 1", "pacs_archive", password=secrets.token_urlsafe(16))
    assert result.rc != 0
    assert "password authentication failed" in result.stderr


def test_only_declared_users_reach_a_declared_database(host):
    # CONNECT is taken from PUBLIC: the exporter's user may not open the archive's database.
    assert (
        sql(host, "SELECT has_database_privilege('pacs_monitor', 'pacs_archive', 'CONNECT')") == "f"
    )
    assert (
        sql(host, "SELECT has_database_privilege('pacs_archive_reader', 'pacs_archive', 'CONNECT')")
        == "t"
    )


def test_port_is_open_to_the_client_network_only(host, version):
    hba = host.file(f"/etc/postgresql/{version}/main/pg_hba.conf").content_string
    assert "/0 " not in hba
    rules = [line for line in hba.splitlines() if line and not line.startswith("#")]
    assert all(line.split()[0] in {"local", "host", "hostssl"} for line in rules)
    assert all(
        line.split()[3] in {"127.0.0.1/32", "::1/128"} for line in rules if line.startswith("host ")
    )
    firewall = host.check_output("nft list chain inet pacs_libre input")
    assert re.search(r"ip saddr [\d./]+ tcp dport 5432 .*accept", firewall), firewall


def test_config_checker_refuses_a_broken_file(host, version):
    conf = f"/etc/postgresql/{version}/main/postgresql.conf"
    assert host.run(f"{CHECKER} {conf}").rc == 0
    host.check_output(f"cp {conf} /tmp/broken.conf && echo 'work_mem = = 4MB' >> /tmp/broken.conf")
    broken = host.run(f"{CHECKER} /tmp/broken.conf")
    assert broken.rc != 0
    assert "syntax error" in broken.stderr
    host.check_output(
        f"cp {conf} /tmp/unknown.conf && echo 'shared_bufers = 1GB' >> /tmp/unknown.conf"
    )
    unknown = host.run(f"{CHECKER} /tmp/unknown.conf")
    assert unknown.rc != 0
    assert "shared_bufers" in unknown.stderr
    host.run("rm -f /tmp/broken.conf /tmp/unknown.conf")


def _converge_settings(settings: dict[str, str] | None) -> str:
    """Converge only the server's configuration, with these group settings."""
    playbook = str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")
    args = ["--limit", SERVER, "--tags", "config,service"]
    if settings is not None:
        args += ["--extra-vars", json.dumps({"postgresql_group_settings": settings})]
    rc, output = run_playbook(playbook, *args)
    assert rc == 0, output[-6000:]
    return output


@pytest.fixture
def restore_settings():
    yield
    _converge_settings(None)


def test_reload_when_enough_restart_only_when_needed(host, restore_settings):
    started = sql(host, "SELECT pg_postmaster_start_time()")

    # work_mem takes effect on reload: the server keeps running.
    output = _converge_settings({"work_mem": "12MB"})
    assert "RUNNING HANDLER [postgresql : Reload PostgreSQL]" in output
    assert "RUNNING HANDLER [postgresql : Restart PostgreSQL]" not in output
    assert sql(host, "SHOW work_mem") == "12MB"
    assert sql(host, "SELECT pg_postmaster_start_time()") == started

    # shared_buffers needs a restart: the server says so, and is restarted.
    output = _converge_settings({"work_mem": "12MB", "shared_buffers": "160MB"})
    assert "RUNNING HANDLER [postgresql : Restart PostgreSQL]" in output
    assert sql(host, "SHOW shared_buffers") == "160MB"
    assert sql(host, "SELECT pg_postmaster_start_time()") != started
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
