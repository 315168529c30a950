"""Inventory checks: the one source of truth for the rules an inventory must follow.

``pacsctl inventory check INVENTORY`` runs them on the files, and the ``preflight`` role runs
the very same functions on the variables Ansible holds in memory (with the hosts' facts) as the
first play of every playbook, before any host is changed.

An inventory is read in two ways:

* its structure (which host is in which group) comes from ``ansible-inventory --graph``, which
  accepts every inventory Ansible accepts and never needs the vault password;
* its variables come from walking its YAML files (``hosts.yml``, ``group_vars/``,
  ``host_vars/``), so that every problem names the file that defines the key. Values encrypted
  with Ansible Vault (``!vault`` strings or whole encrypted files) are never decrypted: they
  count as present secrets.

The rules, each reported with the file, the key and the fix, all together:

* ``unknown-variable``, ``removed-variable``, ``wrong-type``: every variable must be declared
  by a role's ``meta/argument_specs.yml``, by the pacs-wide list below (``PACS_VARIABLES``), by
  the lab (``LAB_VARIABLES``) or by ``pacsctl size --write-group-vars``; ``ansible_*`` and the
  prefixes listed in ``pacs_inventory_foreign_prefixes`` are left alone;
* ``placeholder``: ``CHANGEME`` only stands for a secret;
* ``ae-title``, ``duplicate-ae-title``: DICOM AE titles (PS3.5) and their uniqueness;
* ``duplicate-port``: two ``*_port`` variables of one host, or two published lab ports;
* ``storage``: the sized archive storage must fit the filesystem that holds the archive
  (needs the hosts' facts);
* ``missing-secret``: the secrets each group of hosts needs are defined, not empty, and not
  the ``CHANGEME`` placeholder (allowed only in an inventory that says
  ``pacs_inventory_is_example: true``, and never when deploying).

docs/inventories.md describes the rules for the people who write inventories.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pacs_libre.errors import UserError

PLACEHOLDER = "CHANGEME"
EXAMPLE_FLAG = "pacs_inventory_is_example"
FOREIGN_PREFIXES = "pacs_inventory_foreign_prefixes"
DEFAULT_ARCHIVE_PATH = "/srv/pacs"
ARCHIVE_GROUP = "pacs_archive"
TB = 10**12
AE_TITLE_MAX = 16
_VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")
_VAULT_HEADER = "$ANSIBLE_VAULT;"


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True, order=True)
class Problem:
    """One thing to fix: where (file and key), what is wrong, and how to fix it."""

    file: str
    key: str
    message: str
    fix: str
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message} — fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _natural(text: str) -> tuple[tuple[int, str], ...]:
    """Sort key that puts nodes[9] before nodes[10]."""
    return tuple(
        (int(part), "") if part.isdigit() else (0, part) for part in re.split(r"(\d+)", text)
    )


def problem_order(problem: Problem) -> tuple[Any, ...]:
    """Problems by file, then key (numbers in keys in numeric order), then message."""
    return (problem.file, _natural(problem.key), problem.message)


@dataclass(frozen=True)
class Removed:
    """A variable that pacs-libre no longer reads, and what replaces it."""

    version: str
    why: str
    new: str | None = None


# Variables removed or renamed, old name -> what to do. Every entry also gets a line in
# docs/upgrade-notes.md.
_PKI = "the deployment's CA (roles/pki) issues every certificate"
_SUPPLIED = f"{_PKI}; a hospital's own certificate goes in pki_supplied_certificates (docs/pki.md)"
REMOVED_VARIABLES: dict[str, Removed] = {
    "orthanc_tls_cert_source": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_cert_file": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_key_file": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_ca_file": Removed(
        "0.2.0",
        f"{_PKI}; stunnel checks DICOM TLS clients against /etc/pacs-libre/pki/ca.crt "
        "(the hospital's own CA: pki_extra_ca_files)",
        "orthanc_tls_verify_peers",
    ),
    "orthanc_tls_selfsigned_days": Removed("0.2.0", _PKI, "pki_certificate_days"),
    "postgresql_tls_cert_source": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_cert_file": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_key_file": Removed("0.2.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_ca_file": Removed(
        "0.2.0",
        f"{_PKI}; ssl_ca_file is /etc/pacs-libre/pki/ca.crt (the hospital's own CA: "
        "pki_extra_ca_files)",
        "pki_extra_ca_files",
    ),
    "postgresql_tls_selfsigned_days": Removed("0.2.0", _PKI, "pki_certificate_days"),
}


# ----------------------------------------------------------------------------- known variables

Spec = dict[str, Any]
"""One option, in the format of a role's meta/argument_specs.yml."""

