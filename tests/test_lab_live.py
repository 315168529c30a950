"""`pacsctl lab` against real podman: a throwaway lab of its own (pacs-labtest-*).

It never touches a running lab: its hosts, network and volumes carry their own
names, and it publishes a port picked free on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacs_libre import lab

PACSCTL = str(Path(sys.executable).parent / "pacsctl")

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="needs podman and root: run `make prereqs` as root (make test does)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pacsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACSCTL, *args], capture_output=True, text=True, check=False)


def _ssh(config: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "ControlPath=none", "pacs-labtest-node1", command],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=lab.podman_env(), check=False
    )


@pytest.fixture(scope="module")
def test_lab(tmp_path_factory):
    inv = tmp_path_factory.mktemp("labtest") / "inventory"
    (inv / "group_vars/all").mkdir(parents=True)
    port = _free_port()
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    node1:\n")
    (inv / "group_vars/all/lab.yml").write_text(
        "lab_name: pacs-labtest\n"
        "lab_network: pacs-labtest\n"
        'lab_debian: "13"\n'
        f"lab_ports: [{{host: {port}, container: 8080, proto: tcp}}]\n"
        "lab_endpoints: {probe: 'http://127.0.0.1:" + str(port) + "/'}\n"
        "ansible_connection: ssh\n"
        "ansible_user: root\n"
        'ansible_host: "{{ lab_name }}-{{ inventory_hostname }}"\n'
        'ansible_ssh_common_args: "-F {{ inventory_dir }}/.ssh/config"\n'
    )
    play = inv.parent / "probe.yml"
    play.write_text(
        "- name: Probe\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Write a marker over SSH\n"
        "      ansible.builtin.copy: {content: converged, dest: /srv/marker, mode: '0644'}\n"
    )
    _pacsctl("lab", "down", "--purge", "--inventory", str(inv))
    yield inv, play, port
    _pacsctl("lab", "down", "--purge", "--inventory", str(inv))


def test_up_creates_a_running_systemd_host_and_converges(test_lab):
    inv, play, _port = test_lab
    proc = _pacsctl("lab", "up", "--inventory", str(inv), "--playbook", str(play))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "created" in proc.stderr
    marker = _podman("exec", "pacs-labtest-node1", "cat", "/srv/marker")
    assert marker.stdout == "converged"
    state = _podman("exec", "pacs-labtest-node1", "systemctl", "is-system-running")
    assert state.stdout.strip() == "running"


def test_ssh_reaches_the_host_with_its_pinned_host_key(test_lab):
    inv, _play, _port = test_lab
    ssh = inv / ".ssh"
    assert {p.name for p in ssh.iterdir()} >= {
        "id_ed25519",
        "id_ed25519.pub",
        "known_hosts",
        "config",
    }
    assert (ssh / "id_ed25519").stat().st_mode & 0o077 == 0
    host_key = _podman("exec", "pacs-labtest-node1", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
    key_type, key_data = host_key.stdout.split()[:2]
    assert (ssh / "known_hosts").read_text() == f"pacs-labtest-node1 {key_type} {key_data}\n"
    login = _ssh(ssh / "config", "hostname")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "node1"


def test_a_host_key_other_than_the_pinned_one_is_refused(test_lab, tmp_path):
    inv, _play, _port = test_lab
    config = (inv / ".ssh/config").read_text()
    wrong = tmp_path / "known_hosts"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    wrong.write_text("pacs-labtest-node1 " + (tmp_path / "k.pub").read_text())
    (tmp_path / "config").write_text(config.replace(str(inv / ".ssh/known_hosts"), str(wrong)))
    login = _ssh(tmp_path / "config", "true")
    assert login.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in login.stderr


def test_an_unreachable_host_is_named_with_its_address_and_the_fix(test_lab, tmp_path):
    inv, play, _port = test_lab
    config = (inv / ".ssh/config").read_text()
    # An address on the lab network that no host has.
    broken = tmp_path / "inventory"
    shutil.copytree(inv, broken)
    (broken / ".ssh/config").write_text(re.sub(r"HostName \S+", "HostName 192.0.2.1", config))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(broken), str(play)],
        capture_output=True,
        text=True,
        check=False,
        env={
            **lab.podman_env(),
            "ANSIBLE_TIMEOUT": "3",
            # No shared connection from an earlier run may answer for it.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none",
        },
    )
    assert proc.returncode == 4
    assert "cannot reach node1 (192.0.2.1)" in proc.stderr
    assert f"pacsctl lab status --inventory {broken}" in proc.stderr
    assert f"pacsctl lab up --inventory {broken}" in proc.stderr


def test_status_table_has_one_row_per_service(test_lab):
    inv, _play, port = test_lab
    proc = _pacsctl("lab", "status", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    assert f"http://127.0.0.1:{port}/" in proc.stdout
    assert "ssh -F" in proc.stdout
    assert "{" not in proc.stdout


def test_status_json_lists_hosts_and_endpoints(test_lab):
    inv, _play, port = test_lab
    proc = _pacsctl("lab", "status", "--format", "json", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    address = data["hosts"][0]["address"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address)
    assert data["hosts"] == [
        {
            "name": "node1",
            "container": "pacs-labtest-node1",
            "site": "main",
            "network": "pacs-labtest",
            "state": "running",
            "address": address,
            "ssh": f"ssh -F {inv / '.ssh/config'} pacs-labtest-node1",
            "debian": "13",
            "image": "localhost/pacs-libre-lab:debian13",
            "ports": [{"host": f"127.0.0.1:{port}", "container": 8080, "proto": "tcp"}],
        }
    ]
    assert data["endpoints"] == {"probe": f"http://127.0.0.1:{port}/"}


def test_published_port_is_on_loopback_only(test_lab):
    _inv, _play, port = test_lab
    proc = _podman("port", "pacs-labtest-node1")
    assert proc.stdout.strip() == f"8080/tcp -> 127.0.0.1:{port}"


def test_hosts_share_the_apt_cache(test_lab):
    for folder, shared in (
        ("/var/cache/apt/archives", "/var/cache/pacs-libre-apt/trixie/archives"),
        # Lists stay the host's own, fresh from the image build.
        ("/var/lib/apt/lists", "/var/lib/apt/lists"),
    ):
        proc = _podman("exec", "pacs-labtest-node1", "readlink", "-f", folder)
        assert proc.stdout.strip() == shared
    mounts = _podman(
        "inspect", "--format", "{{range .Mounts}}{{.Source}} {{end}}", "pacs-labtest-node1"
    ).stdout
    assert str(lab.cache_dir() / "apt") in mounts.split()


def test_second_up_reuses_the_running_host(test_lab):
    inv, _play, _port = test_lab
    proc = _pacsctl("lab", "up", "--no-converge", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    assert "reused (running)" in proc.stderr


def test_a_stopped_leftover_is_started_again(test_lab):
    inv, _play, _port = test_lab
    assert _podman("stop", "--time", "5", "pacs-labtest-node1").returncode == 0
    proc = _pacsctl("lab", "up", "--no-converge", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    assert "restarted" in proc.stderr
    # The volume kept its data through the stop.
    marker = _podman("exec", "pacs-labtest-node1", "cat", "/srv/marker")
    assert marker.stdout == "converged"


def test_down_purge_removes_only_this_labs_objects(test_lab):
    inv, _play, _port = test_lab
    proc = _pacsctl("lab", "down", "--purge", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    assert "removed host pacs-labtest-node1" in proc.stderr
    assert "removed volume pacs-labtest-node1-srv" in proc.stderr
    assert not (inv / ".ssh").exists()
    left = _podman(
        "ps", "-a", "--filter", "label=org.pacs-libre.lab=pacs-labtest", "--format", "{{.Names}}"
    )
    assert left.stdout.strip() == ""
