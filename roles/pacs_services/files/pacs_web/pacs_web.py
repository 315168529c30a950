#!/usr/bin/python3
"""pacs-web: the web access services of pacs-libre, behind the gateway's nginx.

One small daemon, Python 3 standard library only (it runs on Debian 12's and
Debian 13's ``python3`` and nothing else), listening on 127.0.0.1:

``GET /auth``
    nginx's ``auth_request`` verdict for every protected location: 204 (with
    ``X-Pacs-User`` and ``X-Pacs-Auth``) when allowed, 401 when nobody is
    signed in, 403 when the person or token may not do that.
``GET|POST /login``, ``GET /logout``
    A bilingual (French/English) sign-in form; on success the HMAC-signed
    session cookie ``pacs_session``.
``GET /iid``
    IHE Invoke Image Display: opens studies in OHIF (a redirect) or in Weasis
    (a ``weasis://`` link carrying a short-lived token scoped to each study).
``GET|POST /share``, ``GET /shares``, ``POST /shares/<ref>/revoke``
    Share links for correspondents: a signed-in person with the ``share``
    right makes a time-limited link to one study, lists and revokes links.
``GET|POST /s/<id>``
    A correspondent opens a share link (with its access code, if it has one)
    and is sent to OHIF on that study with a short-lived, share-bound token.
``GET /healthz``
    ``ok``, for the role and monitoring; says nothing else.

Credentials, all checked by :func:`Service.authenticate`:

- the session cookie (``pacs_session``), made by /login;
- HTTP Basic against the user list (salted scrypt hashes only);
- ``Authorization: Bearer <token>``: a study-scoped token (see :class:`Signer`),
  valid only for reads of ``/dicom-web/studies/<its study>/...`` and for QIDO
  restricted to that study; or a share token, the same for the study of a
  share link that is checked (not revoked, not expired) at every request;
- the ``pacs_share`` cookie (the same share token), so that the viewer's own
  files load for a correspondent who has no account;
- with ``trust_gateway_identity`` on, the identity that the gateway's single
  sign-on sets in ``X-Pacs-User``/``X-Pacs-Groups``/``X-Pacs-Auth: sso``.

Every failed sign-in, every access to DICOMweb (allowed or refused) and every
share link's creation, use, refusal and revocation is written as one line to
the audit log (who, when, which study and patient, from where, how), as JSON
or as RFC 5424 syslog, and to the journal.

The same file is the operators' command line: ``pacs-web --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import gzip
import hashlib
import hmac
import html
import json
import logging
import logging.handlers
import os
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/pacs-libre/pacs-web/config.json"
SESSION_COOKIE = "pacs_session"
CSRF_COOKIE = "pacs_login"
# What secrets.token_urlsafe(18) makes: the sign-in form's nonce.
NONCE = re.compile(r"[A-Za-z0-9_-]{24}")
FORM_COOKIE = "pacs_form"
SHARE_COOKIE = "pacs_share"
# The rights a user list entry may carry (admin: all of them), and the one
# that only the gateway's groups (or admin) give: list and revoke anyone's links.
RIGHTS = ("view", "stow", "share", "admin")
ALL_RIGHTS = (*RIGHTS, "manage-shares")
# The single sign-on's groups (X-Pacs-Groups), and what each may do: the one table.
GROUP_RIGHTS: dict[str, frozenset[str]] = {
    "radiologist": frozenset({"view", "share"}),
    "clinician": frozenset({"view", "share"}),
    "correspondent-manager": frozenset({"view", "share", "manage-shares"}),
    "admin": frozenset({"admin"}),
}
VIEWERS = ("ohif", "weasis")
AUDIT_FORMATS = ("json", "rfc5424")
# A share link's id: secrets.token_urlsafe(18), 144 random bits.
SHARE_ID = re.compile(r"[A-Za-z0-9_-]{24}")
SHARE_REF = re.compile(r"[0-9a-f]{16}")
EMAIL_PATTERN = re.compile(r"[^@\s<>\"',;:()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}")

# scrypt's cost: 2**14 x 8 x 1 takes about 16 MiB and some 50 ms a check; the
# parameters are stored with each hash, so raising them later is compatible.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024

# A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Identifiers given to the IID (patient ID, accession number): printable, and
# never a DICOM wildcard (* ?) or a multi-value separator (\), which would turn
# an exact look-up into a search over every patient.
IDENTIFIER_PATTERN = re.compile(r"^[^\\*?\x00-\x1f]{1,64}$")
MODALITY_PATTERN = re.compile(r"^[A-Z0-9]{1,16}$")

log = logging.getLogger("pacs-web")


class ConfigError(Exception):
    """A configuration problem, said with the file, the key and the fix."""


class BadRequest(Exception):
    """A malformed request; the message is shown to the person (in both languages)."""

    def __init__(self, en: str, fr: str) -> None:
        super().__init__(en)
        self.en, self.fr = en, fr


# ----------------------------------------------------------------------------- encoding


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding (as JWTs do)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Inverse of :func:`b64url`; raises ValueError on anything else."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


# ----------------------------------------------------------------------------- passwords


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash: ``scrypt$N$r$p$<salt>$<hash>`` (base64url)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64url(salt)}${b64url(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the hash ``stored`` (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = unb64url(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=unb64url(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash of nothing, checked when the user does not exist, so that an unknown
# name costs the same time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = hash_password("", salt=b"\0" * 16)


@dataclass(frozen=True)
class User:
    """One person or API client of the user list."""

    name: str
    rights: frozenset[str]
    password_hash: str


def sync_users(existing: Mapping[str, Any], wanted: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The user file for ``wanted`` ({name, password, rights=[view]}), reusing ``existing``.

    A user whose password still verifies against its stored hash keeps that hash
    (and its salt): a rerun with the same passwords gives the same file, so the
    role changes nothing. A new or changed password gets a new random salt.
    """
    old = {str(u["name"]): u for u in existing.get("users", []) if isinstance(u, dict)}
    names: set[str] = set()
    users = []
    for entry in wanted:
        name, password = str(entry["name"]), str(entry["password"])
        rights = sorted(set(entry.get("rights", ["view"])))
        if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", name):
            raise ConfigError(f"user {name!r}: a name is 1-64 letters, digits or . _ @ -")
        if name in names:
            raise ConfigError(f"user {name!r} is listed twice")
        if not password:
            raise ConfigError(f"user {name!r} has an empty password")
        unknown = set(rights) - set(RIGHTS)
        if unknown:
            raise ConfigError(f"user {name!r}: unknown rights {sorted(unknown)}; use {RIGHTS}")
        names.add(name)
        previous = old.get(name, {})
        stored = str(previous.get("hash", ""))
        if not (stored and verify_password(password, stored)):
            stored = hash_password(password)
        users.append({"name": name, "rights": rights, "hash": stored})
    return {"users": users}


# ----------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Claims:
    """What a signed token says: its kind, its subject, its expiry, its scope."""

    kind: str  # "session" | "study" | "csrf" | "share"
    subject: str  # the user name (for csrf, the nonce; for share, the link's ref)
    expires: int  # Unix time
    study: str | None = None  # StudyInstanceUID, for "study" and "share" tokens
    issued: int = 0
    patient: str | None = None  # PatientID of the study, when known (for the audit)


