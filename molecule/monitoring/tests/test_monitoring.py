"""Monitoring on the whole stack (archive, database and monitoring on one Debian 13 host).

Driven from this machine with real parts: Prometheus' HTTP API (through a tunnel into
the host's loopback, where it listens), a real SMTP server (aiosmtpd) that Alertmanager
reaches at the host's gateway, dcmtk's storescu and pynetdicom as the modality.

- every scrape target is up, and the archive's metrics, the C-ECHO probe, PostgreSQL's
  exporter and the sizing plan are in Prometheus;
- the deployed config and rules pass promtool and amtool on the host;
- the archive stopped: ArchiveHttpDown fires and its mail arrives;
- the archive's small filesystem filling: ArchiveStorageFullSoon fires and its mail
  arrives;
- studies past the archive's storage limit (Debian 13): refused with a DICOM failure
  status; the archive stays up and the earlier studies are intact.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiosmtpd.controller import Controller
from pacs_testlib import ExecTunnel, host_spec, lab_host, orthanc_credentials
from pynetdicom import AE

from pacs_libre.dicom.synth import make_study

HOST = "pacs-mol-mon-d13"
AET, MODALITY = "MOLPACSMON", "MOLMODALITY"
SMTP_PORT = 2525
testinfra_hosts = [host_spec(HOST)]


class Inbox:
    """aiosmtpd's handler: keeps every message received."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    @staticmethod
    def text(message: EmailMessage) -> str:
        """The plain-text body (Alertmanager sends multipart/alternative, even with one part)."""
        body = message.get_body(preferencelist=("plain",))
        return str(body.get_content()) if body is not None else ""

    def wait_for(self, text: str, timeout: float = 240) -> EmailMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if text in str(message["Subject"]) or text in self.text(message):
                    return message
            time.sleep(2)
        subjects = [str(m["Subject"]) for m in self.messages]
        raise AssertionError(f"no mail about {text} in {timeout:.0f} s; received: {subjects}")


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="0.0.0.0", port=SMTP_PORT)  # noqa: S104
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    with ExecTunnel(HOST, 9090) as tunnel:
        yield tunnel.url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=30) as answer:  # noqa: S310 (http://127.0.0.1)
        data = json.load(answer)
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def wait_for(url: str, promql: str, timeout: float = 240) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(url, promql)
        if result:
            return result
        time.sleep(3)
    raise AssertionError(f"{promql} gave nothing in {timeout:.0f} s")


def firing(url: str, alertname: str, timeout: float = 240) -> list[dict[str, Any]]:
    return wait_for(url, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}', timeout)


def test_configuration_passes_promtool_and_amtool(host):
    host.run_expect([0], "promtool check config /etc/prometheus/prometheus.yml")
    for path in host.file("/etc/prometheus/rules").listdir():
        host.run_expect([0], f"promtool check rules /etc/prometheus/rules/{path}")
    host.run_expect([0], "amtool check-config /etc/prometheus/alertmanager.yml")


def test_prometheus_and_alertmanager_listen_on_the_host_only(host):
    for port in (9090, 9093, 9115, 9100, 9187):
        sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
        assert sockets, f"nothing listens on {port}"
        assert all("127.0.0.1" in s for s in sockets), f"{port} listens beyond the host: {sockets}"


def test_every_target_is_up(prometheus):
    up = wait_for(prometheus, "min by (job) (up) == 1 and on (job) count by (job) (up) > 0")
    jobs = {r["metric"]["job"] for r in up}
    assert {"prometheus", "node", "postgres", "dicom", "tls"} <= jobs, jobs
    down = query(prometheus, "up == 0")
    assert not down, f"targets down: {down}"


def test_the_probes_and_exporters_are_read(prometheus):
    for promql in (
        f'pacs_archive_http_up{{host="{HOST}"}} == 1',
        f'pacs_dicom_echo_success{{archive="{HOST}", aet="{AET}"}} == 1',
        "orthanc_count_instances >= 0",
        f'pg_up{{host="{HOST}"}} == 1',
        'pg_database_size_bytes{datname="orthanc"} > 0',
        'pacs_archive_filesystem_info{mountpoint="/srv/archive"}',
        "pacs:archive_filesystem_avail_bytes > 0",
        "pacs_plan_archive_bytes_per_year == 2.5e12",
        'probe_ssl_earliest_cert_expiry{service="dicom-tls"} > time()',
    ):
        wait_for(prometheus, promql, timeout=120)


def test_a_stopped_archive_alerts_by_mail(host, prometheus, inbox):
    host.run_expect([0], "systemctl stop orthanc")
    try:
        alerts = firing(prometheus, "ArchiveHttpDown")
        assert alerts[0]["metric"]["host"] == HOST
        mail = inbox.wait_for("ArchiveHttpDown")
        body = Inbox.text(mail)
        assert HOST in str(mail["Subject"]), mail["Subject"]
        assert "#archivehttpdown" in body, body
        assert mail["To"] == "it-team@lab.invalid"
    finally:
        host.run_expect([0], "systemctl start orthanc")
    wait_for(prometheus, f'pacs_archive_http_up{{host="{HOST}"}} == 1', timeout=120)


