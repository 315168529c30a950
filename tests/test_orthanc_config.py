"""The parts of orthanc.json that the orthanc role builds from the inventory."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROLE = Path(__file__).resolve().parents[1] / "roles/orthanc"
_spec = importlib.util.spec_from_file_location(
    "orthanc_config", ROLE / "filter_plugins/orthanc_config.py"
)
assert _spec and _spec.loader
config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config)

NODES = [
    {"name": "ct", "kind": "modality", "aet": "CT_URG", "host": "10.0.0.1", "port": 104},
    {
        "name": "horos",
        "kind": "workstation",
        "aet": "HOROS1",
        "host": "10.0.0.2",
        "port": 11112,
        "rights": ["echo", "find", "move"],
    },
    {
        "name": "site-b",
        "kind": "peer",
        "aet": "PACS_B",
        "host": "10.9.0.1",
        "port": 4242,
        "tls": True,
    },
]


def test_each_node_has_its_own_rights():
    modalities = config.orthanc_modalities(NODES)
    ct, horos = modalities["ct"], modalities["horos"]
    assert (ct["AET"], ct["Host"], ct["Port"]) == ("CT_URG", "10.0.0.1", 104)
    # Default rights: a modality echoes and stores, nothing else.
    assert ct["AllowStore"] and ct["AllowEcho"]
    assert not (ct["AllowFind"] or ct["AllowMove"] or ct["AllowGet"])
    assert horos["AllowFind"] and horos["AllowMove"]
    assert not (horos["AllowStore"] or horos["AllowGet"])


def test_a_tls_node_is_reached_through_its_local_tunnel():
    site_b = config.orthanc_modalities(NODES, 11200)["site-b"]
    assert (site_b["Host"], site_b["Port"]) == ("127.0.0.1", 11200)


def test_an_unknown_right_is_refused():
    with pytest.raises(ValueError, match="unknown rights"):
        config.orthanc_modalities([{**NODES[0], "rights": ["store", "delete"]}])


def test_routing_rules_as_the_service_reads_them():
    rules = config.orthanc_routing_rules(
        [{"name": "cr", "destination": "horos", "modalities": ["CR"]}]
    )
    assert rules == [
        {"Name": "cr", "Destination": "horos", "Modalities": ["CR"], "CallingAets": [], "Tags": {}}
    ]


CHECKER = ROLE / "templates/pacs-orthanc-check-config.j2"


def _checker(tmp_path: Path) -> Path:
    # The template's only Jinja is the managed header.
    script = tmp_path / "check"
    script.write_text(
        "\n".join(line for line in CHECKER.read_text().splitlines() if "{{" not in line) + "\n"
    )
    return script


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    candidate = tmp_path / "orthanc.json"
    candidate.write_text(text)
    return subprocess.run(
        [sys.executable, str(_checker(tmp_path)), str(candidate)],
        capture_output=True,
        text=True,
        check=False,
    )


GOOD = {
    "DicomAet": "PACS_CHX",
    "DicomPort": 4242,
    "HttpPort": 8042,
    "Plugins": [],
    "DicomModalities": config.orthanc_modalities(NODES),
    "PostgreSQL": {"EnableIndex": True, "Password": "x"},
}


def test_the_checker_accepts_a_good_file_with_comments(tmp_path: Path):
    result = _check(tmp_path, "// managed\n" + json.dumps(GOOD))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DicomAet": "pacs with space"}, "DicomAet"),
        ({"DicomPort": "4242"}, "DicomPort"),
        ({"Plugins": ["/nowhere/libX.so"]}, "does not exist"),
        ({"DicomModalities": "{'ct': {}}"}, "not an object"),
        ({"PostgreSQL": {"EnableIndex": True, "Password": ""}}, "Password is empty"),
    ],
)
def test_the_checker_refuses_what_would_keep_orthanc_down(tmp_path: Path, change, message):
    result = _check(tmp_path, json.dumps({**GOOD, **change}))
    assert result.returncode == 1
    assert message in result.stderr


def test_the_checker_refuses_broken_json(tmp_path: Path):
    result = _check(tmp_path, '{"DicomAet": "X",}')
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr


# --- What vars/main.yml derives: tunnels, firewall, sandbox. ---------------------------------

MIXED = [
    {"name": "ct", "aet": "CT", "host": "10.0.0.1", "port": 104},
    {"name": "peer", "aet": "PEER", "host": "pacs.chu.fr", "port": 2762, "tls": True},
    {"name": "us", "aet": "US", "host": "10.0.0.3", "port": 104, "tls": False},
    {"name": "site2", "aet": "SITE2", "host": "10.9.0.5", "port": 2762, "tls": True},
    {"name": "ct2", "aet": "CT2", "host": "10.0.0.1", "port": 105},
]


def test_tls_tunnels_are_numbered_once_for_orthanc_and_stunnel():
    tunnels = config.orthanc_tls_tunnels(MIXED, 11200)
    assert [(t["name"], t["local_port"], t["host_is_ip"]) for t in tunnels] == [
        ("peer", 11200, False),
        ("site2", 11201, True),
    ]
    modalities = config.orthanc_modalities(MIXED, 11200)
    for tunnel in tunnels:
        assert modalities[tunnel["name"]]["Host"] == "127.0.0.1"
        assert modalities[tunnel["name"]]["Port"] == tunnel["local_port"]
    assert modalities["us"]["Host"] == "10.0.0.3"


def test_firewall_opens_each_port_to_its_own_nodes_or_to_the_networks():
    ports = config.orthanc_firewall_ports(MIXED, dicom_port=4242, tls_port=2762, tls_enabled=True)
    assert ports == [
        {"name": "dicom", "port": 4242, "proto": "tcp", "sources": ["10.0.0.1", "10.0.0.3"]},
        {
            "name": "dicom-tls",
            "port": 2762,
            "proto": "tcp",
            "sources": ["pacs.chu.fr", "10.9.0.5"],
        },
    ]
    nets = ["10.20.0.0/16"]
    ports = config.orthanc_firewall_ports(
        MIXED, dicom_port=4242, tls_port=2762, tls_enabled=False, networks=nets
    )
    assert ports == [{"name": "dicom", "port": 4242, "proto": "tcp", "sources": nets}]


def test_a_port_that_nobody_may_reach_stays_closed():
    only_tls = [n for n in MIXED if n.get("tls")]
    ports = config.orthanc_firewall_ports(
        only_tls, dicom_port=4242, tls_port=2762, tls_enabled=True
    )
    assert [p["name"] for p in ports] == ["dicom-tls"]
    assert config.orthanc_firewall_ports([], dicom_port=4242, tls_port=2762, tls_enabled=True) == []


def test_nodes_named_by_dns_are_found():
    assert config.orthanc_dns_nodes(MIXED) == ["pacs.chu.fr"]
    assert config.orthanc_dns_nodes([{"host": "::1"}, {"host": "fe80::1"}]) == []


@pytest.mark.parametrize(
    ("capbnd", "expected"),
    [
        ("000001ffffffffff", True),  # a server or VM: every capability
        ("00000000a80425fb", False),  # podman's default set: no CAP_SYS_ADMIN
        ("00000000a82425fb", True),  # the same with CAP_SYS_ADMIN (bit 21)
        ("0000000000200000", True),
        ("", False),
        ("garbage", False),
    ],
)
def test_the_sandbox_needs_cap_sys_admin_in_pid1s_bounding_set(capbnd, expected):
    assert config.orthanc_can_sandbox(capbnd) is expected


def test_the_index_connection_string_quotes_every_value() -> None:
    conninfo = config.libpq_conninfo(
        {
            "host": "pacs-db.ch-exemple.fr",
            "port": 5432,
            "password": "it's a \\ secret",
            "sslmode": "verify-full",
            "sslrootcert": "/etc/pacs-libre/pki/ca.crt",
        }
    )
    assert conninfo == (
        "host='pacs-db.ch-exemple.fr' port='5432' password='it\\'s a \\\\ secret' "
        "sslmode='verify-full' sslrootcert='/etc/pacs-libre/pki/ca.crt'"
    )
    with pytest.raises(ValueError, match="not a libpq keyword"):
        config.libpq_conninfo({"host name": "x"})


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("host='db' user='orthanc' password='s3cret' sslmode='verify-full'", True),
        ("host='db' user='orthanc' password='' sslmode='verify-full'", False),
        ("host='db' user='orthanc' sslmode='verify-full'", False),
    ],
)
def test_the_checker_reads_the_password_of_a_connection_string(
    tmp_path: Path, uri: str, ok: bool
) -> None:
    index = {"EnableIndex": True, "ConnectionUri": uri}
    result = _check(tmp_path, json.dumps({**GOOD, "PostgreSQL": index}))
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert "Password is empty" in result.stderr


# --- The checker of stunnel's file (templates/pacs-stunnel-check.j2) --------------------------
# Real stunnel reads it in the role's Molecule scenario; here a stand-in that behaves as
# stunnel 5 does at start (its whole file read first, then its ports bound with
# SO_REUSEADDR) proves the checker's own part: every accept moved to the port it holds,
# the verdict, and stunnel's words named after the candidate.

STUNNEL_CHECKER = ROLE / "templates/pacs-stunnel-check.j2"
FAKE_STUNNEL = """#!/usr/bin/env python3
import re, socket, sys
path = sys.argv[1]
lines = open(path).read().splitlines()
for number, line in enumerate(lines, 1):
    if line.startswith("bogus"):
        print(f'[!] {path}:{number}: "{line}": Specified option name is not valid here',
              file=sys.stderr)
        print("[!] Configuration failed", file=sys.stderr)
        sys.exit(1)
