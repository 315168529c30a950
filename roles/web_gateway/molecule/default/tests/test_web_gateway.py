"""The web gateway on real systemd hosts (Debian 13 and 12), driven from this machine.

The clients are real and not ours: openssl s_client for TLS, requests for HTTP,
dicomweb-client for STOW-RS/QIDO-RS/WADO-RS, and Debian's Chromium (through
Playwright) for OHIF under the gateway's Content-Security-Policy. The /auth that
the gateway's hook asks is the real pacs-web (roles/pacs_services), converged on
the same host as site.yml converges it; its sessions come from its sign-in form,
reached through the gateway.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pacs_testlib import address_of, host_spec, lab_host, run_check_mode, sign_in
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from pacs_libre.dicom.synth import StudyManifest, make_study

HOSTS = ["pacs-mol-web-d13"]
DPI = "https://dpi.mol.test"
# The two kinds of user the gateway's tests need, as pacs-web knows them
# (molecule.yml, pacs_services_users): one who may only view, one who may send.
USERS = {"viewer": "mol-viewer", "sender": "mol-radiologist"}

testinfra_hosts = [host_spec(name) for name in HOSTS]


def credentials(name: str) -> str:
    folder = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
    return (folder / name).read_text(encoding="utf-8").split()[0]


class Gateway:
    """One scenario host's gateway, as a client on this machine reaches it."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.host = lab_host(name)
        self.address = address_of(self.host)
        self.url = f"https://{self.address}"
        self.ca = workdir / f"{name}-ca.crt"
        self.ca.write_text(self.host.check_output("cat /etc/pacs-libre/pki/ca.crt") + "\n")
        self._sessions: dict[str, str] = {}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        return requests.get(self.url + path, verify=str(self.ca), timeout=60, **kwargs)

    def session(self, user: str = "viewer") -> dict[str, str]:
        """A pacs-web session of the user's, signed in once through the gateway's form."""
        if user not in self._sessions:
            self._sessions[user] = sign_in(self.url, str(self.ca), *self.basic(user))
        return {"pacs_session": self._sessions[user]}

    def basic(self, user: str) -> tuple[str, str]:
        return (USERS[user], credentials(USERS[user]))

    def dicomweb(self, user: str) -> DICOMwebClient:
        http = requests.Session()
        http.auth = self.basic(user)
        http.verify = str(self.ca)
        # Else REQUESTS_CA_BUNDLE, where set, would win over the session's CA.
        http.trust_env = False
        return DICOMwebClient(f"{self.url}/dicom-web", session=http)

    def s_client(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"{self.address}:443",
                "-CAfile",
                str(self.ca),
                "-servername",
                "pacs.mol.test",
                *args,
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pacs-web-test-") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def study(workdir: Path) -> StudyManifest:
    """A small CT study (the same bytes each time: seed 0)."""
    return make_study(workdir / "study", ct_images=12, mr_images=0, cr=False)


@pytest.fixture(scope="module", params=HOSTS)
def gateway(request: pytest.FixtureRequest, workdir: Path, study: StudyManifest) -> Gateway:
    gw = Gateway(request.param, workdir)
    # The study arrives through the gateway, by STOW-RS, as the sender.
    datasets = [pydicom.dcmread(path) for path in study.paths]
    gw.dicomweb("sender").store_instances(datasets)
    return gw


def test_configuration_is_valid(gateway: Gateway) -> None:
    check = gateway.host.run("nginx -t")
    assert check.rc == 0, check.stderr
    assert "[warn]" not in check.stderr, check.stderr
    assert gateway.host.service("nginx").is_running


def test_a_broken_file_is_refused_before_it_lands(gateway: Gateway) -> None:
    host = gateway.host
    host.check_output(
        "sed 's/proxy_pass http:\\/\\/pacs_archive;/proxy_pass nowhere;/' "
        "/etc/nginx/pacs-libre/gateway.conf > /tmp/broken-gateway.conf"
    )
    assert "nowhere" in host.check_output("cat /tmp/broken-gateway.conf")
    check = host.run("pacs-nginx-check /tmp/broken-gateway.conf /etc/nginx/pacs-libre/gateway.conf")
    assert check.rc == 1
    assert (
        "/etc/nginx/pacs-libre/gateway.conf" in check.stderr
        and "the file in use is kept" in check.stderr
    )
    assert (
        host.run(
            "pacs-nginx-check /etc/nginx/pacs-libre/gateway.conf /etc/nginx/pacs-libre/gateway.conf"
        ).rc
        == 0
    )


def test_http_redirects_to_https(gateway: Gateway) -> None:
    answer = requests.get(
        f"http://{gateway.address}/viewer?StudyInstanceUIDs=1.2.3",
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 301
    assert answer.headers["Location"] == f"https://{gateway.address}/viewer?StudyInstanceUIDs=1.2.3"


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_12_and_13_are_accepted_with_a_certificate_of_the_ca(
    gateway: Gateway, version: str
) -> None:
    result = gateway.s_client(version, "-verify_return_error")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_below_12_is_refused(gateway: Gateway, version: str) -> None:
    # SECLEVEL=0 lets this machine's OpenSSL offer the old protocol: the refusal
    # must come from the server, not from the client.
    result = gateway.s_client(version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "no protocols available" not in result.stderr, "the client did not offer " + version
    assert result.returncode != 0
    assert re.search(r"alert protocol version|wrong version|unsupported protocol", result.stderr), (
        result.stderr
    )


def test_only_aead_suites_with_forward_secrecy(gateway: Gateway) -> None:
    assert gateway.s_client("-tls1_2", "-cipher", "AES256-SHA256").returncode != 0
    assert (
        gateway.s_client(
            "-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA384"
        ).returncode
        != 0
    )
    result = gateway.s_client("-tls1_2")
    assert re.search(
        r"Cipher is ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)",
        result.stdout,
    )


def test_security_headers_are_on_every_answer(gateway: Gateway) -> None:
    for answer in (gateway.get("/", cookies=gateway.session()), gateway.get("/dicom-web/studies")):
        headers = answer.headers
        assert headers["Strict-Transport-Security"].startswith("max-age=63072000")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        csp = dict(
            ([*part.strip().split(" ", 1), ""])[:2]
            for part in headers["Content-Security-Policy"].split(";")
        )
        assert csp["frame-ancestors"] == f"'self' {DPI}"
        assert "'unsafe-eval'" not in csp["script-src"]
        assert "'unsafe-inline'" not in csp["script-src"]
        assert csp["object-src"] == "'none'"


def test_a_page_without_a_session_goes_to_the_sign_in_form_and_back(gateway: Gateway) -> None:
    asked = "/viewer?StudyInstanceUIDs=1.2.3&x=y z"
    answer = gateway.get(asked)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith("/login?next=")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["next"] == [
        urllib.parse.quote(asked, safe="/?&=")
    ]
    assert gateway.get(location).status_code == 200


def test_dicomweb_without_credentials_stays_401(gateway: Gateway) -> None:
    answer = gateway.get("/dicom-web/studies")
    assert answer.status_code == 401
    assert "WWW-Authenticate" in answer.headers
    wrong = (USERS["viewer"], "not-the-password")
    assert gateway.get("/dicom-web/studies", auth=wrong).status_code == 401


def test_the_landing_page_lists_the_services_in_french_and_english(gateway: Gateway) -> None:
    answer = gateway.get("/", cookies=gateway.session())
    assert answer.status_code == 200
    for text in (
        'id="viewer"',
        'id="iid"',
        'id="dicomweb"',
        "Se déconnecter",
        "Sign out",
        "liste des examens",
    ):
        assert text in answer.text


def test_deep_links_serve_the_viewer(gateway: Gateway) -> None:
    for path in ("/viewer/anything", "/viewer?StudyInstanceUIDs=1.2.3", "/?resultsPerPage=25"):
        answer = gateway.get(path, cookies=gateway.session())
        assert answer.status_code == 200, path
        assert '<script defer src="/app.bundle.' in answer.text, path


def test_app_config_points_at_the_gateway_dicomweb(gateway: Gateway) -> None:
    answer = gateway.get("/app-config.js", cookies=gateway.session())
    assert answer.status_code == 200
    text = answer.text
    config = json.loads(
        text[text.index("window.config = ") + len("window.config = ") : text.rindex(";")]
    )
    source = config["dataSources"][0]["configuration"]
    assert source["qidoRoot"] == source["wadoRoot"] == "/dicom-web"
    assert source["omitQuotationForMultipartRequest"] is True
    assert "acceptHeader" not in source


def test_only_the_served_files_are_on_the_host(gateway: Gateway) -> None:
    root = "/var/www/pacs-libre/ohif/current"
    assert gateway.host.file(f"{root}/index.html").exists
    assert gateway.host.run(f"find -L {root}/ -name '*.map' | grep -q .").rc != 0
    assert not gateway.host.file(f"{root}/ort").exists
    assert (
        gateway.get("/ort/ort.min.js", cookies=gateway.session())
        .headers.get("Content-Type", "")
        .startswith("text/html")
    )


def test_stow_needs_the_stow_right(gateway: Gateway, study: StudyManifest) -> None:
    answer = requests.post(
        f"{gateway.url}/dicom-web/studies",
        auth=gateway.basic("viewer"),
        verify=str(gateway.ca),
        headers={"Content-Type": "multipart/related; type=application/dicom; boundary=x"},
        data=b"--x--\r\n",
        timeout=60,
    )
    assert answer.status_code == 403


def test_qido_finds_the_study_sent_by_stow(gateway: Gateway, study: StudyManifest) -> None:
    found = gateway.dicomweb("viewer").search_for_studies(
        search_filters={"StudyInstanceUID": study.study_instance_uid}
    )
    assert len(found) == 1


def test_bulk_data_urls_name_the_gateway_and_metadata_is_gzipped(
    gateway: Gateway, study: StudyManifest
) -> None:
    answer = gateway.get(
        f"/dicom-web/studies/{study.study_instance_uid}/metadata",
        auth=gateway.basic("viewer"),
        headers={"Accept": "application/dicom+json", "Accept-Encoding": "gzip"},
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Encoding"] == "gzip"
    uris = [
        item["7FE00010"]["BulkDataURI"]
        for item in answer.json()
        if "BulkDataURI" in item.get("7FE00010", {})
    ]
    assert uris, "no BulkDataURI in the metadata"
    assert all(uri.startswith(f"{gateway.url}/dicom-web/studies/") for uri in uris), uris[0]


def test_frames_answer_the_accept_header_that_ohif_sends(
    gateway: Gateway, study: StudyManifest
) -> None:
    record = study.instances[0]
    answer = gateway.get(
        f"/dicom-web/studies/{study.study_instance_uid}/series/{record.series_instance_uid}"
        f"/instances/{record.sop_instance_uid}/frames/1",
        auth=gateway.basic("viewer"),
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["Content-Type"].startswith("multipart/related")


def test_the_archive_rest_api_and_its_pages_are_not_exposed(gateway: Gateway) -> None:
    for path in ("/system", "/instances", "/app/explorer.html", "/tools/execute-script"):
        answer = gateway.get(path, cookies=gateway.session())
        assert "ApiVersion" not in answer.text and "Orthanc Explorer" not in answer.text, path
    assert gateway.get("/dicom-web/servers", auth=gateway.basic("viewer")).status_code == 404
    # WADO-URI is not routed to the archive: the path is the viewer's.
    wado = gateway.get("/wado?requestType=WADO", auth=gateway.basic("viewer"))
    assert '<script defer src="/app.bundle.' in wado.text
    for method in ("DELETE", "PUT"):
        answer = requests.request(
            method,
            f"{gateway.url}/dicom-web/studies",
            auth=gateway.basic("sender"),
            verify=str(gateway.ca),
            timeout=30,
        )
        assert answer.status_code == 403, method
    # Orthanc's own HTTP answers its host only: from this machine, nothing.
    with socket.socket() as probe:
        probe.settimeout(3)
        assert probe.connect_ex((gateway.address, 8042)) != 0, "Orthanc's HTTP answered"


def test_the_firewall_opens_http_and_https(gateway: Gateway) -> None:
    ruleset = gateway.host.check_output("nft list ruleset")
    assert "dport 443" in ruleset and "dport 80" in ruleset
    assert "dport 8042" not in ruleset


def test_ohif_opens_the_study_under_the_csp_in_chromium(
    gateway: Gateway, study: StudyManifest
) -> None:
    violations: list[str] = []
    frames: dict[str, int] = {}
    # What the page said and what it could not fetch: the failure's message, if it fails.
    console: list[str] = []
    failed: list[str] = []
    # Kept after the scenario's hosts and ephemeral folder are gone.
    root = Path(os.environ.get("PACS_LIBRE_ROOT", tempfile.gettempdir()))
    shots = root / ".cache" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    isolated = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            # The scenario's CA is not in Chromium's store; TLS itself is tested above.
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 800}
            )
            context.add_cookies(
                [
                    {
                        "name": "pacs_session",
                        "value": gateway.session()["pacs_session"],
                        "url": gateway.url,
                    }
                ]
            )
            page = context.new_page()
            page.add_init_script(
                "window.__csp = []; document.addEventListener('securitypolicyviolation',"
                " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page.on(
                "console",
                lambda m: (
                    violations.append(m.text) if "Content Security Policy" in m.text else None
                ),
            )
            page.on(
                "response",
                lambda r: frames.__setitem__(r.url, r.status) if "/frames/" in r.url else None,
            )
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:300]))
            page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"[:300]))
            try:
                page.goto(
                    f"{gateway.url}/viewer?StudyInstanceUIDs={study.study_instance_uid}",
                    wait_until="load",
                )
                # Patient waits, not timed assertions: the machine is shared.
                try:
                    page.wait_for_selector("canvas", timeout=300_000)
                except PlaywrightTimeoutError:
                    raise AssertionError(
                        f"OHIF drew no image in 300 s at {page.url}: frames {frames};"
                        f" failed requests {failed[-10:]}; console {console[-15:]};"
                        f" page text {page.inner_text('body')[:400]!r}"
                    ) from None
                # OHIF loads the whole displayed series, one frame request a slice.
                for _ in range(300):
                    if len(frames) >= len(study.instances):
                        break
                    page.wait_for_timeout(1000)
                page.wait_for_timeout(2000)
                isolated = page.evaluate("() => window.crossOriginIsolated")
                violations += page.evaluate("() => window.__csp")
            finally:
                page.screenshot(path=str(shots / f"{gateway.name}-ohif.png"))
        finally:
            browser.close()
    assert not violations, violations
    assert isolated is True
    assert len(frames) == len(study.instances), frames
    assert set(frames.values()) == {200}, frames


def test_check_mode_on_converged_hosts_reports_no_change() -> None:
    recap, changed = run_check_mode()
    assert all(count == 0 for count in recap.values()), changed
