"""Behaviour of the base role on real systemd hosts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pacs_testlib import (
    address_of,
    host_spec,
    lab_host,
    run_check_mode,
    run_playbook,
    ssh_config,
    tcp_connects,
)

SERVER = "pacs-mol-base-server"
CLIENT = "pacs-mol-base-client"

testinfra_hosts = [host_spec(SERVER)]


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


@pytest.fixture(scope="module")
def ssh_client():
    """The client host, ready to log in to the server over SSH as jdupont.

    It gets the scenario's private key (jdupont's only key, from the inventory) and
    the server's host key, read over the already pinned connection: the client
    never trusts a key on first use. jdupont gets a password that must never open
    a session.
    """
    server, client = lab_host(SERVER), lab_host(CLIENT)
    key = (ssh_config().parent / "id_ed25519").read_text()
    host_key = " ".join(server.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
    server.check_output("echo 'jdupont:Correct-Horse-42' | chpasswd")
    client.check_output(
        "install -d -m 700 /root/probe && umask 077 && "
        f"printf '%s\\n' {_sh(key.strip())} > /root/probe/key && "
        f"printf '%s\\n' {_sh(f'{address_of(server)} {host_key}')} > /root/probe/known_hosts && "
        "printf '#!/bin/sh\\necho Correct-Horse-42\\n' > /root/probe/askpass && "
        "chmod 700 /root/probe/askpass"
    )
    yield client, address_of(server)
    client.run("rm -rf /root/probe")
    server.run("passwd -d jdupont")


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _ssh(
    client, address: str, *options: str, user: str = "jdupont", command: str = "true", env=""
) -> tuple[int, str, str]:
    """Run ssh on the client; return its exit status, output and errors.

    The status is passed back in the output: testinfra's own SSH takes an exit
    status of 255 for its own connection failing.
    """
    result = client.run(
        f"LC_ALL=C {env} ssh -o UserKnownHostsFile=/root/probe/known_hosts "
        "-o StrictHostKeyChecking=yes -o ConnectTimeout=5 "
        f'{" ".join(options)} {user}@{address} {command}; echo "ssh-exit=$?"'
    )
    output, _, status = result.stdout.rstrip().rpartition("ssh-exit=")
    return int(status), output.strip(), result.stderr


def test_sshd_runs_the_rendered_hardened_configuration(host):
    effective = host.check_output("sshd -T")
    for line in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin without-password",
        "authenticationmethods publickey",
        "allowgroups pacsadmin",
        "allowgroups root",
        "x11forwarding no",
    ):
        assert line in effective.splitlines(), line
    assert "Include" not in host.file("/etc/ssh/sshd_config").content_string


def test_a_key_login_from_another_host_works(ssh_client):
    client, address = ssh_client
    rc, output, errors = _ssh(
        client, address, "-o BatchMode=yes -i /root/probe/key", command="id -un"
    )
    assert rc == 0, errors
    assert output == "jdupont"


def test_a_password_login_from_another_host_is_refused(ssh_client):
    """The right password, offered for real, is refused: the server offers keys only."""
    client, address = ssh_client
    rc, _output, errors = _ssh(
        client,
        address,
        "-o PubkeyAuthentication=no -o IdentitiesOnly=yes",
        "-o PreferredAuthentications=password,keyboard-interactive",
        env="SSH_ASKPASS=/root/probe/askpass SSH_ASKPASS_REQUIRE=force setsid -w",
    )
    assert rc == 255
    assert "Permission denied (publickey)" in errors


def test_a_root_password_login_is_refused(ssh_client):
    client, address = ssh_client
    rc, _output, errors = _ssh(
        client, address, "-o BatchMode=yes -o PubkeyAuthentication=no", user="root"
    )
    assert rc == 255
    assert "Permission denied (publickey)" in errors


def test_check_mode_on_converged_hosts_reports_no_change():
    recap, changed = run_check_mode()
    assert recap.get(SERVER) == 0, changed
    assert recap.get(CLIENT) == 0, changed
