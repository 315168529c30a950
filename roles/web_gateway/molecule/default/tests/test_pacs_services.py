"""pacs-web (roles/pacs_services) on the real archive, on Debian 13, driven over HTTP.

The role has no scenario of its own: it runs on the gateway's host of this
scenario, as site.yml converges a web host, and test_web_gateway.py signs in
through the gateway. Debian 12's pacs-web runs in molecule/single-host.

Two small studies go in with dcmtk's storescu from this machine (the declared
modality). pacs-web listens on the host's loopback only, so the tests reach it
(and Orthanc's HTTP, for the part nginx will play) through a tunnel into the
host's network namespace, as a local process would:

- /auth answers 401 without credentials, 204 or 403 by the user's rights, 401
  for a wrong password, which the audit log and the journal record;
- the sign-in form gives a session with which /iid redirects to OHIF on the
  study (by UID, by accession number, by patient);
- the Weasis link decodes to the gateway's DICOMweb URL and a token that /auth
  accepts for its study, with which Orthanc's DICOMweb then returns that study
  (QIDO, metadata and a WADO-RS retrieve with Weasis' Accept header); the same
  token is refused for the other study, and a token minted already expired by
  ``pacs-web mint-token`` is refused;
- an unknown study and a malformed request get a bilingual page and a 4xx;
- a share link made on the host (``pacs-web shares create``) opens at /s/<id>
  to OHIF with a token that Orthanc's DICOMweb answers for its study only,
  and that is refused at the next request once the link is revoked; the same
  through nginx once the gateway routes /s/ to pacs-web;
- the service runs as its own user, sandboxed, on 127.0.0.1 only;
- check mode tells the truth: nothing to change on the converged hosts, and a
  changed password is reported as a change without being written.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pacs_testlib import (
    RECAP,
    ExecTunnel,
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_credentials,
    run_playbook,
)

from pacs_libre.dicom.synth import StudyManifest, make_study

HOSTS = {"pacs-mol-web-d13": "MOLWEB"}
MODALITY = "MOLSVCMODALITY"
AUDIT = "/var/log/pacs-libre/pacs-web/audit.log"
GATEWAY = "https://127.0.0.1:8443"

testinfra_hosts = [host_spec(name) for name in HOSTS]


def credential(name: str) -> str:
    """A password the scenario's password lookup made (its first word: no salt)."""
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials" / name
    return path.read_text().split()[0]


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    text: str
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def cookies(self) -> dict[str, str]:
        out = {}
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                pair = value.split(";")[0]
                out[pair.split("=")[0]] = pair
        return out


def call(url: str, path: str, headers: dict[str, str] | None = None, body: str = "") -> Answer:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST" if body else "GET", path, body=body.encode() or None, headers=headers or {})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return Answer(answer.status, answer.getheaders(), data.decode(errors="replace"), data)


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[StudyManifest]:
    """Two small studies of two patients (the same bytes each run)."""
    return [
        make_study(
            tmp_path_factory.mktemp(f"study{seed}"), ct_images=3, mr_images=0, cr=False, seed=seed
        )
        for seed in (11, 12)
    ]


@dataclass
class Web:
    name: str
    host: Any
    service: str  # pacs-web through the tunnel
    orthanc: str  # Orthanc's HTTP through the tunnel
    orthanc_auth: str
    a: StudyManifest
    b: StudyManifest

    def auth(self, uri: str, method: str = "GET", **headers: str) -> Answer:
        return call(
            self.service,
            "/auth",
            {
                "X-Original-URI": uri,
                "X-Original-Method": method,
                "X-Real-IP": "192.0.2.7",
                **headers,
            },
        )

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.host.check_output(f"cat {AUDIT}").splitlines()]

    def login(self, name: str, password: str, next_url: str = "/") -> Answer:
        form = call(self.service, f"/login?next={urllib.parse.quote(next_url)}")
        assert form.status == 200 and "Mot de passe" in form.text and "Password" in form.text
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        body = urllib.parse.urlencode(
            {"csrf": csrf, "next": next_url, "username": name, "password": password}
        )
        return call(
            self.service,
            "/login",
            {
                "Cookie": form.cookies()["pacs_login"],
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Real-IP": "192.0.2.7",
            },
            body,
        )

    def session(self) -> str:
        answer = self.login("mol-radiologist", credential("mol-radiologist"))
        assert answer.status == 303, answer.text
        return answer.cookies()["pacs_session"]