if "inetd" in lines:
    sys.exit(0)
print("[.] Configuration successful", file=sys.stderr)
for line in lines:
    found = re.match(r"accept = (.*):([0-9]+)$", line)
    if found:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((found.group(1), int(found.group(2))))
        except OSError as exc:
            print(f"[.] Binding service [x] to {found.group(1)}:{found.group(2)}: {exc}",
                  file=sys.stderr)
            print("[!] Binding service [x] failed", file=sys.stderr)
            sys.exit(1)
print("listening", file=sys.stderr)
"""
STUNNEL_GOOD = """; managed
foreground = yes
[dicom-tls]
accept = 0.0.0.0:{port}
connect = 127.0.0.1:4242
[node-peer]
client = yes
accept = 127.0.0.1:{port}
connect = 10.9.0.1:2762
"""


def _check_stunnel(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "stunnel4"
    fake.write_text(FAKE_STUNNEL)
    fake.chmod(0o755)
    lines = STUNNEL_CHECKER.read_text().splitlines()
    source = "\n".join(line for line in lines if "{{" not in line)
    assert 'STUNNEL = "/usr/bin/stunnel4"' in source
    script = tmp_path / "pacs-stunnel-check"
    script.write_text(source.replace('"/usr/bin/stunnel4"', repr(str(fake))) + "\n")
    candidate = tmp_path / "candidate.conf"
    candidate.write_text(text)
    result = subprocess.run(
        [sys.executable, str(script), str(candidate)], capture_output=True, text=True, check=False
    )
    assert candidate.read_text() == text
    return result


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_stunnel_checker_accepts_a_file_that_stunnel_reads_whole(tmp_path, free_port):
    # The stand-in would bind the file's own (free) port and listen: it does not get to.
    result = _check_stunnel(tmp_path, STUNNEL_GOOD.format(port=free_port))
    assert result.returncode == 0, result.stderr


def test_the_stunnel_checker_gives_stunnels_words_on_the_candidates_lines(tmp_path, free_port):
    candidate = tmp_path / "candidate.conf"
    result = _check_stunnel(tmp_path, STUNNEL_GOOD.format(port=free_port) + "bogus = yes\n")
    assert result.returncode == 1
    assert (
        f'{candidate}:10: "bogus = yes": Specified option name is not valid here' in result.stderr
    )
    assert "pacs-stunnel-check." not in result.stderr
    assert "stunnel refuses this configuration" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foreground = yes\n[x]\nconnect = 127.0.0.1:4242\n", "no accept"),
        (
            "[x]\naccept = 0.0.0.0:99999\nconnect = 127.0.0.1:4242\n",
            "line 2: accept = 0.0.0.0:99999",
        ),
        # A stunnel that went on to run (its ports bound): not a check the checker trusts.
        ("inetd\n[x]\naccept = 2762\n", "stunnel refuses this configuration (exit status 0)"),
    ],
    ids=["no-accept", "bad-port", "stunnel-ran"],
)
def test_the_stunnel_checker_refuses(tmp_path, text, message):
    result = _check_stunnel(tmp_path, text)
    assert result.returncode == 1
    assert message in result.stderr


# --- Derived nodes (monitoring probe, relays, the relay's main archive). ------------------------


def test_derived_nodes_come_after_the_inventorys():
    derived = [
        {"name": "relay-site-b", "kind": "peer", "aet": "RELAY_B", "host": "10.200.1.2"},
        {"name": "monitoring-mon", "kind": "peer", "aet": "PACSMONITOR", "host": "10.0.0.9"},
    ]
    merged = config.orthanc_merge_nodes(NODES, derived)
    assert [n["name"] for n in merged] == [
        "ct",
        "horos",
        "site-b",
        "relay-site-b",
        "monitoring-mon",
    ]


def test_a_derived_node_the_inventory_lists_already_is_not_added_twice():
    """Same AE title (as DICOM compares them: no case, no padding) or same name: the inventory's
    node wins."""
    derived = [
        {"name": "relay-b", "aet": " pacs_b ", "host": "10.200.1.2"},  # site-b's AE title
        {"name": "horos", "aet": "OTHER", "host": "10.0.0.3"},  # a name the inventory uses
        {"name": "main-archive", "aet": "PACS_GHT", "host": "10.200.1.1", "port": 2762},
        {"name": "main-archive-2", "aet": "PACS_GHT", "host": "10.200.1.1"},
    ]
    merged = config.orthanc_merge_nodes(NODES, derived)
    assert [n["name"] for n in merged] == ["ct", "horos", "site-b", "main-archive"]
    assert merged[2]["host"] == "10.9.0.1"
    # Merged, the nodes still make one DicomModalities entry each.
    assert len(config.orthanc_modalities(merged)) == 4


def test_merging_copies_the_nodes():
    derived = [{"name": "x", "aet": "X", "host": "10.0.0.7"}]
    merged = config.orthanc_merge_nodes([], derived)
    merged[0]["host"] = "changed"
    assert derived[0]["host"] == "10.0.0.7"
