"""The built-in directory on Debian 13 (slapd 2.6) and Debian 12 (slapd 2.5).

Every client here is Debian's ldap-utils (ldapsearch, ldapwhoami, ldappasswd,
ldapmodify) or openssl, run on the d12 host: the scenario's "SSO host", the only
one that d13's firewall lets reach LDAP and LDAPS. Each directory is reached at
its address on the scenario network, and checked against the deployment's CA.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import time
from pathlib import Path

import pytest
from pacs_testlib import address_of, host_spec, lab_host, run_check_mode, run_playbook

D13, D12 = "pacs-mol-openldap-d13", "pacs-mol-openldap-d12"
SERVERS = [D13, D12]
testinfra_hosts = [host_spec(D12)]

BASE = "dc=ch-molecule,dc=test"
PEOPLE = f"ou=people,{BASE}"
SSO = f"cn=sso,ou=services,{BASE}"
CA = "/etc/pacs-libre/pki/ca.crt"
LOCAL_ROOT = "ldapsearch -LLL -Q -Y EXTERNAL -H ldapi:///"
LOCAL_MODIFY = "ldapmodify -Q -Y EXTERNAL -H ldapi:/// -e relax"
MAX_FAILURE = 5  # openldap_ppolicy_max_failure's default
SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1]))


def secret(name: str) -> str:
    """A password that the scenario made beside Molecule's inventory (molecule.yml)."""
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials" / name
    return path.read_text().strip()


def dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    return lab_host(D12)


@pytest.fixture(scope="module", params=SERVERS)
def server(request):  # type: ignore[no-untyped-def]
    host = lab_host(request.param)
    host.address = address_of(host)
    return host


def ldap(client, tool: str, *args: str):  # type: ignore[no-untyped-def]
    """Run an ldap-utils client on the client host, trusting the deployment's CA only."""
    command = " ".join(shlex.quote(a) for a in args)
    return client.run(f"LDAPTLS_CACERT={CA} LDAPTLS_REQCERT=demand {tool} {command}")


def bind_as(client, server, who: str, password: str, how: str = "ldaps"):  # type: ignore[no-untyped-def]
    uri = f"ldaps://{server.address}" if how == "ldaps" else f"ldap://{server.address}"
    extra = ["-ZZ"] if how == "starttls" else []
    return ldap(client, "ldapwhoami", "-x", *extra, "-H", uri, "-D", who, "-w", password)


def search_as(client, server, who: str, password: str, base: str, *args: str):  # type: ignore[no-untyped-def]
    return ldap(
        client, "ldapsearch", "-LLL", "-x", "-H", f"ldaps://{server.address}",
        "-D", who, "-w", password, "-b", base, *args,
    )  # fmt: skip


def entries(output: str) -> list[str]:
    return re.findall(r"^dn: (.*)$", output, re.M)


def unlock(server, uid: str) -> None:  # type: ignore[no-untyped-def]
    """The runbook's unlock (docs/directory.md), as root on the directory host."""
    for attribute in ("pwdAccountLockedTime", "pwdFailureTime"):
        # Either may be absent (ldapmodify then says "No such attribute"): one change each.
        change = f"dn: {dn(uid)}\nchangetype: modify\ndelete: {attribute}\n"
        server.run(f"printf %s {shlex.quote(change)} | {LOCAL_MODIFY}")


def tasks_that_ran(output: str, role: str) -> list[str]:
    """The names of a role's tasks that reported ok or changed, in an ansible-playbook output."""
    task, ran = "", []
    for line in output.splitlines():
        found = re.match(r"^TASK \[(.*?)\]", line)
        if found:
            task = found.group(1)
        elif (
            re.match(r"^(ok|changed): ", line) and task.startswith(f"{role} : ") and task not in ran
        ):
            ran.append(task)
    return [name.split(" : ", 1)[1] for name in ran]


