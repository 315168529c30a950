"""pacs-web's share links for correspondents and its audit trail (roles/pacs_services).

The same file that the role installs, imported by path as tests/test_pacs_web.py
does. The pure parts first (the group table, the scope of a share token, the
form's checks, RFC 5424 lines), then the real HTTP server in this process, with
a stand-in for Orthanc's /tools/find reached over HTTP (so that the command
line's look-ups are real requests too): a sharer makes a link, a correspondent
opens it (with and without an access code), /auth answers its token for its
study only, a revocation or an expiry ends it at the next request, and every
step is an audit line that ``pacs-web audit`` finds again, rotated files
included.
"""

from __future__ import annotations

import gzip
import html
import http.client
import importlib.util
import json
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "roles/pacs_services/files/pacs_web/pacs_web.py"
if "pacs_web" in sys.modules:
    pw = sys.modules["pacs_web"]
else:
    _spec = importlib.util.spec_from_file_location("pacs_web", SOURCE)
    assert _spec and _spec.loader
    pw = importlib.util.module_from_spec(_spec)
    sys.modules["pacs_web"] = pw
    _spec.loader.exec_module(pw)

SECRET = b"s" * 32
UID_A, UID_B = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"
STUDIES = {
    UID_A: {"PatientID": "P1", "StudyDate": "20260110", "StudyDescription": "CT THORAX"},
    UID_B: {"PatientID": "P2", "StudyDate": "20260220", "StudyDescription": "MR GENOU"},
}
CLIENT = "10.9.8.7"


# ----------------------------------------------------------------------------- pure parts


def test_the_groups_give_the_rights_of_the_one_table():
    assert pw.rights_of_groups("radiologist") == {"view", "share"}
    assert pw.rights_of_groups("clinician") == {"view", "share"}
    assert pw.rights_of_groups(" Correspondent-Manager ,x") == {"view", "share", "manage-shares"}
    assert pw.rights_of_groups("admin") == {"admin"}
    assert pw.rights_of_groups("nurse,") == frozenset()
    assert pw.has_right({"admin"}, "manage-shares") and not pw.has_right({"share"}, "manage-shares")
    assert set(pw.RIGHTS) == {"view", "stow", "share", "admin"}


@pytest.mark.parametrize(
    ("method", "uri", "allowed"),
    [
        ("GET", f"/dicom-web/studies/{UID_A}/series", True),
        ("GET", f"/dicom-web/studies?StudyInstanceUID={UID_A}", True),
        ("GET", f"/dicom-web/studies/{UID_B}/series", False),
        ("GET", "/dicom-web/studies", False),
        ("POST", f"/dicom-web/studies/{UID_A}", False),
        ("GET", f"/viewer?StudyInstanceUIDs={UID_A}&token=x", True),
        ("GET", f"/viewer?StudyInstanceUIDs={UID_B}", False),
        ("GET", "/app.0123456789abcdef.js", True),
        ("GET", "/app-config.js", True),
        ("GET", "/share", False),
        ("GET", "/shares", False),
        ("GET", "/iid?requestType=STUDY", False),
        ("GET", "/admin/x", False),
        ("POST", "/anything", False),
    ],
)
def test_a_share_token_opens_its_study_and_the_viewer_files_only(method, uri, allowed):
    assert pw.Target.parse(method, uri).share_allows(UID_A) is allowed


def test_the_share_forms_need_the_share_right_at_the_hook():
    for method, uri in (("POST", "/share"), ("POST", "/shares/ab/revoke")):
        assert pw.Target.parse(method, uri).needed_right() == "share"
    # Reads pass the hook with view: pacs-web's own bilingual page refuses them.
    assert pw.Target.parse("GET", "/share?study=1.2").needed_right() == "view"


def parse_request(days: str = "7", email: str = "dr.martin@cabinet.example", code: str = ""):
    return pw.ShareRequest.parse("Dr Martin", email, days, code, max_days=30, default_days=7)


def test_the_share_form_is_checked_with_a_message_in_both_languages():
    assert parse_request().days == 7 and parse_request(days="").days == 7
    for bad in (
        {"days": "31"},
        {"days": "0"},
        {"days": "x"},
        {"email": "not-an-address"},
        {"email": "a@b.example>\r\nBcc: x@y.example"},
        {"code": "12"},
    ):
        with pytest.raises(pw.BadRequest) as caught:
            parse_request(**bad)
        assert caught.value.en and caught.value.fr and caught.value.en != caught.value.fr
    with pytest.raises(pw.BadRequest, match="at most 30 days"):
        parse_request(days="31")


