#!/usr/bin/python3
"""pacs-sso: apply LemonLDAP::NG's configuration from a rendered file, reproducibly.

The sso role renders the whole configuration, without its secrets, to
/etc/lemonldap-ng/pacs-libre/config.json (shown by --diff). This script adds the
secrets from their root-only files, compares the result with the configuration
that LemonLDAP::NG serves (the newest lmConf-N.json of its File backend), and,
when they differ, imports it with `lemonldap-ng-cli -safe 1 restore`, which
checks it as the manager would and gives it the next number. A rerun with the
same inputs changes nothing. Nobody clicks through the manager.

    pacs-sso apply [--check]              the configuration (JSON answer: changed, keys)
    pacs-sso seed-totp --user U --secret-file F [--check]
                                          a known TOTP device for a lab or test user

Standard library only: Debian's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLI = "/usr/share/lemonldap-ng/bin/lemonldap-ng-cli"
CONF_DIR = Path("/var/lib/lemonldap-ng/conf")
PSESSIONS_DIR = Path("/var/lib/lemonldap-ng/psessions")
SETTINGS_DIR = Path("/etc/lemonldap-ng/pacs-libre")

#: Keys that LemonLDAP::NG writes itself at each import: never compared.
META_KEYS = frozenset({"cfgNum", "cfgDate", "cfgAuthor", "cfgAuthorIP", "cfgLog", "cfgVersion"})

#: Where each secret comes from: a configuration key, and its file in SETTINGS_DIR.
SECRET_FILES = {
    "key": "cookie.key",
    "managerPassword": "directory.password",
    "oidcServicePrivateKeySig": "oidc-sig.key",
    "oidcServicePublicKeySig": "oidc-sig.pub",
}

#: A placeholder in config.json that the secret of the named key replaces.
SECRET_PLACEHOLDER = "@secret@"  # noqa: S105 (the mark of where a secret goes)

#: How lemonldap-ng-cli says it stored a configuration: 2.21 in words, 2.16 in a
#: dumped JSON answer whose keys come in any order.
RESTORED = re.compile(r"restored as version (\d+)")
RESTORED_216 = re.compile(r'"result":1\b')
RESTORED_216_NUMBER = re.compile(r'"cfgNum":"?(\d+)')


class SsoError(Exception):
    """A failure that names what to fix."""


def desired_config(settings_dir: Path) -> dict[str, Any]:
    """The rendered configuration with its secrets put in."""
    path = settings_dir / "config.json"
    try:
        conf: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SsoError(
            f"{path}: cannot read the rendered configuration ({exc}). Fix: rerun the sso role."
        ) from exc
    for key, name in SECRET_FILES.items():
        if conf.get(key) != SECRET_PLACEHOLDER:
            continue
        secret_path = settings_dir / name
        try:
            conf[key] = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SsoError(
                f"{secret_path}: the secret of {key} is missing ({exc}). Fix: rerun the sso role."
            ) from exc
        if not conf[key]:
            raise SsoError(f"{secret_path}: the secret of {key} is empty. Fix: rerun the sso role.")
    # The key's id is the public key's hash: a new key gets a new id, and
    # relying parties fetch it from the JWKS.
    if conf.get("oidcServiceKeyIdSig") == SECRET_PLACEHOLDER:
        public = str(conf.get("oidcServicePublicKeySig", ""))
        conf["oidcServiceKeyIdSig"] = hashlib.sha256(public.encode()).hexdigest()[:16]
    return conf


def newest_config(conf_dir: Path) -> tuple[int, dict[str, Any]]:
    """The number and content of the configuration LemonLDAP::NG serves (0, {} if none)."""
    numbers = []
    for path in conf_dir.glob("lmConf-*.json"):
        match = re.fullmatch(r"lmConf-(\d+)\.json", path.name)
        if match:
            numbers.append(int(match.group(1)))
    if not numbers:
        return 0, {}
    number = max(numbers)
    path = conf_dir / f"lmConf-{number}.json"
    try:
        return number, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SsoError(f"{path}: cannot read LemonLDAP::NG's configuration ({exc}).") from exc


def differing_keys(desired: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys whose values differ, meta keys aside; secrets are named, never shown."""
    keys = (set(desired) | set(current)) - META_KEYS
    return sorted(k for k in keys if desired.get(k) != current.get(k))


