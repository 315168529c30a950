"""Reading an inventory: its YAML files, key by key, and the merged variables of each host.

Values encrypted with Ansible Vault (``!vault`` strings or whole encrypted files) are never
decrypted: they count as present secrets (``typecheck.VAULTED``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.problem import Problem
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.registry import EXAMPLE_FLAG
from ansible_collections.pacs_libre.core.plugins.module_utils.inventory.typecheck import (
    VAULTED,
    kind_of,
)

_VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")
_VAULT_HEADER = "$ANSIBLE_VAULT;"


class _Loader(yaml.SafeLoader):
    """YAML as Ansible writes it: ``!vault`` and ``!unsafe`` tags are accepted."""


_Loader.add_constructor("!vault", lambda _loader, _node: VAULTED)
_Loader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


@dataclass(frozen=True)
class Scope:
    """Where a variable applies: a group (``all`` included) or a host."""

    kind: str
    name: str


@dataclass(frozen=True)
class Definition:
    """One key set in one file, for one group or host."""

    file: str
    scope: Scope
    key: str
    value: Any


@dataclass
class Sources:
    """What the inventory files say, in the order Ansible loads them."""

    definitions: list[Definition] = field(default_factory=list)
    #: Whole files encrypted with Ansible Vault: their keys cannot be seen.
    encrypted: list[tuple[str, Scope]] = field(default_factory=list)
    #: group -> its parent groups, from the inventory files.
    parents: dict[str, set[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _display(path: Path, base: Path, shown: str) -> str:
    """``path`` as the person typed the inventory: ``shown`` + its place under ``base``."""
    try:
        return str(Path(shown) / path.relative_to(base))
    except ValueError:
        return str(path)


def _load_yaml(path: Path, shown: str, sources: Sources) -> tuple[Any, bool]:
    """(data, encrypted). Unreadable files become problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sources.problems.append(
            Problem(
                shown, "-", f"cannot read the file: {exc}", "make it readable UTF-8 YAML", "yaml"
            )
        )
        return None, False
    if text.lstrip().startswith(_VAULT_HEADER):
        return None, True
    try:
        return yaml.load(text, Loader=_Loader), False  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        sources.problems.append(
            Problem(
                shown,
                "-",
                f"not valid YAML{where}: {problem}",
                "correct the YAML (yamllint FILE shows where)",
                "yaml",
            )
        )
        return None, False


def _add_mapping(
    sources: Sources, data: Any, shown: str, scope: Scope, *, key_path: str = ""
) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        sources.problems.append(
            Problem(
                shown,
                key_path or "-",
                f"expected a mapping of variables, got {kind_of(data)}",
                "write one `name: value` per line",
                "wrong-type",
            )
        )
        return
    for key, value in data.items():
        sources.definitions.append(Definition(shown, scope, str(key), value))


def _walk_hosts_file(sources: Sources, path: Path, shown: str) -> None:
    data, encrypted = _load_yaml(path, shown, sources)
    if encrypted:
        sources.encrypted.append((shown, Scope("group", "all")))
        return
    if not isinstance(data, dict):
        return

    def group(name: str, body: Any, parent: str | None) -> None:
        if parent is not None and name != "all":
            sources.parents.setdefault(name, set()).add(parent)
        sources.parents.setdefault(name, set())
        if not isinstance(body, dict):
            return
        _add_mapping(sources, body.get("vars"), shown, Scope("group", name), key_path="vars")
        hosts = body.get("hosts")
        if isinstance(hosts, dict):
            for host, host_vars in hosts.items():
                _add_mapping(sources, host_vars, shown, Scope("host", str(host)))
        children = body.get("children")
        if isinstance(children, dict):
            for child, child_body in children.items():
                group(str(child), child_body, name)

    for name, body in data.items():
        group(str(name), body, None if name == "all" else "all")


def _vars_files(base: Path, name: str) -> Iterator[Path]:
    """group_vars/NAME{,.yml,.yaml,.json} and every such file under group_vars/NAME/."""
    for suffix in _VARS_SUFFIXES:
        candidate = base / f"{name}{suffix}"
        if candidate.is_file():
            yield candidate
    folder = base / name
    if folder.is_dir():
        for candidate in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in candidate.relative_to(folder).parts)
            if candidate.is_file() and not hidden and candidate.suffix in _VARS_SUFFIXES:
                yield candidate


def _entries(base: Path) -> list[str]:
    """Group or host names that have files under group_vars/ or host_vars/."""
    if not base.is_dir():
        return []
    names = set()
    for entry in base.iterdir():
        if entry.name.startswith("."):
            continue
        name = entry.name
        if entry.is_file():
            for suffix in _VARS_SUFFIXES[1:]:
                name = name.removesuffix(suffix)
        names.add(name)
    return sorted(names)