def test_a_token_in_a_uri_is_hidden_from_the_audit():
    uri = f"/viewer?StudyInstanceUIDs={UID_A}&token=v1.abc.def&x=1"
    assert pw.redact_token(uri) == f"/viewer?StudyInstanceUIDs={UID_A}&token=(hidden)&x=1"


def test_an_rfc5424_line_parses_back_to_its_record():
    record = pw.Audit.record(
        event="access",
        outcome="refused",
        user='dr "x"] \\ y',
        auth="share",
        studies=[UID_A, UID_B],
        client=CLIENT,
        patient="P1",
        share="0123456789abcdef",
        status=403,
    )
    audit = pw.Audit(None, "rfc5424", 32473)
    line = audit.format_record(record)
    assert line.startswith("<84>1 ") and " pacs-web " in line
    sd, message = pw.parse_rfc5424(line)
    assert sd["pacs@32473"]["user"] == 'dr "x"] \\ y'
    assert sd["pacs@32473"]["studies"] == f"{UID_A},{UID_B}"
    assert sd["pacs@32473"]["patient"] == "P1" and sd["pacs@32473"]["status"] == "403"
    assert json.loads(message) == record
    assert pw.parse_audit_line(line) == record
    ok = pw.Audit(None, "rfc5424", 99999).format_record(
        pw.Audit.record(event="login", outcome="ok", user="u")
    )
    assert ok.startswith("<85>1 ") and "[pacs@99999 " in ok


# ----------------------------------------------------------------------------- the running service