@pytest.fixture(scope="module", params=list(HOSTS))
def web(request: pytest.FixtureRequest, studies: list[StudyManifest]) -> Iterator[Web]:
    name = request.param
    host = lab_host(name)
    for manifest in studies:
        sent = subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                MODALITY,
                "-aec",
                HOSTS[name],
                "+sd",
                "+r",
                address_of(host),
                "4242",
                str(manifest.out_dir / "CT"),
            ],
            capture_output=True,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr.decode(errors="replace")[-2000:]
    user, password = orthanc_credentials(host)
    with ExecTunnel(name, 8190) as service, ExecTunnel(name, 8042) as orthanc:
        yield Web(name, host, service.url, orthanc.url, basic(user, password), *studies)


# ----------------------------------------------------------------------------- the service


def test_it_runs_as_its_own_user_sandboxed_on_loopback_only(web: Web) -> None:
    props = dict(
        line.split("=", 1)
        for line in web.host.check_output(
            "systemctl show pacs-web -p User -p NoNewPrivileges -p ProtectSystem -p PrivateTmp"
            " -p ProtectHome -p CapabilityBoundingSet -p ActiveState"
        ).splitlines()
    )
    assert props["User"] == "pacs-web" and props["ActiveState"] == "active"
    assert (props["NoNewPrivileges"], props["ProtectSystem"], props["PrivateTmp"]) == (
        "yes",
        "strict",
        "yes",
    )
    assert props["CapabilityBoundingSet"] == ""
    listening = web.host.check_output("ss -Hltn 'sport = :8190'")
    assert listening.split()[3] == "127.0.0.1:8190" and len(listening.splitlines()) == 1
    with socket.socket() as probe:
        probe.settimeout(3)
        assert probe.connect_ex((address_of(web.host), 8190)) != 0
    assert call(web.service, "/healthz").text == "ok\n"


def test_the_host_keeps_only_salted_hashes(web: Web) -> None:
    users = web.host.file("/etc/pacs-libre/pacs-web/users.json")
    assert (users.user, users.group, users.mode) == ("root", "pacs-web", 0o640)
    text = users.content_string
    assert credential("mol-radiologist") not in text and credential("mol-viewer") not in text
    assert text.count('"hash": "scrypt$') == 2
    secret = web.host.file("/etc/pacs-libre/pacs-web/secret")
    assert (secret.user, secret.group, secret.mode) == ("root", "pacs-web", 0o640)
    assert web.host.run("pacs-web check-config").rc == 0


# ----------------------------------------------------------------------------- /auth


def test_no_credentials_get_401(web: Web) -> None:
    answer = web.auth(f"/dicom-web/studies/{web.a.study_instance_uid}/series")
    assert answer.status == 401
    assert answer.header("WWW-Authenticate").startswith("Basic")


def test_basic_credentials_get_204_or_403_by_right(web: Web) -> None:
    radiologist = basic("mol-radiologist", credential("mol-radiologist"))
    viewer = basic("mol-viewer", credential("mol-viewer"))
    ok = web.auth("/dicom-web/studies", Authorization=viewer)
    assert ok.status == 204 and ok.header("X-Pacs-User") == "mol-viewer"
    assert ok.header("X-Pacs-Auth") == "basic"
    assert web.auth("/dicom-web/studies", "POST", Authorization=viewer).status == 403
    assert web.auth("/dicom-web/studies", "POST", Authorization=radiologist).status == 204


def test_a_wrong_password_gets_401_and_is_logged(web: Web) -> None:
    answer = web.auth("/dicom-web/studies", Authorization=basic("mol-viewer", "not-the-password"))
    assert answer.status == 401
    failed = [x for x in web.audit() if x["event"] == "login" and x["outcome"] == "failed"]
    assert failed and failed[-1]["user"] == "mol-viewer" and failed[-1]["client"] == "192.0.2.7"
    journal = web.host.check_output("journalctl -u pacs-web --no-pager -n 200")
    assert '"outcome":"failed","user":"mol-viewer"' in journal


# ----------------------------------------------------------------------------- /iid for OHIF


def test_iid_without_a_session_goes_to_the_sign_in_form(web: Web) -> None:
    answer = call(web.service, f"/iid?requestType=STUDY&studyUID={web.a.study_instance_uid}")
    assert answer.status == 303 and answer.header("Location").startswith("/login?next=%2Fiid")