def restore(conf: dict[str, Any], number: int, cli: str = CLI) -> int:
    """Import ``conf`` as the configuration after ``number``; its number."""
    conf = {k: v for k, v in conf.items() if k not in META_KEYS}
    conf.update(
        {"cfgNum": number + 1, "cfgDate": int(time.time()), "cfgAuthor": "pacs-libre (sso role)"}
    )
    # The configuration holds secrets: it goes through a pipe, never a file
    # (the CLI drops to LemonLDAP::NG's user, who must not read root's files).
    proc = subprocess.run(
        [cli, "-yes", "1", "-safe", "1", "-log", "pacs-libre sso role", "restore", "-"],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    match = RESTORED.search(output)
    if not match and RESTORED_216.search(output):
        match = RESTORED_216_NUMBER.search(output)
    # lemonldap-ng-cli answers 0 even when it refuses a configuration: its
    # words are the only sign.
    if proc.returncode != 0 or not match:
        lines = [
            line for line in output.splitlines() if "[debug]" not in line and "[info]" not in line
        ]
        raise SsoError(
            "LemonLDAP::NG refused the configuration:\n  "
            + "\n  ".join(lines[-15:] or ["(no output)"])
            + "\nFix: correct the sso_* variables named above, then rerun."
        )
    return int(match.group(1))


def cmd_apply(args: argparse.Namespace) -> dict[str, Any]:
    desired = desired_config(Path(args.settings))
    number, current = newest_config(Path(args.conf_dir))
    keys = differing_keys(desired, current)
    result: dict[str, Any] = {"changed": bool(keys), "keys": keys, "cfgNum": number}
    if keys and not args.check:
        result["cfgNum"] = restore(desired, number, args.cli)
        _, applied = newest_config(Path(args.conf_dir))
        left = differing_keys(desired, applied)
        if left:
            raise SsoError(
                "LemonLDAP::NG stored another configuration than the one given"
                f" (keys: {', '.join(left)})."
            )
    return result


def psession_id(user: str) -> str:
    """LemonLDAP::NG's persistent session of a user: the MD5 of the name."""
    return hashlib.md5(user.encode(), usedforsecurity=False).hexdigest()


def cmd_seed_totp(args: argparse.Namespace) -> dict[str, Any]:
    """Give a user a TOTP device with a known secret (for the lab and the tests)."""
    secret = Path(args.secret_file).read_text(encoding="utf-8").strip().upper()
    if not re.fullmatch(r"[A-Z2-7]{16,}", secret):
        raise SsoError(
            f"{args.secret_file}: a TOTP secret is 16 or more base32 letters (A-Z, 2-7)."
        )
    path = Path(args.psessions) / psession_id(args.user)
    session: dict[str, Any] = {}
    if path.exists():
        session = json.loads(path.read_text(encoding="utf-8"))
    devices = json.loads(session.get("_2fDevices") or "[]")
    if any(d.get("type") == "TOTP" and d.get("_secret", "").upper() == secret for d in devices):
        return {"changed": False}
    if args.check:
        return {"changed": True}
    devices = [d for d in devices if not (d.get("type") == "TOTP" and d.get("name") == args.name)]
    devices.append(
        {"type": "TOTP", "name": args.name, "_secret": secret, "epoch": int(time.time())}
    )
    session.update(
        {
            "_session_id": path.name,
            "_session_uid": args.user,
            "_session_kind": "Persistent",
            "_utime": session.get("_utime", int(time.time())),
            "_2fDevices": json.dumps(devices),
        }
    )
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(session), encoding="utf-8")
    os.chmod(tmp, 0o640)
    if args.owner:
        entry = pwd.getpwnam(args.owner)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    os.replace(tmp, path)
    return {"changed": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacs-sso", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="import the rendered configuration when it differs")
    apply.add_argument("--check", action="store_true", help="only say whether it differs")
    apply.add_argument("--settings", default=str(SETTINGS_DIR))
    apply.add_argument("--conf-dir", default=str(CONF_DIR))
    apply.add_argument("--cli", default=CLI)
    apply.set_defaults(func=cmd_apply)
    seed = sub.add_parser("seed-totp", help="give a user a TOTP device with a known secret")
    seed.add_argument("--user", required=True)
    seed.add_argument("--secret-file", required=True)
    seed.add_argument("--name", default="pacs-libre lab")
    seed.add_argument("--psessions", default=str(PSESSIONS_DIR))
    seed.add_argument("--owner", default="www-data")
    seed.add_argument("--check", action="store_true")
    seed.set_defaults(func=cmd_seed_totp)
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except SsoError as exc:
        print(f"pacs-sso: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
