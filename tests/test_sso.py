"""pacs-sso (roles/sso/files/pacs_sso.py): LemonLDAP::NG's configuration applied reproducibly.

The file that the role installs on the host is the one imported here. The CLI it
drives is replaced by a script that answers as lemonldap-ng-cli 2.21 and 2.16 do
(their words, since both exit 0 on a refusal) and stores what it is given as
the File backend does; the real CLI runs in molecule/single-host.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyotp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("pacs_sso", ROOT / "roles/sso/files/pacs_sso.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pacs_sso"] = module
    spec.loader.exec_module(module)
    return module


sso = _load()


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A host's folders: pacs-libre's settings (the rendered file, the secrets), the conf dir."""
    settings = tmp_path / "settings"
    conf = tmp_path / "conf"
    settings.mkdir()
    conf.mkdir()
    (settings / "config.json").write_text(
        json.dumps(
            {
                "portal": "https://sso.example/",
                "key": "@secret@",
                "managerPassword": "@secret@",
                "oidcServicePrivateKeySig": "@secret@",
                "oidcServicePublicKeySig": "@secret@",
                "oidcServiceKeyIdSig": "@secret@",
                "timeout": 36000,
            }
        )
    )
    for name, value in {
        "cookie.key": "k" * 64,
        "directory.password": "dir-pw",
        "oidc-sig.key": "PRIVATE",
        "oidc-sig.pub": "PUBLIC",
    }.items():
        (settings / name).write_text(value + "\n")
    return {"settings": settings, "conf": conf}


def _cli(tmp_path: Path, version: str, refuse: bool = False) -> Path:
    """A stand-in for lemonldap-ng-cli: `restore -` stores stdin as the next lmConf-N.json."""
    script = tmp_path / f"cli-{version}"
    said = (
        'print("Configuration has been restored as version %d" % n)'
        if version == "2.21"
        else 'print("$VAR1 = [200, [], [\'{\\"result\\":1,\\"cfgNum\\":\\"%d\\"}\']];" % n)'
    )
    refusal = (
        'print("The supplied configuration could not be restored because it contains errors:");'
        'print(" - TOTP range must be defined"); sys.exit(0)'
    )
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, re, sys
            from pathlib import Path
            conf_dir = Path({str(tmp_path / "conf")!r})
            assert sys.argv[-2:] == ["restore", "-"], sys.argv
            conf = json.load(sys.stdin)
            {refusal if refuse else "pass"}
            nums = [int(re.findall(r"\\d+", p.name)[0]) for p in conf_dir.glob("lmConf-*.json")]
            n = max(nums, default=0) + 1
            conf["cfgNum"] = n
            (conf_dir / f"lmConf-{{n}}.json").write_text(json.dumps(conf))
            {said}
            """
        )
    )
    script.chmod(0o755)
    return script


def _apply(host: dict[str, Path], cli: Path, check: bool = False) -> dict[str, Any]:
    args = sso.argparse.Namespace(
        settings=str(host["settings"]), conf_dir=str(host["conf"]), cli=str(cli), check=check
    )
    return dict(sso.cmd_apply(args))


def test_secrets_are_put_in_and_the_key_id_follows_the_public_key(host):
    conf = sso.desired_config(host["settings"])
    assert conf["key"] == "k" * 64 and conf["managerPassword"] == "dir-pw"
    assert conf["oidcServicePrivateKeySig"] == "PRIVATE"
    assert conf["oidcServiceKeyIdSig"] == hashlib.sha256(b"PUBLIC").hexdigest()[:16]


def test_a_missing_secret_names_its_file_and_the_fix(host):
    (host["settings"] / "directory.password").unlink()
    with pytest.raises(
        sso.SsoError, match=r"directory\.password.*managerPassword.*rerun the sso role"
    ):
        sso.desired_config(host["settings"])


@pytest.mark.parametrize("version", ["2.21", "2.16"])
def test_apply_imports_once_then_changes_nothing(host, tmp_path, version):
    cli = _cli(tmp_path, version)
    first = _apply(host, cli)
    assert first["changed"] and first["cfgNum"] == 1
    assert "managerPassword" in first["keys"]
    stored = json.loads((host["conf"] / "lmConf-1.json").read_text())
    assert stored["managerPassword"] == "dir-pw" and stored["cfgAuthor"].startswith("pacs-libre")
    again = _apply(host, cli)
    assert again == {"changed": False, "keys": [], "cfgNum": 1}
    assert sorted(p.name for p in host["conf"].iterdir()) == ["lmConf-1.json"]


def test_a_changed_setting_is_named_and_check_mode_writes_nothing(host, tmp_path):
    cli = _cli(tmp_path, "2.21")
    _apply(host, cli)
    rendered = json.loads((host["settings"] / "config.json").read_text())
    rendered["timeout"] = 7200
    (host["settings"] / "config.json").write_text(json.dumps(rendered))
    checked = _apply(host, cli, check=True)
    assert checked == {"changed": True, "keys": ["timeout"], "cfgNum": 1}
    assert not (host["conf"] / "lmConf-2.json").exists()
    applied = _apply(host, cli)
    assert applied["cfgNum"] == 2 and applied["keys"] == ["timeout"]


def test_a_key_removed_from_the_rendered_file_is_a_change(host, tmp_path):
    cli = _cli(tmp_path, "2.21")
    _apply(host, cli)
    rendered = json.loads((host["settings"] / "config.json").read_text())
    del rendered["timeout"]
    (host["settings"] / "config.json").write_text(json.dumps(rendered))
    assert _apply(host, cli, check=True)["keys"] == ["timeout"]


def test_a_refusal_is_an_error_although_the_cli_exits_0(host, tmp_path):
    cli = _cli(tmp_path, "2.21", refuse=True)
    with pytest.raises(sso.SsoError, match="TOTP range must be defined") as error:
        _apply(host, cli)
    assert "Fix:" in str(error.value)
    assert not list(host["conf"].iterdir())


def _seed(tmp_path: Path, secret: str, check: bool = False) -> dict[str, Any]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    args = sso.argparse.Namespace(
        user="lab-admin",
        secret_file=str(secret_file),
        name="pacs-libre lab",
        psessions=str(tmp_path),
        owner="",
        check=check,
    )
    return dict(sso.cmd_seed_totp(args))


def test_a_seeded_totp_device_is_what_the_portal_reads_and_a_rerun_keeps_it(tmp_path):
    secret = pyotp.random_base32()
    assert _seed(tmp_path, secret, check=True) == {"changed": True}
    assert not any(tmp_path.glob("*0*"))
    assert _seed(tmp_path, secret) == {"changed": True}
    path = tmp_path / hashlib.md5(b"lab-admin", usedforsecurity=False).hexdigest()
    session = json.loads(path.read_text())
    assert session["_session_uid"] == "lab-admin" and session["_session_kind"] == "Persistent"
    (device,) = json.loads(session["_2fDevices"])
    assert device["type"] == "TOTP" and device["_secret"] == secret
    assert _seed(tmp_path, secret) == {"changed": False}
    # A new secret replaces the lab's device, not the user's other devices.
    other = pyotp.random_base32()
    assert _seed(tmp_path, other) == {"changed": True}
    (device,) = json.loads(json.loads(path.read_text())["_2fDevices"])
    assert device["_secret"] == other


def test_a_secret_that_is_not_base32_is_refused(tmp_path):
    with pytest.raises(sso.SsoError, match="base32"):
        _seed(tmp_path, "not a secret!")
