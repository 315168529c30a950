"""How Ansible and the tests reach lab and test hosts: SSH, as hospitals reach their servers.

Each lab (and each Molecule scenario) has a folder of its own, beside its inventory,
never in git:

``id_ed25519``, ``id_ed25519.pub``
    the key pair that Ansible logs in with, made on this machine at the first ``up``;
``known_hosts``
    each host's own ed25519 host key, pinned under its container name
    (``HostKeyAlias``), read from the host through podman before SSH is trusted;
``config``
    an ssh_config with one ``Host`` entry per host: its podman network address,
    the key, the pinned host keys, ``StrictHostKeyChecking yes`` and a shared
    connection (``ControlMaster``/``ControlPersist``).

Ansible gets ``-F <folder>/config`` in ``ansible_ssh_common_args``; a person gets the
same with ``ssh -F inventories/lab/.ssh/config pacs-lab-pacs1``. The podman exec
channel is used only before SSH can be up: to install the public key and to read
the host key that is then pinned.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacs_libre.errors import UserError

KEY_NAME = "id_ed25519"
#: Ansible and the tests log in as root with the lab's key; the base role's sshd
#: allows root by key only (``PermitRootLogin prohibit-password``).
LOGIN_USER = "root"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"

Exec = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Endpoint:
    """One host as SSH sees it: its alias (the container name) and its address."""

    alias: str
    address: str
    host_key: str


def ensure_key_pair(folder: Path) -> Path:
    """The folder's key pair, made once with ssh-keygen; returns the private key's path."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key = folder / KEY_NAME
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"pacs-libre {folder}",
            "-f",
            str(key),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise UserError(
            f"ssh-keygen could not make {key}: {proc.stderr.strip()} — "
            "install openssh-client (`apt-get install openssh-client`)"
        )
    return key


def public_key(folder: Path) -> str:
    return (folder / f"{KEY_NAME}.pub").read_text().strip()


def authorize_script(key: str) -> str:
    """Shell run inside a host (as root) to make ``key`` root's only lab key.

    Keys that are not the lab's stay: a lab host is a disposable copy, but the
    script never removes what it did not put there.
    """
    marker = "pacs-libre-lab"
    line = f"{key} {marker}"
    return (
        "set -e; umask 077; mkdir -p /root/.ssh; f=/root/.ssh/authorized_keys; touch $f; "
        f"grep -v ' {marker}$' $f > $f.new || true; echo '{line}' >> $f.new; mv $f.new $f"
    )


def write_files(folder: Path, endpoints: Sequence[Endpoint]) -> Path:
    """Write known_hosts and config for these hosts; returns the config's path.

    Entries of hosts that are not in ``endpoints`` (another scenario's, a removed
    host) are kept in neither file: the files describe the hosts that run now.
    """
    folder = folder.resolve()
    key = folder / KEY_NAME
    known = folder / "known_hosts"
    known.write_text("".join(f"{e.alias} {e.host_key}\n" for e in endpoints))
    known.chmod(0o600)
    control = Path.home() / ".ssh"
    control.mkdir(mode=0o700, exist_ok=True)
    lines = [
        "# Written by pacsctl for this lab's hosts; rewritten at every `up`.",
        f"# Use: ssh -F {folder / 'config'} <host>",
    ]
    for e in endpoints:
        lines += [
            f"Host {e.alias}",
            f"  HostName {e.address}",
            f"  HostKeyAlias {e.alias}",
            f"  User {LOGIN_USER}",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known}",
            "  StrictHostKeyChecking yes",
            "  CheckHostIP no",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 15",
            "  ControlMaster auto",
            "  ControlPersist 120s",
            # %C hashes host, port and user: short enough for a socket path.
            "  ControlPath ~/.ssh/pacs-libre-%C",
        ]
    config = folder / "config"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


FILES = (KEY_NAME, f"{KEY_NAME}.pub", "known_hosts", "config")


def remove_files(folder: Path) -> bool:
    """Remove the files this module writes, then the folder if that left it empty.

    Only those files: a folder named by mistake (a home, another tool's) loses nothing
    else. True if anything was removed.
    """
    removed = False
    for name in FILES:
        path = folder / name
        if path.is_file():
            path.unlink()
            removed = True
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed


def wait_reachable(config: Path, alias: str, address: str, timeout: float = 60.0) -> None:
    """Wait until ``ssh -F config alias true`` works; say what to do when it never does."""
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["ssh", "-F", str(config), "-o", "ControlPath=none", alias, "true"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode == 0:
            return
        detail = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        time.sleep(0.5)
    raise UserError(
        f"host {alias} at {address} does not accept the lab's SSH key: {detail} — "
        f"look with `pacsctl lab status`, then `podman exec {alias} systemctl status ssh`; "
        "`pacsctl lab up` installs the key and pins the host key again"
    )
