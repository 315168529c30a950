"""Filters of the orthanc role: what the role derives from the inventory, in tested Python.

The parts of orthanc.json (the nodes, with the derived ones merged into the inventory's; the
routing rules), the DICOM TLS tunnels (one list for orthanc.json and stunnel's configuration),
the firewall's ports and the sandbox test. Plain functions, tested in
tests/test_orthanc_config.py; vars/main.yml only calls them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RIGHTS = ("echo", "store", "find", "move", "get")
DEFAULT_RIGHTS = ("echo", "store")


def _is_tls(node: Mapping[str, Any]) -> bool:
    return bool(node.get("tls"))


def orthanc_tls_tunnels(
    nodes: Sequence[Mapping[str, Any]], tls_base_port: int = 11200
) -> list[dict[str, Any]]:
    """The stunnel client tunnels: one per node with ``tls: true``, in the nodes' order.

    Orthanc reaches such a node at 127.0.0.1:``local_port`` (tls_base_port + its rank among
    the TLS nodes); stunnel carries it to the node's host and port over TLS.
    """
    return [
        {
            "name": str(node["name"]),
            "host": str(node["host"]),
            "port": int(node["port"]),
            "local_port": int(tls_base_port) + rank,
            "host_is_ip": _is_ip(str(node["host"])),
        }
        for rank, node in enumerate(n for n in nodes if _is_tls(n))
    ]


def orthanc_modalities(
    nodes: Sequence[Mapping[str, Any]], tls_base_port: int = 11200
) -> dict[str, dict[str, Any]]:
    """DicomModalities: each declared node (pacs_dicom_nodes) with its own rights.

    A node with ``tls: true`` is reached through stunnel both ways: Orthanc sees it
    on 127.0.0.1, at the local end of its tunnel (:func:`orthanc_tls_tunnels`).
    """
    tunnels = {t["name"]: t for t in orthanc_tls_tunnels(nodes, tls_base_port)}
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        rights = set(node.get("rights") or DEFAULT_RIGHTS)
        unknown = rights - set(RIGHTS)
        if unknown:
            raise ValueError(
                f"node {node.get('name')}: unknown rights {sorted(unknown)}; use {RIGHTS}"
            )
        if _is_tls(node):
            host, port = "127.0.0.1", tunnels[str(node["name"])]["local_port"]
        else:
            host, port = str(node["host"]), int(node["port"])
        out[str(node["name"])] = {
            "AET": str(node["aet"]),
            "Host": host,
            "Port": port,
            "Manufacturer": "Generic",
            "AllowEcho": "echo" in rights,
            "AllowStore": "store" in rights,
            "AllowFind": "find" in rights,
            "AllowMove": "move" in rights,
            "AllowGet": "get" in rights,
            "AllowFindWorklist": False,
            "AllowStorageCommitment": False,
            "AllowTranscoding": True,
        }
    return out


def _aet_key(node: Mapping[str, Any]) -> str:
    return str(node.get("aet", "")).strip().upper()


def orthanc_merge_nodes(
    declared: Sequence[Mapping[str, Any]], derived: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The inventory's nodes (pacs_dicom_nodes), then the derived ones (the monitoring
    probe, the relays, the relay's main archive) that it does not list already.

    A derived node is left out when a node before it has its AE title (compared as DICOM
    does, without case or padding) or its name: the inventory's own description of a
    node wins, and no AE title is declared twice.
    """
    out = [dict(node) for node in declared]
    aets = {_aet_key(node) for node in out}
    names = {str(node.get("name")) for node in out}
    for node in derived:
        if _aet_key(node) in aets or str(node.get("name")) in names:
            continue
        out.append(dict(node))
        aets.add(_aet_key(node))
        names.add(str(node.get("name")))
    return out


def orthanc_routing_rules(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The routing rules (orthanc_routing_rules) as the routing service reads them."""
    return [
        {
            "Name": str(rule["name"]),
            "Destination": str(rule["destination"]),
            "Modalities": [str(m) for m in rule.get("modalities") or []],
            "CallingAets": [str(a) for a in rule.get("calling_aets") or []],
            "Tags": {str(k): str(v) for k, v in (rule.get("tags") or {}).items()},
        }
        for rule in rules
    ]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def orthanc_node_addresses(nodes: Sequence[Mapping[str, Any]], *, tls: bool) -> list[str]:
    """The hosts of the plain nodes (``tls=False``) or of the TLS nodes, once each.

    Plain nodes: those that do not say ``tls`` first, then those that say ``tls: false``
    (the order the firewall's file has always listed them in).
    """
    if tls:
        hosts = [n["host"] for n in nodes if _is_tls(n)]
    else:
        hosts = [n["host"] for n in nodes if "tls" not in n]
        hosts += [n["host"] for n in nodes if "tls" in n and not _is_tls(n)]
    return list(dict.fromkeys(str(h) for h in hosts))


def orthanc_dns_nodes(nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The nodes' hosts that are names, not addresses (the firewall needs addresses)."""
    return [h for h in dict.fromkeys(str(n["host"]) for n in nodes) if not _is_ip(h)]


def orthanc_firewall_ports(
    nodes: Sequence[Mapping[str, Any]],
    *,
    dicom_port: int,
    tls_port: int,
    tls_enabled: bool,
    networks: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """base's firewall_ports: DICOM to ``networks``, else to the plain nodes; DICOM TLS to
    ``networks``, else to the TLS nodes. A port nobody may reach is left out (stays closed)."""
    ports = [
        {
            "name": "dicom",
            "port": int(dicom_port),
            "proto": "tcp",
            "sources": list(networks) or orthanc_node_addresses(nodes, tls=False),
        }
    ]
    if tls_enabled:
        ports.append(
            {
                "name": "dicom-tls",
                "port": int(tls_port),
                "proto": "tcp",
                "sources": list(networks) or orthanc_node_addresses(nodes, tls=True),
            }
        )
    return [port for port in ports if port["sources"]]


_CAP_SYS_ADMIN = 21


def orthanc_can_sandbox(capbnd: Any) -> bool:
    """Whether PID 1's bounding set (``CapBnd:`` of /proc/1/status, hex) has CAP_SYS_ADMIN,
    which systemd needs to build a service's namespaces and kernel-level sandbox."""
    try:
        bits = int(str(capbnd).strip() or "0", 16)
    except ValueError:
        return False
    return bool(bits >> _CAP_SYS_ADMIN & 1)


def libpq_conninfo(params: Mapping[str, Any]) -> str:
    """A libpq keyword/value connection string, each value quoted (PQconnectdb's format).

    Orthanc's PostgreSQL plugin hands ``ConnectionUri`` to libpq as it is; this is how
    pacs-libre sets what the plugin's own settings cannot (sslmode=verify-full and
    sslrootcert). Values are single-quoted with \\ and \' escaped, so that a password
    may hold any character.
    """
    parts = []
    for key, value in params.items():
        if not str(key).isidentifier():
            raise ValueError(f"not a libpq keyword: {key!r}")
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "orthanc_modalities": orthanc_modalities,
            "orthanc_routing_rules": orthanc_routing_rules,
            "orthanc_merge_nodes": orthanc_merge_nodes,
            "orthanc_tls_tunnels": orthanc_tls_tunnels,
            "orthanc_node_addresses": orthanc_node_addresses,
            "orthanc_dns_nodes": orthanc_dns_nodes,
            "orthanc_firewall_ports": orthanc_firewall_ports,
            "orthanc_can_sandbox": orthanc_can_sandbox,
            "libpq_conninfo": libpq_conninfo,
        }