def test_a_wrong_password_on_the_form_is_refused_and_logged(web: Web) -> None:
    answer = web.login("mol-radiologist", "wrong-password")
    assert answer.status == 401 and "pacs_session" not in answer.cookies()
    assert "incorrect" in answer.text and "Wrong name or password" in answer.text
    last = [x for x in web.audit() if x["event"] == "login"][-1]
    assert (last["outcome"], last["auth"], last["user"]) == ("failed", "form", "mol-radiologist")


def test_iid_opens_ohif_on_the_study_by_uid_accession_and_patient(web: Web) -> None:
    cookie = {"Cookie": web.session()}
    uid = web.a.study_instance_uid
    for query in (
        f"requestType=STUDY&studyUID={uid}&viewerType=ohif",
        f"requestType=STUDY&accessionNumber={web.a.accession_number}",
        f"requestType=PATIENT&patientID={web.a.patient_id}^^^%261.2.250.1%26ISO&mostRecentResults=5",
    ):
        answer = call(web.service, f"/iid?{query}", cookie)
        assert answer.status == 302, answer.text
        assert answer.header("Location") == f"/viewer?StudyInstanceUIDs={uid}"
    both = f"{uid},{web.b.study_instance_uid}"
    answer = call(web.service, f"/iid?requestType=STUDY&studyUID={both}", cookie)
    assert answer.header("Location") == f"/viewer?StudyInstanceUIDs={both}"
    session = cookie["Cookie"]
    assert web.auth(f"/viewer?StudyInstanceUIDs={uid}", Cookie=session).status == 204


def test_iid_unknown_or_malformed_gets_a_bilingual_4xx(web: Web) -> None:
    cookie = {"Cookie": web.session()}
    missing = call(web.service, "/iid?requestType=STUDY&studyUID=1.2.3.999", cookie)
    assert missing.status == 404
    assert "Aucun examen" in missing.text and "No study found" in missing.text
    before = f"requestType=PATIENT&patientID={web.a.patient_id}&upperDateTime=1990-01-01"
    assert call(web.service, f"/iid?{before}", cookie).status == 404
    for bad in ("requestType=STUDY", "requestType=PATIENT&patientID=*", "requestType=X"):
        answer = call(web.service, f"/iid?{bad}", cookie)
        assert answer.status == 400 and "Traceback" not in answer.text
        assert "Demande incorrecte" in answer.text and "Bad request" in answer.text


# ----------------------------------------------------------------------------- Weasis


