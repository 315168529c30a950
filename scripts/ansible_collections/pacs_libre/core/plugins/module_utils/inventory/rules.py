"""The rules an inventory must follow, one function each; every problem names file, key and fix."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import (
    Problem,
    natural_key,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import (
    DEFAULT_ARCHIVE_PATH,
    FOREIGN_PREFIXES,
    PLACEHOLDER,
    REMOVED_VARIABLES,
    Known,
    Spec,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.sources import (
    HostView,
    InventoryView,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.typecheck import (
    Vaulted,
    check_value,
    closest,
    is_template,
)

ARCHIVE_GROUP = "pacs_archive"
TB = 10**12
AE_TITLE_MAX = 16


def _foreign_prefixes(view: InventoryView) -> tuple[str, ...]:
    prefixes = ["ansible_"]
    for definition in view.sources.definitions:
        if definition.key == FOREIGN_PREFIXES and isinstance(definition.value, list):
            prefixes += [str(p) for p in definition.value if p]
    return tuple(prefixes)


def _placeholders(
    value: Any, key: str, spec: Spec | None = None, secret_ok: bool = False
) -> Iterator[str]:
    """Keys holding CHANGEME. A field its spec marks no_log (a secret inside a list
    of dicts, such as a user's password) may hold it when secret_ok (an example)."""
    spec = spec or {}
    if spec.get("no_log") and secret_ok:
        return
    if isinstance(value, str) and PLACEHOLDER in value.upper():
        yield key
    elif isinstance(value, list):
        item_spec: Spec = {"options": spec["options"]} if "options" in spec else {}
        for index, item in enumerate(value):
            yield from _placeholders(item, f"{key}[{index}]", item_spec, secret_ok)
    elif isinstance(value, dict):
        options = spec.get("options") or {}
        for sub, item in value.items():
            yield from _placeholders(item, f"{key}.{sub}", options.get(sub), secret_ok)


def rule_variables(view: InventoryView, known: Known) -> list[Problem]:
    """Unknown and removed variables, wrong types, and CHANGEME outside secrets."""
    problems: list[Problem] = []
    foreign = _foreign_prefixes(view)
    secrets = known.secrets()
    for d in view.sources.definitions:
        if d.key.startswith(foreign):
            continue
        if d.key in REMOVED_VARIABLES:
            removed = REMOVED_VARIABLES[d.key]
            problems.append(
                Problem(
                    d.file,
                    d.key,
                    f"removed in pacs-libre {removed.version}: {removed.why}",
                    removed.fix(),
                    "removed-variable",
                )
            )
            continue
        spec = known.specs.get(d.key)
        if spec is None:
            near = closest(d.key, known.specs)
            message = "unknown variable" + (f": did you mean {near}?" if near else "")
            fix = (
                f"rename it to {near}"
                if near
                else "delete it (no role reads it; known variables: docs/inventories.md), "
                f"or list its prefix in {FOREIGN_PREFIXES} if another tool reads it"
            )
            problems.append(Problem(d.file, d.key, message, fix, "unknown-variable"))
            continue
        for key, message, fix in check_value(d.value, spec, d.key):
            problems.append(Problem(d.file, key, message, fix, "wrong-type"))
        if d.key not in secrets:
            secret_ok = view.is_example and not view.deploying
            for key in _placeholders(d.value, d.key, spec, secret_ok):
                problems.append(
                    Problem(
                        d.file,
                        key,
                        f"{PLACEHOLDER} is left in a variable that is not a secret",
                        "replace it with the real value (only secrets may be placeholders, "
                        "in an example inventory)",
                        "placeholder",
                    )
                )
    return problems


_AE_TITLE_STRICT = re.compile(r"^[A-Z0-9_.-]+$")


def ae_title_problem(aet: str, *, strict: bool) -> str | None:
    """Why ``aet`` is not a valid AE title (DICOM PS3.5 "AE"), or None.

    PS3.5: at most 16 characters of the default repertoire (printable ASCII), no backslash, no
    control character; leading and trailing spaces are not significant and a title of only
    spaces is not allowed. ``strict`` (the AE titles pacs-libre sets) also requires A-Z, 0-9,
    ``_ - .``: the characters every modality and workstation accepts.
    """
    title = aet.strip(" ")
    if not title:
        return "an AE title cannot be empty or only spaces"
    if len(title) > AE_TITLE_MAX:
        return f"AE title {aet!r} has {len(title)} characters; DICOM allows {AE_TITLE_MAX} at most"
    bad = sorted({c for c in title if not " " <= c <= "~" or c == "\\"})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return (
            f"AE title {aet!r} has characters DICOM forbids ({shown}): only printable ASCII, "
            "no backslash, no control character"
        )
    if strict and (title != aet or not _AE_TITLE_STRICT.match(title)):
        return (
            f"AE title {aet!r} must use only capital letters A-Z, digits and _ - . "
            "(pacs-libre's rule for the AE titles it sets)"
        )
    return None


@dataclass(frozen=True)
class _Claim:
    """Someone answering to an AE title at an endpoint."""

    aet: str
    names: frozenset[str]
    ports: frozenset[int]
    file: str
    key: str
    label: str

    def same_endpoint(self, other: _Claim) -> bool:
        return bool(self.names & other.names) and bool(self.ports & other.ports)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def rule_dicom(view: InventoryView) -> list[Problem]:
    """AE titles: valid (PS3.5, pacs-libre's own stricter), and one endpoint per AE title."""
    problems: set[Problem] = set()
    claims: list[_Claim] = []
    for host in view.hosts.values():
        hv = host.vars
        aet = hv.get("pacs_dicom_aet")
        if isinstance(aet, str) and not is_template(aet):
            file = host.origin.get("pacs_dicom_aet", view.shown)
            why = ae_title_problem(aet, strict=True)
            if why:
                problems.add(Problem(file, "pacs_dicom_aet", why, _AET_FIX, "ae-title"))
            names = {host.name}
            if isinstance(hv.get("ansible_host"), str):
                names.add(hv["ansible_host"])
            ports = {
                p
                for p in (
                    _int(hv.get("pacs_dicom_port", 4242)),
                    _int(hv.get("pacs_dicom_tls_port")),
                )
                if p is not None
            }
            claims.append(
                _Claim(
                    aet.strip().upper(),
                    frozenset(names),
                    frozenset(ports),
                    file,
                    "pacs_dicom_aet",
                    f"the archive of {host.name}",
                )
            )
        nodes = hv.get("pacs_dicom_nodes")
        if not isinstance(nodes, list):
            continue
        file = host.origin.get("pacs_dicom_nodes", view.shown)
        for index, node in enumerate(nodes):
            if not isinstance(node, dict) or not isinstance(node.get("aet"), str):
                continue
            key = f"pacs_dicom_nodes[{index}].aet"
            why = ae_title_problem(node["aet"], strict=False)
            if why:
                problems.add(Problem(file, key, why, _AET_FIX_NODE, "ae-title"))
            port = _int(node.get("port"))
            claims.append(
                _Claim(
                    node["aet"].strip().upper(),
                    frozenset({str(node.get("host", ""))}),
                    frozenset({port} if port is not None else set()),
                    file,
                    key,
                    f"node {node.get('name', index)!r}",
                )
            )
    seen: dict[str, list[_Claim]] = {}
    for claim in sorted(set(claims), key=lambda c: (c.file, natural_key(c.key))):
        earlier = seen.setdefault(claim.aet, [])
        if earlier and not any(claim.same_endpoint(e) for e in earlier):
            first = earlier[0]
            problems.add(
                Problem(
                    claim.file,
                    claim.key,
                    f"AE title {claim.aet!r} of {claim.label} is already used by {first.label} "
                    f"({first.file}: {first.key}) at another address or port",
                    "give each DICOM node its own AE title (AE titles compare without case)",
                    "duplicate-ae-title",
                )
            )
        earlier.append(claim)
    return sorted(problems)


_AET_FIX = "choose an AE title of 1 to 16 characters among A-Z, 0-9, _ - . (e.g. PACS_CHX)"
_AET_FIX_NODE = (
    "write the AE title configured on the device: 1 to 16 printable ASCII characters, no backslash"
)


def rule_ports(view: InventoryView, known: Known) -> list[Problem]:
    """Two ``*_port`` variables of one host on one port (defaults included); lab ports twice."""
    defaults = {
        name: (port, f"the default of {known.owners.get(name, 'a role')}")
        for name, spec in known.specs.items()
        if name.endswith("_port") and (port := _int(spec.get("default"))) is not None
    }
    found: dict[tuple[str, str, int, str, str], list[str]] = {}
    for host in view.hosts.values():
        values: dict[str, tuple[int | None, str]] = {k: (p, "") for k, (p, _) in defaults.items()}
        values.update({k: (_int(v), host.origin.get(k, view.shown)) for k, v in host.vars.items()})
        ports: dict[int, str] = {}
        for key in sorted(k for k in values if k.endswith("_port")):
            port, file = values[key]
            if port is None:
                continue
            if port not in ports:
                ports[port] = key
                continue
            first, second = ports[port], key
            if not file:  # name the inventory's key first, the default second
                first, second = second, first
            entry = (
                values[second][1] or view.shown,
                second,
                port,
                first,
                values[first][1] or defaults[first][1],
            )
            found.setdefault(entry, []).append(host.name)
    problems = [
        Problem(
            file,
            key,
            f"port {port} is also {other} ({other_file}) on {', '.join(hosts)}",
            "give each service of a host its own port",
            "duplicate-port",
        )
        for (file, key, port, other, other_file), hosts in sorted(found.items())
    ]
    return sorted({*problems, *_lab_port_problems(view)})


def _lab_port_problems(view: InventoryView) -> list[Problem]:
    """Lab ports: each published once on 127.0.0.1, each port of a host published once."""
    problems: list[Problem] = []
    published: dict[tuple[int, str], str] = {}
    for host in view.hosts.values():
        entries = host.vars.get("lab_ports")
        if not isinstance(entries, list):
            continue
        file = host.origin.get("lab_ports", view.shown)
        inside: set[tuple[int, str]] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            proto = str(entry.get("proto", "tcp"))
            outside, container = _int(entry.get("host")), _int(entry.get("container"))
            if outside is not None:
                if (outside, proto) in published:
                    problems.append(
                        Problem(
                            file,
                            f"lab_ports[{index}].host",
                            f"127.0.0.1:{outside}/{proto} is already published for "
                            f"{published[(outside, proto)]}",
                            "publish each lab port once: pick another host port",
                            "duplicate-port",
                        )
                    )
                else:
                    published[(outside, proto)] = host.name
            if container is not None:
                if (container, proto) in inside:
                    problems.append(
                        Problem(
                            file,
                            f"lab_ports[{index}].container",
                            f"port {container}/{proto} of {host.name} is published twice",
                            "publish each port of a host once",
                            "duplicate-port",
                        )
                    )
                inside.add((container, proto))
    return problems


def _vault_fix(view: InventoryView, key: str) -> str:
    return (
        f"add it to {view.shown}/group_vars/all/vault.yml, encrypted with "
        f"`ansible-vault encrypt_string --stdin-name {key}` (docs/inventories.md, 'Secrets')"
    )


def rule_secrets(view: InventoryView, known: Known) -> list[Problem]:
    """Secrets: present where needed, not empty, CHANGEME only in an example (never deployed)."""
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    placeholder_ok = view.is_example and not view.deploying
    for name, spec in sorted(known.specs.items()):
        if not spec.get("no_log"):
            continue
        needed_by = set(spec.get("required_in_groups") or [])
        for host in view.hosts.values():
            value = host.vars.get(name)
            file = host.origin.get(name)
            if name not in host.vars:
                groups = sorted(needed_by & host.groups)
                if not groups or host.encrypted:
                    continue  # not needed here, or maybe inside a file encrypted as a whole
                message = f"missing secret, needed by the hosts of group {groups[0]}"
                grouped.setdefault(
                    (f"{view.shown}/group_vars/all/vault.yml", name, message, "missing"), []
                ).append(host.name)
            elif isinstance(value, Vaulted):
                continue
            elif value is None or (isinstance(value, str) and not value.strip()):
                grouped.setdefault(
                    (file or view.shown, name, "secret is empty", "empty"), []
                ).append(host.name)
            elif (
                isinstance(value, str)
                and value.strip().upper() == PLACEHOLDER
                and not placeholder_ok
            ):
                why = (
                    "an example inventory cannot be deployed"
                    if view.is_example
                    else "set pacs_inventory_is_example: true only in an example inventory"
                )
                grouped.setdefault(
                    (
                        file or view.shown,
                        name,
                        f"secret is still the placeholder {PLACEHOLDER} ({why})",
                        "placeholder",
                    ),
                    [],
                ).append(host.name)
    return [
        Problem(
            file,
            key,
            f"{message} ({', '.join(sorted(hosts))})" if kind == "missing" else message,
            _vault_fix(view, key),
            "missing-secret",
        )
        for (file, key, message, kind), hosts in sorted(grouped.items())
    ]


def _human(size: float) -> str:
    if size >= TB:
        return f"{size / TB:.2f} TB"
    if size >= 10**9:
        return f"{size / 10**9:.1f} GB"
    return f"{size / 10**6:.0f} MB"


def archive_hosts(view: InventoryView) -> list[HostView]:
    """Hosts that hold the archive: the group pacs_archive, or every host without that group."""
    members = [h for h in view.hosts.values() if ARCHIVE_GROUP in h.groups]
    return members or list(view.hosts.values())


def filesystem_of(path: str, mounts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The mount (from ``ansible_mounts``) whose mount point is the longest prefix of ``path``."""
    best: Mapping[str, Any] | None = None
    for mount in mounts:
        point = str(mount.get("mount", ""))
        inside = point in ("/", path) or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(str(best.get("mount", "")))):
            best = mount
    return best


def rule_storage(view: InventoryView) -> tuple[list[Problem], list[str]]:
    """The sized archive storage fits the filesystem that holds the archive path (needs facts)."""
    problems: list[Problem] = []
    notices: list[str] = []
    for host in archive_hosts(view):
        need_tb = host.vars.get("pacs_sizing_archive_storage_tb")
        if isinstance(need_tb, bool) or not isinstance(need_tb, int | float):
            continue
        path = str(host.vars.get("pacs_archive_storage_path") or DEFAULT_ARCHIVE_PATH)
        host_facts = (view.facts or {}).get(host.name)
        mounts = None
        if host_facts is not None:
            mounts = host_facts.get("ansible_mounts", host_facts.get("mounts"))
        if not isinstance(mounts, list):
            notices.append(
                f"storage rule skipped for {host.name}: no facts of its filesystems "
                "(pass --facts DIR, or let the preflight role check it)"
            )
            continue
        file = host.origin.get("pacs_sizing_archive_storage_tb", view.shown)
        mount = filesystem_of(path, mounts)
        if mount is None:
            problems.append(
                Problem(
                    host.origin.get("pacs_archive_storage_path", file),
                    "pacs_archive_storage_path",
                    f"no mounted filesystem of {host.name} holds {path}",
                    f"mount the archive filesystem so that it holds {path}, or set "
                    "pacs_archive_storage_path to a path on it",
                    "storage",
                )
            )
            continue
        size = float(mount.get("size_total") or 0)
        if size < need_tb * TB:
            problems.append(
                Problem(
                    file,
                    "pacs_sizing_archive_storage_tb",
                    f"{host.name}: the sizing needs {_human(need_tb * TB)} for the archive, but "
                    f"the filesystem holding {path} (mounted at {mount.get('mount')}) has "
                    f"{_human(size)}",
                    f"give {mount.get('mount')} at least {_human(need_tb * TB)}, move "
                    "pacs_archive_storage_path to a bigger filesystem, or size a shorter horizon "
                    "(pacsctl size --years N --write-group-vars ...)",
                    "storage",
                )
            )
    return problems, notices