_DICOM_NODE: Spec = {
    "name": {"type": "str", "required": True, "description": "Short name of the node."},
    "aet": {"type": "str", "required": True, "description": "AE title of the node."},
    "host": {"type": "str", "required": True, "description": "DNS name or IP address."},
    "port": {"type": "int", "required": True, "description": "DICOM port of the node."},
    "kind": {
        "type": "str",
        "required": True,
        "choices": ["modality", "workstation", "peer"],
        "description": "modality (sends), workstation (queries and retrieves), peer (a PACS).",
    },
    "rights": {
        "type": "list",
        "elements": "str",
        "choices": ["echo", "store", "find", "move", "get"],
        "default": ["echo", "store"],
        "description": "What the node may ask of the archive.",
    },
    "tls": {"type": "bool", "default": False, "description": "Reach the node over DICOM TLS."},
    "site": {"type": "str", "description": "Site where the node is (territories)."},
    "description": {"type": "str", "description": "Free text: model, room, owner."},
}

# Variables that belong to the whole distribution rather than to one role. Secrets carry
# ``no_log`` and ``required_in_groups``: the hosts of those groups need them. Secrets that a
# role generates itself (the PostgreSQL passwords, kept on the controller under
# postgresql_credentials_dir) are not listed: only those a person must choose and keep.
PACS_VARIABLES: dict[str, Spec] = {
    "pacs_site_name": {
        "type": "str",
        "description": "Name of the hospital or site, shown in the viewers and reports.",
    },
    "pacs_archive_engine": {
        "type": "str",
        "choices": ["orthanc", "dcm4chee"],
        "default": "orthanc",
        "description": "The archive engine.",
    },
    "pacs_archive_storage_path": {
        "type": "path",
        "default": DEFAULT_ARCHIVE_PATH,
        "description": "Where the archive keeps the DICOM files; its filesystem must hold "
        "pacs_sizing_archive_storage_tb.",
    },
    "pacs_dicom_aet": {
        "type": "str",
        "description": "AE title of this host's archive (or relay): A-Z, 0-9, _ - . ; 16 at most.",
    },
    "pacs_dicom_port": {
        "type": "int",
        "default": 4242,
        "description": "DICOM port of this host's archive (or relay).",
    },
    "pacs_dicom_tls_port": {
        "type": "int",
        "description": "DICOM TLS port of this host's archive (or relay).",
    },
    "pacs_dicom_nodes": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": _DICOM_NODE,
        "description": "The DICOM nodes this host talks to: modalities, workstations, peers.",
    },
    "pacs_reading_networks": {
        "type": "list",
        "elements": "str",
        "default": [],
        "description": "Networks (CIDR) of the reading workstations, on site and remote.",
    },
    EXAMPLE_FLAG: {
        "type": "bool",
        "default": False,
        "description": "This inventory is an example: its secrets may be CHANGEME. Delete this "
        "line in a copy; playbooks refuse CHANGEME anyway.",
    },
    FOREIGN_PREFIXES: {
        "type": "list",
        "elements": "str",
        "default": [],
        "description": "Prefixes of variables that other tools read (e.g. molecule_); the "
        "checks leave them alone.",
    },
    "pacs_archive_admin_password": {
        "type": "str",
        "no_log": True,
        "required_in_groups": ["pacs_archive"],
        "description": "Password of the archive's administrator account.",
    },
    # roles/pki declares it too; listed here for the servers that need it.
    "pki_ca_passphrase": {
        "type": "str",
        "no_log": True,
        "required_in_groups": ["pacs_servers"],
        "description": "Passphrase of the deployment CA's key (inventory/pki/ca.key).",
    },
    "pacs_backup_password": {
        "type": "str",
        "no_log": True,
        "required_in_groups": ["pacs_backup"],
        "description": "Key that encrypts the backups (pgBackRest and restic repositories).",
    },
}

