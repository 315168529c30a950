"""pacs-web, the gateway's auth hook, sign-in and IHE IID service (roles/pacs_services).

The service is one stdlib-only file that the role copies to the host; it is
imported here by path, as the orthanc role's services are. These tests cover
its pure parts (tokens, scrypt, access rules, IID parsing, the Weasis URL, the
audit line) and then run the real HTTP server in this process against a small
stand-in for Orthanc's /tools/find. The real Orthanc, on Debian 13 and 12, is
driven by roles/pacs_services/molecule/default.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SOURCE = Path(__file__).resolve().parents[1] / "roles/pacs_services/files/pacs_web/pacs_web.py"
_spec = importlib.util.spec_from_file_location("pacs_web", SOURCE)
assert _spec and _spec.loader
pw = importlib.util.module_from_spec(_spec)
sys.modules["pacs_web"] = pw
_spec.loader.exec_module(pw)

SECRET = b"k" * 32
UID_A, UID_B = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


# ----------------------------------------------------------------------------- passwords


def test_a_password_verifies_against_its_own_hash_only():
    stored = pw.hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert pw.verify_password("correct horse", stored)
    assert not pw.verify_password("correct hors", stored)
    assert not pw.verify_password("correct horse", "scrypt$1$1$1$AA$AA")
    assert not pw.verify_password("x", "not a hash")


def test_two_hashes_of_one_password_differ_by_their_salt():
    assert pw.hash_password("same") != pw.hash_password("same")


def test_users_sync_keeps_a_hash_whose_password_still_matches():
    # Passwords long and odd enough that no salt or hash could contain them by chance.
    old, new = "old-password-Qv7;x", "new-password-Zk2;y"
    first = pw.sync_users({}, [{"name": "a", "password": old, "rights": ["view"]}])
    again = pw.sync_users(first, [{"name": "a", "password": old, "rights": ["view"]}])
    assert again == first
    changed = pw.sync_users(first, [{"name": "a", "password": new, "rights": ["view"]}])
    assert changed["users"][0]["hash"] != first["users"][0]["hash"]
    assert pw.verify_password(new, changed["users"][0]["hash"])
    rights = pw.sync_users(first, [{"name": "a", "password": old, "rights": ["stow", "view"]}])
    assert rights["users"][0]["hash"] == first["users"][0]["hash"]
    assert rights["users"][0]["rights"] == ["stow", "view"]
    # The clear text is stored nowhere, only its hash.
    assert old not in json.dumps(first) and new not in json.dumps(changed)


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([{"name": "a", "password": "", "rights": []}], "empty password"),
        ([{"name": "a", "password": "p", "rights": ["root"]}], "unknown rights"),
        ([{"name": "a b", "password": "p", "rights": []}], "a name is"),
        (
            [{"name": "a", "password": "p", "rights": []}, {"name": "a", "password": "q"}],
            "twice",
        ),
    ],
)
def test_users_sync_refuses_bad_entries(users, message):
    with pytest.raises(pw.ConfigError, match=message):
        pw.sync_users({}, users)


# ----------------------------------------------------------------------------- tokens


def test_a_token_round_trips_and_expires():
    signer = pw.Signer(SECRET)
    now = int(time.time())
    token = signer.sign(pw.Claims("study", "dr", now + 60, study=UID_A))
    claims = signer.verify(token, "study")
    assert claims and claims.subject == "dr" and claims.study == UID_A
    assert signer.verify(token, "study", now=now + 61) is None


def test_a_token_of_one_kind_is_not_another():
    signer = pw.Signer(SECRET)
    token = signer.sign(pw.Claims("study", "dr", int(time.time()) + 60, study=UID_A))
    assert signer.verify(token, "session") is None


def test_another_secret_or_a_changed_payload_is_refused():
    token = pw.Signer(SECRET).sign(pw.Claims("session", "dr", int(time.time()) + 60))
    assert pw.Signer(b"o" * 32).verify(token, "session") is None
    version, body, mac = token.split(".")
    payload = json.loads(pw.unb64url(body))
    payload["s"] = "admin"
    forged = f"{version}.{pw.b64url(json.dumps(payload).encode())}.{mac}"
    assert pw.Signer(SECRET).verify(forged, "session") is None


def test_a_short_secret_is_refused():
    with pytest.raises(pw.ConfigError, match="32 bytes"):
        pw.Signer(b"short")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_no_garbage_is_ever_a_valid_token(garbage):
    assert pw.Signer(SECRET).verify(garbage, "study") is None


# ----------------------------------------------------------------------------- access rules


def target(method: str, uri: str) -> Any:
    return pw.Target.parse(method, uri)


@pytest.mark.parametrize(
    ("method", "uri", "right"),
    [
        ("GET", "/dicom-web/studies", "view"),
        ("HEAD", "/dicom-web/studies/1.2/series", "view"),
        ("POST", "/dicom-web/studies", "stow"),
        ("POST", "/dicom-web/studies/1.2.3", "stow"),
        ("DELETE", "/dicom-web/studies/1.2.3", "admin"),
        ("POST", "/dicom-web/studies/1.2/series", "admin"),
        ("GET", "/viewer?StudyInstanceUIDs=1.2", "view"),
        ("GET", "/", "view"),
        ("GET", "/admin/users", "admin"),
        ("POST", "/anything", "admin"),
    ],
)
def test_the_right_each_request_needs(method, uri, right):
    assert target(method, uri).needed_right() == right


@pytest.mark.parametrize(
    ("method", "uri", "allowed"),
    [
        ("GET", f"/dicom-web/studies/{UID_A}", True),
        ("GET", f"/dicom-web/studies/{UID_A}/series/1.2/instances/1.3/frames/1", True),
        ("GET", f"/dicom-web/studies/{UID_A}/metadata", True),
        ("GET", f"/dicom-web/studies?StudyInstanceUID={UID_A}&includefield=all", True),
        ("GET", f"/dicom-web/series?0020000D={UID_A}", True),
        ("GET", f"/dicom-web/studies/{UID_B}", False),
        ("GET", f"/dicom-web/studies/{UID_A}9/series", False),
        ("GET", "/dicom-web/studies", False),
        ("GET", "/dicom-web/studies?PatientID=123", False),
        ("GET", f"/dicom-web/studies?StudyInstanceUID={UID_A}&StudyInstanceUID={UID_B}", False),
        ("GET", f"/dicom-web/studies?StudyInstanceUID={UID_A}%5C{UID_B}", False),
        ("POST", f"/dicom-web/studies/{UID_A}", False),
        ("GET", f"/dicom-web/studies/{UID_A}/../{UID_B}", False),
        ("GET", f"/viewer?StudyInstanceUIDs={UID_A}", False),
    ],
)
def test_a_study_token_opens_its_study_only(method, uri, allowed):
    assert target(method, uri).token_allows(UID_A) is allowed


def test_the_studies_a_request_names():
    assert target("GET", f"/dicom-web/studies/{UID_A}/series").studies() == [UID_A]
    assert target("GET", f"/dicom-web/studies?StudyInstanceUID={UID_B}").studies() == [UID_B]
    assert target("GET", f"/viewer?StudyInstanceUIDs={UID_A},{UID_B}").studies() == [UID_A, UID_B]
    assert target("GET", "/dicom-web/studies?PatientID=1").studies() == []


def test_safe_next_stays_on_this_site():
    assert pw.safe_next("/viewer?StudyInstanceUIDs=1.2") == "/viewer?StudyInstanceUIDs=1.2"
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil", "javascript:x", "/a\r\nb"):
        assert pw.safe_next(bad) == "/"


def test_failures_lock_a_key_within_the_window_only():
    limiter = pw.FailureLimiter(limit=3, window=60)
    for moment in (0, 1, 2):
        assert not limiter.blocked(["ip:a"], now=moment)
        limiter.fail(["ip:a", "user:x"], now=moment)
    assert limiter.blocked(["ip:a"], now=3)
    assert limiter.blocked(["ip:b", "user:x"], now=3)
    assert not limiter.blocked(["ip:b", "user:y"], now=3)
    assert not limiter.blocked(["ip:a"], now=61)


# ----------------------------------------------------------------------------- IID parsing


def iid(query: str, default: str = "ohif") -> Any:
    return pw.IidRequest.parse(query, default)


def test_iid_study_by_uids_and_by_accession_numbers():
    request = iid(f"requestType=STUDY&studyUID={UID_A},{UID_B}")
    assert request.study_uids == (UID_A, UID_B) and request.viewer == "ohif"
    by_acc = iid("requestType=study&accessionNumber=ACC1^^^%262.16.1%26ISO,ACC2&viewerType=weasis")
    assert by_acc.accession_numbers == ("ACC1", "ACC2") and by_acc.viewer == "weasis"
    assert pw.orthanc_queries(by_acc) == [{"AccessionNumber": "ACC1"}, {"AccessionNumber": "ACC2"}]


def test_iid_patient_with_every_filter():
    request = iid(
        "requestType=PATIENT&patientID=IPP42^^^%261.2.250%26ISO&mostRecentResults=3"
        "&lowerDateTime=2026-01-02T08:00:00&upperDateTime=2026-12-31"
        "&modalitiesInStudy=ct,MR&viewerType=IHE_BIR",
        default="weasis",
    )
    assert request.patient_id == "IPP42" and request.most_recent == 3
    assert (request.lower, request.upper) == ("20260102080000", "20261231000000")
    assert request.viewer == "weasis"
    assert pw.orthanc_queries(request) == [
        {"PatientID": "IPP42", "StudyDate": "20260102-20261231", "ModalitiesInStudy": "CT\\MR"}
    ]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "requestType=SERIES&studyUID=1.2",
        "requestType=STUDY",
        "requestType=STUDY&studyUID=1.2&accessionNumber=A",
        "requestType=STUDY&studyUID=1.2.abc",
        "requestType=STUDY&studyUID=1.2&studyUID=1.3",
        "requestType=STUDY&studyUID=1.2&viewerType=osirix",
        "requestType=STUDY&accessionNumber=A*",
        "requestType=PATIENT",
        "requestType=PATIENT&patientID=*",
        "requestType=PATIENT&patientID=1%5C2",
        "requestType=PATIENT&patientID=1&mostRecentResults=0",
        "requestType=PATIENT&patientID=1&mostRecentResults=x",
        "requestType=PATIENT&patientID=1&lowerDateTime=yesterday",
        "requestType=PATIENT&patientID=1&lowerDateTime=2026-02-30",
        "requestType=PATIENT&patientID=1&lowerDateTime=2026-03-01&upperDateTime=2026-02-01",
        "requestType=PATIENT&patientID=1&modalitiesInStudy=C-T",
    ],
)
def test_malformed_iid_requests_are_refused_in_both_languages(query):
    with pytest.raises(pw.BadRequest) as caught:
        iid(query)
    assert caught.value.en and caught.value.fr and caught.value.en != caught.value.fr


def study(uid: str, date: str, time_: str = "") -> Any:
    return pw.Study(uid, date, time_, "", "", "P1")


def test_patient_selection_applies_times_and_most_recent():
    request = iid(
        "requestType=PATIENT&patientID=P1&lowerDateTime=2026-01-01T12:00&mostRecentResults=2"
    )
    found = [
        study("1.1", "20260101", "080000"),
        study("1.2", "20260101", "130000"),
        study("1.3", "20260301"),
        study("1.4", "20260201", "101010.123"),
        study("1.4", "20260201", "101010.123"),
    ]
    assert [s.uid for s in pw.select_studies(request, found)] == ["1.3", "1.4"]


# ----------------------------------------------------------------------------- Weasis URL


def test_the_weasis_url_decodes_to_one_command_per_study():
    commands = [
        pw.weasis_command("https://pacs.example/dicom-web", UID_A, "v1.a.b", "transfer-syntax=*"),
        pw.weasis_command("https://pacs.example/dicom-web", UID_B, "v1.c.d", ""),
    ]
    url = pw.weasis_url(commands)
    assert url.startswith("weasis://?%24dicom%3Ars%20--url%20%22https%3A%2F%2F")
    assert " " not in url and '"' not in url
    decoded = pw.parse_weasis_url(url)
    assert decoded == [
        {
            "url": "https://pacs.example/dicom-web",
            "requests": [f"studyUID={UID_A}"],
            "headers": ["Authorization: Bearer v1.a.b"],
            "accept_ext": "transfer-syntax=*",
        },
        {
            "url": "https://pacs.example/dicom-web",
            "requests": [f"studyUID={UID_B}"],
            "headers": ["Authorization: Bearer v1.c.d"],
            "accept_ext": "",
        },
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,6}){1,8}", fullmatch=True),
    st.from_regex(r"v1\.[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{1,43}", fullmatch=True),
)
def test_any_uid_and_token_survive_the_weasis_encoding(uid, token):
    url = pw.weasis_url([pw.weasis_command("https://h:8443/dicom-web", uid, token, "x=*")])
    (command,) = pw.parse_weasis_url(url)
    assert command["requests"] == [f"studyUID={uid}"]
    assert command["headers"] == [f"Authorization: Bearer {token}"]


# ----------------------------------------------------------------------------- audit


def test_an_audit_line_says_who_when_which_study_from_where_and_how():
    line = json.loads(
        pw.Audit.line(
            event="access",
            outcome="refused",
            user="dr",
            auth="token",
            studies=[UID_A],
            client="10.0.0.9",
            uri="/dicom-web/x",
            status=403,
        )
    )
    assert list(line)[:7] == ["time", "event", "outcome", "user", "auth", "studies", "client"]
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert (line["user"], line["auth"], line["studies"], line["client"]) == (
        "dr",
        "token",
        [UID_A],
        "10.0.0.9",
    )


# ----------------------------------------------------------------------------- the HTTP service


class FakeOrthanc:
    """Orthanc's /tools/find over a fixed list of studies (exact matches only)."""

    def __init__(self) -> None:
        self.studies = [
            {"StudyInstanceUID": UID_A, "AccessionNumber": "ACC-A", "StudyDate": "20260110"},
            {"StudyInstanceUID": UID_B, "AccessionNumber": "ACC-B", "StudyDate": "20260220"},
        ]
        self.queries: list[dict[str, str]] = []

    def find_studies(self, query: dict[str, str]) -> list[dict[str, Any]]:
        self.queries.append(query)
        out = []
        for tags in self.studies:
            match = all(
                tags.get(k) == v or (k == "PatientID" and v == "P1")
                for k, v in query.items()
                if k not in ("StudyDate", "ModalitiesInStudy")
            )
            if match:
                out.append({"MainDicomTags": tags, "PatientMainDicomTags": {"PatientID": "P1"}})
        return out


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "secret").write_text(SECRET.hex())
    users = pw.sync_users(
        {},
        [
            {"name": "radiologist", "password": "pw-r", "rights": ["view", "stow"]},
            {"name": "clerk", "password": "pw-c", "rights": []},
        ],
    )
    (tmp_path / "users.json").write_text(json.dumps(users))
    config = pw.Config(
        path=str(tmp_path / "config.json"),
        port=0,
        gateway_urls=["https://pacs.example", "https://127.0.0.1:8443"],
        users_file=str(tmp_path / "users.json"),
        secret_file=str(tmp_path / "secret"),
        audit_log=str(tmp_path / "audit.log"),
        failure_limit=3,
    )
    orthanc = FakeOrthanc()
    service = pw.Service(config, orthanc=orthanc)
    handler = type("H", (pw.Handler,), {"service": service})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], service, tmp_path / "audit.log"
    finally:
        server.shutdown()
        server.server_close()


