"""The WireGuard links between a main site and its peripheral sites: one source of truth.

``site_links`` (group_vars/all/site_links.yml, roles/site_link/README.md) lists the links; each
joins an archive host of the main site (``main``) to the relay of a peripheral site
(``peripheral``) over a small IPv4 network (``tunnel``): its first host address is the main
end, its second the peripheral end. The roles (``site_link``, and ``orthanc`` and ``relay`` for
the tunnel addresses) read the links through the filter ``pacs_libre.core.site_link_ends``,
the inventory checks through ``link_problems``, and ``pacsctl site-link keys`` makes the keys
with ``ensure_keys``.

Keys: only private keys are stored, one folder per link under ``site_link_keys_dir``
(``main.key``, ``peripheral.key``, ``preshared.key``, each the base64 of 32 bytes, as ``wg
genkey`` and ``wg genpsk`` write them); the public keys are derived when needed
(``public_key``). Standard library only, except ``cryptography`` for X25519, imported when a key
is made or derived: Ansible itself depends on it, so every Python that runs Ansible has it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,11}$"
_NAME = re.compile(NAME_PATTERN)
INTERFACE_PREFIX = "wg-"
DEFAULT_PORT = 51820
MAX_PREFIXLEN = 30
KEY_BYTES = 32
#: The files of one link's folder: the two ends' private keys and their preshared key.
KEY_FILES = ("main.key", "peripheral.key", "preshared.key")
NAME_FIX = (
    "name the link with 1 to 12 characters: a lowercase letter, then lowercase letters, digits "
    "or '-' (its interface is wg-<name>, which Linux limits to 15 characters)"
)


def interface_of(name: str) -> str:
    """The interface of a link: wg-<name>."""
    return f"{INTERFACE_PREFIX}{name}"


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a link, or None."""
    if not isinstance(name, str) or not _NAME.match(name):
        return f"link name {name!r} is not 1 to 12 of a-z, 0-9 and '-', starting with a letter"
    return None


def tunnel_network(tunnel: Any) -> ipaddress.IPv4Network:
    """The tunnel's network; ValueError says why it cannot be one (IPv4, prefix <= 30)."""
    if not isinstance(tunnel, str):
        raise ValueError(f"tunnel {tunnel!r} is not a network such as 10.200.1.0/30")
    try:
        network = ipaddress.ip_network(tunnel.strip(), strict=False)
    except ValueError:
        raise ValueError(f"tunnel {tunnel!r} is not a network such as 10.200.1.0/30") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"tunnel {tunnel!r} is not an IPv4 network (the links carry IPv4)")
    if "/" not in tunnel:
        raise ValueError(f"tunnel {tunnel!r} has no prefix length: write it as {network}")
    if str(network) != tunnel.strip():
        raise ValueError(f"tunnel {tunnel!r} is not a network address: did you mean {network}?")
    if network.prefixlen > MAX_PREFIXLEN:
        raise ValueError(
            f"tunnel {tunnel!r} has prefix /{network.prefixlen}: it needs two host addresses "
            f"(a prefix of /{MAX_PREFIXLEN} or shorter)"
        )
    return network


def tunnel_addresses(tunnel: str) -> tuple[str, str, int]:
    """(main end, peripheral end, prefix length): the first two host addresses of the tunnel."""
    network = tunnel_network(tunnel)
    hosts = network.hosts()
    return str(next(hosts)), str(next(hosts)), network.prefixlen


def port_of(link: Mapping[str, Any]) -> int:
    """The UDP port at the main end; ValueError if it is not one."""
    port = link.get("port", DEFAULT_PORT)
    if port is None or port == "":
        return DEFAULT_PORT
    if isinstance(port, bool) or not (
        isinstance(port, int) or (isinstance(port, str) and port.strip().isdigit())
    ):
        raise ValueError(f"port {port!r} is not a UDP port number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is not between 1 and 65535")
    return number


@dataclass(frozen=True)
class LinkProblem:
    """One thing wrong with the list of links: the index, the field, why, and the fix."""

    index: int
    field: str
    message: str
    fix: str

    @property
    def key(self) -> str:
        return f"site_links[{self.index}].{self.field}"

    def __str__(self) -> str:
        return f"{self.key}: {self.message} — fix: {self.fix}"


def _field(link: Mapping[str, Any], name: str) -> str:
    value = link.get(name)
    return value if isinstance(value, str) else ""


def _name_problems(index: int, name: Any, names: dict[str, int]) -> list[LinkProblem]:
    why = name_problem(name)
    if why:
        return [LinkProblem(index, "name", why, NAME_FIX)]
    if name in names:
        return [
            LinkProblem(
                index,
                "name",
                f"link name {name!r} is also site_links[{names[name]}]",
                "give each link its own name (it names its interface and its keys' folder)",
            )
        ]
    names[str(name)] = index
    return []


