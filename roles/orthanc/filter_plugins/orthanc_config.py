"""Filters of the orthanc role: the parts of orthanc.json built from the inventory.

Plain functions, tested in tests/test_orthanc_config.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

RIGHTS = ("echo", "store", "find", "move", "get")
DEFAULT_RIGHTS = ("echo", "store")


def orthanc_modalities(
    nodes: Sequence[Mapping[str, Any]], tls_base_port: int = 11200
) -> dict[str, dict[str, Any]]:
    """DicomModalities: each declared node (pacs_dicom_nodes) with its own rights.

    A node with ``tls: true`` is reached through stunnel both ways: Orthanc sees it
    on 127.0.0.1, at the local end of its tunnel (tls_base_port + its rank among
    the TLS nodes).
    """
    out: dict[str, dict[str, Any]] = {}
    tls_rank = 0
    for node in nodes:
        rights = set(node.get("rights") or DEFAULT_RIGHTS)
        unknown = rights - set(RIGHTS)
        if unknown:
            raise ValueError(
                f"node {node.get('name')}: unknown rights {sorted(unknown)}; use {RIGHTS}"
            )
        if node.get("tls"):
            host, port = "127.0.0.1", int(tls_base_port) + tls_rank
            tls_rank += 1
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
            "libpq_conninfo": libpq_conninfo,
        }