class FakeOrthanc(BaseHTTPRequestHandler):
    """Orthanc's POST /tools/find at the study level, exact matches, over HTTP."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        query = body["Query"]
        out = []
        for uid, tags in STUDIES.items():
            main = {"StudyInstanceUID": uid, **{k: v for k, v in tags.items() if k != "PatientID"}}
            if (
                query.get("StudyInstanceUID", uid) == uid
                and query.get("PatientID", tags["PatientID"]) == tags["PatientID"]
            ):
                out.append(
                    {
                        "MainDicomTags": main,
                        "PatientMainDicomTags": {"PatientID": tags["PatientID"]},
                    }
                )
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Running:
    port: int
    service: Any
    config: Any
    config_file: Path
    log: Path
    offset: list[float]

    def audit(self) -> list[dict[str, Any]]:
        return [pw.parse_audit_line(x) for x in self.log.read_text().splitlines()]


def serve_in_thread(server: ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture(params=["json"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    orthanc = ThreadingHTTPServer(("127.0.0.1", 0), FakeOrthanc)
    serve_in_thread(orthanc)
    (tmp_path / "secret").write_text(SECRET.hex())
    (tmp_path / "orthanc.json").write_text(json.dumps({"user": "o", "password": "p"}))
    users = pw.sync_users(
        {},
        [
            {"name": "radiologist", "password": "pw-r", "rights": ["view", "share"]},
            {"name": "viewer", "password": "pw-v", "rights": ["view"]},
        ],
    )
    (tmp_path / "users.json").write_text(json.dumps(users))
    settings = {
        "gateway_urls": ["https://pacs.example", "https://127.0.0.1:8443"],
        "users_file": str(tmp_path / "users.json"),
        "secret_file": str(tmp_path / "secret"),
        "audit_log": str(tmp_path / "audit.log"),
        "orthanc_url": f"http://127.0.0.1:{orthanc.server_address[1]}",
        "orthanc_credentials_file": str(tmp_path / "orthanc.json"),
        "shares_db": str(tmp_path / "state" / "shares.sqlite"),
        "failure_limit": 3,
        "share_max_days": 30,
        "trust_gateway_identity": True,
        "audit_format": request.param,
    }
    (tmp_path / "state").mkdir()
    config_file = tmp_path / "config.json"
    config_file.write_text("# Ansible managed\n" + json.dumps(settings))
    config = pw.Config.load(str(config_file))
    offset = [0.0]
    service = pw.Service(config, clock=lambda: time.time() + offset[0])
    handler = type("H", (pw.Handler,), {"service": service})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve_in_thread(server)
    try:
        yield Running(
            server.server_address[1], service, config, config_file, tmp_path / "audit.log", offset
        )
    finally:
        for each in (server, orthanc):
            each.shutdown()
            each.server_close()


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def cookie(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == "set-cookie" and value.startswith(f"{name}="):
                return value.split(";")[0]
        return ""

    def field(self, name: str) -> str:
        return self.text.split(f'name="{name}" value="')[1].split('"')[0]


def call(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"X-Real-IP": CLIENT, **(headers or {})}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request("POST" if form is not None else "GET", path, body=body, headers=sent)
    answer = conn.getresponse()
    result = Answer(answer.status, answer.getheaders(), html.unescape(answer.read().decode()))
    conn.close()
    return result


def auth(port: int, uri: str, **headers: str) -> Answer:
    return call(port, "/auth", {"X-Original-URI": uri, "X-Original-Method": "GET", **headers})


def session(port: int, name: str = "radiologist", password: str = "pw-r") -> dict[str, str]:  # noqa: S107
    form = call(port, "/login?next=%2F")
    answer = call(
        port,
        "/login",
        {"Cookie": form.cookie("pacs_login")},
        {"csrf": form.field("csrf"), "next": "/", "username": name, "password": password},
    )
    assert answer.status == 303
    return {"Cookie": answer.cookie("pacs_session")}


def sso(user: str, groups: str) -> dict[str, str]:
    return {"X-Pacs-Auth": "sso", "X-Pacs-User": user, "X-Pacs-Groups": groups}


def with_form_cookie(who: dict[str, str], page: Answer) -> dict[str, str]:
    cookie = "; ".join(c for c in (who.get("Cookie", ""), page.cookie("pacs_form")) if c)
    return {**who, "Cookie": cookie}


def create(
    running: Running,
    who: dict[str, str],
    *,
    study: str = UID_A,
    days: str = "7",
    code: str = "",
    host: str = "127.0.0.1:8443",
) -> Answer:
    page = call(running.port, f"/share?study={study}", who)
    assert page.status == 200, page.text
    fields = {
        "csrf": page.field("csrf"),
        "study": study,
        "name": "Dr Martin",
        "email": "dr.martin@cabinet.example",
        "days": days,
        "code": code,
    }
    headers = {**with_form_cookie(who, page), "Host": host, "X-Forwarded-Proto": "https"}
    return call(running.port, "/share", headers, fields)


def share_id(created: Answer) -> str:
    link = created.text.split('<code id="share-link">')[1].split("<")[0]
    return link.rsplit("/s/", 1)[1]


def open_link(running: Running, sid: str) -> tuple[str, str]:
    """Open /s/<id> (no code): the viewer's URL and the share cookie."""
    answer = call(running.port, f"/s/{sid}")
    assert answer.status == 303, answer.text
    return answer.header("Location"), answer.cookie("pacs_share")