def _tunnel_problems(
    index: int, tunnel: Any, tunnels: list[tuple[int, ipaddress.IPv4Network]]
) -> list[LinkProblem]:
    try:
        network = tunnel_network(tunnel)
    except ValueError as exc:
        return [
            LinkProblem(
                index,
                "tunnel",
                str(exc),
                "write an IPv4 network of its own for the link, e.g. 10.200.1.0/30",
            )
        ]
    problems = [
        LinkProblem(
            index,
            "tunnel",
            f"tunnel {network} overlaps {earlier}, the tunnel of site_links[{other}]",
            "give each link a network of its own (e.g. 10.200.<n>.0/30)",
        )
        for other, earlier in tunnels
        if network.overlaps(earlier)
    ]
    tunnels.append((index, network))
    return problems


def _port_problems(
    index: int, link: Mapping[str, Any], ports: dict[tuple[str, int], int]
) -> list[LinkProblem]:
    try:
        port = port_of(link)
    except ValueError as exc:
        return [LinkProblem(index, "port", str(exc), "write a UDP port, e.g. 51820 (the default)")]
    main = _field(link, "main")
    if not main:
        return []
    if (main, port) in ports:
        return [
            LinkProblem(
                index,
                "port",
                f"UDP port {port} on {main} is also the port of site_links[{ports[(main, port)]}]",
                "give each link of one main host its own port (e.g. 51821)",
            )
        ]
    ports[(main, port)] = index
    return []


def link_problems(links: Any) -> list[LinkProblem]:
    """What is wrong with the links themselves (not with the inventory around them).

    Names, tunnels, ports, duplicates, overlapping tunnels, ports shared on one main host, and
    a link whose two ends are one host. Entries that are not mappings are left to the type
    checks (the role's argument specs).
    """
    if not isinstance(links, list):
        return []
    problems: list[LinkProblem] = []
    names: dict[str, int] = {}
    ports: dict[tuple[str, int], int] = {}
    tunnels: list[tuple[int, ipaddress.IPv4Network]] = []
    for index, link in enumerate(links):
        if not isinstance(link, Mapping):
            continue
        problems += _name_problems(index, link.get("name"), names)
        main, peripheral = _field(link, "main"), _field(link, "peripheral")
        if main and main == peripheral:
            problems.append(
                LinkProblem(
                    index,
                    "peripheral",
                    f"both ends of the link are {main}",
                    "set peripheral to the relay of the peripheral site, main to the archive host",
                )
            )
        problems += _tunnel_problems(index, link.get("tunnel"), tunnels)
        problems += _port_problems(index, link, ports)
    return problems


def _host_facts(hostvars: Any, host: str) -> Mapping[str, Any]:
    if hostvars is None:
        return {}
    try:
        facts = hostvars[host].get("ansible_facts") or {}
    except (KeyError, TypeError, AttributeError):
        return {}
    return facts if isinstance(facts, Mapping) else {}


def default_ipv4(hostvars: Any, host: str) -> str:
    """A host's default IPv4 address from its facts, or ''."""
    address = (_host_facts(hostvars, host).get("default_ipv4") or {}).get("address")
    return str(address) if address else ""


def ends(links: Sequence[Mapping[str, Any]], hostvars: Any = None) -> list[dict[str, Any]]:
    """Each link, in order, with its interface, addresses and defaults filled in.

    ``endpoint`` defaults to the main host's default IPv4 address, and ``peripheral_sources``
    to the peripheral host's, as /32; both need ``hostvars`` with the hosts' facts, and stay
    empty without them. ValueError on a link that ``link_problems`` refuses.
    """
    problems = link_problems(list(links))
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    result = []
    for link in links:
        if not isinstance(link, Mapping):
            raise ValueError(f"site_links: each link is a mapping, not {link!r}")
        main_address, peripheral_address, prefixlen = tunnel_addresses(str(link["tunnel"]))
        main, peripheral = str(link["main"]), str(link["peripheral"])
        endpoint = str(link.get("endpoint") or "") or default_ipv4(hostvars, main)
        sources = list(link.get("peripheral_sources") or [])
        if not sources:
            address = default_ipv4(hostvars, peripheral)
            sources = [f"{address}/32"] if address else []
        result.append(
            {
                "name": str(link["name"]),
                "interface": interface_of(str(link["name"])),
                "main": main,
                "peripheral": peripheral,
                "main_address": main_address,
                "peripheral_address": peripheral_address,
                "prefixlen": prefixlen,
                "port": port_of(link),
                "endpoint": endpoint,
                "peripheral_sources": [str(s) for s in sources],
            }
        )
    return result


def endpoint_with_port(endpoint: str, port: int) -> str:
    """WireGuard's Endpoint: host:port, an IPv6 address in brackets."""
    if ":" in endpoint and not endpoint.startswith("["):
        return f"[{endpoint}]:{port}"
    return f"{endpoint}:{port}"