def test_ldaps_and_starttls_present_a_certificate_of_the_deployment_ca(client, server) -> None:  # type: ignore[no-untyped-def]
    issuer = client.check_output(f"openssl x509 -in {CA} -noout -subject").split("=", 1)[1].strip()
    for starttls in ("", "-starttls ldap"):
        port = 389 if starttls else 636
        out = client.run(
            f"openssl s_client -connect {server.address}:{port} {starttls} -CAfile {CA}"
            " -verify_return_error -brief </dev/null"
        )
        assert out.rc == 0, out.stderr
        assert "Verification: OK" in out.stderr, out.stderr
        assert re.search(r"TLSv1\.[23]", out.stderr), out.stderr
    presented = client.check_output(
        f"openssl s_client -connect {server.address}:636 </dev/null 2>/dev/null"
        " | openssl x509 -noout -issuer"
    )
    assert presented.split("=", 1)[1].strip() == issuer
    for how in ("ldaps", "starttls"):
        result = bind_as(client, server, dn("alice"), secret("alice"), how)
        assert result.rc == 0, result.stderr
        assert result.stdout.strip() == f"dn:{dn('alice')}"


def test_a_simple_bind_without_tls_is_refused(client, server) -> None:  # type: ignore[no-untyped-def]
    result = bind_as(client, server, dn("alice"), secret("alice"), "plain")
    assert result.rc == 13, result.stdout + result.stderr
    assert "onfidentiality required" in result.stderr


def test_an_anonymous_search_returns_nothing(client, server) -> None:  # type: ignore[no-untyped-def]
    for uri, extra in ((f"ldaps://{server.address}", []), (f"ldap://{server.address}", ["-ZZ"])):
        result = ldap(client, "ldapsearch", "-LLL", "-x", *extra, "-H", uri, "-b", BASE)
        assert entries(result.stdout) == [], result.stdout
    # The same search as the SSO finds the people: the anonymous one is empty for a reason.
    sso = search_as(client, server, SSO, secret("sso"), BASE, "(objectClass=inetOrgPerson)", "uid")
    assert dn("alice") in entries(sso.stdout), sso.stdout + sso.stderr


def test_the_sso_reads_people_and_groups_but_no_password(client, server) -> None:  # type: ignore[no-untyped-def]
    stored = server.check_output(f"{LOCAL_ROOT} -b {dn('alice')} userPassword")
    assert re.search(r"^userPassword:: ", stored, re.M), stored
    attrs = ("uid", "mail", "cn", "userPassword")
    result = search_as(client, server, SSO, secret("sso"), PEOPLE, "(uid=alice)", *attrs)
    assert result.rc == 0, result.stderr
    assert entries(result.stdout) == [dn("alice")]
    assert "mail: alice.martin@ch-molecule.test" in result.stdout
    assert "userPassword" not in result.stdout
    groups = search_as(
        client, server, SSO, secret("sso"), f"ou=groups,{BASE}", f"(member={dn('alice')})", "cn"
    )
    names = sorted(re.findall(r"^cn: (.*)$", groups.stdout, re.M))
    assert names == ["admin", "radiologist"], groups.stdout


def test_a_person_reads_neither_others_nor_any_password(client, server) -> None:  # type: ignore[no-untyped-def]
    bruno = (dn("bruno"), secret("bruno"))
    others = search_as(client, server, *bruno, PEOPLE, "(uid=alice)", "userPassword", "mail")
    assert entries(others.stdout) == [], others.stdout
    own = search_as(client, server, *bruno, dn("bruno"), "-s", "base", "*")
    assert entries(own.stdout) == [dn("bruno")], own.stdout + own.stderr
    assert "userPassword" not in own.stdout


