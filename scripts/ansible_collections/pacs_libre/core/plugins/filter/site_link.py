"""Filters of the site links: ``{{ site_links | pacs_libre.core.site_link_ends(hostvars) }}``.

Part of the collection pacs_libre.core (docs/architecture.md, "Shared Python"); the rules
themselves are in ``plugins/module_utils/site_link.py``.

* ``site_link_ends(site_links, hostvars=None)``: each link, in order, as
  ``{name, interface, main, peripheral, main_address, peripheral_address, prefixlen, port,
  endpoint, peripheral_sources}``; without ``hostvars`` (the hosts' facts), ``endpoint`` and
  ``peripheral_sources`` stay as the inventory wrote them (empty by default).
* ``site_link_local(ends, inventory_hostname)``: the links a host is an end of, seen from it.
* ``site_link_problems(site_links)``: what is wrong with the links, one line each.
* ``site_link_public_key(private_key)``: the public key of a WireGuard private key.
* ``site_link_key_problem(key)``: why a text is not a WireGuard key, or ''.
* ``site_link_running_as(probe, end, mtu)``: whether ``ip -json address show dev IF``
  (a registered result) shows the end's address, prefix and MTU (else a restart is needed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible_collections.pacs_libre.core.plugins.module_utils import site_link


def site_link_ends(
    links: Sequence[Mapping[str, Any]], hostvars: Any = None
) -> list[dict[str, Any]]:
    return site_link.ends(list(links or []), hostvars)


def site_link_local(ends: Sequence[Mapping[str, Any]], host: str) -> list[dict[str, Any]]:
    return site_link.local_ends(list(ends or []), str(host))


def site_link_problems(links: Any) -> list[str]:
    return [str(p) for p in site_link.link_problems(links)]


def site_link_public_key(private_key: str) -> str:
    return site_link.public_key(str(private_key))


def site_link_key_problem(key: Any) -> str:
    try:
        site_link.decode_key(str(key))
    except ValueError as exc:
        return str(exc)
    return ""


def site_link_running_as(probe: Mapping[str, Any], end: Mapping[str, Any], mtu: int) -> bool:
    if probe.get("rc") != 0:
        return False
    return site_link.running_as(
        str(probe.get("stdout", "")), str(end["address"]), int(end["prefixlen"]), int(mtu)
    )


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "site_link_ends": site_link_ends,
            "site_link_local": site_link_local,
            "site_link_problems": site_link_problems,
            "site_link_public_key": site_link_public_key,
            "site_link_key_problem": site_link_key_problem,
            "site_link_running_as": site_link_running_as,
        }
