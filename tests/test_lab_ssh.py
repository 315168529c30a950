"""How lab and test hosts are reached: the SSH files, the status rows, the unreachable hint."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from pacs_libre import lab, lab_ssh
from pacs_libre.lab_cli import endpoint_rows

ROOT = Path(__file__).resolve().parents[1]


def _hints():
    spec = importlib.util.spec_from_file_location(
        "pacs_libre_hints", ROOT / "plugins/callback/pacs_libre_hints.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_pair_is_made_once_and_private(tmp_path):
    key = lab_ssh.ensure_key_pair(tmp_path / "ssh")
    first = key.read_text()
    assert key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "ssh").stat().st_mode & 0o777 == 0o700
    assert lab_ssh.ensure_key_pair(tmp_path / "ssh").read_text() == first
    assert lab_ssh.public_key(tmp_path / "ssh").startswith("ssh-ed25519 ")


def test_config_pins_host_keys_and_never_turns_checking_off(tmp_path):
    folder = tmp_path / "ssh"
    lab_ssh.ensure_key_pair(folder)
    endpoints = [
        lab_ssh.Endpoint("pacs-lab-a", "10.89.0.2", "ssh-ed25519 AAAAa"),
        lab_ssh.Endpoint("pacs-lab-b", "10.89.0.3", "ssh-ed25519 AAAAb"),
    ]
    config = lab_ssh.write_files(folder, endpoints).read_text()
    assert (folder / "known_hosts").read_text() == (
        "pacs-lab-a ssh-ed25519 AAAAa\npacs-lab-b ssh-ed25519 AAAAb\n"
    )
    assert "StrictHostKeyChecking yes" in config
    assert "StrictHostKeyChecking no" not in config and "/dev/null" not in config
    assert f"UserKnownHostsFile {folder.resolve() / 'known_hosts'}" in config
    # ssh itself reads the file as we mean it.
    effective = subprocess.run(
        ["ssh", "-G", "-F", str(folder / "config"), "pacs-lab-b"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "hostname 10.89.0.3" in effective
    assert "hostkeyalias pacs-lab-b" in effective
    assert "stricthostkeychecking true" in effective
    assert "user root" in effective


def test_a_rewrite_keeps_only_the_hosts_that_run_now(tmp_path):
    folder = tmp_path / "ssh"
    lab_ssh.ensure_key_pair(folder)
    lab_ssh.write_files(folder, [lab_ssh.Endpoint("old", "10.0.0.9", "ssh-ed25519 AAAAo")])
    lab_ssh.write_files(folder, [lab_ssh.Endpoint("new", "10.0.0.8", "ssh-ed25519 AAAAn")])
    assert "old" not in (folder / "known_hosts").read_text()
    assert "Host old" not in (folder / "config").read_text()


def test_authorize_script_replaces_only_the_labs_own_key(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAAperson admin@dsi\nssh-ed25519 AAAAold pacs-libre-lab\n")
    script = lab_ssh.authorize_script("ssh-ed25519 AAAAnew").replace("/root/.ssh", str(tmp_path))
    script = script.replace(f"f={tmp_path}/authorized_keys", f"f={keys}")
    subprocess.run(["sh", "-c", script], check=True)
    assert (
        keys.read_text() == "ssh-ed25519 AAAAperson admin@dsi\nssh-ed25519 AAAAnew pacs-libre-lab\n"
    )


def test_scenario_lab_comes_from_the_platforms(tmp_path):
    the_lab = lab.scenario_lab(
        [
            {
                "name": "pacs-mol-x-d12",
                "image": "localhost/pacs-libre-lab:debian12",
                "network": "pacs-mol-x",
                "volumes": ["/a:/b"],
                "capabilities": ["NET_ADMIN"],
            }
        ],
        tmp_path,
    )
    host = the_lab.hosts[0]
    assert (the_lab.name, the_lab.network, the_lab.ssh_dir) == (
        "pacs-mol-x",
        "pacs-mol-x",
        tmp_path,
    )
    assert (host.container, host.debian, host.srv_volume, host.volumes) == (
        "pacs-mol-x-d12",
        "12",
        False,
        ["/a:/b"],
    )


def test_a_scenario_host_of_another_site_has_its_own_network(tmp_path):
    platforms = [
        {"name": "main", "image": "localhost/pacs-libre-lab:debian13", "network": "n-main"},
        {
            "name": "relay",
            "image": "localhost/pacs-libre-lab:debian13",
            "network": "n-peripheral",
            "devices": ["/dev/net/tun"],
        },
    ]
    the_lab = lab.scenario_lab(platforms, tmp_path)
    main, relay = the_lab.hosts
    assert the_lab.name == the_lab.network == "n-main"
    assert the_lab.networks == ["n-main", "n-peripheral"]
    assert (the_lab.network_of(main), the_lab.network_of(relay)) == ("n-main", "n-peripheral")
    assert (main.devices, relay.devices) == ([], ["/dev/net/tun"])


def test_a_scenario_platform_without_a_network_is_refused_by_name(tmp_path):
    platforms = [
        {"name": "a", "image": "i", "network": "n1"},
        {"name": "b", "image": "i"},
    ]
    try:
        lab.scenario_lab(platforms, tmp_path)
    except lab.UserError as exc:
        assert "['b']" in str(exc) and "'network'" in str(exc)
    else:
        raise AssertionError("a platform without a network was accepted")


def test_status_rows_are_readable_not_json():
    rows = endpoint_rows(
        {
            "dicom": {
                "host": "127.0.0.1",
                "port": 4242,
                "aet": "LABPACS",
                "test_calling_aets": ["A", "B"],
            },
            "viewer": "https://127.0.0.1:8443/",
        }
    )
    assert rows == [
        ("dicom", "AE title LABPACS at 127.0.0.1:4242"),
        ("  test calling aets", "A, B"),
        ("viewer", "https://127.0.0.1:8443/"),
    ]
    assert not any("{" in where for _service, where in rows)


def test_status_shows_the_web_gateway_url_and_its_user():
    rows = endpoint_rows(
        {
            "web": {
                "url": "https://127.0.0.1:8443/",
                "user": "lab-radiologist",
                "password_file": "inventories/lab/.credentials/pacs-web/lab-radiologist",
            }
        }
    )
    assert rows == [
        ("web", "https://127.0.0.1:8443/"),
        ("  user", "lab-radiologist"),
        ("  password file", "inventories/lab/.credentials/pacs-web/lab-radiologist"),
    ]


def test_unreachable_hint_names_host_address_and_the_lab_fix():
    hints = _hints()
    message = (
        "Failed to connect to the host via ssh: "
        "ssh: connect to host 10.89.1.2 port 22: Connection timed out"
    )
    line = hints.hint(
        "pacs1",
        "10.89.1.2",
        hints._reason(message),
        {"lab_name": "pacs-lab", "inventory_dir": "/x/inventories/lab"},
    )
    assert line.startswith("cannot reach pacs1 (10.89.1.2): connect to host 10.89.1.2 port 22")
    assert "`pacsctl lab status --inventory /x/inventories/lab`" in line
    assert "`pacsctl lab up --inventory /x/inventories/lab`" in line


def test_unreachable_hint_for_a_real_server_says_what_to_check(monkeypatch):
    monkeypatch.delenv("MOLECULE_SCENARIO_NAME", raising=False)
    hints = _hints()
    line = hints.hint("pacs-db", "", "Host key verification failed.", {})
    assert "not the one pinned" in line
    assert "base_admin_networks" in line and "pacsctl" not in line


def test_removing_the_ssh_files_leaves_anything_else(tmp_path):
    folder = tmp_path / "ssh"
    lab_ssh.ensure_key_pair(folder)
    lab_ssh.write_files(folder, [lab_ssh.Endpoint("a", "10.0.0.2", "ssh-ed25519 AAAAa")])
    (folder / "someone-elses-key").write_text("keep me")
    assert lab_ssh.remove_files(folder)
    assert [p.name for p in folder.iterdir()] == ["someone-elses-key"]
    (folder / "someone-elses-key").unlink()
    lab_ssh.ensure_key_pair(folder)
    assert lab_ssh.remove_files(folder)
    assert not folder.exists()


def test_a_lab_without_ssh_removes_no_ssh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("a person's key")
    stock = lab.Lab(inventory=tmp_path, name="pacs-none", network="pacs-none", hosts=[])
    assert stock.ssh_dir is None
    done = lab._remove_network_and_keys(stock)
    assert not any("SSH" in line for line in done)
    assert (tmp_path / ".ssh" / "id_ed25519").read_text() == "a person's key"
