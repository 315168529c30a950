"""The registry: every variable an inventory may set, and who declares it.

Roles declare theirs in ``meta/argument_specs.yml`` (every entry point); the pacs-wide and lab
variables are declared here, and the sizing group_vars by ``sizing_vars`` (the contract that
``pacsctl size --write-group-vars`` writes to).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ansible_collections.pacs_libre.core.plugins.module_utils.errors import UserError
from ansible_collections.pacs_libre.core.plugins.module_utils.sizing_vars import SIZING_GROUP_VARS

PLACEHOLDER = "CHANGEME"
EXAMPLE_FLAG = "pacs_inventory_is_example"
FOREIGN_PREFIXES = "pacs_inventory_foreign_prefixes"
DEFAULT_ARCHIVE_PATH = "/srv/pacs"


@dataclass(frozen=True)
class Removed:
    """A variable that pacs-libre no longer reads, and what replaces it.

    ``new`` names the variable that does its job now. ``renamed`` says that the same value
    works under the new name (the fix is a rename); otherwise the new variable takes another
    form, which ``why`` and docs/upgrade-notes.md describe.
    """

    version: str
    why: str
    new: str | None = None
    renamed: bool = False

    def fix(self) -> str:
        """What the person changes in the inventory."""
        if self.new and self.renamed:
            what = f"rename it to {self.new} (same value)"
        elif self.new:
            what = f"delete it and set {self.new} instead"
        else:
            what = "delete it"
        return f"{what} (docs/upgrade-notes.md)"


# Variables removed or renamed, old name -> what to do. Every entry also gets a line in
# docs/upgrade-notes.md, under the release that stopped reading it. Those below were removed
# while 0.1.0, the first release, was being written: an inventory written for an earlier
# snapshot of the repository still sets them.
_CONSUMER = (
    "a role or playbook declares its databases and users with the postgresql role's "
    "consumer entry point (tasks_from: consumer), on the database host too"
)
_PKI = "the deployment's CA (roles/pki) issues every certificate"
_SUPPLIED = f"{_PKI}; a hospital's own certificate goes in pki_supplied_certificates (docs/pki.md)"
REMOVED_VARIABLES: dict[str, Removed] = {
    "postgresql_dependent_databases": Removed(version="0.1.0", why=_CONSUMER),
    "postgresql_dependent_users": Removed(version="0.1.0", why=_CONSUMER),
    "orthanc_tls_cert_source": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_cert_file": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_key_file": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "orthanc_tls_ca_file": Removed(
        "0.1.0",
        f"{_PKI}; stunnel checks DICOM TLS clients against /etc/pacs-libre/pki/ca.crt "
        "(the hospital's own CA: pki_extra_ca_files)",
        "orthanc_tls_verify_peers",
    ),
    "orthanc_tls_selfsigned_days": Removed("0.1.0", _PKI, "pki_certificate_days", renamed=True),
    "postgresql_tls_cert_source": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_cert_file": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_key_file": Removed("0.1.0", _SUPPLIED, "pki_supplied_certificates"),
    "postgresql_tls_ca_file": Removed(
        "0.1.0",
        f"{_PKI}; ssl_ca_file is /etc/pacs-libre/pki/ca.crt (the hospital's own CA: "
        "pki_extra_ca_files)",
        "pki_extra_ca_files",
    ),
    "postgresql_tls_selfsigned_days": Removed("0.1.0", _PKI, "pki_certificate_days", renamed=True),
}


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
    # Who may see what (docs/sso.md, docs/directory.md): read by roles/openldap, roles/sso,
    # roles/web_gateway and roles/ohif_viewer.
    "pacs_sso_enabled": {
        "type": "bool",
        "default": False,
        "description": "Sign people in through the single sign-on (LemonLDAP::NG, roles/sso).",
    },
    "pacs_internal_networks": {
        "type": "list",
        "elements": "str",
        "default": [],
        "description": "The hospital's own networks (CIDR); from elsewhere, signing in needs TOTP.",
    },
    "pacs_directory_provider": {
        "type": "str",
        "choices": ["builtin", "external"],
        "default": "builtin",
        "description": "builtin: roles/openldap on pacs_directory; external: the AD or LDAP.",
    },
    "pacs_directory_base_dn": {"type": "str", "description": "The directory's base DN."},
    "pacs_directory_url": {
        "type": "str",
        "description": "The hospital's directory, ldaps://host[:port] or ldap+tls://host.",
    },
    "pacs_directory_users_dn": {"type": "str", "description": "Where the people are."},
    "pacs_directory_groups_dn": {"type": "str", "description": "Where the groups are."},
    "pacs_directory_bind_dn": {"type": "str", "description": "The SSO's directory account."},
    "pacs_directory_bind_password": {
        "type": "str",
        "no_log": True,
        "description": "Its password (from the vault).",
    },
    "pacs_directory_user_attribute": {
        "type": "str",
        "description": "The sign-in name's attribute: uid, or sAMAccountName (Active Directory).",
    },
}

# The lab's settings (see inventories/lab/group_vars/all/lab.yml and lab.py).
LAB_VARIABLES: dict[str, Spec] = {
    "lab_name": {"type": "str", "description": "Prefix of every podman object of the lab."},
    "lab_network": {
        "type": "str",
        "description": "podman network of the lab (a host's own: a peripheral site's).",
    },
    "lab_devices": {
        "type": "list",
        "elements": "str",
        "description": "Devices passed to a host (/dev/net/tun for wireguard-go).",
    },
    "lab_site": {
        "type": "str",
        "description": "The site a host belongs to, as `pacsctl lab status` shows it.",
    },
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


def sizing_variables() -> dict[str, Spec]:
    """Names and types of the sizing group_vars, from their contract (``sizing_vars``)."""
    return {
        name: {"type": kind, "nullable": True, "description": comment}
        for name, (kind, comment) in SIZING_GROUP_VARS.items()
    }


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


def known_variables(roles_dir: Path) -> Known:
    """Every known variable: roles' argument specs (all entry points), pacs-wide, lab, sizing.

    ``roles_dir`` is the checkout's ``roles/`` folder.
    """
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
