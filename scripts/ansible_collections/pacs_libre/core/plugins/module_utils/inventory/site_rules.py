"""The rules of the site links (roles/site_link) and of the relays that they join to the archive.

Apart from ``rules`` only by size: the same kind of rule, one function each, every problem with
file, key and fix; ``report`` runs them with the others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.pacs_libre.core.plugins.module_utils import site_link
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import Problem
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.rules import ARCHIVE_GROUP
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.sources import InventoryView
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.typecheck import (
    closest,
    is_template,
)

RELAY_GROUP = "pacs_relay"
_KEYS_FIX = "make them: `pacsctl site-link keys {inventory}` (roles/site_link/README.md, 'Keys')"


@dataclass(frozen=True)
class LinkSettings:
    """One ``site_links`` value as a file defines it, and where its keys live."""

    file: str
    links: Any
    #: The folder of the keys (``{{ inventory_dir }}`` resolved), None when it cannot be known.
    keys_dir: Path | None
    keys_dir_file: str
    keys_dir_value: str


def site_link_settings(view: InventoryView) -> list[LinkSettings]:
    """Every distinct ``site_links`` of the inventory (normally one, in group_vars/all)."""
    found: dict[tuple[str, str], LinkSettings] = {}
    for host in view.hosts.values():
        if "site_links" not in host.vars:
            continue
        file = host.origin.get("site_links", view.shown)
        links = host.vars["site_links"]
        raw = host.vars.get("site_link_keys_dir")
        value = "{{ inventory_dir }}/site-link" if raw in (None, "") else str(raw)
        keys_file = host.origin.get("site_link_keys_dir", "")
        entry = (file, repr(links))
        if entry not in found:
            found[entry] = LinkSettings(
                file,
                links,
                site_link.resolve_keys_dir(raw, view.inventory_dir),
                keys_file,
                value,
            )
    return list(found.values())


def _networks_of(view: InventoryView, keys: Sequence[str]) -> set[tuple[str, str, str]]:
    """(file, key, network) of the networks listed under ``keys`` by any host."""
    found = set()
    for host in view.hosts.values():
        for key in keys:
            values = host.vars.get(key)
            if not isinstance(values, list):
                continue
            for index, value in enumerate(values):
                if isinstance(value, str) and not is_template(value):
                    found.add((host.origin.get(key, view.shown), f"{key}[{index}]", value))
    return found


def _host_fix(host: str, group: str, role: str) -> str:
    return (
        f"write the inventory name of the {role} (a host of group {group} in hosts.yml), "
        f"or add {host} to hosts.yml"
    )


def _end_problems(
    view: InventoryView, file: str, index: int, link: dict[str, Any]
) -> list[Problem]:
    """The two ends of a link: inventory hosts, of the groups their ends need."""
    problems = []
    for field, group, role in (
        ("main", ARCHIVE_GROUP, "main site's archive host"),
        ("peripheral", RELAY_GROUP, "peripheral site's relay"),
    ):
        host = link.get(field)
        key = f"site_links[{index}].{field}"
        if not isinstance(host, str) or not host or is_template(host):
            continue
        if host not in view.hosts:
            near = closest(host, view.hosts)
            message = f"host {host!r} is not in the inventory" + (
                f": did you mean {near}?" if near else ""
            )
            problems.append(Problem(file, key, message, _host_fix(host, group, role), "site-link"))
        elif group not in view.hosts[host].groups:
            problems.append(
                Problem(
                    file,
                    key,
                    f"{host}, the {field} end of link {link.get('name')!r}, is not in "
                    f"group {group}: the {field} end is the {role}",
                    f"add {host} to group {group} in hosts.yml, or name the {role}",
                    "site-link",
                )
            )
    return problems


def _overlap_problems(
    file: str, index: int, link: dict[str, Any], others: set[tuple[str, str, str]]
) -> list[Problem]:
    """A tunnel over a network that the sites use (reading rooms, admin networks)."""
    try:
        network = site_link.tunnel_network(link.get("tunnel"))
    except ValueError:
        return []  # reported by link_problems
    problems = []
    for other_file, other_key, other in sorted(others):
        try:
            theirs = ipaddress.ip_network(other, strict=False)
        except ValueError:
            continue
        if network.overlaps(theirs):
            problems.append(
                Problem(
                    file,
                    f"site_links[{index}].tunnel",
                    f"tunnel {network} overlaps {theirs}, {other_key} ({other_file})",
                    "give the link a network that no site uses (e.g. 10.200.<n>.0/30)",
                    "site-link",
                )
            )
    return problems


def rule_site_links(view: InventoryView) -> tuple[list[Problem], list[str]]:
    """The WireGuard links: valid and distinct, between an archive and a relay, with keys."""
    problems: set[Problem] = set()
    notices: list[str] = []
    others = _networks_of(view, ("pacs_reading_networks", "base_admin_networks"))
    for settings in site_link_settings(view):
        links, file = settings.links, settings.file
        if not isinstance(links, list):
            continue
        for p in site_link.link_problems(links):
            problems.add(Problem(file, p.key, p.message, p.fix, "site-link"))
        for index, link in enumerate(links):
            if isinstance(link, dict):
                problems.update(_end_problems(view, file, index, link))
                problems.update(_overlap_problems(file, index, link, others))
        problems.update(_key_problems(view, settings, notices))
    return sorted(problems), notices


def _key_problems(view: InventoryView, settings: LinkSettings, notices: list[str]) -> list[Problem]:
    """The key files of each link: present (not read: they may be encrypted with Vault)."""
    names = [
        link["name"]
        for link in settings.links
        if isinstance(link, dict) and site_link.name_problem(link.get("name")) is None
    ]
    if not names:
        return []
    keys_dir = settings.keys_dir
    where = settings.keys_dir_file or settings.file
    if keys_dir is None:
        notices.append(
            f"site link keys not checked: site_link_keys_dir ({settings.keys_dir_value}) is a "
            "template that only Ansible resolves (the preflight role checks them)"
        )
        return []
    if not keys_dir.is_absolute() and "{{" not in settings.keys_dir_value:
        return [
            Problem(
                where,
                "site_link_keys_dir",
                f"{keys_dir} is not an absolute path",
                "write an absolute path, or one that starts with {{ inventory_dir }}/ "
                "(the default: {{ inventory_dir }}/site-link)",
                "site-link",
            )
        ]
    inventory = str(view.inventory_dir) if view.inventory_dir is not None else view.shown
    # The lab (it sets lab_name): `pacsctl lab up` makes its keys on each machine.
    lab = any(d.key == "lab_name" for d in view.sources.definitions)
    problems = []
    for index, name in enumerate(names):
        missing = site_link.missing_keys(keys_dir, name)
        if not missing:
            continue
        shown = ", ".join(p.name for p in missing)
        if view.is_example and not view.deploying:
            notices.append(
                f"site link {name}: no keys in {keys_dir / name} ({shown}); an example "
                f"inventory may lack them, your copy needs `pacsctl site-link keys {inventory}`"
            )
            continue
        if lab and not view.deploying:
            notices.append(
                f"site link {name}: no keys in {keys_dir / name} ({shown}) yet; "
                "`pacsctl lab up` makes them before the lab is deployed"
            )
            continue
        problems.append(
            Problem(
                where,
                "site_link_keys_dir" if settings.keys_dir_file else f"site_links[{index}].name",
                f"the keys of link {name!r} are missing in {keys_dir / name}: {shown}",
                _KEYS_FIX.format(inventory=inventory),
                "site-link",
            )
        )
    return problems


def rule_relays(view: InventoryView) -> list[Problem]:
    """Each relay knows its main archive: relay_main_archive, or the only host of pacs_archive."""
    archives = sorted(h.name for h in view.hosts.values() if ARCHIVE_GROUP in h.groups)
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for host in view.hosts.values():
        if RELAY_GROUP not in host.groups:
            continue
        value = host.vars.get("relay_main_archive")
        if value not in (None, ""):
            if not isinstance(value, str) or is_template(value) or value in archives:
                continue
            message = f"relay_main_archive {value!r} is not a host of group {ARCHIVE_GROUP}" + (
                f" ({', '.join(archives)})" if archives else ""
            )
            fix = (
                f"set relay_main_archive to the inventory name of the relay's main archive, a "
                f"host of group {ARCHIVE_GROUP} in hosts.yml"
            )
            file = host.origin.get("relay_main_archive", view.shown)
        elif len(archives) == 1:
            continue
        elif not archives:
            message = f"the relay has no main archive: group {ARCHIVE_GROUP} has no host"
            fix = (
                f"put the main site's archive host in group {ARCHIVE_GROUP} of hosts.yml "
                "(or set relay_main_archive to it)"
            )
            file = f"{view.shown}/group_vars/{RELAY_GROUP}/relay.yml"
        else:
            message = (
                f"relay_main_archive is not set and group {ARCHIVE_GROUP} has several hosts "
                f"({', '.join(archives)}): which one the relay forwards to is not declared"
            )
            fix = f"set relay_main_archive to one of {', '.join(archives)}"
            file = f"{view.shown}/group_vars/{RELAY_GROUP}/relay.yml"
        grouped.setdefault((file, "relay_main_archive", message, fix), []).append(host.name)
    return [
        Problem(file, key, f"{message} (for {', '.join(sorted(hosts))})", fix, "relay-main-archive")
        for (file, key, message, fix), hosts in sorted(grouped.items())
    ]
