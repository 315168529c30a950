"""The web gateway of each single-host hospital, driven as a clinician and a workstation do.

From this machine, against each host's gateway (nginx on 443, the deployment CA's
certificate, the pacs-web auth hook):

- the certificate chains to the deployment CA, and plain HTTP redirects to HTTPS;
- DICOMweb without credentials, or with a wrong password, gets 401, and the
  failed sign-in is in the audit log;
- Debian's chromium (Playwright) signs in on the login page and opens the test
  study through ``/iid``: OHIF really draws it (the canvas holds a picture, not a
  blank field), fetches every one of the CT's 300 frames, and shows 1/300 in the
  viewport; a screenshot is kept in the test report folder;
- the ``weasis://`` link that ``/iid`` answers decodes to a DICOMweb URL and a
  bearer token that return the study, and that are refused for another study
  and once expired;
- testssl.sh (3.2, run on the Debian 13 host) grades each gateway A or better,
  with no protocol below TLS 1.2 and forward secrecy.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import re
import shlex
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pacs_testlib import address_of, lab_host

from pacs_libre import viewer
from pacs_libre.dicom import net
from pacs_libre.dicom.synth import StudyManifest, make_study

HOSTS = {"pacs-mol-single-d13": "MOLPACS13", "pacs-mol-single-d12": "MOLPACS12"}
MODALITY = "MOLMODALITY"
USER = "mol-radiologist"
CA = "/etc/pacs-libre/pki/ca.crt"
REPORT = Path(os.environ.get("PACS_TEST_REPORT", Path.cwd() / ".cache" / "test-report"))


def _password(host: str) -> str:
    folder = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
    return (folder / f"{host}-web-radiologist").read_text(encoding="utf-8").strip()


@pytest.fixture(scope="module")
def web_study(tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    """The single-host scenario's study (the same seed: the same UIDs, the same bytes)."""
    return make_study(tmp_path_factory.mktemp("web-study"), ct_images=300, mr_images=40, cr=True)