def token_of(location: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["token"][0]


def test_the_share_form_is_bilingual_protected_and_self_contained(running):
    anonymous = call(running.port, f"/share?study={UID_A}")
    assert anonymous.status == 303 and anonymous.header("Location").startswith("/login?next=")
    page = call(running.port, f"/share?study={UID_A}", session(running.port))
    assert page.status == 200
    for text in ("Partager un examen", "Share a study", "Nom du correspondant", "Correspondent"):
        assert text in page.text
    assert "CT THORAX" in page.text and "P1" in page.text and 'value="7"' in page.text
    assert "<script" not in page.text and "http://" not in page.text
    assert "https://" not in page.text
    cookie = next(v for k, v in page.headers if v.startswith("pacs_form="))
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=Strict"))
    missing = call(running.port, "/share?study=1.2.3.999", session(running.port))
    assert missing.status == 404 and "Aucun examen" in missing.text


def test_a_user_without_the_share_right_is_refused(running):
    viewer = session(running.port, "viewer", "pw-v")
    answer = call(running.port, f"/share?study={UID_A}", viewer)
    assert answer.status == 403
    assert "partager" in answer.text and "may not share" in answer.text
    last = running.audit()[-1]
    assert (last["event"], last["outcome"], last["user"]) == ("share", "refused", "viewer")
    assert call(running.port, "/shares", viewer).status == 403


def test_a_link_is_made_shown_with_a_mailto_and_audited(running):
    created = create(running, session(running.port))
    assert created.status == 200, created.text
    sid = share_id(created)
    assert pw.SHARE_ID.fullmatch(sid)
    assert f"https://127.0.0.1:8443/s/{sid}" in created.text
    mailto = created.text.split('id="mailto" href="')[1].split('"')[0].replace("&amp;", "&")
    parts = urllib.parse.urlsplit(mailto)
    assert parts.scheme == "mailto" and parts.path == "dr.martin@cabinet.example"
    body = urllib.parse.parse_qs(parts.query)["body"][0]
    assert f"https://127.0.0.1:8443/s/{sid}" in body and "Bonjour" in body and "Hello" in body
    line = running.audit()[-1]
    assert (line["event"], line["outcome"], line["user"], line["auth"]) == (
        "share",
        "created",
        "radiologist",
        "session",
    )
    assert line["studies"] == [UID_A] and line["patient"] == ["P1"]
    assert line["share"] == pw.share_key(sid)[:16] and sid not in running.log.read_text()
    # Only a hash of the id is stored: a copy of the database opens nothing.
    db = Path(running.config.shares_db).read_bytes()
    assert sid.encode() not in db


def test_more_than_the_longest_life_is_refused_with_a_message(running):
    who = session(running.port)
    answer = create(running, who, days="31")
    assert answer.status == 400
    assert "au plus 30 jours" in answer.text and "at most 30 days" in answer.text
    assert running.service.shares.list() == []
    page = call(running.port, f"/share?study={UID_A}", who)
    fields = {"csrf": "forged", "study": UID_A, "name": "x", "email": "x@y.example", "days": "1"}
    forged = call(running.port, "/share", with_form_cookie(who, page), fields)
    assert forged.status == 400 and running.service.shares.list() == []


def test_the_link_opens_ohif_with_a_token_for_its_study_only(running):
    sid = share_id(create(running, session(running.port)))
    location, cookie = open_link(running, sid)
    assert location.startswith(f"/viewer?StudyInstanceUIDs={UID_A}&token=v1.")
    bearer = f"Bearer {token_of(location)}"
    ok = auth(running.port, f"/dicom-web/studies/{UID_A}/series", Authorization=bearer)
    assert ok.status == 204 and ok.header("X-Pacs-Auth") == "share"
    assert ok.header("X-Pacs-User") == "dr.martin@cabinet.example"
    other = auth(running.port, f"/dicom-web/studies/{UID_B}/series", Authorization=bearer)
    assert other.status == 403
    assert auth(running.port, "/dicom-web/studies", Authorization=bearer).status == 403
    # The viewer's own files load with the cookie; nothing else of the site does.
    assert auth(running.port, "/app-config.js", Cookie=cookie).status == 204
    assert auth(running.port, f"/viewer?StudyInstanceUIDs={UID_A}", Cookie=cookie).status == 204
    assert auth(running.port, f"/dicom-web/studies/{UID_A}", Cookie=cookie).status == 204
    assert auth(running.port, "/iid?requestType=STUDY", Cookie=cookie).status == 403
    iid = call(running.port, f"/iid?requestType=STUDY&studyUID={UID_A}", {"Cookie": cookie})
    assert iid.status == 303 and iid.header("Location").startswith("/login")
    (share,) = running.service.shares.list()
    assert (share.opens, share.uses) == (1, 2) and share.last_use
    lines = running.audit()
    opened = [x for x in lines if x["event"] == "share-open"]
    assert opened[-1]["outcome"] == "ok" and opened[-1]["patient"] == ["P1"]
    used = [x for x in lines if x["event"] == "access" and x["auth"] == "share"]
    assert {x["outcome"] for x in used} == {"allowed", "refused"}
    assert all(x["share"] == share.ref for x in used)
    assert next(x["patient"] for x in used if x["outcome"] == "allowed") == ["P1"]


def test_a_revoked_link_ends_at_the_next_request(running):
    who = session(running.port)
    sid = share_id(create(running, who))
    location, _ = open_link(running, sid)
    bearer = f"Bearer {token_of(location)}"
    assert auth(running.port, f"/dicom-web/studies/{UID_A}", Authorization=bearer).status == 204
    listing = call(running.port, "/shares", who)
    ref = pw.share_key(sid)[:16]
    assert listing.status == 200 and f'id="share-{ref}"' in listing.text
    assert "actif / active" in listing.text and "Dr Martin" in listing.text
    csrf = (
        listing.text.split(f'action="/shares/{ref}/revoke">')[1].split('value="')[1].split('"')[0]
    )
    no_csrf = call(running.port, f"/shares/{ref}/revoke", with_form_cookie(who, listing), {})
    assert no_csrf.status == 400
    revoked = call(
        running.port, f"/shares/{ref}/revoke", with_form_cookie(who, listing), {"csrf": csrf}
    )
    assert revoked.status == 303 and revoked.header("Location") == "/shares"
    after = auth(running.port, f"/dicom-web/studies/{UID_A}", Authorization=bearer)
    assert after.status == 401
    assert running.audit()[-1]["reason"] == "share link revoked"
    page = call(running.port, f"/s/{sid}")
    assert page.status == 410
    assert "retiré" in page.text and "revoked" in page.text
    assert "retiré / revoked" in call(running.port, "/shares", who).text
    events = [(x["event"], x["outcome"]) for x in running.audit()]
    assert ("share", "revoked") in events and ("share-open", "refused") in events


def test_an_unknown_link_is_a_bilingual_404(running):
    head = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    head.request("HEAD", "/s/" + "A" * 24)
    assert head.getresponse().status == 404
    head.close()
    for sid in ("A" * 24, "short", "../../etc"):
        page = call(running.port, f"/s/{urllib.parse.quote(sid, safe='')}")
        assert page.status == 404
        assert "n'existe pas" in page.text and "does not exist" in page.text


def test_an_access_code_is_asked_and_wrong_codes_lock(running):
    sid = share_id(create(running, session(running.port), code="4821-77"))
    stored = Path(running.config.shares_db).read_bytes()
    assert b"4821-77" not in stored and b"scrypt$" in stored
    form = call(running.port, f"/s/{sid}")
    assert form.status == 200
    assert "Code d'accès" in form.text and "Access code" in form.text and "<script" not in form.text

    def submit(code: str) -> Answer:
        page = call(running.port, f"/s/{sid}")
        return call(
            running.port,
            f"/s/{sid}",
            {"Cookie": page.cookie("pacs_form")},
            {"csrf": page.field("csrf"), "code": code},
        )

    right = submit("4821-77")
    assert right.status == 303 and "token=v1." in right.header("Location")
    for _ in range(3):
        wrong = submit("0000")
        assert wrong.status == 401 and "Code incorrect" in wrong.text and "Wrong code" in wrong.text
    locked = submit("4821-77")
    assert locked.status == 429 and "Trop d'essais" in locked.text
    outcomes = [x["outcome"] for x in running.audit() if x["event"] == "share-open"]
    assert outcomes == ["ok", "failed", "failed", "failed", "refused"]


def test_an_expired_link_is_refused_everywhere(running):
    sid = share_id(create(running, session(running.port), days="1"))
    location, _ = open_link(running, sid)
    bearer = f"Bearer {token_of(location)}"
    uri = f"/dicom-web/studies/{UID_A}"
    # The store's expiry is checked at every request, not only the token's.
    with sqlite3.connect(running.config.shares_db) as db:
        db.execute("UPDATE shares SET expires = ?", (int(time.time()) - 1,))
    assert auth(running.port, uri, Authorization=bearer).status == 401
    assert running.audit()[-1]["reason"] == "share link expired"
    expired = call(running.port, f"/s/{sid}")
    assert expired.status == 410 and "expiré" in expired.text and "expired" in expired.text
    # And the token's own life: a link made now, seen two days later.
    sid2 = share_id(create(running, session(running.port), days="1"))
    location2, _ = open_link(running, sid2)
    running.offset[0] = 2 * 86400
    assert auth(running.port, uri, Authorization=f"Bearer {token_of(location2)}").status == 401
    assert call(running.port, f"/s/{sid2}").status == 410


def test_the_gateway_identity_is_the_sharer_and_managers_see_every_link(running):
    mine = session(running.port)
    create(running, mine)
    clinician = sso("dr.sso", "clinician")
    theirs = create(running, clinician, study=UID_B)
    assert theirs.status == 200
    line = running.audit()[-1]
    assert (line["user"], line["auth"], line["patient"]) == ("dr.sso", "sso", ["P2"])
    assert "MR GENOU" not in call(running.port, "/shares", mine).text
    own = call(running.port, "/shares", clinician).text
    assert "dr.sso" in own and "radiologist" not in own
    manager = sso("secretariat", "correspondent-manager")
    everyone = call(running.port, "/shares", manager)
    assert everyone.text.count('action="/shares/') == 2
    # The manager may revoke someone else's link.
    ref = next(s.ref for s in running.service.shares.list() if s.sharer == "dr.sso")
    csrf = everyone.text.split('name="csrf" value="')[1].split('"')[0]
    done = call(
        running.port, f"/shares/{ref}/revoke", with_form_cookie(manager, everyone), {"csrf": csrf}
    )
    assert done.status == 303
    assert running.service.shares.by_ref(ref).revoked_by == "secretariat"
    # Forged gateway headers beside a credential of the request's own are ignored.
    forged = auth(
        running.port,
        f"/dicom-web/studies/{UID_A}",
        Authorization="Basic eDp5",
        **sso("admin", "admin"),
    )
    assert forged.status == 401 and forged.header("X-Pacs-User") == ""
    # A gateway group without the share right, and no gateway trust: no sharing.
    assert call(running.port, f"/share?study={UID_A}", sso("x", "nurse")).status == 403
    running.service.config.trust_gateway_identity = False
    assert call(running.port, f"/share?study={UID_A}", clinician).status == 303


def test_the_radiologist_may_not_revoke_someone_elses_link(running):
    clinician = sso("dr.sso", "clinician")
    create(running, clinician)
    ref = running.service.shares.list()[0].ref
    mine = session(running.port)
    page = call(running.port, f"/share?study={UID_A}", mine)  # any form gives a csrf field
    answer = call(
        running.port,
        f"/shares/{ref}/revoke",
        with_form_cookie(mine, page),
        {"csrf": page.field("csrf")},
    )
    assert answer.status == 403 and "gestionnaires" in answer.text
    assert running.service.shares.by_ref(ref).revoked is None
    assert running.audit()[-1]["reason"].startswith("not the link's maker")


# ----------------------------------------------------------------------------- command line


def cli(running: Running, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = pw.main(["--config", str(running.config_file), *args])
    return code, capsys.readouterr().out


def test_cli_creates_lists_and_revokes_links_as_the_operator(running, capsys):
    code, out = cli(
        running,
        capsys,
        "shares",
        "create",
        "--study",
        UID_B,
        "--name",
        "Dr Roux",
        "--email",
        "roux@clinique.example",
        "--days",
        "3",
        "--json",
    )
    assert code == 0
    made = json.loads(out)
    assert made["url"] == f"https://pacs.example/s/{made['id']}" and made["patient"] == "P2"
    assert made["state"] == "active" and made["sharer"] == "operator"
    assert auth(running.port, "/x").status == 401  # the service still answers
    location, _ = open_link(running, made["id"])
    assert UID_B in location
    code, out = cli(running, capsys, "shares", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["ref"] == made["ref"] and listed["opens"] == 1
    code, out = cli(running, capsys, "shares", "list")
    assert made["ref"] in out and "roux@clinique.example" in out
    code, out = cli(running, capsys, "shares", "revoke", made["ref"])
    assert code == 0 and json.loads(out)["changed"] is True
    assert call(running.port, f"/s/{made['id']}").status == 410
    code, out = cli(running, capsys, "shares", "revoke", made["id"])
    assert json.loads(out)["changed"] is False
    events = [(x["event"], x["outcome"], x["user"]) for x in running.audit()]
    assert ("share", "created", "operator") in events and ("share", "revoked", "operator") in events
    # Refusals: too long, unknown study, an expired one on purpose.
    base = ["shares", "create", "--name", "N", "--email", "n@x.example"]
    assert cli(running, capsys, *base, "--study", UID_A, "--days", "31")[0] == 2
    assert cli(running, capsys, *base, "--study", "1.2.3.999")[0] == 2
    code, out = cli(running, capsys, *base, "--study", UID_A, "--minutes", "-1", "--json")
    expired = json.loads(out)
    assert expired["state"] == "expired"
    assert call(running.port, f"/s/{expired['id']}").status == 410


def write_log(path: Path, records: list[dict[str, Any]], zipped: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if zipped:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def old(time_: str, user: str, studies: list[str], **more: Any) -> dict[str, Any]:
    return {
        "time": time_,
        "event": "access",
        "outcome": "allowed",
        "user": user,
        "auth": "session",
        "studies": studies,
        "client": "10.0.0.1",
        **more,
    }


def test_pacs_web_audit_finds_who_saw_a_patient_or_a_study(running, capsys):
    # Rotated files, one compressed; the oldest lines predate the patient field.
    folder = running.log.parent
    write_log(
        folder / "audit.log.2.gz", [old("2026-01-05T10:00:00.000+00:00", "dr.a", [UID_A])], True
    )
    write_log(folder / "audit.log.1", [old("2026-02-05T10:00:00.000+00:00", "dr.b", [UID_B])])
    sid = share_id(create(running, session(running.port)))
    open_link(running, sid)
    code, out = cli(running, capsys, "audit", "--patient", "P1", "--json")
    assert code == 0
    found = json.loads(out)
    users = [x["user"] for x in found]
    assert users[0] == "dr.a"  # from the .gz file, found through the archive's studies of P1
    assert "dr.b" not in users  # P2's study
    assert "radiologist" in users and "dr.martin@cabinet.example" in users
    assert [x["time"] for x in found] == sorted(x["time"] for x in found)
    code, out = cli(running, capsys, "audit", "--study", UID_B, "--json")
    assert [x["user"] for x in json.loads(out)] == ["dr.b"]
    code, out = cli(running, capsys, "audit", "--patient", "P1", "--since", "2026-02-01", "--json")
    assert "dr.a" not in [x["user"] for x in json.loads(out)]
    code, out = cli(running, capsys, "audit", "--patient", "P1")
    assert out.splitlines()[0].split()[:3] == ["time", "user", "auth"] and "dr.a" in out
    # Without the archive, only the lines that carry the patient.
    code, out = cli(running, capsys, "audit", "--patient", "P1", "--no-archive", "--json")
    assert "dr.a" not in [x["user"] for x in json.loads(out)]
    assert running.audit()[-1]["event"] == "audit-read"
    assert cli(running, capsys, "audit", "--patient", "P1", "--since", "yesterday")[0] == 2


@pytest.mark.parametrize("running", ["rfc5424"], indirect=True)
def test_the_rfc5424_audit_trail_parses_and_is_searched_alike(running, capsys):
    sid = share_id(create(running, session(running.port)))
    open_link(running, sid)
    lines = running.log.read_text().splitlines()
    assert lines
    for line in lines:
        parsed = pw.parse_rfc5424(line)
        assert parsed is not None, line
        sd, message = parsed
        assert line[:4] in ("<85>", "<84>") and "pacs@32473" in sd
        assert json.loads(message)["event"] == sd["pacs@32473"]["event"]
    _, out = cli(running, capsys, "audit", "--study", UID_A, "--json")
    events = {x["event"] for x in json.loads(out)}
    assert {"share", "share-open"} <= events


def test_the_settings_refuse_a_wrong_share_or_audit_value(tmp_path):
    config = tmp_path / "config.json"
    for bad, message in (
        ({"share_days": 40, "share_max_days": 30}, "share_days"),
        ({"audit_format": "xml"}, "audit_format"),
        ({"trust_gateway_identity": "yes"}, "trust_gateway_identity"),
        ({"share_token_minutes": 0}, "share_token_minutes"),
    ):
        config.write_text(json.dumps(bad))
        with pytest.raises(pw.ConfigError, match=message):
            pw.Config.load(str(config))


def test_the_gateways_own_audit_lines_are_found_by_their_study(tmp_path: Path) -> None:
    """The viewer's reads that the single sign-on allowed are in the gateway's log, whose
    lines (nginx's JSON) name their study in the URI only."""
    log = tmp_path / "audit.log"
    log.write_text(
        json.dumps(
            {
                "time": "2026-12-03T10:00:00+00:00",
                "event": "dicomweb",
                "user": "mol-reader",
                "auth": "oidc",
                "client": CLIENT,
                "method": "GET",
                "uri": f"/dicom-web/studies/{UID_A}/series/1.2.3/instances/4.5/frames/1",
                "status": 200,
            }
        )
        + "\n"
    )
    records = list(pw.read_audit([log]))
    assert records[0]["studies"] == [UID_A]
    found = pw.search_audit(records, patient="P1", patient_studies=[UID_A])
    assert [r["user"] for r in found] == ["mol-reader"]
    assert pw.search_audit(records, study=UID_B) == []