class Signer:
    """HMAC-SHA256 tokens: ``v1.<payload>.<signature>``, both base64url.

    The payload is compact JSON (``k`` kind, ``s`` subject, ``e`` expiry, ``i``
    issued, ``u`` study, ``p`` patient). Each kind is signed with its own key derived from the
    deployment's secret, so a token of one kind is never accepted as another.
    Changing the secret (``pacs-web init-secret --rotate``) invalidates every
    session and token at once.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ConfigError(
                "the secret is shorter than 32 bytes: run pacs-web init-secret --rotate"
            )
        self._secret = secret

    def key(self, kind: str) -> bytes:
        """The key of one kind of token (or of another use, such as a cache)."""
        return hmac.new(self._secret, b"pacs-web/v1/" + kind.encode(), hashlib.sha256).digest()

    def sign(self, claims: Claims) -> str:
        payload: dict[str, Any] = {
            "k": claims.kind,
            "s": claims.subject,
            "e": claims.expires,
            "i": claims.issued or int(time.time()),
        }
        if claims.study is not None:
            payload["u"] = claims.study
        if claims.patient is not None:
            payload["p"] = claims.patient
        body = b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        mac = hmac.new(self.key(claims.kind), f"v1.{body}".encode(), hashlib.sha256).digest()
        return f"v1.{body}.{b64url(mac)}"

    def verify(self, token: str, kind: str, now: float | None = None) -> Claims | None:
        """The claims of a valid, unexpired token of ``kind``; None otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1" or len(token) > 4096:
            return None
        try:
            mac = unb64url(parts[2])
            expected = hmac.new(self.key(kind), f"v1.{parts[1]}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                return None
            payload = json.loads(unb64url(parts[1]))
            claims = Claims(
                kind=str(payload["k"]),
                subject=str(payload["s"]),
                expires=int(payload["e"]),
                study=str(payload["u"]) if "u" in payload else None,
                issued=int(payload.get("i", 0)),
                patient=str(payload["p"]) if "p" in payload else None,
            )
        except (ValueError, KeyError, TypeError):
            return None
        if claims.kind != kind:
            return None
        if claims.expires <= (time.time() if now is None else now):
            return None
        return claims

    def peek(self, token: str) -> dict[str, Any] | None:
        """The payload of a token whatever its signature or expiry (for audit lines only)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            value = json.loads(unb64url(parts[1]))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- access rules


def has_right(rights: Iterable[str], right: str) -> bool:
    """True if ``rights`` give ``right`` (admin gives every right)."""
    held = set(rights)
    return right in held or "admin" in held


def rights_of_groups(header: str) -> frozenset[str]:
    """The rights of the single sign-on's groups (``X-Pacs-Groups``: a,b); unknown: none."""
    rights: set[str] = set()
    for group in header.split(","):
        rights |= GROUP_RIGHTS.get(group.strip().lower(), frozenset())
    return frozenset(rights)


@dataclass(frozen=True)
class Target:
    """What a request asks for, as /auth sees it (from X-Original-URI/-Method)."""

    method: str
    path: str
    query: dict[str, list[str]]

    @classmethod
    def parse(cls, method: str, uri: str) -> Target:
        parts = urllib.parse.urlsplit(uri or "/")
        path = urllib.parse.unquote(parts.path) or "/"
        # Collapse "//" and refuse "..": nginx normalises, but /auth is the rule.
        path = re.sub(r"/{2,}", "/", path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        return cls(method=(method or "GET").upper(), path=path, query=query)

    @property
    def is_dicomweb(self) -> bool:
        return self.path == "/dicom-web" or self.path.startswith("/dicom-web/")

    @property
    def reads(self) -> bool:
        return self.method in ("GET", "HEAD")

    def studies(self) -> list[str]:
        """The StudyInstanceUIDs the request names (path, QIDO filter, OHIF link)."""
        found: list[str] = []
        match = re.match(r"^/dicom-web/studies/([^/]+)", self.path)
        if match:
            found.append(match.group(1))
        for key in ("StudyInstanceUID", "0020000D", "StudyInstanceUIDs"):
            for value in self.query.get(key, []):
                found.extend(v for v in re.split(r"[,\\]", value) if v)
        return list(dict.fromkeys(found))

    def needed_right(self) -> str:
        """The right a signed-in user needs for this request."""
        if self.is_dicomweb:
            if self.reads:
                return "view"
            if self.method == "POST" and re.fullmatch(
                r"/dicom-web/studies(/[0-9.]+)?/?", self.path
            ):
                return "stow"
            return "admin"
        if self.path == "/admin" or self.path.startswith("/admin/"):
            return "admin"
        share_pages = self.path in ("/share", "/shares") or self.path.startswith("/shares/")
        if share_pages and not self.reads:
            return "share"  # pacs-web's own forms (which check again, and answer reads themselves)
        return "view" if self.reads else "admin"

    def share_allows(self, study: str) -> bool:
        """True if a correspondent's share token for ``study`` may make this request.

        DICOMweb: what a study token may (:meth:`token_allows`). Elsewhere: reads
        of the viewer's own files and pages (no patient data), naming no other
        study; never pacs-web's pages, nor anything that needs more than view.
        """
        if self.is_dicomweb:
            return self.token_allows(study)
        if not self.reads or self.needed_right() != "view":
            return False
        pacs_web_pages = ("/iid", "/login", "/logout", "/share", "/shares")
        if self.path in pacs_web_pages or self.path.startswith(("/s/", "/shares/")):
            return False
        return all(uid == study for uid in self.studies())

    def token_allows(self, study: str) -> bool:
        """True if a study-scoped token for ``study`` may make this request.

        Reads only; either below ``/dicom-web/studies/<study>/``, or a QIDO
        search ``/dicom-web/studies`` (or ``/series``, ``/instances``) whose
        StudyInstanceUID filter is exactly that study.
        """
        if not (self.is_dicomweb and self.reads):
            return False
        if ".." in self.path.split("/"):
            return False
        prefix = f"/dicom-web/studies/{study}"
        if self.path == prefix or self.path.startswith(prefix + "/"):
            return True
        if self.path.rstrip("/") in (
            "/dicom-web/studies",
            "/dicom-web/series",
            "/dicom-web/instances",
        ):
            filters = self.query.get("StudyInstanceUID", []) + self.query.get("0020000D", [])
            return len(filters) == 1 and filters[0] == study
        return False


# ----------------------------------------------------------------------------- audit


class Audit:
    """The access audit trail: one line per event, in a file and the journal.

    Fields: ``time`` (UTC, ISO 8601), ``event``, ``outcome`` (allowed, refused,
    failed, ok, created, revoked, issued), ``user`` (or null), ``auth``
    (session, sso, basic, form, token, share, cli, none), ``studies``
    (StudyInstanceUIDs, possibly empty), ``client`` (the address nginx saw),
    and where they apply ``patient`` (PatientIDs, when pacs-web knows them
    from a look-up or a token), ``share`` (a share link's ref, never its id),
    ``method``, ``uri``, ``status`` and ``reason``.

    ``json``: the object alone on its line. ``rfc5424``: a syslog line (RFC
    5424) whose structured data ``[pacs@<enterprise number> ...]`` carries the
    main fields and whose message is the same JSON object. docs/audit.md maps
    the fields to DICOM PS3.15 A.5 / RFC 3881 (IHE ATNA). The file is reopened
    when logrotate moves it.
    """

    def __init__(
        self, path: str | None, audit_format: str = "json", enterprise_number: int = 32473
    ) -> None:
        self.format, self.enterprise_number = audit_format, enterprise_number
        self.hostname = socket.gethostname() or "-"
        self._logger = logging.getLogger("pacs-web.audit")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
            handler.close()
        if path:
            to_file = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            to_file.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(to_file)
        journal = logging.StreamHandler(sys.stderr)
        journal.setFormatter(logging.Formatter("audit %(message)s"))
        self._logger.addHandler(journal)

    @staticmethod
    def record(**fields: Any) -> dict[str, Any]:
        """The fields of one audit line, in their order, absent optional ones left out."""
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": fields.pop("event"),
            "outcome": fields.pop("outcome"),
            "user": fields.pop("user", None),
            "auth": fields.pop("auth", "none"),
            "studies": list(fields.pop("studies", [])),
            "client": fields.pop("client", None),
        }
        patient = fields.pop("patient", None)
        if isinstance(patient, str):
            patient = [patient]
        if patient:
            record["patient"] = sorted({str(p) for p in patient if p})
        record.update({k: v for k, v in fields.items() if v is not None})
        return record

    @staticmethod
    def line(**fields: Any) -> str:
        """One JSON audit line (also used by tests to check the shape)."""
        return json.dumps(Audit.record(**fields), ensure_ascii=False, separators=(",", ":"))

    def format_record(self, record: Mapping[str, Any]) -> str:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        if self.format != "rfc5424":
            return text
        return rfc5424_line(record, text, self.hostname, self.enterprise_number)

    def write(self, **fields: Any) -> None:
        self._logger.info(self.format_record(self.record(**fields)))


# The fields that the structured data of an RFC 5424 line repeats.
SD_FIELDS = (
    "event",
    "outcome",
    "user",
    "auth",
    "studies",
    "patient",
    "share",
    "client",
    "method",
    "uri",
    "status",
    "reason",
)


def sd_escape(value: str) -> str:
    r"""An SD-PARAM value (RFC 5424 6.3.3): \, \" and \] escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424_line(record: Mapping[str, Any], message: str, hostname: str, number: int) -> str:
    """``<PRI>1 TIME HOST pacs-web PID EVENT [pacs@N k="v" ...] BOM message``.

    PRI is facility 10 (security/authorization), severity 5 (notice), or 4
    (warning) for a refusal or a failure: <85> and <84>, as IHE ATNA's syslog
    transport uses.
    """
    severity = 4 if record.get("outcome") in ("refused", "failed") else 5
    params = []
    for key in SD_FIELDS:
        value = record.get(key)
        if value is None or value == []:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        params.append(f'{key}="{sd_escape(text[:1000])}"')
    msgid = re.sub(r"[^!-~]", "_", str(record.get("event", "-")))[:32] or "-"
    host = re.sub(r"[^!-~]", "_", hostname)[:255] or "-"
    sd = f"[pacs@{number} {' '.join(params)}]"
    head = f"<{10 * 8 + severity}>1 {record['time']} {host} pacs-web {os.getpid()} {msgid}"
    return f"{head} {sd} \ufeff{message}"


RFC5424_HEADER = re.compile(r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_rfc5424(line: str) -> tuple[dict[str, dict[str, str]], str] | None:
    """(structured data by SD-ID, message) of an RFC 5424 line; None if it is not one."""
    header = RFC5424_HEADER.match(line)
    if not header:
        return None
    rest, sd = line[header.end() :], {}
    if rest.startswith("-"):
        rest = rest[1:]
    while rest.startswith("["):
        element = re.match(r"\[([^ \]=\"]+)", rest)
        if not element:
            return None
        params: dict[str, str] = {}
        rest = rest[element.end() :]
        while True:
            param = re.match(r' ([^ \]=\"]+)="((?:[^"\\]|\\.)*)"', rest)
            if not param:
                break
            params[param.group(1)] = re.sub(r"\\(.)", r"\1", param.group(2))
            rest = rest[param.end() :]
        if not rest.startswith("]"):
            return None
        sd[element.group(1)] = params
        rest = rest[1:]
    message = rest[1:] if rest.startswith(" ") else rest
    return sd, message.removeprefix("\ufeff")


def parse_audit_line(line: str) -> dict[str, Any] | None:
    """One audit line, JSON or RFC 5424, as its record; None for anything else."""
    text = line.strip()
    if text.startswith("audit "):  # as the journal shows it
        text = text[len("audit ") :]
    if text.startswith("<"):
        parsed = parse_rfc5424(text)
        if parsed is None:
            return None
        text = parsed[1]
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


# ----------------------------------------------------------------------------- failures


class FailureLimiter:
    """Refuse sign-ins from an address or for a name after too many failures.

    A sliding window: ``limit`` failures within ``window`` seconds lock that key
    until the oldest failure leaves the window. In memory (a restart forgets).
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._failures.setdefault(key, deque())
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        return entries

    def blocked(self, keys: Iterable[str], now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        with self._lock:
            return any(len(self._recent(k, moment)) >= self.limit for k in keys)

    def fail(self, keys: Iterable[str], now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._recent(key, moment).append(moment)
            if len(self._failures) > 10000:  # forget idle keys
                for key in [k for k, v in self._failures.items() if not v]:
                    del self._failures[key]


# ----------------------------------------------------------------------------- configuration


@dataclass
class Config:
    """The service's settings: /etc/pacs-libre/pacs-web/config.json (rendered by the role)."""

    path: str
    listen_address: str = "127.0.0.1"
    port: int = 8190
    gateway_urls: list[str] = field(default_factory=lambda: ["https://localhost"])
    dicomweb_path: str = "/dicom-web"
    ohif_path: str = "/viewer"
    default_viewer: str = "ohif"
    session_minutes: int = 600
    token_minutes: int = 10
    weasis_accept_ext: str = "transfer-syntax=*"
    users_file: str = "/etc/pacs-libre/pacs-web/users.json"
    secret_file: str = "/etc/pacs-libre/pacs-web/secret"  # noqa: S105 (a path)
    audit_log: str = "/var/log/pacs-libre/pacs-web/audit.log"
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_credentials_file: str = "/etc/pacs-libre/pacs-web/orthanc.json"
    failure_limit: int = 10
    failure_window_seconds: int = 300
    basic_cache_seconds: int = 300
    # Share links: their store, their default and longest life, and the life
    # of the viewer's token that opening one gives (never beyond the link's).
    shares_db: str = "/var/lib/pacs-libre/pacs-web/shares.sqlite"
    share_days: int = 7
    share_max_days: int = 30
    share_token_minutes: int = 60
    # Accept the single sign-on's X-Pacs-User/-Groups/-Auth headers. Only when
    # nginx sets (overwrites) them on every request it sends here.
    trust_gateway_identity: bool = False
    audit_format: str = "json"
    audit_enterprise_number: int = 32473

    @classmethod
    def load(cls, path: str) -> Config:
        try:
            text = Path(path).read_text(encoding="utf-8")
            # The role's header ("Ansible managed") is a block of # lines.
            lines = [x for x in text.splitlines(True) if not x.startswith("#")]
            data = json.loads("".join(lines))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: not found (the pacs_services role writes it)") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        config = cls(path=path, **data)
        config.check()
        return config

    def check(self) -> None:
        """Raise ConfigError naming the key and the fix for a wrong value."""
        where = self.path
        if self.default_viewer not in VIEWERS:
            raise ConfigError(
                f"{where}: default_viewer={self.default_viewer!r}; use one of {VIEWERS}"
            )
        if not self.gateway_urls or not all(
            re.fullmatch(r"https?://[^/\s]+", u) for u in self.gateway_urls
        ):
            raise ConfigError(
                f"{where}: gateway_urls={self.gateway_urls!r}; give scheme://host[:port], no path"
            )
        for key in (
            "session_minutes",
            "token_minutes",
            "port",
            "failure_limit",
            "share_days",
            "share_max_days",
            "share_token_minutes",
            "audit_enterprise_number",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer")
        if self.share_days > self.share_max_days:
            raise ConfigError(
                f"{where}: share_days={self.share_days} is more than"
                f" share_max_days={self.share_max_days}; lower it or raise the maximum"
            )
        if self.audit_format not in AUDIT_FORMATS:
            raise ConfigError(
                f"{where}: audit_format={self.audit_format!r}; use one of {AUDIT_FORMATS}"
            )
        if not isinstance(self.trust_gateway_identity, bool):
            raise ConfigError(f"{where}: trust_gateway_identity must be true or false")
        for key in ("dicomweb_path", "ohif_path"):
            if not str(getattr(self, key)).startswith("/"):
                raise ConfigError(f"{where}: {key} must start with /")


def read_secret(path: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        return binascii.unhexlify(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no secret; run pacs-web init-secret") from exc
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{path}: not a hex secret; run pacs-web init-secret --rotate") from exc


def read_users(path: str) -> dict[str, User]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no user list (pacs_services_users, pacs-web users-sync)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from exc
    users = {}
    for entry in data.get("users", []):
        users[entry["name"]] = User(
            name=entry["name"], rights=frozenset(entry["rights"]), password_hash=entry["hash"]
        )
    return users


# ----------------------------------------------------------------------------- share links


def own_like_parent(path: str) -> None:
    """When root made ``path`` (the command line), give it to its folder's owner (the service)."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        folder = os.stat(os.path.dirname(os.path.abspath(path)))
        os.chown(path, folder.st_uid, folder.st_gid)


SHARES_SCHEMA = """
CREATE TABLE IF NOT EXISTS shares (
    key TEXT PRIMARY KEY,            -- SHA-256 of the link's id (the id is never stored)
    ref TEXT NOT NULL UNIQUE,        -- its first 16 hex digits: lists, audit lines, tokens
    study TEXT NOT NULL,             -- StudyInstanceUID
    patient TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,              -- the correspondent
    email TEXT NOT NULL,
    sharer TEXT NOT NULL,            -- who made it
    sharer_auth TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,        -- Unix time
    expires INTEGER NOT NULL,
    code_hash TEXT,                  -- scrypt hash of the access code, or NULL
    revoked INTEGER,
    revoked_by TEXT,
    opens INTEGER NOT NULL DEFAULT 0,
    uses INTEGER NOT NULL DEFAULT 0,
    last_use INTEGER
);
CREATE INDEX IF NOT EXISTS shares_by_sharer ON shares (sharer, created);
"""


def share_key(share_id: str) -> str:
    return hashlib.sha256(share_id.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Share:
    """One share link, as stored (its id is not: only its hash and ref)."""

    ref: str
    study: str
    patient: str
    description: str
    name: str
    email: str
    sharer: str
    created: int
    expires: int
    code_hash: str | None
    revoked: int | None
    revoked_by: str | None
    opens: int
    uses: int
    last_use: int | None

    def state(self, now: float) -> str:
        """active, revoked or expired."""
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.expires <= now else "active"

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "state": self.state(now),
            "study": self.study,
            "patient": self.patient,
            "description": self.description,
            "name": self.name,
            "email": self.email,
            "sharer": self.sharer,
            "created": iso(self.created),
            "expires": iso(self.expires),
            "code": self.code_hash is not None,
            "revoked": iso(self.revoked),
            "revoked_by": self.revoked_by,
            "opens": self.opens,
            "uses": self.uses,
            "last_use": iso(self.last_use),
        }


def iso(moment: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (seconds); None stays None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class ShareStore:
    """Share links in SQLite (WAL), one short transaction per change.

    Creations and revocations are committed with ``synchronous=FULL`` (on disk
    before the answer); the use counters with ``NORMAL`` (WAL: they survive a
    restart of the service; an operating-system crash may lose the last few
    counts, never a row). The file is made on first use, by the service or by
    root's command line (then given to the folder's owner).
    """

    COLUMNS = (
        "ref, study, patient, description, name, email, sharer, created, expires,"
        " code_hash, revoked, revoked_by, opens, uses, last_use"
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self._ready = False
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=15, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"{self.path}: cannot open the share links' store ({exc}); the"
                " pacs_services role makes its folder"
            ) from exc
        if fresh:
            own_like_parent(self.path)
        conn.execute("PRAGMA busy_timeout=15000")
        if not self._ready:
            with self._lock:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SHARES_SCHEMA)
                self._ready = True
        return conn

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        conn = self._connect()
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _one(self, where: str, value: str) -> Share | None:
        conn = self._connect()
        try:
            row = conn.execute(
                f"SELECT {self.COLUMNS} FROM shares WHERE {where} = ?",  # noqa: S608 (fixed)
                (value,),
            ).fetchone()
        finally:
            conn.close()
        return Share(*row) if row else None

    def by_id(self, share_id: str) -> Share | None:
        return self._one("key", share_key(share_id)) if SHARE_ID.fullmatch(share_id) else None

    def by_ref(self, ref: str) -> Share | None:
        return self._one("ref", ref) if SHARE_REF.fullmatch(ref) else None

    def create(
        self,
        *,
        study: Study,
        name: str,
        email: str,
        sharer: str,
        sharer_auth: str,
        expires: int,
        code: str,
        now: int,
    ) -> tuple[str, Share]:
        """A new link: (its id, to show once; its row)."""
        code_hash = hash_password(code) if code else None
        for _ in range(5):
            share_id = secrets.token_urlsafe(18)
            key = share_key(share_id)
            try:
                with self.transaction() as conn:
                    conn.execute(
                        "INSERT INTO shares (key, ref, study, patient, description, name, email,"
                        " sharer, sharer_auth, created, expires, code_hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            key[:16],
                            study.uid,
                            study.patient_id,
                            study.description,
                            name,
                            email,
                            sharer,
                            sharer_auth,
                            now,
                            expires,
                            code_hash,
                        ),
                    )
            except sqlite3.IntegrityError:  # a ref already taken: draw again
                continue
            share = self.by_ref(key[:16])
            if share is None:
                raise RuntimeError(f"{self.path}: the new share link {key[:16]} was not stored")
            return share_id, share
        raise RuntimeError("could not draw a free share id")

    def list(self, sharer: str | None = None) -> list[Share]:
        """Every link (newest first), or those ``sharer`` made."""
        conn = self._connect()
        try:
            if sharer is None:
                rows = conn.execute(
                    f"SELECT {self.COLUMNS} FROM shares ORDER BY created DESC"  # noqa: S608
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {self.COLUMNS} FROM shares WHERE sharer = ?"  # noqa: S608
                    " ORDER BY created DESC",
                    (sharer,),
                ).fetchall()
        finally:
            conn.close()
        return [Share(*row) for row in rows]

    def revoke(self, ref: str, by: str, now: int) -> bool:
        """Revoke a link now; False if it was unknown or already revoked."""
        with self.transaction() as conn:
            done = conn.execute(
                "UPDATE shares SET revoked = ?, revoked_by = ? WHERE ref = ? AND revoked IS NULL",
                (now, by, ref),
            ).rowcount
        return done == 1

    def record(self, ref: str, now: int, opened: bool = False) -> None:
        """Count one use (a DICOMweb request answered) or one opening of the link."""
        column = "opens" if opened else "uses"
        with self.transaction(durable=opened) as conn:
            conn.execute(
                f"UPDATE shares SET {column} = {column} + 1, last_use = ? WHERE ref = ?",  # noqa: S608
                (now, ref),
            )


# ----------------------------------------------------------------------------- Orthanc


class Orthanc:
    """The archive's REST API on 127.0.0.1, with the account the role gives."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 15.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def find_studies(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """Orthanc's /tools/find at the study level, expanded (main tags of study and patient)."""
        body = json.dumps({"Level": "Study", "Query": dict(query), "Expand": True}).encode()
        request = urllib.request.Request(  # noqa: S310 (a fixed http URL from the config)
            f"{self.url}/tools/find",
            data=body,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
            found = json.loads(answer.read())
        return [s for s in found if isinstance(s, dict)]


@dataclass(frozen=True)
class Study:
    """A study the IID resolved: what the viewers need, and what the page shows."""

    uid: str
    date: str
    time: str
    accession: str
    description: str
    patient_id: str

    @classmethod
    def from_orthanc(cls, entry: Mapping[str, Any]) -> Study:
        tags = entry.get("MainDicomTags", {})
        patient = entry.get("PatientMainDicomTags", {})
        return cls(
            uid=str(tags.get("StudyInstanceUID", "")),
            date=str(tags.get("StudyDate", "")),
            time=str(tags.get("StudyTime", "")),
            accession=str(tags.get("AccessionNumber", "")),
            description=str(tags.get("StudyDescription", "")),
            patient_id=str(patient.get("PatientID", "")),
        )

    @property
    def moment(self) -> str:
        """Sortable date and time: YYYYMMDDhhmmss (missing parts as zeros)."""
        clock = re.sub(r"[^0-9]", "", self.time.split(".")[0])
        return (self.date or "00000000") + clock.ljust(6, "0")[:6]


# ----------------------------------------------------------------------------- IID


@dataclass(frozen=True)
class IidRequest:
    """An IHE Invoke Image Display request (ITI... RAD-106), checked.

    ``STUDY``: ``studyUID`` or ``accessionNumber`` (each a comma-separated list).
    ``PATIENT``: ``patientID`` (an HL7 CX value, ``id^^^&issuer&ISO``, or a plain
    ID), with optional ``mostRecentResults``, ``lowerDateTime``,
    ``upperDateTime`` and ``modalitiesInStudy``. ``viewerType``: ``ohif``,
    ``weasis`` or ``IHE_BIR`` (read as the default viewer); absent, the default.
    """

    request_type: str
    viewer: str
    study_uids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    patient_id: str = ""
    most_recent: int | None = None
    lower: str = ""  # YYYYMMDDhhmmss
    upper: str = ""
    modalities: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: str, default_viewer: str) -> IidRequest:
        params = urllib.parse.parse_qs(query, keep_blank_values=True)

        def one(name: str) -> str:
            values = params.get(name, [])
            if len(values) > 1:
                raise BadRequest(f"{name} is given twice.", f"{name} est donné deux fois.")
            return values[0].strip() if values else ""

        def listed(name: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in one(name).split(",") if v.strip())

        kind = one("requestType").upper()
        viewer_type = one("viewerType") or default_viewer
        viewer = default_viewer if viewer_type.upper() == "IHE_BIR" else viewer_type.lower()
        if viewer not in VIEWERS:
            raise BadRequest(
                f"viewerType={viewer_type!r} is not known: use ohif or weasis.",
                f"viewerType={viewer_type!r} est inconnu : utilisez ohif ou weasis.",
            )
        if kind == "STUDY":
            uids, accessions = listed("studyUID"), listed("accessionNumber")
            if bool(uids) == bool(accessions):
                raise BadRequest(
                    "requestType=STUDY needs studyUID or accessionNumber (one of the two).",
                    "requestType=STUDY demande studyUID ou accessionNumber (l'un des deux).",
                )
            for uid in uids:
                check_uid(uid)
            cleaned = tuple(cx_id(a, "accessionNumber") for a in accessions)
            if len(uids) + len(cleaned) > 20:
                raise BadRequest("At most 20 studies at once.", "Au plus 20 examens à la fois.")
            return cls(kind, viewer, study_uids=uids, accession_numbers=cleaned)
        if kind == "PATIENT":
            raw = one("patientID")
            if not raw:
                raise BadRequest(
                    "requestType=PATIENT needs patientID.",
                    "requestType=PATIENT demande patientID.",
                )
            recent = most_recent(one("mostRecentResults"))
            modalities = tuple(check_modality(m) for m in listed("modalitiesInStudy"))
            lower, upper = iid_datetime(one("lowerDateTime")), iid_datetime(one("upperDateTime"))
            if lower and upper and lower > upper:
                raise BadRequest(
                    "lowerDateTime is after upperDateTime.",
                    "lowerDateTime est après upperDateTime.",
                )
            return cls(
                kind,
                viewer,
                patient_id=cx_id(raw, "patientID"),
                most_recent=recent,
                lower=lower,
                upper=upper,
                modalities=modalities,
            )
        raise BadRequest(
            "requestType must be STUDY or PATIENT.",
            "requestType doit valoir STUDY ou PATIENT.",
        )


def check_uid(uid: str) -> str:
    """``uid`` if it is a DICOM UID; BadRequest otherwise."""
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise BadRequest(
            f"studyUID {uid!r} is not a DICOM UID (digits and dots).",
            f"studyUID {uid!r} n'est pas un UID DICOM (chiffres et points).",
        )
    return uid


def most_recent(text: str) -> int | None:
    """mostRecentResults: absent, or a whole number from 1 to 100."""
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise BadRequest(
            "mostRecentResults must be a whole number from 1 to 100.",
            "mostRecentResults doit être un entier de 1 à 100.",
        )
    return int(text)


def check_modality(value: str) -> str:
    """A modality of modalitiesInStudy (CT, MR...), upper case."""
    modality = value.upper()
    if not MODALITY_PATTERN.match(modality):
        raise BadRequest(
            f"modalitiesInStudy: {value!r} is not a modality (CT, MR...).",
            f"modalitiesInStudy : {value!r} n'est pas une modalité (CT, MR...).",
        )
    return modality


def cx_id(value: str, name: str) -> str:
    """The identifier of an HL7 CX/EI value (``id^^^&issuer&ISO``), checked."""
    ident = value.split("^", 1)[0].strip()
    if not IDENTIFIER_PATTERN.match(ident):
        raise BadRequest(
            f"{name} {value!r} is empty, too long, or holds * ? or \\.",
            f"{name} {value!r} est vide, trop long, ou contient * ? ou \\.",
        )
    return ident


def iid_datetime(value: str) -> str:
    """``YYYY-MM-DD[Thh:mm[:ss]]`` (an XML dateTime, its zone ignored) as YYYYMMDDhhmmss."""
    if not value:
        return ""
    match = re.fullmatch(
        r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ](\d{2}):?(\d{2})(?::?(\d{2}))?(?:\.\d+)?)?"
        r"(?:Z|[+-]\d{2}:?\d{2})?",
        value,
    )
    if not match:
        raise BadRequest(
            f"{value!r} is not a date-time (2026-12-01 or 2026-12-01T08:30:00).",
            f"{value!r} n'est pas une date (2026-12-01 ou 2026-12-01T08:30:00).",
        )
    y, mo, d, h, mi, s = (g or "00" for g in match.groups())
    try:
        datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
    except ValueError as exc:
        raise BadRequest(
            f"{value!r} is not a real date.", f"{value!r} n'est pas une date réelle."
        ) from exc
    return f"{y}{mo}{d}{h}{mi}{s}"


def orthanc_queries(request: IidRequest) -> list[dict[str, str]]:
    """The Orthanc /tools/find queries (study level) that answer ``request``."""
    if request.request_type == "STUDY":
        return [{"StudyInstanceUID": uid} for uid in request.study_uids] + [
            {"AccessionNumber": acc} for acc in request.accession_numbers
        ]
    query = {"PatientID": request.patient_id}
    if request.lower or request.upper:
        query["StudyDate"] = f"{request.lower[:8]}-{request.upper[:8]}"
    if request.modalities:
        query["ModalitiesInStudy"] = "\\".join(request.modalities)
    return [query]


def select_studies(request: IidRequest, found: Iterable[Study]) -> list[Study]:
    """Apply what Orthanc's date-only range cannot: times, most recent N; newest first."""
    studies = list({s.uid: s for s in found if s.uid}.values())
    if request.request_type == "PATIENT":
        if request.lower:
            studies = [s for s in studies if s.moment >= request.lower]
        if request.upper:
            studies = [s for s in studies if s.moment <= request.upper]
        studies.sort(key=lambda s: s.moment, reverse=True)
        if request.most_recent:
            studies = studies[: request.most_recent]
    return studies


def ohif_url(ohif_path: str, uids: Sequence[str]) -> str:
    """OHIF opened on the studies: ``/viewer?StudyInstanceUIDs=uid1,uid2``."""
    return f"{ohif_path}?StudyInstanceUIDs={','.join(uids)}"


def weasis_command(dicomweb_url: str, uid: str, token: str, accept_ext: str) -> str:
    """One Weasis ``$dicom:rs`` command that loads one study with its own token."""
    command = f'$dicom:rs --url "{dicomweb_url}" -r "studyUID={uid}"'
    command += f' -H "Authorization: Bearer {token}"'
    if accept_ext:
        command += f' --accept-ext "{accept_ext}"'
    return command


def weasis_url(commands: Sequence[str]) -> str:
    """The ``weasis://?`` URL that runs ``commands`` (URL-encoded, space-separated)."""
    return "weasis://?" + urllib.parse.quote(" ".join(commands), safe="")


def parse_weasis_url(url: str) -> list[dict[str, Any]]:
    """Decode a ``weasis://?`` URL into its ``$dicom:rs`` commands (for tests and operators).

    Each command: ``{"url": ..., "requests": [...], "headers": [...], "accept_ext": ...}``.
    """
    if not url.startswith("weasis://?"):
        raise ValueError("not a weasis:// URL")
    text = urllib.parse.unquote(url[len("weasis://?") :])
    commands = []
    for raw in re.split(r"(?=\$dicom:)", text):
        chunk = raw.strip()
        if not chunk:
            continue
        words = re.findall(r'"([^"]*)"|(\S+)', chunk)
        tokens = [quoted or bare for quoted, bare in words]
        if tokens[0] != "$dicom:rs":
            raise ValueError(f"unexpected command {tokens[0]}")
        command: dict[str, Any] = {"url": "", "requests": [], "headers": [], "accept_ext": ""}
        pairs = iter(tokens[1:])
        for flag in pairs:
            value = next(pairs, "")
            if flag in ("--url", "-u"):
                command["url"] = value
            elif flag in ("-r", "--request"):
                command["requests"].append(value)
            elif flag in ("-H", "--header"):
                command["headers"].append(value)
            elif flag == "--accept-ext":
                command["accept_ext"] = value
            else:
                raise ValueError(f"unexpected option {flag}")
        commands.append(command)
    return commands


# ----------------------------------------------------------------------------- share requests


@dataclass(frozen=True)
class ShareRequest:
    """What the sharer asks for: the correspondent, the link's life, its access code."""

    name: str
    email: str
    days: int
    code: str = ""

    @classmethod
    def parse(
        cls, name: str, email: str, days: str, code: str, *, max_days: int, default_days: int
    ) -> ShareRequest:
        name, email, code = name.strip(), email.strip(), code.strip()
        if not re.fullmatch(r"[^\x00-\x1f<>]{1,100}", name):
            raise BadRequest(
                "Give the correspondent's name (at most 100 characters).",
                "Indiquez le nom du correspondant (100 caractères au plus).",
            )
        if len(email) > 254 or not EMAIL_PATTERN.fullmatch(email):
            raise BadRequest(
                f"{email!r} is not an e-mail address.",
                f"{email!r} n'est pas une adresse électronique.",
            )
        text = days.strip() or str(default_days)
        if not text.isdigit() or int(text) < 1:
            raise BadRequest(
                "The expiry is a whole number of days, 1 or more.",
                "La durée est un nombre entier de jours, 1 ou plus.",
            )
        if int(text) > max_days:
            raise BadRequest(
                f"A link lasts at most {max_days} days: {text} is too long.",
                f"Un lien dure au plus {max_days} jours : {text}, c'est trop long.",
            )
        if code and not re.fullmatch(r"[^\x00-\x1f]{4,64}", code):
            raise BadRequest(
                "The access code has 4 to 64 characters (or leave it empty).",
                "Le code d'accès a de 4 à 64 caractères (ou laissez-le vide).",
            )
        return cls(name, email, int(text), code)


def redact_token(uri: str) -> str:
    """A URI with its ``token=`` query value hidden (share tokens must not sit in logs)."""
    return re.sub(r"([?&]token=)[^&#]*", r"\1(hidden)", uri)


# ----------------------------------------------------------------------------- pages


STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;"
    "color:#1d2733}h1{font-size:1.4rem}.en{color:#555}form p{margin:.6rem 0}"
    "input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}"
    "button,a.button{font:inherit;padding:.5rem 1rem;background:#1f5fa8;color:#fff;border:0;"
    "border-radius:4px;text-decoration:none;display:inline-block}.error{color:#a61b1b}"
    "li{margin:.3rem 0}"
)


def page(title_fr: str, title_en: str, body: str, extra_head: str = "") -> bytes:
    """A whole bilingual page, no external assets, no script."""
    return (
        '<!doctype html><html lang="fr"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title_fr)} / {html.escape(title_en)}</title>"
        f"<style>{STYLE}</style>{extra_head}</head><body>"
        f"<h1>{html.escape(title_fr)} "
        f'<span class="en" lang="en">/ {html.escape(title_en)}</span></h1>'
        f"{body}</body></html>"
    ).encode()


def message_page(title_fr: str, title_en: str, fr: str, en: str) -> bytes:
    return page(
        title_fr,
        title_en,
        f'<p>{html.escape(fr)}</p><p class="en" lang="en">{html.escape(en)}</p>',
    )


def login_page(next_url: str, csrf: str, error: str = "") -> bytes:
    error_html = ""
    if error == "failed":
        error_html = (
            '<p class="error" role="alert">Nom ou mot de passe incorrect.'
            ' <span lang="en">Wrong name or password.</span></p>'
        )
    elif error == "blocked":
        error_html = (
            '<p class="error" role="alert">Trop d\'essais : réessayez dans quelques minutes.'
            ' <span lang="en">Too many attempts: try again in a few minutes.</span></p>'
        )
    elif error == "expired":
        error_html = (
            '<p class="error" role="alert">Le formulaire a expiré : recommencez.'
            ' <span lang="en">The form expired: please try again.</span></p>'
        )
    body = (
        f'{error_html}<form method="post" action="/login">'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
        f'<input type="hidden" name="next" value="{html.escape(next_url)}">'
        '<p><label for="username">Identifiant <span class="en" lang="en">/ User name</span>'
        '</label><input id="username" name="username" autocomplete="username"'
        " required autofocus></p>"
        '<p><label for="password">Mot de passe <span class="en" lang="en">/ Password</span>'
        '</label><input id="password" name="password" type="password"'
        ' autocomplete="current-password" required></p>'
        '<p><button type="submit">Se connecter / Sign in</button></p></form>'
    )
    return page("Connexion à l'imagerie", "Sign in to imaging", body)


def weasis_page(
    link: str, studies: Sequence[Study], minutes: int, may_share: bool = False
) -> bytes:
    def share_link(study: Study) -> str:
        if not may_share:
            return ""
        href = "/share?" + urllib.parse.urlencode({"study": study.uid})
        return f' — <a href="{html.escape(href)}">Partager / Share</a>'

    items = "".join(
        f"<li>{html.escape(s.date)} {html.escape(s.description or s.accession or s.uid)}"
        f"{share_link(s)}</li>"
        for s in studies
    )
    body = (
        f"<ul>{items}</ul>"
        f'<p><a class="button" id="weasis" href="{html.escape(link)}">Ouvrir dans Weasis'
        " / Open in Weasis</a></p>"
        f"<p>Ce lien est valable {minutes} minutes. Weasis doit être installé sur ce poste.</p>"
        f'<p class="en" lang="en">This link is valid for {minutes} minutes. Weasis must be'
        " installed on this computer.</p>"
    )
    refresh = f'<meta http-equiv="refresh" content="0;url={html.escape(link)}">'
    return page("Ouverture dans Weasis", "Opening in Weasis", body, refresh)


def bi(fr: str, en: str) -> str:
    """French, then English, both escaped."""
    return f'{html.escape(fr)} <span class="en" lang="en">/ {html.escape(en)}</span>'


def error_html(fr: str, en: str) -> str:
    return (
        f'<p class="error" role="alert">{html.escape(fr)}'
        f' <span lang="en">{html.escape(en)}</span></p>'
    )


def study_html(study: Study) -> str:
    what = study.description or study.accession or "—"
    return (
        f'<p id="study">{bi("Examen", "Study")} : <strong>{html.escape(study.date)}'
        f" {html.escape(what)}</strong><br>{bi('Patient', 'Patient')} :"
        f" {html.escape(study.patient_id)}<br><small>{html.escape(study.uid)}</small></p>"
    )


def share_form_page(
    csrf: str,
    study: Study | None,
    *,
    default_days: int,
    max_days: int,
    values: Mapping[str, str] | None = None,
    error: tuple[str, str] | None = None,
) -> bytes:
    """The sharer's form: correspondent, e-mail, days, optional access code."""
    given = dict(values or {})

    def value(name: str, default: str = "") -> str:
        return html.escape(given.get(name, default))

    labels = {
        "study": bi("UID de l'examen (StudyInstanceUID)", "Study UID"),
        "name": bi("Nom du correspondant", "Correspondent name"),
        "email": bi("Son adresse électronique", "Their e-mail"),
        "days": bi(f"Valable (jours, {max_days} au plus)", f"Valid for (days, at most {max_days})"),
        "code": bi(
            "Code d'accès (facultatif, à donner par téléphone)",
            "Access code (optional, to give by phone)",
        ),
    }
    if study is None:
        pick = (
            f'<p><label for="study">{labels["study"]}'
            '</label><input id="study" name="study" required pattern="[0-9.]{1,64}"'
            f' value="{value("study")}"></p>'
        )
    else:
        pick = study_html(study) + (
            f'<input type="hidden" name="study" value="{html.escape(study.uid)}">'
        )
    body = (
        (error_html(*error) if error else "") + '<form method="post" action="/share">'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">{pick}'
        f'<p><label for="name">{labels["name"]}</label>'
        f'<input id="name" name="name" required maxlength="100" value="{value("name")}"></p>'
        f'<p><label for="email">{labels["email"]}</label>'
        f'<input id="email" name="email" type="email" required maxlength="254"'
        f' value="{value("email")}"></p>'
        f'<p><label for="days">{labels["days"]}'
        f'</label><input id="days" name="days" type="number" min="1" max="{max_days}"'
        f' value="{value("days", str(default_days))}" required></p>'
        f'<p><label for="code">{labels["code"]}'
        '</label><input id="code" name="code" autocomplete="off" minlength="4" maxlength="64">'
        "</p>"
        '<p><button type="submit">Créer le lien / Create the link</button>'
        ' <a href="/shares">Mes liens / My links</a></p></form>'
    )
    return page("Partager un examen", "Share a study", body)


def mailto_url(email: str, link: str, expires: str) -> str:
    """A mailto: link that sends ``link`` (never the access code) to the correspondent."""
    subject = "Images d'un examen / Images of a study"
    text = (
        f"Bonjour,\n\nVoici le lien vers les images de l'examen, valable jusqu'au"
        f" {expires} (UTC) :\n{link}\n\nS'il demande un code d'accès, il vous est donné"
        " par téléphone.\n\n---\n\nHello,\n\nHere is the link to the images of the study,"
        f" valid until {expires} (UTC):\n{link}\n\nIf it asks for an access code, you are"
        " given it by phone.\n"
    )
    query = urllib.parse.urlencode({"subject": subject, "body": text}, quote_via=urllib.parse.quote)
    return f"mailto:{urllib.parse.quote(email, safe='@')}?{query}"


def share_created_page(link: str, share: Share, has_code: bool) -> bytes:
    expires = (iso(share.expires) or "").replace("T", " ").replace("+00:00", " UTC")
    code = ""
    if has_code:
        code = (
            "<p><strong>Donnez le code d'accès au correspondant par téléphone, jamais dans"
            ' le courriel.</strong></p><p class="en" lang="en"><strong>Give the access'
            " code to the correspondent by phone, never in the e-mail.</strong></p>"
        )
    mailto = html.escape(mailto_url(share.email, link, expires))
    until = bi("Valable jusqu'au", "Valid until")
    body = (
        f"<p>{bi('Pour', 'For')} : {html.escape(share.name)} &lt;{html.escape(share.email)}&gt;"
        f"<br>{until} : {html.escape(expires)}</p>"
        f'<p><code id="share-link">{html.escape(link)}</code></p>'
        f'<p><a class="button" id="mailto" href="{mailto}">'
        "Envoyer par courriel / Send by e-mail</a></p>"
        f"{code}"
        '<p><a href="/shares">Mes liens (et les retirer) / My links (and revoke them)</a></p>'
    )
    return page("Lien de partage créé", "Share link created", body)


def share_code_page(share_id: str, csrf: str, error: str = "") -> bytes:
    label = bi("Code d'accès", "Access code")
    errors = {
        "failed": ("Code incorrect.", "Wrong code."),
        "blocked": (
            "Trop d'essais : réessayez dans quelques minutes.",
            "Too many attempts: try again in a few minutes.",
        ),
        "expired": ("Le formulaire a expiré : recommencez.", "The form expired: please try again."),
    }
    body = (
        (error_html(*errors[error]) if error in errors else "")
        + "<p>Ce lien est protégé par un code d'accès, que la personne qui vous l'a envoyé"
        ' vous a donné par téléphone.</p><p class="en" lang="en">This link is protected by'
        " an access code, which the person who sent it gave you by phone.</p>"
        f'<form method="post" action="/s/{html.escape(share_id)}">'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
        f'<p><label for="code">{label}</label>'
        '<input id="code" name="code" type="password" autocomplete="off" required autofocus></p>'
        '<p><button type="submit">Voir les images / View the images</button></p></form>'
    )
    return page("Images partagées", "Shared images", body)


def shares_page(
    shares: Sequence[Share], csrf: str, now: float, manageable: Callable[[Share], bool]
) -> bytes:
    states = {
        "active": "actif / active",
        "revoked": "retiré / revoked",
        "expired": "expiré / expired",
    }

    def row(share: Share) -> str:
        state = share.state(now)
        action = ""
        if state == "active" and manageable(share):
            action = (
                f'<form method="post" action="/shares/{share.ref}/revoke">'
                f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
                '<button type="submit">Retirer / Revoke</button></form>'
            )
        cells = [
            share.ref,
            (iso(share.created) or "")[:16].replace("T", " "),
            f"{share.name} <{share.email}>",
            f"{share.description or share.study} ({share.patient})",
            share.sharer,
            (iso(share.expires) or "")[:16].replace("T", " "),
            states[state],
            f"{share.opens} / {share.uses}",
        ]
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        return f'<tr id="share-{share.ref}">{tds}<td>{action}</td></tr>'

    heads = [
        ("Lien", "Link"),
        ("Créé (UTC)", "Created"),
        ("Correspondant", "Correspondent"),
        ("Examen (patient)", "Study (patient)"),
        ("Par", "By"),
        ("Expire (UTC)", "Expires"),
        ("État", "State"),
        ("Ouvert / requêtes", "Opened / requests"),
        ("", ""),
    ]
    head = "".join(f"<th>{bi(fr, en) if fr else ''}</th>" for fr, en in heads)
    rows = "".join(row(s) for s in shares) or (
        f'<tr><td colspan="9">{bi("Aucun lien.", "No link.")}</td></tr>'
    )
    body = (
        "<style>body{max-width:75rem}table{border-collapse:collapse}td,th{border-bottom:1px"
        " solid #ccc;padding:.3rem;text-align:left;font-size:.9rem}</style>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return page("Liens de partage", "Share links", body)


def safe_next(value: str) -> str:
    """A local path to go to after sign-in; anything else (another site) becomes /."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


# ----------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Identity:
    """Who made a request, and how."""

    user: str
    auth: str  # session | sso | basic | token | share
    rights: frozenset[str]
    study: str | None = None  # for token and share
    share: str | None = None  # the share link's ref
    patient: str | None = None  # the study's PatientID, when the token or link says it


@dataclass(frozen=True)
class Verdict:
    status: int  # 204, 401, 403
    identity: Identity | None
    reason: str


class Service:
    """Everything but HTTP: authentication, the access rules, the IID, the audit."""

    def __init__(
        self,
        config: Config,
        orthanc: Orthanc | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.now = clock
        self.signer = Signer(read_secret(config.secret_file))
        self.audit = Audit(config.audit_log, config.audit_format, config.audit_enterprise_number)
        self.shares = ShareStore(config.shares_db)
        self.limiter = FailureLimiter(config.failure_limit, config.failure_window_seconds)
        self._users: dict[str, User] = {}
        self._users_stamp: tuple[int, int] | None = None
        self._users_lock = threading.Lock()
        self._basic_cache: dict[str, tuple[float, str]] = {}
        self.orthanc = orthanc or self._orthanc_from_config()
        self.users()

    def _orthanc_from_config(self) -> Orthanc:
        path = self.config.orthanc_credentials_file
        try:
            creds = json.loads(Path(path).read_text(encoding="utf-8"))
            return Orthanc(self.config.orthanc_url, str(creds["user"]), str(creds["password"]))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: not found (the pacs_services role writes it)") from exc
        except (json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f'{path}: expected {{"user": ..., "password": ...}}') from exc

    def users(self) -> dict[str, User]:
        """The user list, reread when its file changes (a rerun of the role)."""
        path = self.config.users_file
        try:
            stat = os.stat(path)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no user list (pacs_services_users)") from exc
        stamp = (stat.st_mtime_ns, stat.st_ino)
        with self._users_lock:
            if stamp != self._users_stamp:
                self._users = read_users(path)
                self._users_stamp = stamp
                self._basic_cache.clear()
            return self._users

    # -- credentials

    def check_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs (cached a few minutes for API clients)."""
        users = self.users()
        key = hmac.new(
            self.signer.key("basic-cache"), f"{name}\0{password}".encode(), "sha256"
        ).hexdigest()
        now = time.monotonic()
        cached = self._basic_cache.get(key)
        user = users.get(name)
        if cached and cached[0] > now and user and cached[1] == user.password_hash:
            return user
        if user is None:
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, user.password_hash):
            return None
        if len(self._basic_cache) > 1000:
            self._basic_cache.clear()
        self._basic_cache[key] = (now + self.config.basic_cache_seconds, user.password_hash)
        return user

    def session_for(self, user: User) -> str:
        now = int(time.time())
        return self.signer.sign(
            Claims("session", user.name, now + self.config.session_minutes * 60, issued=now)
        )

    def study_token(
        self, user: str, study: str, minutes: int | None = None, patient: str | None = None
    ) -> str:
        now = int(self.now())
        life = self.config.token_minutes if minutes is None else minutes
        return self.signer.sign(
            Claims("study", user, now + life * 60, study=study, issued=now, patient=patient)
        )

    def share_token(self, share: Share) -> tuple[str, int]:
        """The viewer's token of an opened link, and its life in seconds.

        Bound to the link's ref and its study; it lives share_token_minutes, and
        never beyond the link's own expiry.
        """
        now = int(self.now())
        expires = min(share.expires, now + self.config.share_token_minutes * 60)
        claims = Claims(
            "share", share.ref, expires, study=share.study, issued=now, patient=share.patient
        )
        return self.signer.sign(claims), expires - now

    def session_identity(self, cookie_header: str) -> Identity | None:
        token = cookie_value(cookie_header, SESSION_COOKIE)
        if not token:
            return None
        claims = self.signer.verify(token, "session")
        user = self.users().get(claims.subject) if claims else None
        return Identity(user.name, "session", user.rights) if user else None

    def authenticate(
        self, headers: Mapping[str, str], client: str
    ) -> tuple[Identity | None, str, str]:
        """(identity, how, failure) from the request's credentials: THE one place.

        Every route asks this: /auth, /iid, the share pages (who is sharing).
        In order: the single sign-on's headers when ``trust_gateway_identity``
        is on (nginx sets them) and the request carries no credential of its
        own (a request with Authorization is judged by it: the gateway sends
        those to this hook, and a client could add forged headers to them), a
        bearer token (study or share), HTTP Basic, the session cookie, then a
        correspondent's share cookie.

        ``how`` is the scheme presented (none, sso, session, basic, token,
        share); ``failure`` says why presented credentials were refused (""
        when none were or they were accepted).
        """
        trusted = self.config.trust_gateway_identity and not headers.get("authorization")
        if trusted and headers.get("x-pacs-auth", "") == "sso":
            return self._gateway(headers)
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self._bearer(value.strip())
        if scheme.lower() == "basic":
            return self._basic(value.strip(), client)
        cookie = headers.get("cookie", "")
        if cookie_value(cookie, SESSION_COOKIE):
            identity = self.session_identity(cookie)
            return identity, "session", "" if identity else "session expired or invalid"
        shared = cookie_value(cookie, SHARE_COOKIE)
        return self._share(shared) if shared else (None, "none", "")

    @staticmethod
    def _gateway(headers: Mapping[str, str]) -> tuple[Identity | None, str, str]:
        """The single sign-on's user and groups, as nginx set them (trusted by setting)."""
        user = headers.get("x-pacs-user", "").strip()
        if not re.fullmatch(r"[^\x00-\x1f,]{1,128}", user) or user == "-":
            return None, "sso", "no user from the gateway"
        rights = rights_of_groups(headers.get("x-pacs-groups", ""))
        return Identity(user, "sso", rights), "sso", ""

    def _expired(self, token: str) -> bool:
        peek = self.signer.peek(token) or {}
        try:
            return bool(peek.get("e")) and int(peek.get("e", 0)) <= self.now()
        except (TypeError, ValueError):
            return False

    def _bearer(self, token: str) -> tuple[Identity | None, str, str]:
        if (self.signer.peek(token) or {}).get("k") == "share":
            return self._share(token)
        claims = self.signer.verify(token, "study", now=self.now())
        if not claims or not claims.study:
            return None, "token", "token expired" if self._expired(token) else "token invalid"
        identity = Identity(
            claims.subject, "token", frozenset(), claims.study, patient=claims.patient
        )
        return identity, "token", ""

    def _share(self, token: str) -> tuple[Identity | None, str, str]:
        """A share token: valid, and its link still there, not revoked, not expired."""
        claims = self.signer.verify(token, "share", now=self.now())
        if not claims or not claims.study:
            return (
                None,
                "share",
                "share token expired" if self._expired(token) else ("share token invalid"),
            )
        share = self.shares.by_ref(claims.subject)
        if share is None or share.study != claims.study:
            return None, "share", "share link unknown"
        state = share.state(self.now())
        if state != "active":
            return None, "share", f"share link {state}"
        identity = Identity(
            share.email, "share", frozenset(), share.study, share.ref, share.patient or None
        )
        return identity, "share", ""

    def _basic(self, value: str, client: str) -> tuple[Identity | None, str, str]:
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, "basic", "malformed Basic credentials"
        keys = [f"ip:{client}", f"user:{name}"]
        if self.limiter.blocked(keys):
            return None, "basic", "too many failures"
        user = self.check_password(name, password)
        if not user:
            self.limiter.fail(keys)
            self.audit.write(
                event="login",
                outcome="failed",
                user=name,
                auth="basic",
                client=client,
                reason="wrong name or password",
            )
            return None, "basic", "wrong name or password"
        return Identity(user.name, "basic", user.rights), "basic", ""

    # -- the verdict

    def decide(self, target: Target, identity: Identity | None, failure: str) -> Verdict:
        if identity is None:
            return Verdict(401, None, failure or "not signed in")
        if identity.auth in ("token", "share"):
            token = identity.auth == "token"
            allows = target.token_allows if token else target.share_allows
            what = "study token" if token else f"share link {identity.share}"
            if identity.study and allows(identity.study):
                return Verdict(204, identity, what)
            return Verdict(403, identity, f"{what} for study {identity.study} only")
        needed = target.needed_right()
        if has_right(identity.rights, needed):
            return Verdict(204, identity, f"right {needed}")
        return Verdict(403, identity, f"needs right {needed}")

    def auth(self, headers: Mapping[str, str]) -> Verdict:
        """/auth: the verdict on the request nginx describes, audited."""
        client = headers.get("x-real-ip", "") or "unknown"
        target = Target.parse(
            headers.get("x-original-method", "GET"), headers.get("x-original-uri", "/")
        )
        identity, how, failure = self.authenticate(headers, client)
        verdict = self.decide(target, identity, failure)
        studies = target.studies()
        scoped = identity is not None and identity.auth in ("token", "share")
        if scoped and identity and not studies and verdict.status == 204:
            studies = [identity.study or ""]
        counted = identity and identity.auth == "share" and identity.share
        if counted and identity and identity.share and target.is_dicomweb and verdict.status == 204:
            self.shares.record(identity.share, int(self.now()))
        # Every DICOMweb access, every refusal naming a study, and every refused credential.
        if target.is_dicomweb or (verdict.status != 204 and (studies or failure)):
            patient = identity.patient if identity and identity.study in studies else None
            self.audit.write(
                event="access",
                outcome="allowed" if verdict.status == 204 else "refused",
                user=identity.user if identity else None,
                auth=how,
                studies=studies,
                client=client,
                patient=patient,
                share=identity.share if identity else None,
                method=target.method,
                uri=redact_token(headers.get("x-original-uri", "/"))[:2000],
                status=verdict.status,
                reason=verdict.reason,
            )
        return verdict

    # -- share links

    def find_study(self, uid: str) -> Study | None:
        """The study ``uid`` at the archive (Orthanc's /tools/find), or None."""
        found = [
            Study.from_orthanc(e) for e in self.orthanc.find_studies({"StudyInstanceUID": uid})
        ]
        return next((s for s in found if s.uid == uid), None)

    def create_share(
        self,
        identity: Identity,
        study: Study,
        request: ShareRequest,
        client: str,
        seconds: int | None = None,
    ) -> tuple[str, Share]:
        """Store a new link for ``study`` (audited); (its id, its row)."""
        now = int(self.now())
        life = request.days * 86400 if seconds is None else seconds
        share_id, share = self.shares.create(
            study=study,
            name=request.name,
            email=request.email,
            sharer=identity.user,
            sharer_auth=identity.auth,
            expires=now + life,
            code=request.code,
            now=now,
        )
        self.audit.write(
            event="share",
            outcome="created",
            user=identity.user,
            auth=identity.auth,
            studies=[study.uid],
            client=client,
            patient=study.patient_id,
            share=share.ref,
            correspondent=f"{request.name} <{request.email}>",
            expires=iso(share.expires),
            code=bool(request.code),
        )
        return share_id, share

    def may_manage(self, identity: Identity, share: Share) -> bool:
        """Its maker, or someone with manage-shares (or admin), may revoke a link."""
        return share.sharer == identity.user or has_right(identity.rights, "manage-shares")

    def revoke_share(self, identity: Identity, share: Share, client: str) -> bool:
        done = self.shares.revoke(share.ref, identity.user, int(self.now()))
        self.audit.write(
            event="share",
            outcome="revoked" if done else "refused",
            user=identity.user,
            auth=identity.auth,
            studies=[share.study],
            client=client,
            patient=share.patient,
            share=share.ref,
            reason=None if done else "already revoked",
        )
        return done

    # -- IID

    def resolve(self, request: IidRequest) -> list[Study]:
        found: list[Study] = []
        for query in orthanc_queries(request):
            found.extend(Study.from_orthanc(e) for e in self.orthanc.find_studies(query))
        return select_studies(request, found)

    def gateway_for(self, headers: Mapping[str, str]) -> str:
        """The gateway URL the person used, when it is one of the declared ones."""
        proto = headers.get("x-forwarded-proto", "https")
        host = headers.get("host", "")
        seen = f"{proto}://{host}"
        return seen if seen in self.config.gateway_urls else self.config.gateway_urls[0]


def headers_of(message: Any) -> dict[str, str]:
    """A request's headers as a dict with lower-case names (the first of each)."""
    out: dict[str, str] = {}
    for name, value in message.items():
        out.setdefault(str(name).lower(), str(value))
    return out


def cookie_value(header: str, name: str) -> str:
    if not header:
        return ""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return ""
    morsel = jar.get(name)
    return morsel.value if morsel else ""


# ----------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    """HTTP front of :class:`Service`; one instance per request."""

    server_version = "pacs-web"
    protocol_version = "HTTP/1.1"
    service: Service  # set on the class by serve()

    # -- plumbing

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def client(self) -> str:
        return self.headers.get("x-real-ip", "") or self.client_address[0]

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/html; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body or status not in (204, 304):
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "same-origin")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error_page(self, status: int, fr: str, en: str) -> None:
        titles = {
            400: ("Demande incorrecte", "Bad request"),
            401: ("Accès refusé", "Access refused"),
            403: ("Accès refusé", "Access refused"),
            404: ("Introuvable", "Not found"),
            405: ("Méthode refusée", "Method not allowed"),
            410: ("Lien périmé", "Link no longer valid"),
            429: ("Trop d'essais", "Too many attempts"),
            502: ("Archive injoignable", "Archive unreachable"),
        }
        title_fr, title_en = titles.get(status, ("Erreur", "Error"))
        self.send(status, message_page(title_fr, title_en, fr, en))

    def query(self) -> tuple[str, str]:
        parts = urllib.parse.urlsplit(self.path)
        return parts.path, parts.query

    def dispatch(self, method: str) -> None:
        path, query = self.query()
        routes = {
            ("GET", "/auth"): self.do_auth,
            ("GET", "/healthz"): lambda _q: self.send(200, b"ok\n", "text/plain"),
            ("GET", "/login"): self.login_form,
            ("POST", "/login"): self.login_submit,
            ("GET", "/logout"): self.logout,
            ("GET", "/iid"): self.iid,
            ("GET", "/share"): self.share_form,
            ("POST", "/share"): self.share_submit,
            ("GET", "/shares"): self.shares_list,
        }
        verb = "GET" if method == "HEAD" else method
        route = routes.get((verb, path))
        opened = re.fullmatch(r"/s/([^/]{1,64})", path)
        revoked = re.fullmatch(r"/shares/([^/]{1,64})/revoke", path)
        if opened and verb in ("GET", "POST"):
            route = lambda _q: self.share_open(opened.group(1), verb)  # noqa: E731
        elif revoked and verb == "POST":
            route = lambda _q: self.share_revoke(revoked.group(1))  # noqa: E731
        try:
            if route is None:
                known = {p for _, p in routes}
                if path in known or opened or revoked:
                    self.error_page(
                        405, "Méthode non prise en charge ici.", "Method not supported here."
                    )
                else:
                    self.error_page(
                        404, "Cette adresse n'existe pas.", "This address does not exist."
                    )
                return
            route(query)
        except BadRequest as exc:
            self.error_page(400, exc.fr, exc.en)
        except Exception:  # never a stack trace to the person; the journal keeps it
            log.error("error on %s %s:\n%s", method, path, traceback.format_exc())
            self.send(
                500,
                message_page(
                    "Erreur du service",
                    "Service error",
                    "Une erreur interne est survenue ; le journal du serveur la consigne.",
                    "An internal error occurred; it is recorded in the server's journal.",
                ),
            )

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def do_POST(self) -> None:
        self.dispatch("POST")

    # -- /auth

    def do_auth(self, _query: str) -> None:
        verdict = self.service.auth(headers_of(self.headers))
        headers: list[tuple[str, str]] = []
        if verdict.identity:
            headers = [
                ("X-Pacs-User", verdict.identity.user),
                ("X-Pacs-Auth", verdict.identity.auth),
            ]
        if verdict.status == 401:
            headers.append(("WWW-Authenticate", 'Basic realm="pacs-libre", charset="UTF-8"'))
        self.send(verdict.status, headers=headers)

    # -- /login, /logout

    def login_form(self, query: str, error: str = "", status: int = 200) -> None:
        next_url = safe_next(urllib.parse.parse_qs(query).get("next", ["/"])[0])
        # The browser's nonce is kept when it has one: a second sign-in page (another
        # tab, or the redirect of the browser's own /favicon.ico request while the
        # first form is open) must not void the form already on screen.
        held = cookie_value(self.headers.get("cookie", ""), CSRF_COOKIE)
        nonce = held if NONCE.fullmatch(held) else secrets.token_urlsafe(18)
        csrf = self.service.signer.sign(Claims("csrf", nonce, int(time.time()) + 1800))
        cookie = (
            f"{CSRF_COOKIE}={nonce}; Path=/login; HttpOnly; Secure; SameSite=Strict; Max-Age=1800"
        )
        self.send(status, login_page(next_url, csrf, error), headers=[("Set-Cookie", cookie)])

    def login_submit(self, _query: str) -> None:
        length_text = self.headers.get("content-length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if not 0 <= length <= 8192:
            raise BadRequest("The form is too large.", "Le formulaire est trop grand.")
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))

        def field_(name: str) -> str:
            return form.get(name, [""])[0]

        next_url = safe_next(field_("next"))
        again = urllib.parse.urlencode({"next": next_url})
        claims = self.service.signer.verify(field_("csrf"), "csrf")
        nonce = cookie_value(self.headers.get("cookie", ""), CSRF_COOKIE)
        if not claims or not nonce or not hmac.compare_digest(claims.subject, nonce):
            self.login_form(again, "expired", 400)
            return
        name, password, client = field_("username").strip(), field_("password"), self.client()
        keys = [f"ip:{client}", f"user:{name}"]

        def refuse(reason: str, error: str, status: int) -> None:
            self.service.audit.write(
                event="login",
                outcome="failed",
                user=name,
                auth="form",
                client=client,
                reason=reason,
            )
            self.login_form(again, error, status)

        if self.service.limiter.blocked(keys):
            refuse("too many failures", "blocked", 429)
            return
        user = self.service.check_password(name, password)
        if user is None:
            self.service.limiter.fail(keys)
            refuse("wrong name or password", "failed", 401)
            return
        self.service.audit.write(
            event="login", outcome="ok", user=user.name, auth="form", client=client
        )
        minutes = self.service.config.session_minutes
        cookie = (
            f"{SESSION_COOKIE}={self.service.session_for(user)}; Path=/; HttpOnly; Secure;"
            f" SameSite=Lax; Max-Age={minutes * 60}"
        )
        clear = f"{CSRF_COOKIE}=; Path=/login; HttpOnly; Secure; SameSite=Strict; Max-Age=0"
        self.send(
            303,
            b"",
            headers=[("Location", next_url), ("Set-Cookie", cookie), ("Set-Cookie", clear)],
        )

    def logout(self, _query: str) -> None:
        identity = self.service.session_identity(self.headers.get("cookie", ""))
        if identity:
            self.service.audit.write(
                event="logout",
                outcome="ok",
                user=identity.user,
                auth="session",
                client=self.client(),
            )
        cookie = f"{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
        self.send(303, b"", headers=[("Location", "/login"), ("Set-Cookie", cookie)])

    # -- /iid

    def iid(self, query: str) -> None:
        service, client = self.service, self.client()
        identity, how, _failure = service.authenticate(headers_of(self.headers), client)
        if identity is None or identity.auth in ("token", "share"):
            # Weasis tokens are only for signed-in people: back to the sign-in form.
            target = "/login?" + urllib.parse.urlencode({"next": f"/iid?{query}"})
            self.send(303, b"", headers=[("Location", target)])
            return
        if not has_right(identity.rights, "view"):
            service.audit.write(
                event="iid",
                outcome="refused",
                user=identity.user,
                auth=how,
                client=client,
                uri=f"/iid?{query}"[:2000],
                status=403,
                reason="needs right view",
            )
            self.error_page(
                403,
                "Votre compte n'a pas le droit de voir les images.",
                "Your account may not view images.",
            )
            return
        request = IidRequest.parse(query, service.config.default_viewer)
        try:
            studies = service.resolve(request)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.error("the archive did not answer the IID look-up: %s", exc)
            self.error_page(
                502,
                "L'archive ne répond pas ; réessayez, puis prévenez l'informatique.",
                "The archive does not answer; try again, then call IT.",
            )
            return
        uids = [s.uid for s in studies]
        wanted = set(request.study_uids)
        missing = sorted(wanted - set(uids))
        service.audit.write(
            event="iid",
            outcome="ok" if studies and not missing else "not found",
            user=identity.user,
            auth=how,
            studies=uids,
            client=client,
            patient=[s.patient_id for s in studies],
            uri=f"/iid?{query}"[:2000],
            viewer=request.viewer,
            status=200 if studies else 404,
        )
        if not studies or missing:
            what = ", ".join(missing) or (
                request.patient_id or ", ".join(request.accession_numbers)
            )
            self.error_page(
                404,
                f"Aucun examen trouvé dans l'archive pour : {what}.",
                f"No study found in the archive for: {what}.",
            )
            return
        if request.viewer == "ohif":
            self.send(302, b"", headers=[("Location", ohif_url(service.config.ohif_path, uids))])
            return
        dicomweb = service.gateway_for(headers_of(self.headers)) + service.config.dicomweb_path
        commands = []
        for found in studies:
            uid = found.uid
            token = service.study_token(identity.user, uid, patient=found.patient_id or None)
            commands.append(weasis_command(dicomweb, uid, token, service.config.weasis_accept_ext))
            service.audit.write(
                event="token",
                outcome="issued",
                user=identity.user,
                auth=how,
                studies=[uid],
                client=client,
                patient=found.patient_id,
                minutes=service.config.token_minutes,
            )
        may_share = has_right(identity.rights, "share")
        link = weasis_url(commands)
        self.send(200, weasis_page(link, studies, service.config.token_minutes, may_share))

    # -- forms (CSRF): a signed token bound to a SameSite=Strict cookie's nonce

    def read_form(self) -> dict[str, list[str]]:
        length_text = self.headers.get("content-length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if not 0 <= length <= 8192:
            raise BadRequest("The form is too large.", "Le formulaire est trop grand.")
        return urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))

    def form_token(self) -> tuple[str, tuple[str, str]]:
        """(the form's csrf field, its Set-Cookie header); the browser's nonce is kept."""
        held = cookie_value(self.headers.get("cookie", ""), FORM_COOKIE)
        nonce = held if NONCE.fullmatch(held) else secrets.token_urlsafe(18)
        expires = int(self.service.now()) + 1800
        csrf = self.service.signer.sign(Claims("csrf", nonce, expires))
        cookie = f"{FORM_COOKIE}={nonce}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=1800"
        return csrf, ("Set-Cookie", cookie)

    def form_valid(self, form: Mapping[str, list[str]]) -> bool:
        claims = self.service.signer.verify(
            form.get("csrf", [""])[0], "csrf", now=self.service.now()
        )
        nonce = cookie_value(self.headers.get("cookie", ""), FORM_COOKIE)
        return bool(claims and nonce and hmac.compare_digest(claims.subject, nonce))

    # -- /share, /shares: the sharer

    def sharer(self, next_url: str) -> tuple[Identity | None, str]:
        """The signed-in person who may share, or None once the answer is sent."""
        service, client = self.service, self.client()
        identity, how, _failure = service.authenticate(headers_of(self.headers), client)
        if identity is None or identity.auth in ("token", "share"):
            target = "/login?" + urllib.parse.urlencode({"next": next_url})
            self.send(303, b"", headers=[("Location", target)])
            return None, how
        if not has_right(identity.rights, "share"):
            service.audit.write(
                event="share",
                outcome="refused",
                user=identity.user,
                auth=how,
                client=client,
                uri=next_url[:2000],
                status=403,
                reason="needs right share",
            )
            self.error_page(
                403,
                "Votre compte n'a pas le droit de partager des examens.",
                "Your account may not share studies.",
            )
            return None, how
        return identity, how

    def study_or_answer(self, uid: str) -> Study | None:
        """The study at the archive, or None once a 404 or 502 page is sent."""
        check_uid(uid)
        try:
            found = self.service.find_study(uid)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.error("the archive did not answer the share look-up: %s", exc)
            self.error_page(
                502,
                "L'archive ne répond pas ; réessayez, puis prévenez l'informatique.",
                "The archive does not answer; try again, then call IT.",
            )
            return None
        if found is None:
            self.error_page(
                404,
                f"Aucun examen trouvé dans l'archive pour : {uid}.",
                f"No study found in the archive for: {uid}.",
            )
        return found

    def share_form(self, query: str) -> None:
        params = urllib.parse.parse_qs(query)
        uid = params.get("study", [""])[0].strip()
        identity, _how = self.sharer(f"/share?{query}" if query else "/share")
        if identity is None:
            return
        study = self.study_or_answer(uid) if uid else None
        if uid and study is None:
            return
        config = self.service.config
        csrf, cookie = self.form_token()
        body = share_form_page(
            csrf, study, default_days=config.share_days, max_days=config.share_max_days
        )
        self.send(200, body, headers=[cookie])

    def share_submit(self, _query: str) -> None:
        service, client, config = self.service, self.client(), self.service.config
        form = self.read_form()
        values = {k: v[0] for k, v in form.items() if k != "code" and v}
        uid = values.get("study", "").strip()
        identity, how = self.sharer("/share?" + urllib.parse.urlencode({"study": uid}))
        if identity is None:
            return
        csrf, cookie = self.form_token()

        def again(status: int, fr: str, en: str, study: Study | None) -> None:
            service.audit.write(
                event="share",
                outcome="refused",
                user=identity.user,
                auth=how,
                studies=[uid] if study else [],
                client=client,
                patient=study.patient_id if study else None,
                status=status,
                reason=en,
            )
            body = share_form_page(
                csrf,
                study,
                default_days=config.share_days,
                max_days=config.share_max_days,
                values=values,
                error=(fr, en),
            )
            self.send(status, body, headers=[cookie])

        if not self.form_valid(form):
            again(400, "Le formulaire a expiré : recommencez.", "The form expired.", None)
            return
        study = self.study_or_answer(uid)
        if study is None:
            return
        try:
            request = ShareRequest.parse(
                values.get("name", ""),
                values.get("email", ""),
                values.get("days", ""),
                form.get("code", [""])[0],
                max_days=config.share_max_days,
                default_days=config.share_days,
            )
        except BadRequest as exc:
            again(400, exc.fr, exc.en, study)
            return
        share_id, share = service.create_share(identity, study, request, client)
        link = f"{service.gateway_for(headers_of(self.headers))}/s/{share_id}"
        self.send(200, share_created_page(link, share, bool(request.code)))

    def shares_list(self, _query: str) -> None:
        identity, _how = self.sharer("/shares")
        if identity is None:
            return
        service = self.service
        everyone = has_right(identity.rights, "manage-shares")
        shares = service.shares.list(None if everyone else identity.user)
        csrf, cookie = self.form_token()

        def manageable(share: Share) -> bool:
            return service.may_manage(identity, share)

        body = shares_page(shares, csrf, service.now(), manageable)
        self.send(200, body, headers=[cookie])

    def share_revoke(self, ref: str) -> None:
        identity, how = self.sharer("/shares")
        if identity is None:
            return
        service, client = self.service, self.client()
        form = self.read_form()
        if not self.form_valid(form):
            raise BadRequest("The form expired: try again.", "Le formulaire a expiré.")
        share = service.shares.by_ref(ref)
        if share is None:
            self.error_page(404, "Ce lien n'existe pas.", "This link does not exist.")
            return
        if not service.may_manage(identity, share):
            service.audit.write(
                event="share",
                outcome="refused",
                user=identity.user,
                auth=how,
                studies=[share.study],
                client=client,
                patient=share.patient,
                share=share.ref,
                status=403,
                reason="not the link's maker and no right manage-shares",
            )
            self.error_page(
                403,
                "Seuls la personne qui a créé ce lien et les gestionnaires peuvent le retirer.",
                "Only the person who made this link and the managers may revoke it.",
            )
            return
        service.revoke_share(identity, share, client)
        self.send(303, b"", headers=[("Location", "/shares")])

    # -- /s/<id>: the correspondent

    def share_open(self, share_id: str, verb: str) -> None:
        service, client = self.service, self.client()
        share = service.shares.by_id(share_id)

        def refused(status: int, reason: str, outcome: str = "refused") -> None:
            service.audit.write(
                event="share-open",
                outcome=outcome,
                user=share.email if share else None,
                auth="share",
                studies=[share.study] if share else [],
                client=client,
                patient=share.patient if share else None,
                share=share.ref if share else None,
                status=status,
                reason=reason,
            )

        if share is None:
            refused(404, "share link unknown")
            self.error_page(
                404,
                "Ce lien de partage n'existe pas. Vérifiez qu'il est complet.",
                "This share link does not exist. Check that it is complete.",
            )
            return
        state = share.state(service.now())
        if state != "active":
            refused(410, f"share link {state}")
            when = (iso(share.revoked if state == "revoked" else share.expires) or "")[:16]
            when = when.replace("T", " ") + " UTC"
            if state == "revoked":
                fr, en = f"Ce lien a été retiré le {when}.", f"This link was revoked on {when}."
            else:
                fr, en = f"Ce lien a expiré le {when}.", f"This link expired on {when}."
            fr += " Demandez-en un nouveau à la personne qui vous l'a envoyé."
            en += " Ask the person who sent it for a new one."
            self.error_page(410, fr, en)
            return
        if self.command == "HEAD":  # a link checker: the link's state, nothing issued
            self.send(200, b"")
            return
        if share.code_hash and not self.share_code_ok(share_id, share, verb, refused):
            return
        self.share_enter(share)

    def share_code_ok(
        self, share_id: str, share: Share, verb: str, refused: Callable[..., None]
    ) -> bool:
        """True once the right access code is posted; else the code's form is answered."""
        csrf, cookie = self.form_token()
        if verb == "GET":
            self.send(200, share_code_page(share_id, csrf), headers=[cookie])
            return False
        form = self.read_form()
        keys = [f"ip:{self.client()}", f"share:{share.ref}"]
        if not self.form_valid(form):
            status, error = 400, "expired"
        elif self.service.limiter.blocked(keys):
            refused(429, "too many failures")
            status, error = 429, "blocked"
        elif not verify_password(form.get("code", [""])[0].strip(), share.code_hash or ""):
            self.service.limiter.fail(keys)
            refused(401, "wrong access code", "failed")
            status, error = 401, "failed"
        else:
            return True
        self.send(status, share_code_page(share_id, csrf, error), headers=[cookie])
        return False

    def share_enter(self, share: Share) -> None:
        """The viewer on the link's study, with its token (in the URL and a cookie)."""
        service, client = self.service, self.client()
        token, seconds = service.share_token(share)
        service.shares.record(share.ref, int(service.now()), opened=True)
        service.audit.write(
            event="share-open",
            outcome="ok",
            user=share.email,
            auth="share",
            studies=[share.study],
            client=client,
            patient=share.patient,
            share=share.ref,
            minutes=seconds // 60,
        )
        query = urllib.parse.urlencode({"StudyInstanceUIDs": share.study, "token": token})
        carry = f"{SHARE_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={seconds}"
        location = f"{service.config.ohif_path}?{query}"
        self.send(303, b"", headers=[("Location", location), ("Set-Cookie", carry)])


def serve(config: Config) -> None:
    service = Service(config)
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = ThreadingHTTPServer((config.listen_address, config.port), handler)
    server.daemon_threads = True
    log.info("listening on %s:%d", config.listen_address, config.port)
    server.serve_forever()


# ----------------------------------------------------------------------------- command line


def write_private(path: str, text: str, mode: int = 0o640) -> None:
    """Write ``text`` to ``path`` atomically, never readable by others."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if target.exists():
        stat = target.stat()
        os.chown(temp, stat.st_uid, stat.st_gid)
        os.chmod(temp, stat.st_mode & 0o7777)
    os.replace(temp, target)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    Signer(read_secret(config.secret_file))
    users = read_users(config.users_file)
    print(f"{args.config}: ok ({len(users)} users, default viewer {config.default_viewer})")
    return 0


def cmd_init_secret(args: argparse.Namespace) -> int:
    path = Path(args.path or Config.load(args.config).secret_file)
    if path.exists() and not args.rotate:
        print(json.dumps({"changed": False, "path": str(path)}))
        return 0
    write_private(str(path), secrets.token_hex(32) + "\n")
    print(json.dumps({"changed": True, "path": str(path)}))
    return 0


def cmd_users_sync(args: argparse.Namespace) -> int:
    path = Path(args.path or Config.load(args.config).users_file)
    wanted = json.load(sys.stdin)
    existing: dict[str, Any] = {}
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
    result = sync_users(existing, wanted)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    changed = not path.exists() or path.read_text(encoding="utf-8") != text

    def names(data: Mapping[str, Any]) -> list[str]:
        return sorted(str(u["name"]) for u in data.get("users", []))

    if changed and not args.check:
        write_private(str(path), text)
    print(json.dumps({"changed": changed, "users": names(result), "before": names(existing)}))
    return 0


def cmd_mint_token(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    if not UID_PATTERN.match(args.study):
        raise ConfigError(f"--study {args.study!r} is not a DICOM UID")
    signer = Signer(read_secret(config.secret_file))
    now = int(time.time())
    minutes = config.token_minutes if args.minutes is None else args.minutes
    token = signer.sign(
        Claims("study", args.user, now + minutes * 60, study=args.study, issued=now)
    )
    cli_audit(config).write(
        event="token",
        outcome="issued",
        user=args.user,
        auth="cli",
        studies=[args.study],
        client="localhost",
        minutes=minutes,
    )
    if args.weasis:
        url = config.gateway_urls[0] + config.dicomweb_path
        print(weasis_url([weasis_command(url, args.study, token, config.weasis_accept_ext)]))
    else:
        print(token)
    return 0


def cli_audit(config: Config) -> Audit:  # for the commands that need no user list
    """The audit trail, for a command run on the host (root's new file goes to pacs-web)."""
    fresh = not os.path.exists(config.audit_log)
    audit = Audit(config.audit_log, config.audit_format, config.audit_enterprise_number)
    if fresh:
        own_like_parent(config.audit_log)
    return audit


def cli_orthanc(config: Config) -> Orthanc:
    path = config.orthanc_credentials_file
    try:
        creds = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the archive's account ({exc})") from exc
    return Orthanc(config.orthanc_url, str(creds["user"]), str(creds["password"]))


def cli_service(config: Config, lookup: bool = True) -> Service:
    """The service's rules, for a command run on the host (its audit file kept pacs-web's)."""
    fresh = not os.path.exists(config.audit_log)
    orthanc = cli_orthanc(config) if lookup else Orthanc("http://127.0.0.1:9", "-", "-")
    service = Service(config, orthanc=orthanc)
    if fresh:
        own_like_parent(config.audit_log)
    return service


def cmd_shares(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    operator = Identity(args.user, "cli", frozenset({"admin"}))
    action = {"list": shares_list, "revoke": shares_revoke, "create": shares_create}
    return action[args.action](args, config, operator)


def shares_list(args: argparse.Namespace, config: Config, _operator: Identity) -> int:
    store, now = ShareStore(config.shares_db), time.time()
    if True:
        shares = store.list()
        if args.json:
            print(json.dumps([s.as_json(now) for s in shares], indent=2, ensure_ascii=False))
            return 0
        rows = [
            [
                s.ref,
                (iso(s.created) or "")[:16],
                s.state(now),
                (iso(s.expires) or "")[:16],
                s.study,
                s.patient,
                f"{s.name} <{s.email}>",
                s.sharer,
                f"{s.opens}/{s.uses}",
            ]
            for s in shares
        ]
        heads = [
            "ref",
            "created",
            "state",
            "expires",
            "study",
            "patient",
            "for",
            "by",
            "opened/used",
        ]
        print(text_table(heads, rows))
        return 0


def shares_revoke(args: argparse.Namespace, config: Config, operator: Identity) -> int:
    store = ShareStore(config.shares_db)
    share = store.by_ref(args.ref) or store.by_id(args.ref)
    if share is None:
        raise ConfigError(f"no share link {args.ref!r} (pacs-web shares list)")
    done = cli_service(config, lookup=False).revoke_share(operator, share, "localhost")
    print(json.dumps({"changed": done, "ref": share.ref, "state": "revoked"}))
    return 0


def shares_create(args: argparse.Namespace, config: Config, operator: Identity) -> int:
    if not UID_PATTERN.match(args.study):
        raise ConfigError(f"--study {args.study!r} is not a DICOM UID")
    days = config.share_days if args.days is None else args.days
    if args.minutes is None and not 1 <= days <= config.share_max_days:
        raise ConfigError(
            f"--days {days}: a link lasts 1 to {config.share_max_days} days (share_max_days)"
        )
    try:
        request = ShareRequest.parse(
            args.name,
            args.email,
            str(max(days, 1)),
            args.code or "",
            max_days=10**6,
            default_days=1,
        )
    except BadRequest as exc:
        raise ConfigError(exc.en) from exc
    service = cli_service(config, lookup=not args.no_lookup)
    if args.no_lookup:
        study: Study | None = Study(args.study, "", "", "", "", "")
    else:
        try:
            study = service.find_study(args.study)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ConfigError(f"the archive did not answer ({exc}); or pass --no-lookup") from exc
    if study is None:
        raise ConfigError(f"no study {args.study} at the archive")
    seconds = args.minutes * 60 if args.minutes is not None else days * 86400
    share_id, share = service.create_share(operator, study, request, "localhost", seconds)
    url = f"{config.gateway_urls[0]}/s/{share_id}"
    if args.json:
        print(json.dumps({"id": share_id, "url": url, **share.as_json(time.time())}))
    else:
        print(url)
    return 0


def text_table(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table, columns padded to their widest cell."""
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------- pacs-web audit


def audit_files(path: str) -> list[Path]:
    """The audit log and its rotated copies (audit.log.1, audit.log.2.gz, -20261201...)."""
    current = Path(path)
    folder = current.parent
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(current.name) and p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


#: The gateway's own audit log: the DICOMweb requests that the single sign-on
#: allowed (the viewer's, with its OpenID Connect token), which pacs-web never sees.
GATEWAY_AUDIT_LOG = "/var/log/pacs-libre/gateway/audit.log"
_URI_STUDY = re.compile(r"/dicom-web/studies/([0-9.]+)")


def read_audit(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every audit record of ``paths`` (gzip or plain; JSON or RFC 5424 lines).

    A line of the gateway's log names its study in its URI only: the study is
    read from there.
    """
    for path in paths:
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    record = parse_audit_line(line)
                    if record is None:
                        continue
                    if not record.get("studies") and (
                        found := _URI_STUDY.search(str(record.get("uri", "")))
                    ):
                        record["studies"] = [found.group(1)]
                    yield record
        except (OSError, EOFError) as exc:
            print(f"pacs-web: {path}: {exc}", file=sys.stderr)


def parse_since(text: str) -> datetime:
    """--since: 2026-12-01, 2026-12-01T08:00 (UTC unless it says otherwise)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--since {text!r}: give a date, 2026-12-01 or 2026-12-01T08:00") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def search_audit(
    records: Iterable[Mapping[str, Any]],
    *,
    patient: str | None = None,
    study: str | None = None,
    patient_studies: Iterable[str] = (),
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The records about ``study``, or about ``patient`` (by its recorded field or its studies)."""
    wanted = set(patient_studies)
    out = []
    for record in records:
        studies = set(record.get("studies") or [])
        patients = record.get("patient") or []
        if isinstance(patients, str):
            patients = [patients]
        if study is not None and study not in studies:
            continue
        if patient is not None and patient not in patients and not (studies & wanted):
            continue
        if since is not None:
            try:
                when = datetime.fromisoformat(str(record.get("time", "")))
            except ValueError:
                continue
            if when < since:
                continue
        out.append(dict(record))
    out.sort(key=lambda r: str(r.get("time", "")))
    return out


AUDIT_COLUMNS = (
    "time",
    "user",
    "auth",
    "event",
    "outcome",
    "studies",
    "patient",
    "client",
    "share",
)


def cmd_audit(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    since = parse_since(args.since) if args.since else None
    patient_studies: list[str] = []
    warning = ""
    if args.patient and not args.no_archive:
        try:
            found = cli_orthanc(config).find_studies({"PatientID": args.patient})
            patient_studies = [Study.from_orthanc(e).uid for e in found]
        except (ConfigError, urllib.error.URLError, OSError, ValueError) as exc:
            warning = (
                f"the archive did not answer ({exc}): only the lines that record the patient"
                " are shown"
            )
            print(f"pacs-web: {warning}", file=sys.stderr)
    found_records = search_audit(
        read_audit(audit_files(config.audit_log) + audit_files(GATEWAY_AUDIT_LOG)),
        patient=args.patient,
        study=args.study,
        patient_studies=patient_studies,
        since=since,
    )
    cli_audit(config).write(
        event="audit-read",
        outcome="ok",
        user=args.user,
        auth="cli",
        studies=[args.study] if args.study else [],
        client="localhost",
        patient=args.patient,
        reason=f"{len(found_records)} lines",
    )
    if args.json:
        print(json.dumps(found_records, ensure_ascii=False))
        return 0
    rows = []
    for record in found_records:
        cells = []
        for key in AUDIT_COLUMNS:
            value = record.get(key)
            cells.append(",".join(map(str, value)) if isinstance(value, list) else str(value or ""))
        rows.append(cells)
    print(text_table(AUDIT_COLUMNS, rows))
    return 0


def cmd_hash_password(_args: argparse.Namespace) -> int:
    print(hash_password(sys.stdin.readline().rstrip("\n")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pacs-web",
        description="pacs-libre's web services (auth hook, sign-in, IHE IID) and their tools.",
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"settings file (default {DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (systemd does)").set_defaults(func=None)
    sub.add_parser("check-config", help="check the settings, secret and user list").set_defaults(
        func=cmd_check_config
    )
    secret = sub.add_parser("init-secret", help="create the signing secret if missing")
    secret.add_argument("--path", help="the secret file (default: secret_file of the settings)")
    secret.add_argument("--rotate", action="store_true", help="replace it: signs everyone out")
    secret.set_defaults(func=cmd_init_secret)
    users = sub.add_parser(
        "users-sync", help="write the user list from JSON on stdin: [{name, password, rights}]"
    )
    users.add_argument("--path", help="the user file (default: users_file of the settings)")
    users.add_argument("--check", action="store_true", help="say what would change, write nothing")
    users.set_defaults(func=cmd_users_sync)
    mint = sub.add_parser("mint-token", help="print a study-scoped token (or a weasis:// URL)")
    mint.add_argument("--study", required=True, help="the StudyInstanceUID it opens")
    mint.add_argument("--minutes", type=int, help="lifetime (default token_minutes; <=0: expired)")
    mint.add_argument("--user", default="operator", help="who it is for, in the audit log")
    mint.add_argument("--weasis", action="store_true", help="print the weasis:// URL instead")
    mint.set_defaults(func=cmd_mint_token)
    sub.add_parser("hash-password", help="hash a password read from stdin").set_defaults(
        func=cmd_hash_password
    )
    add_share_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.func is None:
            serve(Config.load(args.config))
            return 0
        return int(args.func(args))
    except ConfigError as exc:
        print(f"pacs-web: {exc}", file=sys.stderr)
        return 2


def add_share_commands(sub: Any) -> None:
    """``pacs-web shares ...`` and ``pacs-web audit ...``."""
    shares = sub.add_parser("shares", help="list, revoke or create share links (audited)")
    shares.add_argument("--user", default="operator", help="who acts, in the audit log")
    actions = shares.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every share link, newest first")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    revoke = actions.add_parser("revoke", help="revoke a link now (its ref, or its id)")
    revoke.add_argument("ref", metavar="ID")
    create = actions.add_parser("create", help="make a link to a study (prints its URL)")
    create.add_argument("--study", required=True, help="the StudyInstanceUID")
    create.add_argument("--name", required=True, help="the correspondent's name")
    create.add_argument("--email", required=True, help="the correspondent's e-mail")
    create.add_argument("--days", type=int, default=None, help="life in days (default share_days)")
    create.add_argument("--code", help="an access code the correspondent must type")
    create.add_argument(
        "--minutes", type=int, help="life in minutes instead (<=0: already expired, for tests)"
    )
    create.add_argument(
        "--no-lookup", action="store_true", help="do not check the study at the archive"
    )
    create.add_argument("--json", action="store_true", help="print the link as JSON")
    shares.set_defaults(func=cmd_shares)
    audit = sub.add_parser("audit", help="who accessed a patient's or a study's images")
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--patient", help="a PatientID (its studies at the archive too)")
    which.add_argument("--study", help="a StudyInstanceUID")
    audit.add_argument("--since", help="from this date (UTC): 2026-12-01[T08:00]")
    audit.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    audit.add_argument(
        "--no-archive", action="store_true", help="do not ask the archive for the patient's studies"
    )
    audit.add_argument("--user", default="operator", help="who asks, in the audit log")
    audit.set_defaults(func=cmd_audit)


if __name__ == "__main__":
    sys.exit(main())