class Gateway:
    """One host's gateway, as a client on this machine sees it."""

    def __init__(self, name: str, study: StudyManifest) -> None:
        self.name = name
        self.host = lab_host(name)
        self.address = address_of(self.host)
        self.url = f"https://{self.address}"
        self.password = _password(name)
        ca = tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False)  # noqa: SIM115
        ca.write(self.host.check_output(f"cat {CA}"))
        ca.close()
        self.ca_file = ca.name
        self.tls = ssl.create_default_context(cafile=self.ca_file)
        self.study = study
        self._ensure_study()

    def _ensure_study(self) -> None:
        """Store the study if this host does not hold it yet (C-STORE, as the modality)."""
        status, _, _ = self.get(
            f"/dicom-web/studies?StudyInstanceUID={self.study.study_instance_uid}",
            auth=(USER, self.password),
        )
        if status == 200:
            return
        report = net.send(self.study.paths, self.address, 4242, HOSTS[self.name], MODALITY)
        assert not report.failed, report.as_dict()

    def get(
        self,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        opener: urllib.request.OpenerDirector | None = None,
        url: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` on the gateway (or a whole ``url``); redirects are not followed."""
        target = url or f"{self.url}{path}"
        assert target.startswith(("https://", "http://")), target
        request = urllib.request.Request(target, headers=dict(headers or {}))  # noqa: S310
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        handlers: list[Any] = [urllib.request.HTTPSHandler(context=self.tls), _NoRedirect()]
        client = opener or urllib.request.build_opener(*handlers)
        try:
            with client.open(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def signed_in(self) -> urllib.request.OpenerDirector:
        """A client that has signed in on the login page (its session cookie kept)."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.tls),
            urllib.request.HTTPCookieProcessor(jar),
            _NoRedirect(),
        )
        status, _, page = self.get("/login", opener=opener)
        assert status == 200, page[:300]
        fields = dict(re.findall(rb'name="(csrf|next)" value="([^"]*)"', page))
        form = {k.decode(): v.decode() for k, v in fields.items()}
        form.update(username=USER, password=self.password, next="/")
        request = urllib.request.Request(  # noqa: S310 (https, built here)
            f"{self.url}/login", data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        try:
            opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:
            assert error.code in {302, 303}, error.read()[:300]
        assert any(c.name == "pacs_session" for c in jar), "no session cookie after sign-in"
        return opener

    def audit(self) -> str:
        """The audit trail on the host (JSON lines)."""
        return str(self.host.check_output("cat /var/log/pacs-libre/pacs-web/audit.log"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module", params=sorted(HOSTS))
def gateway(request: pytest.FixtureRequest, web_study: StudyManifest) -> Gateway:
    return Gateway(request.param, web_study)


def test_certificate_chains_to_the_deployment_ca(gateway: Gateway) -> None:
    status, headers, _ = gateway.get("/login")
    assert status == 200
    assert "max-age=" in headers.get("Strict-Transport-Security", "")


def test_plain_http_redirects_to_https(gateway: Gateway) -> None:
    status, headers, _ = gateway.get("", url=f"http://{gateway.address}/viewer?x=1")
    assert status in {301, 308}
    assert headers["Location"].startswith("https://")


def test_dicomweb_refuses_anonymous_and_wrong_password(gateway: Gateway) -> None:
    uid = gateway.study.study_instance_uid
    assert gateway.get(f"/dicom-web/studies/{uid}/metadata")[0] == 401
    assert gateway.get("/dicom-web/studies", auth=(USER, "not-the-password"))[0] == 401
    failed = [
        line
        for line in gateway.audit().splitlines()
        if USER in line and ("fail" in line.lower() or "denied" in line.lower())
    ]
    assert failed, "the wrong password is not in the audit log"
    assert gateway.get("/dicom-web/studies", auth=(USER, gateway.password))[0] == 200


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    """A study of one 300-slice CT alone, so that OHIF shows that series and fetches it whole
    (with the scenario's study, OHIF's first viewport may hold its MR or its CR)."""
    return make_study(
        tmp_path_factory.mktemp("ct-study"), ct_images=300, mr_images=0, cr=False, seed=300
    )


def test_ohif_draws_the_study_opened_through_iid(gateway: Gateway, ct_study: StudyManifest) -> None:
    uid = ct_study.study_instance_uid
    report = net.send(ct_study.paths, gateway.address, 4242, HOSTS[gateway.name], MODALITY)
    assert not report.failed, report.as_dict()
    shot = REPORT / "artifacts" / f"{gateway.name}-ohif-iid.png"
    view = viewer.open_study(
        gateway.url,
        f"/iid?requestType=STUDY&studyUID={uid}&viewerType=ohif",
        user=USER,
        password=gateway.password,
        expected_frames=300,
        screenshot=shot,
    )
    assert view.path.startswith("/viewer") and uid in view.path, view.path
    assert view.lit > 0.02 and view.levels > 16, f"a blank viewport: {view}"
    assert view.frames >= 300, f"{view.frames} of the CT's 300 frames arrived"
    assert "(1/300)" in view.text, "OHIF does not show the CT's 300 slices"
    assert shot.stat().st_size > 10_000


def _weasis_commands(link: str) -> tuple[str, str, str]:
    """The DICOMweb URL, the study and the bearer token that a weasis:// link carries."""
    assert link.startswith("weasis://?"), link[:80]
    commands = shlex.split(urllib.parse.unquote(link[len("weasis://?") :]))
    assert commands[0] == "$dicom:rs", commands
    option = dict(zip(commands[1::2], commands[2::2], strict=False))
    header = option["-H"]
    assert header.startswith("Authorization: Bearer "), header
    study = option["-r"].removeprefix("studyUID=")
    return option["--url"], study, header.removeprefix("Authorization: Bearer ")


def test_weasis_link_opens_its_study_only_until_it_expires(gateway: Gateway) -> None:
    uid = gateway.study.study_instance_uid
    opener = gateway.signed_in()
    status, headers, page = gateway.get(
        f"/iid?requestType=STUDY&studyUID={uid}&viewerType=weasis", opener=opener
    )
    assert status in {200, 302}, page[:300]
    found = (
        headers.get("Location")
        or next(iter(re.findall(rb'"(weasis://\?[^"]+)"', page)), b"").decode()
    )
    url, study, token = _weasis_commands(found.replace("&amp;", "&"))
    assert study == uid
    assert url == f"{gateway.url}/dicom-web"
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, body = gateway.get("", url=f"{url}/studies/{uid}/series", headers=bearer)
    assert status == 200 and json.loads(body), body[:300]
    other = "1.2.826.0.1.3680043.8.498.1"
    assert gateway.get("", url=f"{url}/studies/{other}/series", headers=bearer)[0] == 403
    expired = gateway.host.check_output(f"pacs-web mint-token --study {uid} --minutes 0").strip()
    late = {"Authorization": f"Bearer {expired}"}
    assert gateway.get("", url=f"{url}/studies/{uid}/series", headers=late)[0] == 401


def test_testssl_grades_the_gateway_a() -> None:
    """testssl.sh 3.2 (Debian 13's; this machine's 3.0 has no rating) on each gateway."""
    runner = lab_host("pacs-mol-single-d13")
    runner.check_output(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        "testssl.sh bsdextrautils >/dev/null"
    )
    # Both gateways at once (a scan mostly waits on its handshakes): about half
    # the time of one after the other.
    scans = []
    for name in sorted(HOSTS):
        host = lab_host(name)
        runner.check_output(
            f"cat > /root/{name}-ca.crt <<'EOF'\n{host.check_output(f'cat {CA}')}\nEOF"
        )
        out = f"/root/testssl-{name}.json"
        scans.append(
            f"(rm -f {out}; testssl --quiet --color 0 --warnings off --add-ca /root/{name}-ca.crt "
            f"--jsonfile {out} https://{address_of(host)}/ >/dev/null 2>&1) &"
        )
    runner.run(" ".join(scans) + " wait")
    for name in sorted(HOSTS):
        out = f"/root/testssl-{name}.json"
        findings = {e["id"]: e for e in json.loads(runner.check_output(f"cat {out}"))}
        grade = findings["overall_grade"]["finding"]
        assert grade in {"A", "A+"}, f"{name}: testssl grade {grade}: " + ", ".join(
            f"{e['id']}: {e['finding']}"
            for e in findings.values()
            if e["id"].startswith("grade_cap")
        )
        for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            assert findings[old]["finding"].startswith("not offered"), (name, findings[old])
        assert findings["FS"]["finding"].startswith("offered"), (name, findings["FS"])
