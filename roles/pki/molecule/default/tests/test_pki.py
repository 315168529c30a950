"""Behaviour of the pki role on real systemd hosts (Debian 13 and 12).

The deployment's CA is made once on the controller, beside Molecule's inventory; each host
made its own keys, and got its certificates signed by that CA through the certificate entry
point (and one from a hospital's own CA, supplied as files). The last tests rerun the
converge with other names and thresholds, to see certificates reissued and renewed, and
--check tell it beforehand.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import pytest
from pacs_testlib import RECAP, address_of, host_spec, lab_host, run_check_mode, run_playbook

D13 = "pacs-mol-pki-d13"
D12 = "pacs-mol-pki-d12"
PKI = "/etc/pacs-libre/pki"
CONVERGE = str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")
NEW_NAME = "pacs.molecule.example"

testinfra_hosts = [host_spec(D13), host_spec(D12)]


def inventory_dir() -> Path:
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    return inventory if inventory.is_dir() else inventory.parent


def controller_ca() -> str:
    return (inventory_dir() / "pki" / "ca.crt").read_text()


def hospital_dir() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "hospital"


def openssl_x509(host, path: str, *args: str) -> str:
    """``openssl x509`` on the first certificate of ``path`` on the host."""
    return host.check_output(f"openssl x509 -in {path} -noout {' '.join(args)}")


def serial(host, name: str) -> str:
    return openssl_x509(host, f"{PKI}/{name}.crt", "-serial").strip()


def days_left(host, name: str) -> float:
    script = (
        "import datetime,subprocess,sys\n"
        f"out=subprocess.check_output(['openssl','x509','-in','{PKI}/{name}.crt','-noout','-enddate'],text=True)\n"
        "end=datetime.datetime.strptime(out.strip().split('=',1)[1],'%b %d %H:%M:%S %Y %Z')\n"
        "print((end-datetime.datetime.utcnow()).total_seconds()/86400)\n"
    )
    return float(host.check_output(f"python3 -c {shlex.quote(script)}"))


def sans(host, name: str) -> set[str]:
    out = openssl_x509(host, f"{PKI}/{name}.crt", "-ext", "subjectAltName")
    names = out.split("\n", 1)[1]
    return {n.strip().replace("IP Address:", "IP:") for n in names.split(",")}


def pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


def notified(host) -> int:
    out = host.run("cat /root/pki-test-notified")
    return len(out.stdout.split()) if out.rc == 0 else 0


def flat(text: str) -> str:
    """Output with its lines joined: the YAML callback folds long messages."""
    return " ".join(text.split())


def converge(*args: str) -> tuple[dict[str, int], str]:
    """Rerun the scenario's converge (with extra arguments); its changes per host, and its
    output with lines joined."""
    rc, out = run_playbook(CONVERGE, *args)
    assert rc == 0, f"converge {' '.join(args)} failed:\n{out[-5000:]}"
    return {m["host"]: int(m["changed"]) for m in RECAP.finditer(out)}, flat(out)


# ----------------------------------------------------------------------------- the CA


def test_the_ca_is_on_the_controller_with_its_key_encrypted():
    ca_dir = inventory_dir() / "pki"
    # Only the CA is there: the hosts' keys never left them.
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]
    key = (ca_dir / "ca.key").read_text()
    assert key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"), key[:60]
    assert oct((ca_dir / "ca.key").stat().st_mode & 0o777) == "0o600"
    # The passphrase was made beside the inventory (never in git).
    assert (
        len((inventory_dir() / ".credentials" / "pki" / "ca-passphrase").read_text().strip()) == 32
    )


def test_the_ca_is_a_ca_named_after_the_site(host):
    text = host.check_output(
        f"openssl x509 -in {PKI}/ca.crt -noout -subject -ext basicConstraints,keyUsage"
    )
    assert (
        "CN = Molecule hospital deployment CA" in text
        or "CN=Molecule hospital deployment CA" in text
    )
    assert "CA:TRUE" in text and "Certificate Sign" in text


def test_every_host_has_the_controllers_ca_then_the_hospitals(host):
    bundle = pem_blocks(host.file(f"{PKI}/ca.crt").content_string)
    assert bundle == pem_blocks(controller_ca()) + pem_blocks(
        (hospital_dir() / "ca.crt").read_text()
    )


def test_the_ca_is_in_the_trust_store(host):
    assert host.file("/etc/ssl/certs/pacs-libre-deployment.pem").exists
    assert host.file("/etc/ssl/certs/pacs-libre-extra-1.pem").exists
    bundle = host.file("/etc/ssl/certs/ca-certificates.crt").content_string
    assert pem_blocks(controller_ca())[0] in bundle


# ----------------------------------------------------------------------------- issued certificates


def test_the_server_certificate_verifies_against_the_ca(host):
    cmd = host.run(f"openssl verify -CAfile {PKI}/ca.crt -purpose sslserver {PKI}/test-server.crt")
    assert cmd.rc == 0 and cmd.stdout.strip().endswith(": OK"), cmd.stdout + cmd.stderr


def test_the_certificate_file_is_the_leaf_then_the_ca(host):
    blocks = pem_blocks(host.file(f"{PKI}/test-server.crt").content_string)
    assert len(blocks) == 2
    assert blocks[1] == pem_blocks(controller_ca())[0]


def test_the_host_names_and_addresses_are_subject_alt_names(host):
    names = sans(host, "test-server")
    fqdn = host.check_output("hostname -f").strip()
    short = host.check_output("hostname -s").strip()
    expected = {
        f"DNS:{fqdn}",
        f"DNS:{short}",
        "DNS:localhost",
        "IP:127.0.0.1",
        f"IP:{address_of(host)}",
    }
    assert expected <= names, names


def test_the_key_is_the_services_own(host):
    key = host.file(f"{PKI}/test-server.key")
    assert (key.user, key.group, key.mode) == ("root", "pkitest", 0o640)
    client_key = host.file(f"{PKI}/test-client.key")
    assert (client_key.user, client_key.group, client_key.mode) == ("root", "root", 0o640)


def test_a_client_certificate_is_for_clients_only(host):
    ok = host.run(f"openssl verify -CAfile {PKI}/ca.crt -purpose sslclient {PKI}/test-client.crt")
    assert ok.rc == 0, ok.stdout + ok.stderr
    refused = host.run(
        f"openssl verify -CAfile {PKI}/ca.crt -purpose sslserver {PKI}/test-client.crt"
    )
    assert refused.rc != 0, refused.stdout


def test_a_client_of_the_system_trust_store_accepts_the_server(host):
    """A real TLS handshake: openssl s_server with the certificate, Python's default trust.

    Server and client run in one shell on the host, so that the server lives as long as
    the client needs it and no longer.
    """
    client = (
        "import socket,ssl,time\n"
        "for _ in range(60):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1',9443),timeout=2).close(); break\n"
        "    except OSError: time.sleep(0.5)\n"
        "ctx=ssl.create_default_context()\n"
        "with socket.create_connection(('127.0.0.1',9443)) as s:\n"
        "    with ctx.wrap_socket(s, server_hostname='localhost') as t:\n"
        "        print(t.version(), t.getpeercert()['subject'])\n"
    )
    server = (
        "timeout 60 openssl s_server -accept 127.0.0.1:9443 -www -quiet "
        f"-cert {PKI}/test-server.crt -key {PKI}/test-server.key </dev/null >/dev/null 2>&1"
    )
    out = host.run(
        f"{server} & pid=$!; python3 -c {shlex.quote(client)}; rc=$?; kill $pid; exit $rc"
    )
    assert out.rc == 0, out.stderr
    assert "TLSv1." in out.stdout and "Molecule hospital" in out.stdout


# ----------------------------------------------------------------------------- the hospital's own


def test_the_hospitals_certificate_is_installed_as_supplied(host):
    name = host.backend.get_hostname()
    supplied = (hospital_dir() / f"{name}.crt").read_text()
    blocks = pem_blocks(host.file(f"{PKI}/supplied.crt").content_string)
    assert blocks == pem_blocks(supplied) + pem_blocks((hospital_dir() / "ca.crt").read_text())
    ok = host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/supplied.crt")
    assert ok.rc == 0, ok.stdout + ok.stderr
    key = host.file(f"{PKI}/supplied.key")
    assert (key.group, key.mode) == ("pkitest", 0o640)
    pub_key = host.check_output(f"openssl pkey -in {PKI}/supplied.key -pubout")
    pub_cert = host.check_output(f"openssl x509 -in {PKI}/supplied.crt -noout -pubkey")
    assert pub_key == pub_cert


# ----------------------------------------------------------------------------- refusals


def test_a_missing_supplied_file_is_named_with_its_fix():
    missing = "/nonexistent/hospital/web.crt"
    extra = {"pki_supplied_certificates": {"supplied": {"cert": missing, "key": missing + ".key"}}}
    rc, out = run_playbook(CONVERGE, "--limit", D13, "-e", json.dumps(extra))
    out = flat(out)
    assert rc != 0
    assert f"pki_supplied_certificates.supplied.cert = {missing}" in out, out[-3000:]
    assert "Fix: put the hospital's file there" in out


def test_a_wrong_passphrase_is_refused_and_the_ca_kept():
    key = inventory_dir() / "pki" / "ca.key"
    before = hashlib.sha256(key.read_bytes()).hexdigest()
    rc, out = run_playbook(CONVERGE, "--limit", D13, "-e", "pki_ca_passphrase=not-the-passphrase")
    out = flat(out)
    assert rc != 0
    assert "pki_ca_passphrase does not open" in out, out[-3000:]
    assert hashlib.sha256(key.read_bytes()).hexdigest() == before


# ----------------------------------------------------------------------------- reissue and renewal
# These rerun the converge on the Debian 13 host, in order; the last one leaves
# every host as converged, and check mode then reports nothing to do.


@pytest.fixture(scope="module")
def d13():
    return lab_host(D13)


# New names and a longer renewal threshold are given at once: one check-mode run
# and one run show both, as each converge costs about 30 s a host.
CHANGED_NAMES_AND_THRESHOLD = {"pki_test_extra_dns": [NEW_NAME], "pki_renew_days": 400}


def test_check_mode_shows_a_reissue_for_new_names_and_a_renewal_due_under_a_longer_threshold(d13):
    before = serial(d13, "test-server"), serial(d13, "test-client")
    changed, out = converge(
        "--limit", D13, "--check", "--diff", "-e", json.dumps(CHANGED_NAMES_AND_THRESHOLD)
    )
    assert changed[D13] > 0, out[-3000:]
    assert f"{PKI}/test-client.crt expires on" in out and "it would be renewed now" in out, out[
        -3000:
    ]
    assert (serial(d13, "test-server"), serial(d13, "test-client")) == before, (
        "check mode wrote a certificate"
    )


def test_new_names_reissue_and_a_longer_threshold_renews_now(d13):
    before = serial(d13, "test-server"), serial(d13, "test-client")
    calls = notified(d13)
    _, out = converge(
        "--limit",
        D13,
        "-e",
        json.dumps({**CHANGED_NAMES_AND_THRESHOLD, "pki_certificate_days": 20}),
    )
    assert serial(d13, "test-server") != before[0]
    assert f"DNS:{NEW_NAME}" in sans(d13, "test-server")
    # The calling role's handler ran.
    assert notified(d13) > calls
    assert "renewing it now" in out
    assert serial(d13, "test-client") != before[1]
    # Issued for 20 days (give or take the hour of clock skew allowed).
    assert 19 < days_left(d13, "test-client") < 21
    ok = d13.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/test-client.crt")
    assert ok.rc == 0, ok.stdout + ok.stderr


def test_check_mode_shows_a_certificate_near_its_expiry(d13):
    """The 20-day certificates are within the default 30 days: due on Debian 13 only, and
    --check says so."""
    changed, out = converge("--check", "--diff")
    assert changed[D13] > 0, out[-3000:]
    assert changed[D12] == 0, out[-3000:]
    assert f"{PKI}/test-client.crt expires on" in out and "it would be renewed now" in out, out[
        -3000:
    ]


def test_a_rerun_renews_a_certificate_near_its_expiry(d13):
    before = serial(d13, "test-client")
    converge("--limit", D13)
    assert serial(d13, "test-client") != before
    assert 364 < days_left(d13, "test-client") < 366
    assert f"DNS:{NEW_NAME}" not in sans(d13, "test-server")


def test_check_mode_then_changes_nothing():
    recap, changed_tasks = run_check_mode()
    assert all(count == 0 for count in recap.values()), f"{recap}\n{changed_tasks}"