def call(port: int, path: str, headers: dict[str, str] | None = None, body: str = "") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    method = "POST" if body else "GET"
    conn.request(method, path, body=body.encode() or None, headers=headers or {})
    answer = conn.getresponse()
    answer.text = answer.read().decode()
    conn.close()
    return answer


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def auth(port: int, uri: str, method: str = "GET", **headers: str) -> Any:
    return call(
        port,
        "/auth",
        {"X-Original-URI": uri, "X-Original-Method": method, "X-Real-IP": "10.1.2.3", **headers},
    )


def login(port: int, name: str, password: str, next_url: str = "/") -> Any:
    form = call(port, f"/login?next={urllib.parse.quote(next_url)}")
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    nonce = form.getheader("Set-Cookie").split(";")[0]
    body = urllib.parse.urlencode(
        {"csrf": csrf, "next": next_url, "username": name, "password": password}
    )
    return call(
        port,
        "/login",
        {"Cookie": nonce, "Content-Type": "application/x-www-form-urlencoded"},
        body,
    )


def test_auth_401_204_403_with_basic(running):
    port, _, log = running
    assert auth(port, "/dicom-web/studies").status == 401
    ok = auth(port, f"/dicom-web/studies/{UID_A}", Authorization=basic("radiologist", "pw-r"))
    assert ok.status == 204
    assert (ok.getheader("X-Pacs-User"), ok.getheader("X-Pacs-Auth")) == ("radiologist", "basic")
    assert (
        auth(port, "/dicom-web/studies", "POST", Authorization=basic("clerk", "pw-c")).status == 403
    )
    wrong = auth(port, "/dicom-web/studies", Authorization=basic("radiologist", "nope"))
    assert wrong.status == 401
    lines = audit_lines(log)
    failed = [x for x in lines if x["event"] == "login" and x["outcome"] == "failed"]
    assert failed and failed[-1]["user"] == "radiologist" and failed[-1]["client"] == "10.1.2.3"
    allowed = [x for x in lines if x["outcome"] == "allowed"]
    assert allowed[0]["studies"] == [UID_A] and allowed[0]["auth"] == "basic"


