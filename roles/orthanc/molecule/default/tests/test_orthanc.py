"""The archive on a real systemd host: declared nodes only, and Orthanc answers them.

dcmtk's echoscu runs on this machine, which the container sees as its gateway:
the address the scenario declares for its test nodes.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from pacs_testlib import (
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_config,
    orthanc_credentials,
    run_check_mode,
)

from pacs_libre.dicom.synth import make_study

HOST = "pacs-mol-orthanc-d13"
AET = "MOLARCHIVE"

testinfra_hosts = [host_spec(HOST)]


def echo(calling: str, called: str = AET, port: int = 4242) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("echoscu"),
            "-to",
            "10",
            "-aet",
            calling,
            "-aec",
            called,
            address_of(lab_host(HOST)),
            str(port),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_declared_modality_is_answered():
    result = echo("MOLMODALITY")
    assert result.returncode == 0, result.stderr


def test_an_unknown_ae_title_is_refused():
    result = echo("INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_a_wrong_called_ae_title_is_refused():
    result = echo("MOLMODALITY", called="NOTTHEARCHIVE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr


@pytest.fixture(scope="module")
def system(host):
    config = orthanc_config(host)
    user, password = orthanc_credentials(host)
    out = host.check_output(
        "python3 -c 'import base64,sys,urllib.request as u;"
        'r=u.Request("http://127.0.0.1:8042/plugins");'
        'r.add_header("Authorization","Basic "+base64.b64encode(sys.argv[1].encode()).decode());'
        "print(u.urlopen(r).read().decode())' %s",
        f"{user}:{password}",
    )
    return config, json.loads(out)


def test_index_in_postgresql_and_plugins_loaded(system):
    config, plugins = system
    assert {"postgresql-index", "dicom-web", "python"} <= set(plugins)
    assert config["PostgreSQL"]["EnableIndex"] is True


def test_index_connection_verifies_the_server_with_the_ca(host):
    """Over TCP, libpq checks the server's certificate and name (sslmode=verify-full)."""
    conninfo = orthanc_config(host)["PostgreSQL"]["ConnectionUri"]
    assert "sslmode='verify-full'" in conninfo
    assert "sslrootcert='/etc/pacs-libre/pki/ca.crt'" in conninfo
    query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ok = host.run(f"psql {shlex.quote(conninfo)} -XAtc {shlex.quote(query)}")
    assert ok.rc == 0 and ok.stdout.strip() == "t", ok.stderr
    # Another root (a public CA, not the deployment's): the same server is refused.
    other = conninfo.replace(
        "/etc/pacs-libre/pki/ca.crt", "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"
    )
    refused = host.run(f"psql {shlex.quote(other)} -XAtc 'SELECT 1'")
    assert refused.rc != 0
    assert "certificate verify failed" in refused.stderr


def test_index_connection_uses_tls(host):
    out = host.check_output(
        "runuser -u postgres -- psql -Atc "
        '"SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) '
        "WHERE usename = 'orthanc' AND ssl\""
    )
    assert int(out) >= 1


def test_http_refuses_remote_clients(host):
    # Orthanc listens on every address but answers only this host (RemoteAccessAllowed
    # false), and the firewall does not open the port.
    ruleset = host.check_output("nft list ruleset")
    assert "dport 8042" not in ruleset
    assert "dport 4242" in ruleset


def test_service_runs_sandboxed(host):
    assert host.service("orthanc").is_running
    show = host.check_output(
        "systemctl show orthanc -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths -p User"
        " -p Environment -p ProtectKernelTunables -p PrivateDevices -p SystemCallFilter"
    )
    # Nagle's algorithm off on the DICOM port (docs/performance.md).
    assert "TCP_NODELAY=1" in show
    assert "NoNewPrivileges=yes" in show
    assert "ProtectSystem=strict" in show
    assert "/srv/pacs/orthanc" in show
    assert "User=orthanc" in show
    # This host has CAP_SYS_ADMIN in PID 1 (molecule.yml), as real servers and VMs do:
    # the role gives the kernel-level sandbox too, and systemd builds it.
    caps = int(host.check_output("awk '/^CapBnd:/ {print $2}' /proc/1/status"), 16)
    assert caps & (1 << 21), "the scenario host lost SYS_ADMIN: see molecule.yml"
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["ProtectKernelTunables"] == "yes"
    assert props["PrivateDevices"] == "yes"
    assert props["SystemCallFilter"], "no system call filter: the kernel-level sandbox is off"
    # In the service's view of the files, / is read-only and its storage writable.
    pid = host.check_output("systemctl show -p MainPID --value orthanc")
    mounts = {
        fields[4]: fields[5]
        for fields in (
            line.split() for line in host.check_output(f"cat /proc/{pid}/mountinfo").splitlines()
        )
    }
    assert mounts["/"].startswith("ro")
    assert mounts["/srv/pacs/orthanc"].startswith("rw")
    assert mounts["/var/lib/orthanc"].startswith("rw")