def local_ends(all_ends: Sequence[Mapping[str, Any]], host: str) -> list[dict[str, Any]]:
    """The links that ``host`` is an end of, each seen from that end.

    Adds ``side`` (main or peripheral), ``address`` (its own), ``peer`` (the other host),
    ``peer_side``, ``peer_address``; at the peripheral end ``endpoint_port`` (host:port), at
    the main end ``firewall_port`` (an entry of base's firewall_ports: the UDP port, open to
    ``peripheral_sources``).
    """
    mine = []
    for end in all_ends:
        for side, peer_side in (("main", "peripheral"), ("peripheral", "main")):
            if end[side] != host:
                continue
            seen = dict(end)
            seen.update(
                side=side,
                address=end[f"{side}_address"],
                peer=end[peer_side],
                peer_side=peer_side,
                peer_address=end[f"{peer_side}_address"],
                endpoint_port=(
                    endpoint_with_port(str(end["endpoint"]), int(end["port"]))
                    if side == "peripheral" and end["endpoint"]
                    else ""
                ),
                firewall_port=(
                    {
                        "name": f"site-link-{end['name']}",
                        "port": int(end["port"]),
                        "proto": "udp",
                        "sources": list(end["peripheral_sources"]),
                    }
                    if side == "main"
                    else None
                ),
            )
            mine.append(seen)
    return mine


def running_as(ip_json: str, address: str, prefixlen: int, mtu: int) -> bool:
    """Whether an interface, as ``ip -json address show dev IF`` describes it, has exactly
    this IPv4 address and prefix and this MTU: what only wg-quick sets (a change needs a
    restart; anything else, ``wg syncconf``)."""
    try:
        described = json.loads(ip_json)
    except ValueError:
        return False
    if not isinstance(described, list) or len(described) != 1:
        return False
    interface = described[0]
    inet = [
        (a.get("local"), a.get("prefixlen"))
        for a in interface.get("addr_info") or []
        if a.get("family") == "inet"
    ]
    return inet == [(address, int(prefixlen))] and interface.get("mtu") == int(mtu)


# ----------------------------------------------------------------------------- keys


def decode_key(text: str) -> bytes:
    """The 32 bytes of a WireGuard key (base64); ValueError if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a WireGuard key (the base64 of 32 bytes)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"not a WireGuard key: {len(raw)} bytes instead of {KEY_BYTES}")
    return raw


def public_key(private: str) -> str:
    """The public key of a WireGuard private key (X25519), as ``wg pubkey`` prints it."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        PublicFormat,
    )

    key = X25519PrivateKey.from_private_bytes(decode_key(private))
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def new_private_key() -> str:
    """A new private key, as ``wg genkey`` writes it (clamped, base64)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    raw = bytearray(
        X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    )
    # Curve25519 clamping, as wg genkey does (the public key is the same either way).
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode("ascii")


def new_preshared_key() -> str:
    """A new preshared key, as ``wg genpsk`` writes it: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _write_secret(path: Path, text: str) -> None:
    """Write a new file readable by its owner only; never replace an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


def ensure_keys(keys_dir: Path, names: Sequence[str]) -> list[tuple[Path, bool]]:
    """Make the missing keys of each link in ``keys_dir/<name>/``: (path, made) for each file.

    Folders are 0700, keys 0600. An existing file is kept as it is (made is False), whatever it
    holds: encrypted with Ansible Vault, it is still the key.
    """
    done: list[tuple[Path, bool]] = []
    if not keys_dir.exists():
        keys_dir.mkdir(mode=0o700, parents=True)
        keys_dir.chmod(0o700)
    for name in names:
        why = name_problem(name)
        if why:
            raise ValueError(why)
        folder = keys_dir / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        for file in KEY_FILES:
            path = folder / file
            if path.exists():
                done.append((path, False))
                continue
            _write_secret(
                path, new_preshared_key() if file == "preshared.key" else new_private_key()
            )
            done.append((path, True))
    return done


def missing_keys(keys_dir: Path, name: str) -> list[Path]:
    """The key files of a link that do not exist."""
    return [keys_dir / name / file for file in KEY_FILES if not (keys_dir / name / file).is_file()]


_INVENTORY_DIR = re.compile(r"\{\{\s*inventory_dir\s*\}\}")


def resolve_keys_dir(value: Any, inventory_dir: Path | None) -> Path | None:
    """``site_link_keys_dir`` as a path: ``{{ inventory_dir }}`` replaced; None if another
    template remains, or if it needs the inventory folder and that is unknown."""
    text = "{{ inventory_dir }}/site-link" if value in (None, "") else str(value)
    if _INVENTORY_DIR.search(text):
        if inventory_dir is None:
            return None
        text = _INVENTORY_DIR.sub(lambda _m: str(inventory_dir), text)
    if "{{" in text or "{%" in text:
        return None
    return Path(text)
