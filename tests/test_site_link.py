"""The site links' shared Python: addresses, validation, keys, filters, `pacsctl site-link`."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.pacs_libre.core.plugins.filter import site_link as filters
from ansible_collections.pacs_libre.core.plugins.module_utils import site_link
from pacs_libre.cli import main

ROOT = Path(__file__).resolve().parents[1]
TERRITORY = ROOT / "inventories/example-territory"

# RFC 7748, section 6.1 (Alice and Bob), as base64; `wg pubkey` (wireguard-tools 1.0.20210914,
# Debian 13) prints the same public keys for these private keys.
RFC7748 = [
    (
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=",
        "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
    ),
    (
        "XasIfmJKikt54X+Lg4AO5m87sSkmGLb9HC+LJ/+I4Os=",
        "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=",
    ),
]
# Made by `wg genkey | tee /dev/stderr | wg pubkey` in a lab host (Debian 13).
WG_GENKEY = (
    "cEfdjFkucuED3k1kQkaDpqAlFHUNvUPaDOmyCN9X6lc=",
    "Rotbcr56Ji6kvODkGjtiBWx4Xch26lrW230SZCfpHzM=",
)

LINK = {
    "name": "bourg",
    "main": "pacs.ght-exemple.fr",
    "peripheral": "pacs-relay.bourg.ght-exemple.fr",
    "tunnel": "10.200.1.0/30",
}


def link(**changes: Any) -> dict[str, Any]:
    return {**LINK, **changes}


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("tunnel", "expected"),
    [
        ("10.200.1.0/30", ("10.200.1.1", "10.200.1.2", 30)),
        ("10.200.8.0/24", ("10.200.8.1", "10.200.8.2", 24)),
        ("192.168.77.4/30", ("192.168.77.5", "192.168.77.6", 30)),
    ],
)
def test_the_first_two_host_addresses_are_the_main_and_peripheral_ends(
    tunnel: str, expected: tuple[str, str, int]
) -> None:
    assert site_link.tunnel_addresses(tunnel) == expected


@pytest.mark.parametrize(
    ("tunnel", "why"),
    [
        ("10.200.1.0/31", "prefix /31"),
        ("10.200.1.1/32", "prefix /32"),
        ("fd00::/64", "not an IPv4 network"),
        ("10.200.1.1/30", "did you mean 10.200.1.0/30"),
        ("10.200.1.0", "no prefix length"),
        ("bourg", "not a network"),
        (None, "not a network"),
    ],
)
def test_a_tunnel_must_be_an_ipv4_network_with_two_hosts(tunnel: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        site_link.tunnel_network(tunnel)


def test_ends_in_order_with_their_defaults_from_the_facts() -> None:
    hostvars = {
        LINK["main"]: {"ansible_facts": {"default_ipv4": {"address": "10.10.1.10"}}},
        LINK["peripheral"]: {"ansible_facts": {"default_ipv4": {"address": "10.50.1.10"}}},
    }
    second = link(name="vienne", tunnel="10.200.2.0/30", port=51821, endpoint="vpn.example.org")
    second["peripheral_sources"] = ["192.0.2.0/24"]
    assert filters.site_link_ends([LINK, second], hostvars) == [
        {
            "name": "bourg",
            "interface": "wg-bourg",
            "main": LINK["main"],
            "peripheral": LINK["peripheral"],
            "main_address": "10.200.1.1",
            "peripheral_address": "10.200.1.2",
            "prefixlen": 30,
            "port": 51820,
            "endpoint": "10.10.1.10",
            "peripheral_sources": ["10.50.1.10/32"],
        },
        {
            "name": "vienne",
            "interface": "wg-vienne",
            "main": LINK["main"],
            "peripheral": LINK["peripheral"],
            "main_address": "10.200.2.1",
            "peripheral_address": "10.200.2.2",
            "prefixlen": 30,
            "port": 51821,
            "endpoint": "vpn.example.org",
            "peripheral_sources": ["192.0.2.0/24"],
        },
    ]
    # Without facts (the orthanc and relay roles only need the addresses).
    [end] = filters.site_link_ends([LINK])
    assert (end["endpoint"], end["peripheral_sources"]) == ("", [])
    with pytest.raises(ValueError, match=r"site_links\[0\].tunnel"):
        filters.site_link_ends([link(tunnel="10.200.1.0/31")])


def test_each_end_sees_its_own_side() -> None:
    [end] = site_link.ends([link(endpoint="fd00::1", peripheral_sources=["10.50.1.10/32"])])
    [main] = filters.site_link_local([end], LINK["main"])
    [peripheral] = filters.site_link_local([end], LINK["peripheral"])
    assert (main["side"], main["address"], main["peer"], main["peer_address"]) == (
        "main",
        "10.200.1.1",
        LINK["peripheral"],
        "10.200.1.2",
    )
    assert main["firewall_port"] == {
        "name": "site-link-bourg",
        "port": 51820,
        "proto": "udp",
        "sources": ["10.50.1.10/32"],
    }
    assert (peripheral["side"], peripheral["address"], peripheral["peer_side"]) == (
        "peripheral",
        "10.200.1.2",
        "main",
    )
    assert peripheral["endpoint_port"] == "[fd00::1]:51820"
    assert peripheral["firewall_port"] is None
    assert filters.site_link_local([end], "pacs-db.ght-exemple.fr") == []
    assert site_link.endpoint_with_port("pacs.example.org", 51820) == "pacs.example.org:51820"


# ----------------------------------------------------------------------------- validation


def test_link_problems_name_the_key_and_the_fix() -> None:
    links = [
        LINK,
        link(name="Bourg_1"),
        link(name="bourg", tunnel="10.200.1.0/29"),
        link(name="toolongforlinux", tunnel="10.200.3.0/30", peripheral=LINK["main"]),
        link(name="dole", tunnel="10.200.4.0/30", port=70000),
        "not a mapping",
    ]
    found = {(p.key, p.message) for p in site_link.link_problems(links)}
    assert found == {
        (
            "site_links[1].name",
            "link name 'Bourg_1' is not 1 to 12 of a-z, 0-9 and '-', starting with a letter",
        ),
        (
            "site_links[1].port",
            "UDP port 51820 on pacs.ght-exemple.fr is also the port of site_links[0]",
        ),
        (
            "site_links[1].tunnel",
            "tunnel 10.200.1.0/30 overlaps 10.200.1.0/30, the tunnel of site_links[0]",
        ),
        ("site_links[2].name", "link name 'bourg' is also site_links[0]"),
        (
            "site_links[2].tunnel",
            "tunnel 10.200.1.0/29 overlaps 10.200.1.0/30, the tunnel of site_links[0]",
        ),
        (
            "site_links[2].tunnel",
            "tunnel 10.200.1.0/29 overlaps 10.200.1.0/30, the tunnel of site_links[1]",
        ),
        (
            "site_links[2].port",
            "UDP port 51820 on pacs.ght-exemple.fr is also the port of site_links[0]",
        ),
        (
            "site_links[3].name",
            "link name 'toolongforlinux' is not 1 to 12 of a-z, 0-9 and '-', starting with a "
            "letter",
        ),
        ("site_links[3].peripheral", "both ends of the link are pacs.ght-exemple.fr"),
        (
            "site_links[3].port",
            "UDP port 51820 on pacs.ght-exemple.fr is also the port of site_links[0]",
        ),
        ("site_links[4].port", "port 70000 is not between 1 and 65535"),
    }
    assert all(p.fix for p in site_link.link_problems(links))
    assert (
        filters.site_link_problems([LINK, link(name="dole", tunnel="10.200.2.0/30", port=51821)])
        == []
    )
    assert site_link.link_problems("not a list") == []


def test_twelve_characters_make_a_fifteen_character_interface() -> None:
    assert site_link.name_problem("a" * 12) is None
    assert site_link.name_problem("a" * 13) is not None
    assert site_link.name_problem("1bourg") is not None
    assert len(site_link.interface_of("a" * 12)) == 15


def test_the_running_interface_decides_between_reload_and_restart() -> None:
    described = json.dumps(
        [
            {
                "ifname": "wg-bourg",
                "mtu": 1420,
                "addr_info": [
                    {"family": "inet", "local": "10.200.1.1", "prefixlen": 30},
                    {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
                ],
            }
        ]
    )
    end = {"address": "10.200.1.1", "prefixlen": 30}
    assert filters.site_link_running_as({"rc": 0, "stdout": described}, end, 1420)
    assert not filters.site_link_running_as({"rc": 0, "stdout": described}, end, 1400)
    assert not filters.site_link_running_as(
        {"rc": 0, "stdout": described}, {"address": "10.200.1.1", "prefixlen": 29}, 1420
    )
    assert not filters.site_link_running_as({"rc": 1, "stdout": ""}, end, 1420)
    assert not site_link.running_as("not json", "10.200.1.1", 30, 1420)


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(("private", "public"), [*RFC7748, WG_GENKEY])
def test_public_keys_are_those_wg_pubkey_prints(private: str, public: str) -> None:
    assert site_link.public_key(private) == public
    assert filters.site_link_public_key(private + "\n") == public


def test_new_keys_are_wireguard_keys() -> None:
    private = site_link.new_private_key()
    raw = base64.b64decode(private)
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40  # clamped as wg genkey
    assert len(base64.b64decode(site_link.public_key(private))) == 32
    assert len(base64.b64decode(site_link.new_preshared_key())) == 32
    assert site_link.new_preshared_key() != site_link.new_preshared_key()


@pytest.mark.parametrize("text", ["", "bm90IGEga2V5", "!!!", base64.b64encode(b"x" * 31).decode()])
def test_what_is_not_a_key_is_refused(text: str) -> None:
    assert filters.site_link_key_problem(text).startswith("not a WireGuard key")
    with pytest.raises(ValueError, match="not a WireGuard key"):
        site_link.public_key(text)


def test_ensure_keys_makes_the_missing_ones_and_keeps_the_others(tmp_path: Path) -> None:
    keys = tmp_path / "site-link"
    made = site_link.ensure_keys(keys, ["bourg"])
    assert [(p.name, was_made) for p, was_made in made] == [
        ("main.key", True),
        ("peripheral.key", True),
        ("preshared.key", True),
    ]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "bourg").stat().st_mode) == 0o700
    for path, _ in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert filters.site_link_key_problem(path.read_text()) == ""
    main_key = (keys / "bourg/main.key").read_text()
    (keys / "bourg/preshared.key").unlink()
    again = site_link.ensure_keys(keys, ["bourg"])
    assert [was_made for _, was_made in again] == [False, False, True]
    assert (keys / "bourg/main.key").read_text() == main_key
    assert site_link.missing_keys(keys, "bourg") == []
    assert [p.name for p in site_link.missing_keys(keys, "dole")] == list(site_link.KEY_FILES)
    with pytest.raises(ValueError, match="link name"):
        site_link.ensure_keys(keys, ["../etc"])


def test_the_keys_folder_is_resolved_beside_the_inventory() -> None:
    inv = Path("/srv/inv")
    assert site_link.resolve_keys_dir(None, inv) == inv / "site-link"
    assert site_link.resolve_keys_dir("{{inventory_dir}}/keys", inv) == inv / "keys"
    assert site_link.resolve_keys_dir("/etc/keys", None) == Path("/etc/keys")
    assert site_link.resolve_keys_dir("{{ inventory_dir }}/site-link", None) is None
    assert site_link.resolve_keys_dir("{{ lookup('env', 'HOME') }}/keys", inv) is None


# ----------------------------------------------------------------------------- pacsctl site-link


def test_pacsctl_site_link_keys_on_a_copy_of_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "territory"
    shutil.copytree(TERRITORY, inv)
    assert main(["site-link", "keys", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "3 key(s) made, 0 kept" in out
    folder = inv / "site-link/bourg"
    assert sorted(p.name for p in folder.iterdir()) == sorted(site_link.KEY_FILES)
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert main(["site-link", "keys", str(inv)]) == 0
    assert "0 key(s) made, 3 kept" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in folder.iterdir()} == before


def test_pacsctl_site_link_keys_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "territory"
    shutil.copytree(TERRITORY, inv)
    links = inv / "group_vars/all/site_links.yml"
    data = yaml.safe_load(links.read_text())
    data["site_links"][0]["name"] = "Bourg"
    links.write_text(yaml.safe_dump(data))
    assert main(["site-link", "keys", str(inv)]) == 2
    assert "site_links[0].name: link name 'Bourg'" in capsys.readouterr().err
    data["site_links"][0]["name"] = "bourg"
    data["site_link_keys_dir"] = "{{ lookup('env', 'KEYS') }}"
    links.write_text(yaml.safe_dump(data))
    assert main(["site-link", "keys", str(inv)]) == 2
    assert "pass --keys-dir DIR" in capsys.readouterr().err
    assert main(["site-link", "keys", str(inv), "--keys-dir", str(tmp_path / "keys")]) == 0
    assert (tmp_path / "keys/bourg/preshared.key").is_file()
    links.unlink()
    assert main(["site-link", "keys", str(inv)]) == 2
    assert "no site_links" in capsys.readouterr().err