def read_sources(inventory: Path, shown: str | None = None) -> Sources:
    """Walk an inventory (a folder, or a YAML file with group_vars/ beside it)."""
    sources = Sources()
    _walk_into(sources, inventory, shown if shown is not None else str(inventory))
    return sources


def _walk_into(sources: Sources, inventory: Path, shown: str) -> None:
    if inventory.is_dir():
        base, base_shown = inventory, shown
        hosts_files = sorted(
            p for p in inventory.iterdir() if p.is_file() and p.suffix in (".yml", ".yaml")
        )
    else:
        base, base_shown = inventory.parent, str(Path(shown).parent)
        hosts_files = [inventory] if inventory.suffix in (".yml", ".yaml") else []
    for path in hosts_files:
        _walk_hosts_file(sources, path, _display(path, base, base_shown))
    for kind, folder in (("group", "group_vars"), ("host", "host_vars")):
        for name in _entries(base / folder):
            for path in _vars_files(base / folder, name):
                shown_path = _display(path, base, base_shown)
                data, encrypted = _load_yaml(path, shown_path, sources)
                if encrypted:
                    sources.encrypted.append((shown_path, Scope(kind, name)))
                else:
                    _add_mapping(sources, data, shown_path, Scope(kind, name))


@dataclass
class HostView:
    """One host: its groups and its variables as Ansible merges them."""

    name: str
    groups: frozenset[str]
    vars: dict[str, Any]
    #: key -> the file whose definition wins for this host.
    origin: dict[str, str]
    #: Inventory files encrypted as a whole that apply to this host.
    encrypted: list[str] = field(default_factory=list)


@dataclass
class InventoryView:
    """What the rules look at: the files' definitions and every host's merged variables."""

    shown: str
    sources: Sources
    hosts: dict[str, HostView]
    #: host -> its facts (``ansible_mounts`` or ``mounts``), when known.
    facts: dict[str, Mapping[str, Any]] | None = None
    #: True in the preflight role: the playbook is about to change hosts.
    deploying: bool = False
    #: The inventory's folder (Ansible's ``inventory_dir``), for what lives beside it.
    inventory_dir: Path | None = None

    @property
    def is_example(self) -> bool:
        return any(
            d.key == EXAMPLE_FLAG and d.value is True and d.scope == Scope("group", "all")
            for d in self.sources.definitions
        )


def _depths(parents: Mapping[str, set[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def of(group: str, seen: frozenset[str]) -> int:
        if group == "all" or group in seen:
            return 0
        if group not in depth:
            ups = parents.get(group) or {"all"}
            depth[group] = 1 + max(of(p, seen | {group}) for p in ups)
        return depth[group]

    for name in parents:
        of(name, frozenset())
    return depth


def _scopes_of(host: str, groups: Iterable[str], depth: Mapping[str, int]) -> list[Scope]:
    """The scopes of a host, from the weakest to the strongest (Ansible's precedence)."""
    ordered = sorted(set(groups) - {"all"}, key=lambda g: (depth.get(g, 1), g))
    return [Scope("group", "all"), *(Scope("group", g) for g in ordered), Scope("host", host)]


def build_view(
    shown: str,
    sources: Sources,
    membership: Mapping[str, Iterable[str]],
    *,
    value_of: Callable[[str, str], Any] | None = None,
    facts: dict[str, Mapping[str, Any]] | None = None,
    deploying: bool = False,
    keys: Iterable[str] = (),
) -> InventoryView:
    """Merge the definitions per host. ``membership`` maps each host to its groups.

    ``value_of(host, key)`` (the preflight role) gives the value Ansible holds, templated and
    decrypted, or raises KeyError; without it, values are merged from the files. ``keys`` are
    asked of ``value_of`` even when no file defines them (secrets given as extra vars).
    """
    depth = _depths(sources.parents)
    by_scope: dict[Scope, list[Definition]] = {}
    for definition in sources.definitions:
        by_scope.setdefault(definition.scope, []).append(definition)
    encrypted_by_scope: dict[Scope, list[str]] = {}
    for file, scope in sources.encrypted:
        encrypted_by_scope.setdefault(scope, []).append(file)
    hosts: dict[str, HostView] = {}
    for host, groups in sorted(membership.items()):
        scopes = _scopes_of(host, groups, depth)
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        encrypted: list[str] = []
        for scope in scopes:
            for definition in by_scope.get(scope, []):
                merged[definition.key] = definition.value
                origin[definition.key] = definition.file
            encrypted += encrypted_by_scope.get(scope, [])
        if value_of is not None:
            for key in sorted(set(merged) | set(keys)):
                try:
                    value = value_of(host, key)
                except KeyError:
                    continue
                except Exception:  # an undecryptable vault value or a broken template
                    value = merged.get(key)
                merged[key] = value
        hosts[host] = HostView(host, frozenset({"all", *groups}), merged, origin, encrypted)
    return InventoryView(shown, sources, hosts, facts=facts, deploying=deploying)