def test_repeated_failures_lock_even_the_right_password(running):
    port, _, _ = running
    for _ in range(3):
        assert auth(port, "/", Authorization=basic("radiologist", "nope")).status == 401
    assert auth(port, "/", Authorization=basic("radiologist", "pw-r")).status == 401


def test_login_sets_a_session_that_auth_accepts(running):
    port, _, _ = running
    answer = login(port, "radiologist", "pw-r", "/viewer?StudyInstanceUIDs=1.2")
    assert answer.status == 303
    assert answer.getheader("Location") == "/viewer?StudyInstanceUIDs=1.2"
    cookie = next(
        v for k, v in answer.getheaders() if k == "Set-Cookie" and v.startswith("pacs_session=")
    )
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=Lax"))
    session = cookie.split(";")[0]
    verdict = auth(port, "/viewer", Cookie=session)
    assert verdict.status == 204 and verdict.getheader("X-Pacs-Auth") == "session"
    assert auth(port, "/dicom-web/studies", "POST", Cookie=session).status == 204
    assert auth(port, "/viewer", Cookie="pacs_session=v1.forged.x").status == 401


def test_login_refuses_a_wrong_password_and_a_missing_form_token(running):
    port, _, log = running
    assert login(port, "radiologist", "bad").status == 401
    assert audit_lines(log)[-1]["auth"] == "form"
    body = urllib.parse.urlencode({"username": "radiologist", "password": "pw-r", "csrf": "x"})
    answer = call(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body)
    assert answer.status == 400 and "pacs_session=v1" not in str(answer.getheaders())