def weasis_command(web: Web, uid: str) -> dict[str, Any]:
    """The $dicom:rs command of the weasis:// link that /iid gives for ``uid``."""
    answer = call(
        web.service,
        f"/iid?requestType=STUDY&studyUID={uid}&viewerType=weasis",
        {"Cookie": web.session(), "Host": "127.0.0.1:8443", "X-Forwarded-Proto": "https"},
    )
    assert answer.status == 200, answer.text
    link = answer.text.split('id="weasis" href="')[1].split('"')[0].replace("&amp;", "&")
    assert link.startswith("weasis://?%24dicom%3Ars")
    # Decoded as Weasis does: the URL-decoded text is the command line.
    text = urllib.parse.unquote(link[len("weasis://?") :])
    words = [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', text)]
    assert words[0] == "$dicom:rs"
    options: dict[str, list[str]] = {}
    for flag, value in zip(words[1::2], words[2::2], strict=True):
        options.setdefault(flag, []).append(value)
    return options


def orthanc_through_the_gateway(web: Web, path: str, bearer: str, accept: str) -> Answer:
    """What nginx does: ask /auth, and only on 204 pass the request to Orthanc."""
    verdict = web.auth(path, Authorization=bearer)
    if verdict.status != 204:
        return Answer(verdict.status, verdict.headers, "", b"")
    return call(web.orthanc, path, {"Authorization": web.orthanc_auth, "Accept": accept})


def test_the_weasis_link_opens_its_study_through_the_token(web: Web) -> None:
    uid = web.a.study_instance_uid
    options = weasis_command(web, uid)
    assert options["--url"] == [f"{GATEWAY}/dicom-web"]
    assert options["-r"] == [f"studyUID={uid}"]
    assert options["--accept-ext"] == ["transfer-syntax=*"]
    (header,) = options["-H"]
    name, bearer = header.split(": ", 1)
    assert name == "Authorization" and bearer.startswith("Bearer v1.")
    base = options["--url"][0][len(GATEWAY) :]

    found = orthanc_through_the_gateway(
        web, f"{base}/studies?StudyInstanceUID={uid}", bearer, "application/dicom+json"
    )
    assert found.status == 200 and len(json.loads(found.body)) == 1
    series = orthanc_through_the_gateway(
        web, f"{base}/studies/{uid}/series", bearer, "application/dicom+json"
    )
    assert series.status == 200
    series_uid = json.loads(series.body)[0]["0020000E"]["Value"][0]
    instances = orthanc_through_the_gateway(
        web, f"{base}/studies/{uid}/series/{series_uid}/instances", bearer, "application/dicom+json"
    )
    assert instances.status == 200 and len(json.loads(instances.body)) == 3
    instance_uid = json.loads(instances.body)[0]["00080018"]["Value"][0]
    # Weasis' WADO-RS Accept header, with its --accept-ext.
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    retrieved = orthanc_through_the_gateway(
        web, f"{base}/studies/{uid}/series/{series_uid}/instances/{instance_uid}", bearer, accept
    )
    assert retrieved.status == 200, retrieved.text[:500]
    assert retrieved.header("Content-Type").startswith("multipart/related")
    assert instance_uid.encode() in retrieved.body
    allowed = [x for x in web.audit() if x["auth"] == "token" and x["outcome"] == "allowed"]
    assert allowed and allowed[-1]["studies"] == [uid]


def test_the_token_is_refused_for_another_study(web: Web) -> None:
    (header,) = weasis_command(web, web.a.study_instance_uid)["-H"]
    bearer = header.split(": ", 1)[1]
    other = web.b.study_instance_uid
    assert (
        call(
            web.orthanc, f"/dicom-web/studies/{other}/series", {"Authorization": web.orthanc_auth}
        ).status
        == 200
    )
    for path in (
        f"/dicom-web/studies/{other}/series",
        f"/dicom-web/studies?StudyInstanceUID={other}",
        "/dicom-web/studies",
    ):
        assert (
            orthanc_through_the_gateway(web, path, bearer, "application/dicom+json").status == 403
        )
    refused = [x for x in web.audit() if x["auth"] == "token" and x["outcome"] == "refused"]
    assert refused[-1]["status"] == 403


def test_an_expired_token_is_refused(web: Web) -> None:
    uid = web.a.study_instance_uid
    token = web.host.check_output(f"pacs-web mint-token --study {uid} --minutes -1 --user mol-test")
    verdict = web.auth(f"/dicom-web/studies/{uid}/series", Authorization=f"Bearer {token.strip()}")
    assert verdict.status == 401
    assert web.audit()[-1]["reason"] == "token expired"
    fresh = web.host.check_output(f"pacs-web mint-token --study {uid} --minutes 1")
    assert (
        web.auth(f"/dicom-web/studies/{uid}/series", Authorization=f"Bearer {fresh.strip()}").status
        == 204
    )


# ----------------------------------------------------------------------------- share links


def make_share(web: Web, uid: str, *extra: str) -> dict[str, Any]:
    """A share link made on the host's command line, as an operator would."""
    out = web.host.check_output(
        f"pacs-web shares create --study {uid} --name 'Dr Mol' --email mol@cabinet.example"
        f" --days 1 --json {' '.join(extra)}"
    )
    made = json.loads(out)
    assert made["state"] == "active" and made["patient"] == web.a.patient_id
    return made


def test_a_share_link_opens_its_study_only_until_it_is_revoked(web: Web) -> None:
    uid = web.a.study_instance_uid
    made = make_share(web, uid)
    # The store belongs to the service although root made it.
    store = web.host.file("/var/lib/pacs-libre/pacs-web/shares.sqlite")
    assert (store.user, store.group) == ("pacs-web", "pacs-web")
    opened = call(web.service, f"/s/{made['id']}", {"X-Real-IP": "192.0.2.8"})
    assert opened.status == 303, opened.text
    location = opened.header("Location")
    assert location.startswith(f"/viewer?StudyInstanceUIDs={uid}&token=v1.")
    bearer = "Bearer " + urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["token"][0]
    series = orthanc_through_the_gateway(
        web, f"/dicom-web/studies/{uid}/series", bearer, "application/dicom+json"
    )
    assert series.status == 200 and json.loads(series.body)
    other = web.b.study_instance_uid
    assert (
        orthanc_through_the_gateway(
            web, f"/dicom-web/studies/{other}/series", bearer, "application/dicom+json"
        ).status
        == 403
    )
    revoked = json.loads(web.host.check_output(f"pacs-web shares revoke {made['ref']}"))
    assert revoked["changed"] is True
    after = web.auth(f"/dicom-web/studies/{uid}/series", Authorization=bearer)
    assert after.status == 401
    gone = call(web.service, f"/s/{made['id']}")
    assert gone.status == 410 and "Link no longer valid" in gone.text
    lines = [x for x in web.audit() if x.get("share") == made["ref"]]
    steps = [(x["event"], x["outcome"]) for x in lines]
    for step in (
        ("share", "created"),
        ("share-open", "ok"),
        ("access", "allowed"),
        ("access", "refused"),
        ("share", "revoked"),
        ("share-open", "refused"),
    ):
        assert step in steps, steps
    # The patient is on every line about the link's study (not on the other study's refusal).
    assert all(x["patient"] == [web.a.patient_id] for x in lines if x["studies"] == [uid])
    listed = json.loads(web.host.check_output("pacs-web shares list --json"))
    mine = next(x for x in listed if x["ref"] == made["ref"])
    assert (mine["state"], mine["opens"]) == ("revoked", 1) and mine["uses"] >= 1
    found = json.loads(web.host.check_output(f"pacs-web audit --patient {web.a.patient_id} --json"))
    assert "mol@cabinet.example" in {x["user"] for x in found}


def test_a_share_link_works_through_nginx(web: Web, tmp_path: Path) -> None:
    uid = web.a.study_instance_uid
    made = make_share(web, uid)
    ca = tmp_path / "ca.crt"
    ca.write_text(web.host.check_output("cat /etc/pacs-libre/pki/ca.crt") + "\n")
    base = f"https://{address_of(web.host)}"

    def get(path: str, **kwargs: Any) -> requests.Response:
        return requests.get(
            base + path, verify=str(ca), timeout=60, allow_redirects=False, **kwargs
        )

    opened = get(f"/s/{made['id']}")
    assert opened.status_code == 303, opened.text[:500]
    location = opened.headers["Location"]
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["token"][0]
    bearer = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    series = get(f"/dicom-web/studies/{uid}/series", headers=bearer)
    assert series.status_code == 200 and series.json()
    other = web.b.study_instance_uid
    assert get(f"/dicom-web/studies/{other}/series", headers=bearer).status_code == 403
    # The viewer's own page loads with the cookie the link set.
    viewer = get(location, cookies=opened.cookies)
    assert viewer.status_code == 200 and "<html" in viewer.text.lower()
    web.host.check_output(f"pacs-web shares revoke {made['ref']}")
    assert get(f"/dicom-web/studies/{uid}/series", headers=bearer).status_code == 401
    assert get(f"/s/{made['id']}").status_code == 410


# ----------------------------------------------------------------------------- check mode


def check_mode(*extra: str) -> tuple[dict[str, int], str]:
    """The role's tasks in check mode (--tags pacs_services) on the host."""
    playbook = str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")
    rc, out = run_playbook(playbook, "--check", "--diff", "--tags", "pacs_services", *extra)
    assert rc == 0, out[-4000:]
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(out)}
    assert set(recap) == set(HOSTS), out[-2000:]
    return recap, out


def test_check_mode_tells_the_truth_about_the_user_list() -> None:
    unchanged, out = check_mode()
    assert unchanged == dict.fromkeys(HOSTS, 0), out[-4000:]
    assert "Write the user list" in out and "Refuse a web host" in out
    users = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "check-users.json"
    users.write_text(
        json.dumps(
            {
                "pacs_services_users": [
                    {"name": "mol-radiologist", "password": "a-new-password", "rights": ["view"]},
                    {
                        "name": "mol-viewer",
                        "password": credential("mol-viewer"),
                        "rights": ["view"],
                    },
                ]
            }
        )
    )
    changed, out = check_mode("-e", f"@{users}")
    assert changed == dict.fromkeys(HOSTS, 1), out[-4000:]
    assert "Write the user list" in out
    for name in HOSTS:
        # Nothing was written: the list still has the converged rights and hashes.
        text = lab_host(name).check_output("cat /etc/pacs-libre/pacs-web/users.json")
        rights = {u["name"]: u["rights"] for u in json.loads(text)["users"]}
        assert rights["mol-radiologist"] == ["stow", "view"]
