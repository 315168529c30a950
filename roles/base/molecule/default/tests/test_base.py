"""Behaviour of the base role on real systemd hosts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pacs_testlib import address_of, lab_host, run_check_mode, run_playbook, tcp_connects

SERVER = "pacs-mol-base-server"
CLIENT = "pacs-mol-base-client"

testinfra_hosts = [f"podman://{SERVER}"]


@pytest.fixture(scope="module")
def listeners():
    """Listen on a declared port (8080) and an undeclared one (8081) on the server."""
    server = lab_host(SERVER)
    for port in (8080, 8081):
        server.run(
            f"systemctl stop probe-{port}.service; systemctl reset-failed probe-{port}.service"
        )
        server.check_output(
            f"systemd-run --unit=probe-{port} python3 -m http.server --bind 0.0.0.0 {port}"
        )
    for port in (8080, 8081):
        for _ in range(50):
            if server.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            time.sleep(0.2)
    yield server
    for port in (8080, 8081):
        server.run(f"systemctl stop probe-{port}.service")


def test_declared_port_is_reachable_from_another_host(listeners):
    assert tcp_connects(lab_host(CLIENT), address_of(listeners), 8080)


def test_undeclared_port_is_closed_to_another_host(listeners):
    # The service does listen (it answers on the host itself)...
    assert tcp_connects(listeners, "127.0.0.1", 8081)
    # ...but the firewall keeps it from the network.
    assert not tcp_connects(lab_host(CLIENT), address_of(listeners), 8081)


def _converge_server(ports: list[dict[str, object]]) -> None:
    converge = str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")
    extra = json.dumps({"base_firewall_host_ports": ports})
    rc, out = run_playbook(converge, "--limit", SERVER, "-e", extra)
    assert rc == 0, out[-3000:]


def test_a_port_declared_on_a_running_firewall_opens_and_closes(listeners):
    """A rerun that declares a port loads it at once, and a rerun without it closes it."""
    client, server_ip = lab_host(CLIENT), address_of(listeners)
    probe = {"name": "probe", "port": 8080, "proto": "tcp"}
    try:
        _converge_server([probe, {"name": "late", "port": 8081, "proto": "tcp"}])
        assert tcp_connects(client, server_ip, 8081)
    finally:
        _converge_server([probe])
    assert not tcp_connects(client, server_ip, 8081)
    assert tcp_connects(client, server_ip, 8080)


def test_firewall_is_default_deny(host):
    ruleset = host.check_output("nft list chain inet pacs_libre input")
    assert "policy drop" in ruleset
    assert "dport 8080" in ruleset


def test_chrony_runs_and_answers(host):
    assert host.service("chrony").is_running
    assert host.service("chrony").is_enabled
    # chronyc talks to the running daemon over its socket.
    assert host.run("chronyc -n tracking").rc == 0


def test_journal_is_kept_on_disk(host):
    marker = f"pacs-libre-journal-probe-{time.time_ns()}"
    host.check_output(f"logger -t pacs-probe {marker}")
    host.check_output("journalctl --flush")
    on_disk = host.check_output("journalctl -D /var/log/journal -t pacs-probe --no-pager -o cat")
    assert marker in on_disk


def test_time_zone_and_locales(host):
    assert host.check_output("date +%Z") in {"CET", "CEST"}
    locales = host.check_output("locale -a")
    assert "fr_FR.utf8" in locales
    assert "en_US.utf8" in locales
    assert "Jan" not in host.check_output("LC_ALL=fr_FR.UTF-8 date -d 2026-01-15 +%b")


def test_unattended_upgrades_hold_database_and_archive(host):
    config = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    for pattern in ("postgresql", "orthanc"):
        assert f'"{pattern}"' in config
    dry = host.run("unattended-upgrade --dry-run --debug 2>&1")
    assert dry.rc == 0, dry.stdout


def test_admin_can_sudo_and_has_only_its_keys(host):
    assert "pacsadmin" in host.user("jdupont").groups
    keys = host.file("/home/jdupont/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert keys.content_string.count("ssh-ed25519") == 1
    assert host.run("sudo -u jdupont sudo -n true").rc == 0


def test_check_mode_on_converged_hosts_reports_no_change():
    recap, changed = run_check_mode()
    assert recap.get(SERVER) == 0, changed
    assert recap.get(CLIENT) == 0, changed