# The lab's settings (see inventories/lab/group_vars/all/lab.yml and lab.py).
LAB_VARIABLES: dict[str, Spec] = {
    "lab_name": {"type": "str", "description": "Prefix of every podman object of the lab."},
    "lab_network": {"type": "str", "description": "podman network of the lab."},
    "lab_debian": {"type": "str", "choices": ["12", "13"], "description": "Debian release."},
    "lab_ports": {
        "type": "list",
        "elements": "dict",
        "options": {
            "host": {"type": "int", "required": True},
            "container": {"type": "int", "required": True},
            "proto": {"type": "str", "choices": ["tcp", "udp"], "default": "tcp"},
        },
        "description": "Ports published on 127.0.0.1.",
    },
    "lab_endpoints": {"type": "dict", "description": "What `pacsctl lab status` shows."},
}


@dataclass(frozen=True)
class Known:
    """Every variable an inventory may set: name -> (spec, who declares it)."""

    specs: Mapping[str, Spec]
    owners: Mapping[str, str]
    prefixes: frozenset[str]

    def secrets(self) -> set[str]:
        return {name for name, spec in self.specs.items() if spec.get("no_log")}


def _sizing_specs() -> dict[str, Spec]:
    """The variables ``pacsctl size --write-group-vars`` writes, typed by a sample run."""
    from pacs_libre.size_cli import group_vars  # noqa: PLC0415 (Typer only when needed)
    from pacs_libre.sizing import SizingInputs, size  # noqa: PLC0415

    specs: dict[str, Spec] = {}
    for name, value, comment in group_vars(size(SizingInputs(beds=200))):
        kind = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict"}.get(
            type(value), "raw"
        )
        specs[name] = {"type": kind, "nullable": True, "description": comment}
    return specs


def sizing_variables() -> dict[str, Spec]:
    """Names and types of the sizing group_vars (from size_cli's writer, not a copy)."""
    return dict(_cached_sizing_specs())


@functools.cache
def _cached_sizing_specs() -> tuple[tuple[str, Spec], ...]:
    return tuple(_sizing_specs().items())