def test_passwords_are_hashed_on_the_host(server) -> None:  # type: ignore[no-untyped-def]
    out = server.check_output(f"{LOCAL_ROOT} -b {PEOPLE} -o ldif_wrap=no '(uid=*)' userPassword")
    hashes = [base64.b64decode(v) for v in re.findall(r"^userPassword:: (.*)$", out, re.M)]
    assert len(hashes) == 3, out
    assert all(h.startswith(b"{ARGON2}$argon2") for h in hashes), hashes
    for name in ("admin", "sso", "alice"):
        found = server.run(f"grep -rlF -- {shlex.quote(secret(name))} /etc/ldap /etc/default/slapd")
        assert found.rc == 1, f"{name}'s password in clear in {found.stdout}"
    conf = server.file("/etc/ldap/slapd.conf")
    assert conf.mode == 0o640
    assert not re.search(r"^\s*rootpw", conf.content_string, re.M)


def test_a_person_binds_with_the_right_password_only(client, server) -> None:  # type: ignore[no-untyped-def]
    assert bind_as(client, server, dn("bruno"), secret("bruno")).rc == 0
    wrong = bind_as(client, server, dn("bruno"), secret("bruno") + "x")
    assert wrong.rc == 49, wrong.stderr
    # A right password clears the failure.
    assert bind_as(client, server, dn("bruno"), secret("bruno")).rc == 0


def test_the_groups_have_the_expected_members(client, server) -> None:  # type: ignore[no-untyped-def]
    expected = {
        "radiologist": [dn("alice")],
        "clinician": [dn("bruno")],
        "correspondent-manager": [dn("chloe")],
        "admin": [dn("alice")],
    }
    out = search_as(
        client, server, SSO, secret("sso"), f"ou=groups,{BASE}", "-o", "ldif_wrap=no",
        "(objectClass=groupOfNames)", "cn", "member",
    )  # fmt: skip
    found: dict[str, list[str]] = {}
    for block in out.stdout.strip().split("\n\n"):
        cn = re.search(r"^cn: (.*)$", block, re.M)
        assert cn, out.stdout
        found[cn.group(1)] = sorted(re.findall(r"^member: (.*)$", block, re.M))
    assert found == expected


def test_wrong_passwords_lock_the_account(client, server) -> None:  # type: ignore[no-untyped-def]
    unlock(server, "chloe")
    assert bind_as(client, server, dn("chloe"), secret("chloe")).rc == 0
    locked = server.check_output(f"{LOCAL_ROOT} -b {dn('chloe')} pwdAccountLockedTime")
    assert "pwdAccountLockedTime" not in locked
    for _ in range(MAX_FAILURE):
        assert bind_as(client, server, dn("chloe"), "not-the-password").rc == 49
    locked = server.check_output(f"{LOCAL_ROOT} -b {dn('chloe')} pwdAccountLockedTime")
    assert re.search(r"^pwdAccountLockedTime: \d{14}Z$", locked, re.M), locked
    # Now even the right password is refused...
    refused = bind_as(client, server, dn("chloe"), secret("chloe"))
    assert refused.rc == 49, refused.stdout
    # ...until the runbook's unlock.
    unlock(server, "chloe")
    assert bind_as(client, server, dn("chloe"), secret("chloe")).rc == 0


def test_a_too_short_new_password_is_refused(client, server) -> None:  # type: ignore[no-untyped-def]
    result = ldap(
        client, "ldappasswd", "-x", "-ZZ", "-H", f"ldap://{server.address}",
        "-D", dn("chloe"), "-w", secret("chloe"), "-s", "Short1pass",
    )  # fmt: skip
    assert result.rc != 0, result.stdout
    assert "quality" in result.stdout + result.stderr, result.stdout + result.stderr
    assert bind_as(client, server, dn("chloe"), secret("chloe")).rc == 0
    assert bind_as(client, server, dn("chloe"), "Short1pass").rc == 49