def test_a_filling_filesystem_fires_the_forecast_by_mail(host, prometheus, inbox):
    """About 30 MB written over a minute and a half on the 64 MB filesystem."""
    fill = "/srv/archive/pacs-test-fill"
    try:
        for _ in range(15):
            host.run_expect([0], f"dd if=/dev/zero bs=1M count=2 >> {fill} 2>/dev/null; sync")
            time.sleep(6)
        alerts = firing(prometheus, "ArchiveStorageFullSoon", timeout=180)
        assert alerts[0]["metric"]["mountpoint"] == "/srv/archive"
        inbox.wait_for("ArchiveStorageFullSoon")
    finally:
        host.run(f"rm -f {fill}")


def _dated_today(folder: Path) -> None:
    """Study date today: the archive counts the studies of this month and the last."""
    today = time.strftime("%Y%m%d", time.gmtime())
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.StudyDate = today
        ds.save_as(path)


def _send(folder: Path, address: str) -> list[int]:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    assoc = ae.associate(address, 4242, ae_title=AET)
    assert assoc.is_established, "the archive refused the association"
    statuses = []
    try:
        for path in sorted(folder.rglob("*.dcm")):
            status = assoc.send_c_store(str(path))
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


class OrthancApi:
    """Orthanc's REST API on the host's loopback, reached through a tunnel, with its admin login."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def call(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(  # noqa: S310 (a loopback tunnel)
            f"{self.url}{path}",
            method=method,
            headers=self.headers,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            body = response.read()
        return json.loads(body) if body.strip() else None


def test_past_its_limit_the_archive_refuses_and_keeps_what_it_has(host, tmp_path):
    address = host.check_output("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1")
    user, password = orthanc_credentials(host)

    accepted: list[Path] = []
    refused: list[int] = []
    for seed in range(1, 12):
        folder = tmp_path / f"study{seed}"
        make_study(folder, ct_images=10, mr_images=0, cr=False, seed=seed)
        _dated_today(folder)
        statuses = _send(folder, address)
        if all(s == 0 for s in statuses):
            accepted.append(folder)
            continue
        refused = [s for s in statuses if s != 0]
        break
    assert accepted, "no study was accepted before the limit"
    assert refused, "11 studies of 5 MB fitted under a 24 MB limit: the archive never refused"
    # A failure status (0xA7xx out of resources, or 0xC0xx cannot process), not a warning.
    assert all(s >= 0xA000 for s in refused), [hex(s) for s in refused]
    # Still up: it answers its HTTP API, and keeps under its limit.
    host.run_expect([0], "systemctl is-active orthanc")
    with ExecTunnel(HOST, 8042) as tunnel:
        api = OrthancApi(tunnel.url, user, password)
        statistics = api.call("/statistics")
        assert int(statistics["TotalDiskSizeMB"]) <= 24, statistics
        # The earlier studies are all there, each file matching its MD5 (Orthanc
        # answers 200 when the stored file matches, an error status otherwise).
        instances = api.call("/instances")
        assert len(instances) >= 10 * len(accepted)
        for instance in instances:
            api.call(f"/instances/{instance}/attachments/dicom/verify-md5", method="POST")


def test_the_unit_tests_of_the_rules_are_installed(host):
    tests = host.file("/usr/local/lib/pacs-libre/monitoring/rules-tests")
    assert tests.is_directory
    assert "services.test.yml" in tests.listdir()


def test_lab_host_helper_reaches_the_host():
    assert lab_host(HOST).run("true").rc == 0


def test_the_storage_report_draws_plan_and_reality(prometheus, tmp_path):
    """`pacsctl report storage` on the real Prometheus; its answers are kept beside the page.

    tests/data/report/ holds such a recording, for the report's unit tests.
    """
    # The studies stored by the test above are counted every 20 s here
    # (monitoring_archive_studies_interval_seconds), then scraped.
    wait_for(prometheus, 'pacs_archive_studies{modality="CT"} > 0', timeout=120)
    out = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "report"
    out.mkdir(exist_ok=True)
    page, answers = out / "storage-report.html", out / "answers.json"
    proc = subprocess.run(
        ["pacsctl", "report", "storage", "--prometheus", prometheus, "--days", "0.05",
         "--hospital", "pacs-mol-mon", "--out", str(page), "--record", str(answers)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = page.read_text()
    assert "sizing plan" in text and "<svg" in text
    assert "Studies per month, by modality" in text
    recorded = json.loads(answers.read_text())
    assert recorded["used"]["result"], "no storage samples"
    assert any(s["metric"].get("modality") == "CT" for s in recorded["studies"]["result"]), (
        recorded["studies"]
    )
