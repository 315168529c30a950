"""The web gateway of each single-host hospital, driven as a clinician and a workstation do.

From this machine, against each host's gateway (nginx on 443, the deployment CA's
certificate) and its single sign-on (LemonLDAP::NG at sso.<host>.test, users from
the host's own directory). This machine is outside the hospital's networks, so
signing in needs a TOTP code, computed from the seeded secrets with pyotp:

- the gateway's and the portal's certificates chain to the deployment CA, and
  plain HTTP redirects to HTTPS;
- DICOMweb without credentials, or with a wrong password, gets 401, and the
  failed sign-in is in the audit log; an API client (HTTP Basic) reads it;
- a page without a session goes to the portal; a password alone is not enough
  from outside; a wrong code is refused; the right code opens ``/iid`` (audited
  with the SSO's user); a user of no role is refused; an expired session is
  sent back to the portal;
- the viewer's OpenID Connect token (code flow with PKCE) reads DICOMweb and
  cannot write (STOW-RS);
- Debian's chromium (Playwright) signs in through the portal with the TOTP code
  and opens the test study through ``/iid``: OHIF signs in by OpenID Connect,
  really draws it (the canvas holds a picture, not a blank field), fetches every
  one of the CT's 300 frames, and shows 1/300 in the viewport; a screenshot is
  kept in the test report folder;
- the ``weasis://`` link that ``/iid`` answers decodes to a DICOMweb URL and a
  bearer token that return the study, and that are refused for another study
  and once expired;
- testssl.sh (3.2, run on the Debian 13 host) grades each gateway A or better,
  with no protocol below TLS 1.2 and forward secrecy.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pacs_testlib import SsoClient, address_of, lab_host, resolving

from pacs_libre import viewer
from pacs_libre.dicom import net
from pacs_libre.dicom.synth import StudyManifest, make_study

HOSTS = {"pacs-mol-single-d13": "MOLPACS13", "pacs-mol-single-d12": "MOLPACS12"}
MODALITY = "MOLMODALITY"
USER = "mol-radiologist"  # pacs-web's API client (HTTP Basic)
READER = "mol-reader"  # a radiologist of the directory
CLINICIAN = "mol-clinician"
OUTSIDER = "mol-outsider"  # in the directory, in no role
CA = "/etc/pacs-libre/pki/ca.crt"
REPORT = Path(os.environ.get("PACS_TEST_REPORT", Path.cwd() / ".cache" / "test-report"))


def _credential(name: str) -> str:
    folder = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
    return (folder / name).read_text(encoding="utf-8").strip()


def _password(host: str) -> str:
    return _credential(f"{host}-web-radiologist")


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
        # The hospital's names, which only this test process and its browser resolve.
        self.server_name = f"pacs.{name}.test"
        self.portal_name = f"sso.{name}.test"
        self.names = {self.server_name: self.address, self.portal_name: self.address}
        self.url = f"https://{self.server_name}"
        self.portal = f"https://{self.portal_name}/"
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
        status, _, body = self.get(
            f"/dicom-web/studies?StudyInstanceUID={self.study.study_instance_uid}",
            auth=(USER, self.password),
        )
        if status == 200 and json.loads(body or b"[]"):
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

    def user_password(self, user: str) -> str:
        return _credential(f"{self.name}-user-{user}")

    def totp_secret(self, user: str) -> str:
        return _credential(f"{self.name}-totp-{user}")

    def sso(self, user: str = READER, page: str = "/") -> SsoClient:
        """A client signed in through the portal with the user's password and TOTP code."""
        client = SsoClient(self.ca_file)
        answer = client.sign_in(
            f"{self.url}{page}", user, self.user_password(user), self.totp_secret(user)
        )
        assert client.signed_in, (
            f"{user} is not signed in: {answer.status_code} {answer.text[:300]}"
        )
        return client

    def audit(self) -> str:
        """The audit trail on the host (JSON lines)."""
        return str(self.host.check_output("cat /var/log/pacs-libre/pacs-web/audit.log"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module", params=sorted(HOSTS))
def gateway(request: pytest.FixtureRequest, web_study: StudyManifest) -> Iterator[Gateway]:
    name = request.param
    address = address_of(lab_host(name))
    with resolving({f"pacs.{name}.test": address, f"sso.{name}.test": address}):
        yield Gateway(name, web_study)


def test_certificates_chain_to_the_deployment_ca(gateway: Gateway) -> None:
    """The gateway and its portal, each by its name, against the deployment's CA."""
    status, headers, _ = gateway.get("/login")
    assert status == 302 and headers["Location"].startswith(gateway.portal), headers
    assert "max-age=" in headers.get("Strict-Transport-Security", "")
    status, headers, page = gateway.get("", url=gateway.portal)
    assert status == 200 and b'id="lform"' in page, page[:300]
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


def _iid(gateway: Gateway) -> str:
    return f"{gateway.url}/iid?requestType=STUDY&studyUID={gateway.study.study_instance_uid}"


def _audit_lines(gateway: Gateway, **fields: str) -> list[dict[str, Any]]:
    """The audit lines whose fields have these values."""
    lines = [json.loads(line) for line in gateway.audit().splitlines() if line.startswith("{")]
    return [e for e in lines if all(str(e.get(k)) == v for k, v in fields.items())]


def test_a_page_without_a_session_goes_to_the_portal(gateway: Gateway) -> None:
    status, headers, _ = gateway.get("", url=_iid(gateway))
    assert status == 302, status
    location = headers["Location"]
    assert location.startswith(f"{gateway.portal}?url="), location
    back = base64.b64decode(urllib.parse.unquote(location.split("?url=", 1)[1])).decode()
    assert back == _iid(gateway), back


def test_from_outside_a_password_alone_is_not_enough(gateway: Gateway) -> None:
    client = SsoClient(gateway.ca_file)
    answer = client.sign_in(_iid(gateway), READER, gateway.user_password(READER), None)
    assert "totp2fcheck" in answer.text and not client.signed_in, answer.text[:300]
    # A wrong code: no session.
    client = SsoClient(gateway.ca_file)
    answer = client.sign_in(_iid(gateway), READER, gateway.user_password(READER), "A" * 32)
    assert not client.signed_in, f"a wrong TOTP code opened a session: {answer.status_code}"
    # A wrong password never reaches the code.
    client = SsoClient(gateway.ca_file)
    answer = client.sign_in(_iid(gateway), READER, "not-the-password", gateway.totp_secret(READER))
    assert not client.signed_in and "totp2fcheck" not in answer.text


def test_password_and_totp_open_the_study_and_the_access_is_audited(gateway: Gateway) -> None:
    client = gateway.sso(READER, page=_iid(gateway).removeprefix(gateway.url))
    answer = client.http.get(_iid(gateway), allow_redirects=False, timeout=60)
    assert answer.status_code == 302, answer.text[:300]
    uid = gateway.study.study_instance_uid
    assert answer.headers["Location"].startswith(f"/viewer?StudyInstanceUIDs={uid}")
    lines = _audit_lines(gateway, event="iid", user=READER, auth="sso")
    assert lines and uid in json.dumps(lines[-1]), (
        "the IID request is not audited as the SSO's user"
    )


def test_a_user_in_no_role_is_refused(gateway: Gateway) -> None:
    client = gateway.sso(OUTSIDER)
    answer = client.http.get(_iid(gateway), allow_redirects=False, timeout=60)
    assert answer.status_code == 403, f"{OUTSIDER} got {answer.status_code}"


def test_an_expired_session_goes_back_to_the_portal(gateway: Gateway) -> None:
    client = gateway.sso(CLINICIAN)
    assert client.http.get(_iid(gateway), allow_redirects=False, timeout=60).status_code == 302
    session = next(c.value for c in client.http.cookies if c.name == "lemonldap")
    # Make the session older than its lifetime, as the clock would, and drop the
    # handler's caches of it.
    gateway.host.check_output(
        "python3 - <<'EOF'\n"
        "import json, time\n"
        f"p = '/var/lib/lemonldap-ng/sessions/{session}'\n"
        "d = json.load(open(p))\n"
        "d['_utime'] = int(time.time()) - 11 * 3600\n"
        "json.dump(d, open(p, 'w'))\n"
        "EOF\n"
        "rm -rf /var/cache/lemonldap-ng/lemonldap-ng-sessions && "
        "systemctl restart lemonldap-ng-fastcgi-server"
    )
    answer = client.http.get(_iid(gateway), allow_redirects=False, timeout=60)
    assert answer.status_code == 302, answer.status_code
    assert answer.headers["Location"].startswith(gateway.portal), answer.headers["Location"]


def test_the_viewers_token_reads_dicomweb_and_cannot_write(gateway: Gateway) -> None:
    client = gateway.sso(READER)
    token = client.oidc_access_token(gateway.portal, "ohif", f"{gateway.url}/callback")
    bearer = {"Authorization": f"Bearer {token}"}
    uid = gateway.study.study_instance_uid
    status, _, body = gateway.get(f"/dicom-web/studies/{uid}/series", headers=bearer)
    assert status == 200 and json.loads(body), body[:300]
    stow = urllib.request.Request(  # noqa: S310 (https, built here)
        f"{gateway.url}/dicom-web/studies",
        data=b"--x--",
        headers={
            **bearer,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
        },
        method="POST",
    )
    try:
        urllib.request.urlopen(stow, context=gateway.tls, timeout=60)  # noqa: S310
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
    assert status == 403, f"STOW-RS with the viewer's token: {status}"
    assert (
        gateway.get(f"/dicom-web/studies/{uid}/series", headers={"Authorization": "Bearer 00"})[0]
        == 401
    )
    # The SSO allowed these reads without pacs-web: the gateway's own audit trail has them.
    lines = [
        json.loads(line)
        for line in gateway.host.check_output(
            "cat /var/log/pacs-libre/gateway/audit.log"
        ).splitlines()
    ]
    mine = [e for e in lines if e["user"] == READER and e["auth"] == "oidc" and uid in e["uri"]]
    assert mine and mine[-1]["status"] == 200, lines[-3:]
    assert any(e["method"] == "POST" and e["status"] == 403 for e in lines if e["user"] == READER)


def test_signing_out_ends_the_session_at_once(gateway: Gateway) -> None:
    client = gateway.sso(CLINICIAN)
    assert client.http.get(_iid(gateway), allow_redirects=False, timeout=60).status_code == 302
    out = client.http.get(f"{gateway.url}/logout", allow_redirects=False, timeout=60)
    assert out.status_code == 302 and out.headers["Location"] == f"{gateway.portal}?logout=1"
    assert client.http.get(out.headers["Location"], allow_redirects=False, timeout=60).ok
    again = client.http.get(_iid(gateway), allow_redirects=False, timeout=60)
    assert again.status_code == 302 and again.headers["Location"].startswith(gateway.portal)


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
        user=READER,
        password=gateway.user_password(READER),
        totp_secret=gateway.totp_secret(READER),
        resolve=gateway.names,
        expected_frames=300,
        screenshot=shot,
    )
    assert view.path.startswith("/viewer") and uid in view.path, view.path
    assert view.lit > 0.02 and view.levels > 16, f"a blank viewport: {view}"
    assert view.frames >= 300, f"{view.frames} of the CT's 300 frames arrived"
    assert "(1/300)" in view.text, "OHIF does not show the CT's 300 slices"
    assert shot.stat().st_size > 10_000


def _share_made_in_the_form(gateway: Gateway, uid: str) -> tuple[str, str]:
    """A clinician signed in through the SSO shares ``uid`` with the form: (link id, ref)."""
    client = gateway.sso(CLINICIAN)
    form = client.http.get(f"{gateway.url}/share?study={uid}", allow_redirects=False, timeout=60)
    assert form.status_code == 200, f"{form.status_code} {form.text[:300]}"
    fields = dict(re.findall(r'name="(csrf|study)" value="([^"]*)"', form.text))
    fields.update(name="Dr Correspondant", email="correspondant@cabinet.example", days="7")
    made = client.http.post(f"{gateway.url}/share", data=fields, allow_redirects=False, timeout=60)
    assert made.status_code == 200, f"{made.status_code} {made.text[:300]}"
    share_id = re.search(r"/s/([A-Za-z0-9_-]{24})", made.text)
    assert share_id, made.text[:500]
    listed = json.loads(gateway.host.check_output("pacs-web shares list --json"))
    (entry,) = [e for e in listed if e["study"] == uid and e["sharer"] == CLINICIAN]
    return share_id.group(1), str(entry["ref"])


def test_a_share_link_opens_its_study_only_and_dies_when_revoked_or_expired(
    gateway: Gateway, ct_study: StudyManifest
) -> None:
    """A correspondent, who has no account, opens what a clinician shared: OHIF draws it in
    Chromium without signing in; the link's token reads nothing else; revoked or expired, the
    link shows a page that says so and the token opens nothing; every use is audited."""
    uid = ct_study.study_instance_uid
    net.send(ct_study.paths, gateway.address, 4242, HOSTS[gateway.name], MODALITY)
    share_id, ref = _share_made_in_the_form(gateway, uid)
    shot = REPORT / "artifacts" / f"{gateway.name}-ohif-share.png"
    view = viewer.open_study(
        gateway.url,
        f"/s/{share_id}",
        user=None,
        password=None,
        resolve=gateway.names,
        expected_frames=300,
        wait_all=False,
        screenshot=shot,
    )
    assert view.path.startswith("/viewer") and uid in view.path, view.path
    assert "token=" not in view.path, "OHIF left the link's token in the address bar"
    assert view.lit > 0.02 and view.levels > 16, f"a blank viewport: {view}"
    # The token that the link gives, as a correspondent's browser gets it.
    opened = requests.get(
        f"{gateway.url}/s/{share_id}", verify=gateway.ca_file, allow_redirects=False, timeout=60
    )
    assert opened.status_code == 303, opened.text[:300]
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(opened.headers["Location"]).query)["token"]
    bearer = {"Authorization": f"Bearer {token[0]}"}
    assert gateway.get(f"/dicom-web/studies/{uid}/series", headers=bearer)[0] == 200
    other = gateway.study.study_instance_uid
    assert gateway.get(f"/dicom-web/studies/{other}/series", headers=bearer)[0] == 403
    assert gateway.get("/dicom-web/studies", headers=bearer)[0] == 403
    gateway.host.check_output(f"pacs-web shares revoke {ref}")
    assert gateway.get(f"/dicom-web/studies/{uid}/series", headers=bearer)[0] == 401
    status, _, page = gateway.get(f"/s/{share_id}")
    assert status == 410 and b"<html" in page.lower(), page[:300]
    assert "révoqué".encode() in page or b"revoked" in page, page[:500]
    # A link made already expired.
    expired = json.loads(
        gateway.host.check_output(
            f"pacs-web shares create --study {uid} --name 'Dr Tard' --email tard@cabinet.example"
            " --minutes -1 --json"
        )
    )
    status, _, page = gateway.get(f"/s/{expired['id']}")
    assert status == 410 and (b"expired" in page or "expiré".encode() in page), page[:500]
    events = {e["event"] for e in _audit_lines(gateway, share=ref)}
    assert {"share", "share-open"} <= events, events
    reads = _audit_lines(gateway, share=ref, auth="share")
    assert any(e.get("outcome") == "allowed" for e in reads), reads[-3:]
    assert any(e.get("outcome") != "allowed" for e in reads), "the refusals are not audited"


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
    client = gateway.sso(CLINICIAN)
    answer = client.http.get(
        f"{gateway.url}/iid?requestType=STUDY&studyUID={uid}&viewerType=weasis",
        allow_redirects=False,
        timeout=60,
    )
    assert answer.status_code in {200, 302}, answer.text[:300]
    found = answer.headers.get("Location") or next(
        iter(re.findall(r'"(weasis://\?[^"]+)"', answer.text)), ""
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
