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
``GET /healthz``
    ``ok``, for the role and monitoring; says nothing else.

Credentials, all checked by :func:`Service.authenticate`:

- the session cookie (``pacs_session``), made by /login;
- HTTP Basic against the user list (salted scrypt hashes only);
- ``Authorization: Bearer <token>``: a study-scoped token (see :class:`Signer`),
  valid only for reads of ``/dicom-web/studies/<its study>/...`` and for QIDO
  restricted to that study.

Every failed sign-in and every access to DICOMweb (allowed or refused) is
written as one JSON line to the audit log (who, when, which study, from where,
how) and to the journal.

The same file is the operators' command line: ``pacs-web --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
import logging.handlers
import os
import re
import secrets
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
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
RIGHTS = ("view", "stow", "admin")
VIEWERS = ("ohif", "weasis")

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

    kind: str  # "session" | "study" | "csrf" (and later: "share")
    subject: str  # the user name (or, for csrf, the nonce)
    expires: int  # Unix time
    study: str | None = None  # StudyInstanceUID, for "study" tokens
    issued: int = 0


class Signer:
    """HMAC-SHA256 tokens: ``v1.<payload>.<signature>``, both base64url.

    The payload is compact JSON (``k`` kind, ``s`` subject, ``e`` expiry, ``i``
    issued, ``u`` study). Each kind is signed with its own key derived from the
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
        return "view" if self.reads else "admin"

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
    """The access audit trail: one JSON object a line, in a file and the journal.

    Fields: ``time`` (UTC, ISO 8601), ``event``, ``outcome`` (allowed, refused,
    failed, ok), ``user`` (or null), ``auth`` (session, basic, token, none),
    ``studies`` (StudyInstanceUIDs, possibly empty), ``client`` (the address nginx
    saw), ``method``, ``uri``, ``status`` and ``reason``. The file is reopened
    when logrotate moves it.
    """

    def __init__(self, path: str | None) -> None:
        self._logger = logging.getLogger("pacs-web.audit")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
        if path:
            to_file = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            to_file.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(to_file)
        journal = logging.StreamHandler(sys.stderr)
        journal.setFormatter(logging.Formatter("audit %(message)s"))
        self._logger.addHandler(journal)

    @staticmethod
    def line(**fields: Any) -> str:
        """One audit line (also used by tests to check the shape)."""
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": fields.pop("event"),
            "outcome": fields.pop("outcome"),
            "user": fields.pop("user", None),
            "auth": fields.pop("auth", "none"),
            "studies": list(fields.pop("studies", [])),
            "client": fields.pop("client", None),
            **fields,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    def write(self, **fields: Any) -> None:
        self._logger.info(self.line(**fields))


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
        for key in ("session_minutes", "token_minutes", "port", "failure_limit"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer")
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


def weasis_page(link: str, studies: Sequence[Study], minutes: int) -> bytes:
    items = "".join(
        f"<li>{html.escape(s.date)} {html.escape(s.description or s.accession or s.uid)}</li>"
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
    auth: str  # session | basic | token
    rights: frozenset[str]
    study: str | None = None  # for token


@dataclass(frozen=True)
class Verdict:
    status: int  # 204, 401, 403
    identity: Identity | None
    reason: str


class Service:
    """Everything but HTTP: authentication, the access rules, the IID, the audit."""

    def __init__(self, config: Config, orthanc: Orthanc | None = None) -> None:
        self.config = config
        self.signer = Signer(read_secret(config.secret_file))
        self.audit = Audit(config.audit_log)
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

    def study_token(self, user: str, study: str, minutes: int | None = None) -> str:
        now = int(time.time())
        life = self.config.token_minutes if minutes is None else minutes
        return self.signer.sign(Claims("study", user, now + life * 60, study=study, issued=now))

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
        """(identity, how, failure) from the request's credentials.

        ``how`` is the scheme presented (none, session, basic, token); ``failure``
        says why presented credentials were refused ("" when none were or they
        were accepted).
        """
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self._bearer(value.strip())
        if scheme.lower() == "basic":
            return self._basic(value.strip(), client)
        cookie = headers.get("cookie", "")
        if cookie_value(cookie, SESSION_COOKIE):
            identity = self.session_identity(cookie)
            if identity is None:
                return None, "session", "session expired or invalid"
            return identity, "session", ""
        return None, "none", ""

    def _bearer(self, token: str) -> tuple[Identity | None, str, str]:
        claims = self.signer.verify(token, "study")
        if not claims or not claims.study:
            peek = self.signer.peek(token) or {}
            expired = bool(peek.get("e")) and int(peek.get("e", 0)) <= time.time()
            return None, "token", "token expired" if expired else "token invalid"
        return Identity(claims.subject, "token", frozenset(), claims.study), "token", ""

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
        if identity.auth == "token":
            if identity.study and target.token_allows(identity.study):
                return Verdict(204, identity, "study token")
            return Verdict(403, identity, f"token for study {identity.study} only")
        needed = target.needed_right()
        if needed in identity.rights or "admin" in identity.rights:
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
        if identity and identity.auth == "token" and not studies and verdict.status == 204:
            studies = [identity.study or ""]
        # Every DICOMweb access, every refusal naming a study, and every refused credential.
        if target.is_dicomweb or (verdict.status != 204 and (studies or failure)):
            self.audit.write(
                event="access",
                outcome="allowed" if verdict.status == 204 else "refused",
                user=identity.user if identity else None,
                auth=how,
                studies=studies,
                client=client,
                method=target.method,
                uri=headers.get("x-original-uri", "/")[:2000],
                status=verdict.status,
                reason=verdict.reason,
            )
        return verdict

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
            403: ("Accès refusé", "Access refused"),
            404: ("Introuvable", "Not found"),
            405: ("Méthode refusée", "Method not allowed"),
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
        }
        route = routes.get(("GET" if method == "HEAD" else method, path))
        try:
            if route is None:
                known = {p for _, p in routes}
                if path in known:
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
        if identity is None or identity.auth == "token":
            # Weasis tokens are only for signed-in people: back to the sign-in form.
            target = "/login?" + urllib.parse.urlencode({"next": f"/iid?{query}"})
            self.send(303, b"", headers=[("Location", target)])
            return
        if "view" not in identity.rights and "admin" not in identity.rights:
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
        for uid in uids:
            token = service.study_token(identity.user, uid)
            commands.append(weasis_command(dicomweb, uid, token, service.config.weasis_accept_ext))
            service.audit.write(
                event="token",
                outcome="issued",
                user=identity.user,
                auth=how,
                studies=[uid],
                client=client,
                minutes=service.config.token_minutes,
            )
        self.send(200, weasis_page(weasis_url(commands), studies, service.config.token_minutes))


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
    Audit(config.audit_log).write(
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


if __name__ == "__main__":
    sys.exit(main())