def _role_specs(roles_dir: Path) -> tuple[dict[str, Spec], dict[str, str]]:
    specs: dict[str, Spec] = {}
    owners: dict[str, str] = {}
    for specs_file in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        role = specs_file.parent.parent.name
        try:
            data = yaml.safe_load(specs_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{specs_file}: cannot read argument specs: {exc}") from exc
        for entry in (data.get("argument_specs") or {}).values():
            for name, option in ((entry or {}).get("options") or {}).items():
                specs[name] = option or {}
                owners[name] = f"role {role}"
    return specs, owners


def known_variables(roles_dir: Path | None = None) -> Known:
    """Every known variable: roles' argument specs (all entry points), pacs-wide, lab, sizing."""
    if roles_dir is None:
        from pacs_libre.lab import project_root  # noqa: PLC0415

        roles_dir = project_root() / "roles"
    specs, owners = _role_specs(roles_dir)
    prefixes = {f"{p.name}_" for p in roles_dir.iterdir() if (p / "meta").is_dir()}
    for table, owner in (
        (PACS_VARIABLES, "pacs-wide"),
        (LAB_VARIABLES, "lab"),
        (sizing_variables(), "pacsctl size"),
    ):
        for name, spec in table.items():
            specs[name] = spec
            owners[name] = owner
    prefixes |= {"pacs_", "lab_", "postgresql_sizing_"}
    return Known(specs=specs, owners=owners, prefixes=frozenset(prefixes))


# ----------------------------------------------------------------------------- reading files


class Vaulted:
    """A value encrypted with Ansible Vault: present, never decrypted here."""

    def __repr__(self) -> str:
        return "<vaulted>"


VAULTED = Vaulted()


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
                f"expected a mapping of variables, got {_kind_of(data)}",
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


# ----------------------------------------------------------------------------- the view


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


def _parse_graph(text: str) -> dict[str, set[str]]:
    """host -> groups, from ``ansible-inventory --graph``."""
    membership: dict[str, set[str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("@"):
            stack = [line[1:].rstrip(":")]
            continue
        marker = line.find("|--")
        if marker < 0:
            continue
        level = marker // 3 + 1
        name = line[marker + 3 :].strip()
        del stack[level:]
        if name.startswith("@"):
            stack.append(name[1:].rstrip(":"))
        else:
            membership.setdefault(name, set()).update(stack[:level])
    return membership


def read_membership(inventory: Path) -> dict[str, set[str]]:
    """Which host is in which group, as Ansible reads the inventory (no vault password needed)."""
    from pacs_libre.lab import project_root, tool  # noqa: PLC0415

    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(project_root() / "ansible.cfg"))
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    try:
        proc = subprocess.run(
            [tool("ansible-inventory"), "-i", str(inventory), "--graph"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
    except OSError as exc:
        raise UserError(f"cannot run ansible-inventory: {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines() or ["ansible-inventory failed"]
        raise UserError(f"cannot read inventory '{inventory}': {detail[-1]}")
    membership = _parse_graph(proc.stdout)
    if not membership:
        raise UserError(
            f"inventory '{inventory}' declares no hosts: describe them in {inventory}/hosts.yml"
        )
    return membership


def load_view(inventory: Path, facts: dict[str, Mapping[str, Any]] | None = None) -> InventoryView:
    """Read an inventory folder (or file) for the rules."""
    if not inventory.exists():
        raise UserError(f"inventory '{inventory}' does not exist: pass a folder under inventories/")
    membership = read_membership(inventory)
    sources = read_sources(inventory)
    return build_view(str(inventory), sources, membership, facts=facts)


def load_facts(folder: Path, hosts: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """Facts of the hosts from an Ansible jsonfile fact cache (``fact_caching_connection``)."""
    if not folder.is_dir():
        raise UserError(f"--facts: '{folder}' is not a folder (an Ansible jsonfile fact cache)")
    facts: dict[str, Mapping[str, Any]] = {}
    for host in hosts:
        candidates = [folder / host, *sorted(folder.glob(f"*_{host}"))]
        for path in candidates:
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and isinstance(data.get("__payload__"), str):
                    data = json.loads(data["__payload__"])
            except (OSError, ValueError) as exc:
                raise UserError(f"--facts: cannot read '{path}': {exc}") from None
            if isinstance(data, dict):
                facts[host] = data
                break
    return facts


# ----------------------------------------------------------------------------- types


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool | int | float):
        kind = "a boolean" if isinstance(value, bool) else "a number"
        return f"{kind} ({json.dumps(value)})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


_BOOL_STRINGS = {"yes", "no", "true", "false", "on", "off", "1", "0", "y", "n", "t", "f"}
_TYPE_FIX = {
    "str": 'quote the text, e.g. KEY: "text"',
    "path": "write an absolute path, e.g. KEY: /srv/pacs",
    "int": "write a whole number without quotes, e.g. KEY: 4242",
    "float": "write a number, e.g. KEY: 0.8",
    "bool": "write true or false, without quotes",
    "list": "write a YAML list: KEY: [a, b], or one '- item' per line under KEY",
    "dict": "write a mapping: one 'name: value' per line under KEY",
}
_TYPE_NAME = {
    "str": "a string",
    "path": "a path",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
}


def _is_number(value: Any, parse: Callable[[str], Any]) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return parse is float or isinstance(value, int)
    try:
        parse(str(value).strip())
    except ValueError:
        return False
    return isinstance(value, str)


_TYPE_OK: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
    "path": lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
    "int": lambda v: _is_number(v, int),
    "float": lambda v: _is_number(v, float),
    "bool": lambda v: (
        isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in _BOOL_STRINGS)
    ),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def _type_ok(value: Any, kind: str) -> bool:
    """Whether Ansible's argument validation accepts ``value`` for ``kind`` without surprise.

    Scalars follow Ansible's conversions (a quoted number is a number); lists and mappings must
    be written as such (Ansible would split a string on commas, which surprises people).
    """
    return _TYPE_OK.get(kind, lambda _v: True)(value)


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


def check_value(value: Any, spec: Spec, key: str) -> list[tuple[str, str, str]]:
    """(key, message, fix) for each way ``value`` breaks ``spec`` (an argument_specs option)."""
    if isinstance(value, Vaulted) or _is_template(value):
        return []
    kind = str(spec.get("type", "str"))
    if value is None:
        if spec.get("nullable"):
            return []
        keep = f" (default: {json.dumps(spec['default'])})" if "default" in spec else ""
        return [
            (key, "has no value", f"give it a value, or delete the line to keep the default{keep}")
        ]
    if not _type_ok(value, kind):
        return [
            (
                key,
                f"expected {_TYPE_NAME.get(kind, kind)}, got {_kind_of(value)}",
                _TYPE_FIX.get(kind, f"give it a value of type {kind}").replace("KEY", key),
            )
        ]
    if kind == "list":
        return _check_list(value, spec, key)
    problems: list[tuple[str, str, str]] = []
    choices = spec.get("choices")
    if choices and str(value) not in [str(c) for c in choices]:
        names = ", ".join(str(c) for c in choices)
        problems.append((key, f"{value!r} is not one of {names}", f"use one of: {names}"))
    options = spec.get("options")
    if kind == "dict" and isinstance(options, dict):
        problems += _check_fields(value, options, key)
    return problems


def _check_list(value: list[Any], spec: Spec, key: str) -> list[tuple[str, str, str]]:
    item_spec: Spec = {"type": str(spec.get("elements", "raw"))}
    for name in ("choices", "options"):
        if name in spec:
            item_spec[name] = spec[name]
    problems: list[tuple[str, str, str]] = []
    for index, item in enumerate(value):
        problems += check_value(item, item_spec, f"{key}[{index}]")
    return problems


def _check_fields(
    value: dict[str, Any], options: dict[str, Spec], key: str
) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    for sub, sub_value in value.items():
        if sub not in options:
            near = _closest(str(sub), options)
            hint = f"rename it to {near}" if near else f"use only: {', '.join(options)}"
            problems.append((f"{key}.{sub}", "unknown field", hint))
            continue
        problems += check_value(sub_value, options[sub] or {}, f"{key}.{sub}")
    for sub, sub_spec in options.items():
        if (sub_spec or {}).get("required") and sub not in value:
            problems.append((f"{key}.{sub}", "is missing", f"add {sub} to this entry"))
    return problems


# ----------------------------------------------------------------------------- rules


def _foreign_prefixes(view: InventoryView) -> tuple[str, ...]:
    prefixes = ["ansible_"]
    for definition in view.sources.definitions:
        if definition.key == FOREIGN_PREFIXES and isinstance(definition.value, list):
            prefixes += [str(p) for p in definition.value if p]
    return tuple(prefixes)


def _placeholders(value: Any, key: str) -> Iterator[str]:
    if isinstance(value, str) and PLACEHOLDER in value.upper():
        yield key
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _placeholders(item, f"{key}[{index}]")
    elif isinstance(value, dict):
        for sub, item in value.items():
            yield from _placeholders(item, f"{key}.{sub}")


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
            fix = f"rename it to {removed.new}" if removed.new else "delete it"
            problems.append(
                Problem(
                    d.file,
                    d.key,
                    f"removed in pacs-libre {removed.version}: {removed.why}",
                    f"{fix} (docs/upgrade-notes.md)",
                    "removed-variable",
                )
            )
            continue
        spec = known.specs.get(d.key)
        if spec is None:
            near = _closest(d.key, known.specs)
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
            for key in _placeholders(d.value, d.key):
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
        if isinstance(aet, str) and not _is_template(aet):
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
    for claim in sorted(set(claims), key=lambda c: (c.file, _natural(c.key))):
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


# ----------------------------------------------------------------------------- entry points


@dataclass
class Report:
    """Every problem of an inventory, and what could not be checked."""

    inventory: str
    hosts: list[str]
    problems: list[Problem]
    notices: list[str]
    example: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return f"{self.inventory}: {len(self.problems)} problem(s) to fix"
        example = " (an example: its CHANGEME secrets must be replaced before deploying)"
        return (
            f"{self.inventory}: OK, {len(self.hosts)} host(s) checked"
            f"{example if self.example else ''}"
        )


def check_view(view: InventoryView, known: Known | None = None) -> Report:
    """Run every rule on a view; all problems together, sorted by file and key."""
    known = known if known is not None else known_variables()
    storage, notices = rule_storage(view)
    problems = [
        *view.sources.problems,
        *rule_variables(view, known),
        *rule_dicom(view),
        *rule_ports(view, known),
        *rule_secrets(view, known),
        *storage,
    ]
    return Report(
        inventory=view.shown,
        hosts=sorted(view.hosts),
        problems=sorted(set(problems), key=problem_order),
        notices=notices,
        example=view.is_example,
    )


def check_report(inventory_path: Path, facts: dict[str, Mapping[str, Any]] | None = None) -> Report:
    """Check an inventory on disk (``pacsctl inventory check``)."""
    return check_view(load_view(inventory_path, facts=facts))


def check(inventory_path: Path, facts: dict[str, Mapping[str, Any]] | None = None) -> list[Problem]:
    """Every problem of an inventory on disk. ``facts``: host -> its Ansible facts."""
    return check_report(inventory_path, facts).problems