def test_the_directory_survives_a_restart(client, server) -> None:  # type: ignore[no-untyped-def]
    before = server.check_output("cat /run/slapd/slapd.pid")
    server.check_output("systemctl restart slapd")
    assert server.service("slapd").is_enabled
    # A new slapd, and only it (Debian 12's init script once left the old one running).
    assert server.check_output("cat /run/slapd/slapd.pid") != before
    assert server.check_output("pgrep -c -x slapd") == "1"
    deadline = time.monotonic() + 30
    result = bind_as(client, server, dn("alice"), secret("alice"))
    while result.rc != 0 and time.monotonic() < deadline:
        time.sleep(1)
        result = bind_as(client, server, dn("alice"), secret("alice"))
    assert result.rc == 0, result.stderr
    # The data survived too.
    out = search_as(client, server, SSO, secret("sso"), PEOPLE, "(objectClass=inetOrgPerson)")
    assert sorted(entries(out.stdout)) == sorted(dn(u) for u in ("alice", "bruno", "chloe"))


def test_the_firewall_opens_ldap_to_the_sso_host_only(client) -> None:  # type: ignore[no-untyped-def]
    d13 = address_of(lab_host(D13))
    for port in (389, 636):
        probe = client.run(f"timeout 5 bash -c 'exec 3<>/dev/tcp/{d13}/{port}'")
        assert probe.rc == 0, f"the SSO host cannot reach {d13}:{port}"
        with socket.socket() as sock:
            sock.settimeout(3)
            assert sock.connect_ex((d13, port)) != 0, f"{d13}:{port} open to this machine"


def group_members(server, group: str) -> list[str]:  # type: ignore[no-untyped-def]
    out = server.check_output(f"{LOCAL_ROOT} -o ldif_wrap=no -b cn={group},ou=groups,{BASE} member")
    return sorted(re.findall(r"^member: (.*)$", out, re.M))


def test_a_person_removed_from_the_list_is_locked_until_listed_again(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = lab_host(D13)
    server.address = address_of(server)
    converge = str(SCENARIO / "converge.yml")
    # The scenario's list without bruno (molecule.yml), as a hospital would edit it.
    people = [
        {"uid": "alice", "given_name": "Alice", "surname": "Martin",
         "mail": "alice.martin@ch-molecule.test", "password": secret("alice"),
         "groups": ["radiologist", "admin"]},
        {"uid": "chloe", "given_name": "Chloé", "surname": "Durand",
         "mail": "chloe.durand@ch-molecule.test", "password": secret("chloe"),
         "groups": ["correspondent-manager"]},
    ]  # fmt: skip
    extra = tmp_path / "people.json"
    extra.write_text(json.dumps({"openldap_users": people}))
    extra.chmod(0o600)
    rc, out = run_playbook(converge, "--limit", D13, "--tags", "openldap", "-e", f"@{extra}")
    extra.unlink()
    assert rc == 0, out[-3000:]
    locked = server.check_output(f"{LOCAL_ROOT} -b {dn('bruno')} pwdAccountLockedTime")
    assert "pwdAccountLockedTime: 000001010000Z" in locked, locked
    assert bind_as(client, server, dn("bruno"), secret("bruno")).rc == 49
    assert group_members(server, "clinician") == [f"cn=nobody,ou=services,{BASE}"]
    # Back in the list: unlocked, and in their group again.
    rc, out = run_playbook(converge, "--limit", D13, "--tags", "openldap")
    assert rc == 0, out[-3000:]
    assert bind_as(client, server, dn("bruno"), secret("bruno")).rc == 0
    assert group_members(server, "clinician") == [dn("bruno")]


def test_check_mode_changes_nothing() -> None:
    recap, changed = run_check_mode()
    assert set(recap) == set(SERVERS)
    assert all(count == 0 for count in recap.values()), changed


def test_an_external_directory_deploys_nothing() -> None:
    rc, out = run_playbook(str(SCENARIO / "external.yml"))
    assert rc == 0, out[-3000:]
    recap = re.search(rf"^{D13}\s*:\s*ok=(\d+)\s+changed=(\d+)", out, re.M)
    assert recap, out[-2000:]
    assert recap.group(2) == "0", out[-3000:]
    ran = [t for t in tasks_that_ran(out, "openldap") if not t.startswith("Validating arguments")]
    assert ran == ["Say that the hospital's own directory is used"], ran
    assert "the built-in slapd is not deployed" in out