def test_a_second_sign_in_page_keeps_the_first_forms_nonce(running):
    """The browser's /favicon.ico, redirected to /login, must not void the open form."""
    port, _, _ = running
    first = call(port, "/login?next=%2F")
    csrf = first.text.split('name="csrf" value="')[1].split('"')[0]
    cookie = first.getheader("Set-Cookie").split(";")[0]
    again = call(port, "/login?next=%2Ffavicon.ico", {"Cookie": cookie})
    assert again.getheader("Set-Cookie").split(";")[0] == cookie
    body = urllib.parse.urlencode(
        {"csrf": csrf, "next": "/", "username": "radiologist", "password": "pw-r"}
    )
    answer = call(
        port,
        "/login",
        {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        body,
    )
    assert answer.status == 303
    forged = call(port, "/login", {"Cookie": "pacs_login=../../etc"})
    assert "pacs_login=../../etc" not in forged.getheader("Set-Cookie")


def session_of(port: int) -> str:
    answer = login(port, "radiologist", "pw-r")
    return next(
        v.split(";")[0]
        for k, v in answer.getheaders()
        if k == "Set-Cookie" and v.startswith("pacs_session=")
    )


def test_iid_needs_a_session_then_redirects_to_ohif(running):
    port, _, _ = running
    query = f"requestType=STUDY&studyUID={UID_A},{UID_B}"
    anonymous = call(port, f"/iid?{query}")
    assert anonymous.status == 303 and anonymous.getheader("Location").startswith("/login?next=")
    answer = call(port, f"/iid?{query}", {"Cookie": session_of(port)})
    assert answer.status == 302
    assert answer.getheader("Location") == f"/viewer?StudyInstanceUIDs={UID_A},{UID_B}"


def test_iid_weasis_gives_study_tokens_that_auth_accepts_for_their_study(running):
    port, _, log = running
    answer = call(
        port,
        "/iid?requestType=STUDY&accessionNumber=ACC-B&viewerType=weasis",
        {"Cookie": session_of(port), "Host": "127.0.0.1:8443", "X-Forwarded-Proto": "https"},
    )
    assert answer.status == 200
    link = answer.text.split('id="weasis" href="')[1].split('"')[0].replace("&amp;", "&")
    (command,) = pw.parse_weasis_url(link)
    assert command["url"] == "https://127.0.0.1:8443/dicom-web"
    assert command["requests"] == [f"studyUID={UID_B}"]
    bearer = command["headers"][0].split(": ", 1)[1]
    ok = auth(port, f"/dicom-web/studies/{UID_B}/series", Authorization=bearer)
    assert ok.status == 204 and ok.getheader("X-Pacs-Auth") == "token"
    assert auth(port, f"/dicom-web/studies/{UID_A}/series", Authorization=bearer).status == 403
    assert any(x["event"] == "token" and x["studies"] == [UID_B] for x in audit_lines(log))


def test_an_expired_token_gets_401(running):
    port, service, log = running
    token = service.study_token("dr", UID_A, minutes=-1)
    answer = auth(port, f"/dicom-web/studies/{UID_A}", Authorization=f"Bearer {token}")
    assert answer.status == 401
    assert audit_lines(log)[-1]["reason"] == "token expired"


def test_iid_not_found_and_malformed_get_bilingual_pages(running):
    port, _, _ = running
    session = {"Cookie": session_of(port)}
    missing = call(port, "/iid?requestType=STUDY&studyUID=1.2.3.4", session)
    assert missing.status == 404
    assert "Aucun examen" in missing.text and "No study found" in missing.text
    malformed = call(port, "/iid?requestType=STUDY&studyUID=DROP%20TABLE", session)
    assert malformed.status == 400 and "Traceback" not in malformed.text
    assert "UID DICOM" in malformed.text and "DICOM UID" in malformed.text


def test_a_user_without_view_may_not_use_iid(running):
    port, _, _ = running
    answer = login(port, "clerk", "pw-c")
    session = next(v.split(";")[0] for k, v in answer.getheaders() if v.startswith("pacs_session="))
    denied = call(port, f"/iid?requestType=STUDY&studyUID={UID_A}", {"Cookie": session})
    assert denied.status == 403


def test_a_removed_user_loses_its_session_at_once(running):
    port, service, _ = running
    session = session_of(port)
    path = Path(service.config.users_file)
    data = json.loads(path.read_text())
    data["users"] = [u for u in data["users"] if u["name"] != "radiologist"]
    path.write_text(json.dumps(data))
    assert auth(port, "/viewer", Cookie=session).status == 401


def test_cli_users_sync_is_idempotent_and_mint_token_can_be_expired(tmp_path, capsys, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "users_file": str(tmp_path / "users.json"),
                "secret_file": str(tmp_path / "secret"),
                "audit_log": str(tmp_path / "audit.log"),
            }
        )
    )
    assert pw.main(["--config", str(config), "init-secret"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert pw.main(["--config", str(config), "init-secret"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    wanted = json.dumps([{"name": "u", "password": "p", "rights": ["view"]}])
    for expected in (True, False):
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO(wanted))
        assert pw.main(["--config", str(config), "users-sync"]) == 0
        assert json.loads(capsys.readouterr().out)["changed"] is expected
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o640"
    assert pw.main(["--config", str(config), "check-config"]) == 0
    capsys.readouterr()
    assert (
        pw.main(["--config", str(config), "mint-token", "--study", UID_A, "--minutes", "-1"]) == 0
    )
    token = capsys.readouterr().out.strip()
    signer = pw.Signer(pw.read_secret(str(tmp_path / "secret")))
    assert signer.verify(token, "study") is None
    assert signer.peek(token)["u"] == UID_A
    assert pw.main(["--config", str(config), "mint-token", "--study", "x"]) == 2


def test_check_config_names_the_key_and_the_fix(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"default_viewer": "osirix"}))
    with pytest.raises(pw.ConfigError, match="default_viewer"):
        pw.Config.load(str(config))
    config.write_text(json.dumps({"colour": "blue"}))
    with pytest.raises(pw.ConfigError, match="unknown keys"):
        pw.Config.load(str(config))