def test_the_python_services_started_under_the_sandbox(host):
    invocation = host.check_output("systemctl show -p InvocationID --value orthanc").strip()
    log = host.check_output(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert orthanc_config(host)["PacsLibre"]["Services"]
    for service in orthanc_config(host)["PacsLibre"]["Services"]:
        assert f"pacs-libre: service {service} started" in log
    assert "did not start" not in log


def _instances(host) -> int:
    user, password = orthanc_credentials(host)
    out = host.check_output(
        "python3 -c 'import base64,sys,urllib.request as u;"
        'r=u.Request("http://127.0.0.1:8042/statistics");'
        'r.add_header("Authorization","Basic "+base64.b64encode(sys.argv[1].encode()).decode());'
        "print(u.urlopen(r).read().decode())' %s",
        f"{user}:{password}",
    )
    return int(json.loads(out)["CountInstances"])


def test_images_are_ingested_under_the_sandbox_plain_and_over_tls(host, tmp_path):
    """C-STORE on the plain port, and through stunnel's DICOM TLS: both land in the index."""
    study = make_study(tmp_path / "study", ct_images=2, mr_images=2, cr=False, seed=16)
    key, cert, ca = _client_certificate(tmp_path)
    before = _instances(host)
    address = address_of(lab_host(HOST))
    plain = subprocess.run(
        [dcmtk("storescu"), "-to", "20", "-aet", "MOLMODALITY", "-aec", AET, "+sd", address,
         "4242", str(study.out_dir / "CT")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    over_tls = subprocess.run(
        [dcmtk("storescu"), "-to", "20", "+tls", str(key), str(cert), "+cf", str(ca),
         "-aet", "MOLTLS", "-aec", AET, "+sd", address, "2762", str(study.out_dir / "MR")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert over_tls.returncode == 0, over_tls.stderr
    assert _instances(host) == before + 4
    assert host.service("stunnel@pacs-dicom-tls").is_running


def test_dicom_tls_is_served(host):
    assert host.service("stunnel@pacs-dicom-tls").is_running
    assert host.socket("tcp://0.0.0.0:2762").is_listening


def test_each_service_owns_its_folder_and_the_shared_parent_keeps_its_owner(host):
    """/srv/pacs holds the database and the archive: neither role takes it from the other."""
    shared = host.file("/srv/pacs")
    assert (shared.user, shared.group, shared.mode) == ("root", "root", 0o755)
    assert (host.file("/srv/pacs/postgresql").user, host.file("/srv/pacs/postgresql").mode) == (
        "root",
        0o755,
    )
    data = host.file("/srv/pacs/postgresql/17")
    assert (data.user, data.mode) == ("postgres", 0o750)
    storage = host.file("/srv/pacs/orthanc")
    assert (storage.user, storage.group, storage.mode) == ("orthanc", "orthanc", 0o750)
    # A hospital's own owner and mode on the shared parent survive a rerun.
    host.run("chgrp adm /srv/pacs && chmod 0751 /srv/pacs")
    try:
        recap, changed = run_check_mode()
        assert recap[HOST] == 0, changed
    finally:
        host.run("chgrp root /srv/pacs && chmod 0755 /srv/pacs")


def _client_certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A DICOM TLS client's key and certificate, signed by the scenario's deployment CA.

    As a hospital would do for a modality: its request signed with the CA on the controller.
    """
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    inventory_dir = inventory if inventory.is_dir() else inventory.parent
    ca_dir = inventory_dir / "pki"
    passphrase = inventory_dir / ".credentials" / "pki" / "ca-passphrase"
    key, csr, cert = tmp_path / "moltls.key", tmp_path / "moltls.csr", tmp_path / "moltls.crt"
    ext = tmp_path / "ext.cnf"
    ext.write_text("extendedKeyUsage = clientAuth\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-subj", "/CN=moltls", "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
         "-CAkey", str(ca_dir / "ca.key"), "-passin", f"file:{passphrase}",
         "-set_serial", str(secrets.randbits(64)), "-days", "1", "-extfile", str(ext),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert, ca_dir / "ca.crt"


def tls_echo(*tls_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-to", "10", *tls_args, "-aet", "MOLTLS", "-aec", AET,
         address_of(lab_host(HOST)), "2762"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_dicom_tls_admits_a_client_of_the_deployments_ca(tmp_path):
    key, cert, ca = _client_certificate(tmp_path)
    # The client checks the archive's certificate against the CA (dcmtk's default),
    # and presents its own, which stunnel checks (orthanc_tls_verify_peers).
    result = tls_echo("+tls", str(key), str(cert), "+cf", str(ca))
    assert result.returncode == 0, result.stderr


def test_dicom_tls_refuses_a_client_without_a_certificate(tmp_path):
    _key, _cert, ca = _client_certificate(tmp_path)
    result = tls_echo("+tla", "+cf", str(ca))
    assert result.returncode != 0


STUNNEL_CONF = "/etc/stunnel/pacs-dicom-tls.conf"


def _stunnel_validate() -> str:
    """The `validate:` of the task that writes stunnel's file, as the role runs it."""
    tasks = yaml.safe_load((Path(__file__).resolve().parents[3] / "tasks/service.yml").read_text())
    found = [
        sub["ansible.builtin.template"]["validate"]
        for task in tasks
        for sub in task.get("block", [task])
        if "/etc/stunnel/" in sub.get("ansible.builtin.template", {}).get("dest", "")
    ]
    assert len(found) == 1, found
    return found[0]


def _stunnel_processes(host) -> str:
    # A process may end between the glob and its read: grep's status says nothing.
    return host.run("grep -lx stunnel4 /proc/[0-9]*/comm | sort").stdout


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        # An option stunnel does not know.
        ("verifyChain = yes", "verifyChian = yes", "Specified option name is not valid here"),
        # A key that is not the certificate's.
        ("pki/dicom-tls.key", "pki/postgresql.key", "key values mismatch"),
        # A CA file that is not there.
        ("CAfile = /etc/pacs-libre/pki/ca.crt", "CAfile = /nowhere/ca.crt", "/nowhere/ca.crt"),
    ],
    ids=["unknown-option", "wrong-key", "missing-ca"],
)
def test_stunnel_refuses_a_broken_file_before_it_lands(host, old, new, said):
    """The role's validate command, on a broken copy: refused in stunnel's own words.

    The tunnel in use keeps its file, keeps running and keeps serving its port.
    """
    validate = _stunnel_validate()
    installed = host.file(STUNNEL_CONF).content_string
    assert old in installed
    broken = host.check_output("mktemp /tmp/pacs-stunnel-broken.XXXXXX")
    encoded = base64.b64encode(installed.replace(old, new).encode()).decode()
    try:
        host.check_output(f"echo {encoded} | base64 -d > {broken}")
        result = host.run(validate.replace("%s", broken))
        assert result.rc == 1, result.stdout + result.stderr
        assert said in result.stderr
        # Named as the candidate, not as the checker's scratch copy.
        assert f"{broken}:" in result.stderr
        assert "pacs-stunnel-check." not in result.stderr
        assert "stunnel refuses this configuration" in result.stderr
    finally:
        host.run(f"rm -f {broken}")
    assert host.file(STUNNEL_CONF).content_string == installed
    assert host.service("stunnel@pacs-dicom-tls").is_running
    assert host.socket("tcp://0.0.0.0:2762").is_listening


def test_stunnel_accepts_the_installed_file_and_leaves_nothing_behind(host):
    before = _stunnel_processes(host)
    result = host.run(_stunnel_validate().replace("%s", STUNNEL_CONF))
    assert result.rc == 0, result.stderr
    # Read by stunnel itself, with ports of the checker's: the tunnel in use is
    # the same process, and no other stunnel nor scratch folder is left.
    assert _stunnel_processes(host) == before
    assert host.run("ls -d /tmp/pacs-stunnel-check.*").rc != 0
    assert host.socket("tcp://0.0.0.0:2762").is_listening
