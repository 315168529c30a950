"""`pacsctl lab` against real podman: a throwaway lab of its own (pacs-labtest-*).

It never touches a running lab: its hosts, network and volumes carry their own
names, and it publishes a port picked free on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
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
        "ansible_connection: containers.podman.podman\n"
        'ansible_host: "{{ lab_name }}-{{ inventory_hostname }}"\n'
    )
    play = inv.parent / "probe.yml"
    play.write_text(
        "- name: Probe\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Write a marker through the podman connection\n"
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


def test_status_json_lists_hosts_and_endpoints(test_lab):
    inv, _play, port = test_lab
    proc = _pacsctl("lab", "status", "--format", "json", "--inventory", str(inv))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["hosts"] == [
        {
            "name": "node1",
            "container": "pacs-labtest-node1",
            "state": "running",
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
    left = _podman(
        "ps", "-a", "--filter", "label=org.pacs-libre.lab=pacs-labtest", "--format", "{{.Names}}"
    )
    assert left.stdout.strip() == ""
