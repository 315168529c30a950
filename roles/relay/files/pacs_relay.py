#!/usr/bin/python3
"""pacs-relay: a peripheral site's relay keeps each study until the main archive has it.

The relay's Orthanc receives the site's modalities and its routing service
(roles/orthanc, routing.py) sends every stable study to the main archive, trying
again for ever (MaxAttempts 0). Routing knows that a C-STORE succeeded; this
service, run by a systemd timer (pacs-relay.timer), makes sure that the main
archive really holds every image before the relay lets a study go:

- **Confirm.** For each study that routing sent (a job ``done`` in routing.sqlite),
  it asks the main archive, through the relay's Orthanc (a C-FIND at instance
  level: ``POST /modalities/{node}/query`` with the StudyInstanceUID, then
  ``/queries/{id}/answers``), which SOPInstanceUIDs it holds, and compares them
  with the study's own. What the main archive holds is recorded in relay.sqlite.
  A study with images missing there is given back to routing (its job pending
  again, due now), and the journal says so.
- **Purge.** A study whose every image is confirmed, and whose last image came more
  than ``keep_days`` ago (0: at once), is deleted from the relay; its images are
  counted again just before (new images may have come), and it must be stable.
  The images counted are deleted one by one: one that arrives meanwhile stays.
  Every purge is logged with the study's UID and its number of images.
- **Metrics.** node_exporter's textfile ``pacs_relay.prom``: the backlog (studies
  and images not confirmed yet, the age of the oldest), routing's failed
  attempts, the totals confirmed and purged, and the alert threshold.

``pacs-relay status`` prints the backlog for a person (``--json`` for a program).
Only Python's standard library; everything but ``main`` is plain functions and
small classes, tested in tests/test_relay.py.

    pacs-relay run                 # what the timer runs (as orthanc)
    pacs-relay publish             # then, as root: the metrics into the collector's folder
    pacs-relay status [--json]     # what is waiting for the main archive
    pacs-relay check-config FILE   # the role's check of a candidate relay.json
"""

from __future__ import annotations

import argparse
import base64
import calendar
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

CONFIG = "/etc/pacs-libre/relay.json"
METRICS_NAME = "pacs_relay.prom"
PENDING, DONE, FAILED = "pending", "done", "failed"
# A study's state in relay.sqlite.
BACKLOG, CONFIRMED, PURGED, GONE = "backlog", "confirmed", "purged", "gone"

Log = Callable[[str], None]


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class Config:
    """relay.json, which the relay role writes (root:orthanc, 0640: it holds a password)."""

    user: str
    password: str
    destination: str
    orthanc_url: str = "http://127.0.0.1:8042"
    main_aet: str = ""
    routing_db: str = "/var/lib/orthanc/pacs-libre/routing.sqlite"
    state_db: str = "/var/lib/orthanc/pacs-libre/relay.sqlite"
    metrics_file: str = "/run/pacs-relay/" + METRICS_NAME
    textfile_directory: str = "/var/lib/prometheus/node-exporter"
    keep_days: float = 7
    backlog_alert_seconds: float = 1800
    timeout_seconds: float = 60

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        problems = [
            f"{key} is missing" for key in ("user", "password", "destination") if not data.get(key)
        ]
        for key in ("keep_days", "backlog_alert_seconds", "timeout_seconds"):
            if key in data and (not isinstance(data[key], int | float) or data[key] < 0):
                problems.append(f"{key} {data[key]!r} is not a number >= 0")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            problems.append(f"unknown keys {sorted(unknown)}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**{key: data[key] for key in data})


def load_config(path: str) -> Config:
    """relay.json, with the // comment lines of its managed header left out."""
    with open(path, encoding="utf-8") as handle:
        text = "".join(line for line in handle if not line.lstrip().startswith("//"))
    return Config.from_mapping(json.loads(text))


# ------------------------------------------------------------- routing's queue


@dataclass(frozen=True)
class RoutingJob:
    """A job of routing.sqlite (roles/orthanc/files/services/routing.py, ``jobs``)."""

    study: str
    state: str
    attempts: int
    next_at: float
    last_error: str
    created: float
    updated: float


@contextlib.contextmanager
def _connect(path: str) -> Iterator[sqlite3.Connection]:
    """One transaction on a SQLite file (committed, or rolled back on an error), then closed."""
    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            yield db
    finally:
        db.close()


class RoutingQueue:
    """The relay's side of routing.sqlite: read the jobs to one destination, and give a
    study back to routing. The file is routing's (Orthanc creates it at its start)."""

    def __init__(self, path: str, destination: str) -> None:
        self.path = path
        self.destination = destination

    def jobs(self) -> dict[str, RoutingJob]:
        """Each study's job to the destination; none before Orthanc made the file."""
        if not os.path.exists(self.path):
            return {}
        with _connect(self.path) as db:
            rows = db.execute(
                "SELECT study, state, attempts, next_at, last_error, created, updated FROM jobs"
                " WHERE destination = ? ORDER BY created, id",
                (self.destination,),
            ).fetchall()
        out: dict[str, RoutingJob] = {}
        for row in rows:
            job = RoutingJob(*row)
            before = out.get(job.study)
            # Two rules to the same node: the study waits while either job does.
            if before is None or (before.state == DONE and job.state != DONE):
                out[job.study] = job
        return out

    def send_again(self, study: str, now: float, reason: str) -> int:
        """Routing's job for the study pending again, due now, its attempts counted from 0."""
        with _connect(self.path) as db:
            return db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, next_at = ?, last_error = ?, updated = ?"
                " WHERE study = ? AND destination = ?",
                (PENDING, now, reason[:2000], now, study, self.destination),
            ).rowcount


# ------------------------------------------------------------- the relay's ledger


@dataclass(frozen=True)
class StudyRecord:
    study: str
    uid: str
    state: str
    since: float
    at: float
    instances: int
    last_update: float


class Ledger:
    """relay.sqlite: what the main archive is known to hold, each study's state, and the
    totals (Prometheus counters, which must survive the runs)."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS confirmed (study TEXT NOT NULL, sop TEXT NOT NULL,"
        " at REAL NOT NULL, PRIMARY KEY (study, sop))",
        # since: when the study began to wait; at: when it reached its state.
        # last_update: the study's last image (Orthanc's LastUpdate) when it was confirmed.
        "CREATE TABLE IF NOT EXISTS studies (study TEXT PRIMARY KEY, uid TEXT NOT NULL DEFAULT '',"
        " state TEXT NOT NULL, since REAL NOT NULL, at REAL NOT NULL,"
        " instances INTEGER NOT NULL DEFAULT 0, last_update REAL NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL,"
        " orthanc_up INTEGER NOT NULL, main_up INTEGER NOT NULL)",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        with _connect(self.path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                db.execute(statement)

    def record(self, study: str) -> StudyRecord | None:
        with _connect(self.path) as db:
            row = db.execute(
                "SELECT study, uid, state, since, at, instances, last_update FROM studies"
                " WHERE study = ?",
                (study,),
            ).fetchone()
        return None if row is None else StudyRecord(*row)

    def records(self) -> dict[str, StudyRecord]:
        with _connect(self.path) as db:
            rows = db.execute(
                "SELECT study, uid, state, since, at, instances, last_update FROM studies"
            ).fetchall()
        return {row[0]: StudyRecord(*row) for row in rows}

    def set_state(
        self,
        study: str,
        state: str,
        now: float,
        *,
        since: float | None = None,
        uid: str = "",
        instances: int | None = None,
        last_update: float | None = None,
    ) -> None:
        """The study's new state; what is not given (``since``: when it began to wait) is kept."""
        with _connect(self.path) as db:
            db.execute(
                "INSERT INTO studies (study, uid, state, since, at, instances, last_update)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study) DO UPDATE SET"
                " uid = CASE WHEN excluded.uid != '' THEN excluded.uid ELSE uid END,"
                " state = excluded.state, at = excluded.at,"
                " since = CASE WHEN ? THEN excluded.since ELSE since END,"
                " instances = CASE WHEN ? THEN excluded.instances ELSE instances END,"
                " last_update = CASE WHEN ? THEN excluded.last_update ELSE last_update END",
                (
                    study,
                    uid,
                    state,
                    now if since is None else since,
                    now,
                    instances or 0,
                    last_update or 0.0,
                    since is not None,
                    instances is not None,
                    last_update is not None,
                ),
            )

    def confirmed(self, study: str) -> set[str]:
        with _connect(self.path) as db:
            rows = db.execute("SELECT sop FROM confirmed WHERE study = ?", (study,)).fetchall()
        return {row[0] for row in rows}

    def forget(self, study: str, sops: Iterable[str] | None = None) -> None:
        """Drop what was confirmed of the study (all of it, or these images)."""
        with _connect(self.path) as db:
            if sops is None:
                db.execute("DELETE FROM confirmed WHERE study = ?", (study,))
            else:
                db.executemany(
                    "DELETE FROM confirmed WHERE study = ? AND sop = ?",
                    [(study, sop) for sop in sops],
                )

    def confirm(self, study: str, sops: Iterable[str], now: float) -> None:
        with _connect(self.path) as db:
            db.executemany(
                "INSERT OR IGNORE INTO confirmed (study, sop, at) VALUES (?, ?, ?)",
                [(study, sop, now) for sop in sops],
            )

    def add(self, counter: str, amount: int = 1) -> None:
        with _connect(self.path) as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (counter, amount),
            )

    def counter(self, name: str) -> int:
        with _connect(self.path) as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def note_run(self, now: float, orthanc_up: bool, main_up: bool) -> None:
        with _connect(self.path) as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (id, at, orthanc_up, main_up) VALUES (1, ?, ?, ?)",
                (now, int(orthanc_up), int(main_up)),
            )

    def last_run(self) -> tuple[float, bool, bool] | None:
        with _connect(self.path) as db:
            row = db.execute("SELECT at, orthanc_up, main_up FROM runs WHERE id = 1").fetchone()
        return None if row is None else (float(row[0]), bool(row[1]), bool(row[2]))


# ------------------------------------------------------------------ Orthanc's REST


class NotFound(Exception):
    """Orthanc answered 404: the resource is not (or no longer) there."""


class Rest(Protocol):
    def get(self, uri: str) -> Any: ...

    def post(self, uri: str, body: Mapping[str, Any]) -> Any: ...

    def delete(self, uri: str) -> Any: ...


class HttpRest:
    """The relay's Orthanc, on 127.0.0.1, with the administrator's account."""

    def __init__(self, config: Config) -> None:
        self.base = config.orthanc_url.rstrip("/")
        self.timeout = config.timeout_seconds
        self.token = base64.b64encode(f"{config.user}:{config.password}".encode()).decode()

    def _call(self, method: str, uri: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        # The base is relay.json's orthanc_url: http://127.0.0.1, never a user's input.
        request = urllib.request.Request(self.base + uri, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Basic {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                text = answer.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(f"{method} {uri}: 404") from exc
            detail = " ".join(exc.read().decode("utf-8", "replace").split())[:500]
            raise RuntimeError(f"{method} {uri}: HTTP {exc.code} {detail}") from exc
        return json.loads(text) if text.strip() else None

    def get(self, uri: str) -> Any:
        return self._call("GET", uri)

    def post(self, uri: str, body: Mapping[str, Any]) -> Any:
        return self._call("POST", uri, body)

    def delete(self, uri: str) -> Any:
        return self._call("DELETE", uri)


@dataclass(frozen=True)
class LocalStudy:
    """What the relay's Orthanc says of a study."""

    id: str
    uid: str
    last_update: float
    stable: bool
    sops: frozenset[str] = field(default_factory=frozenset)
    #: SOPInstanceUID -> Orthanc's ID of the instance: what a purge deletes, one by one.
    instances: Mapping[str, str] = field(default_factory=dict)


def orthanc_time(text: str) -> float:
    """Orthanc's ``LastUpdate`` (``20240131T235959``, UTC) as a Unix time; 0 if unreadable."""
    try:
        return float(calendar.timegm(time.strptime(str(text)[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        return 0.0


def local_study(rest: Rest, study: str) -> LocalStudy:
    """The study's UID, last update and SOPInstanceUIDs, from the relay's index (no file read).

    ``/studies/{id}/instances`` answers every instance with its main tags, in Orthanc 1.10
    (Debian 12) as in 1.12 (Debian 13). Raises NotFound when the study is gone.
    """
    info = rest.get(f"/studies/{study}")
    instances = {
        str(item["MainDicomTags"]["SOPInstanceUID"]): str(item.get("ID", ""))
        for item in rest.get(f"/studies/{study}/instances") or []
        if item.get("MainDicomTags", {}).get("SOPInstanceUID")
    }
    return LocalStudy(
        id=study,
        uid=str(info.get("MainDicomTags", {}).get("StudyInstanceUID", "")),
        last_update=orthanc_time(info.get("LastUpdate", "")),
        stable=bool(info.get("IsStable", True)),
        sops=frozenset(instances),
        instances=instances,
    )


def _answer_sop(answer: Any) -> str:
    """The SOPInstanceUID of a C-FIND answer, simplified (by keyword) or full (by tag)."""
    if not isinstance(answer, Mapping):
        return ""
    if "SOPInstanceUID" in answer:
        return str(answer["SOPInstanceUID"] or "")
    full = answer.get("0008,0018")
    if isinstance(full, Mapping):
        return str(full.get("Value") or "")
    return str(full or "")


def remote_sops(rest: Rest, destination: str, study_uid: str) -> set[str]:
    """The SOPInstanceUIDs of a study that the destination holds: a C-FIND at instance level.

    ``POST /modalities/{node}/query`` then ``/queries/{id}/answers?expand&simplify``
    (Orthanc 1.9.5 and later: 1.10 and 1.12 both). The query is deleted afterwards
    (Orthanc keeps the last ones in memory). Raises when the node cannot be asked.
    """
    query = rest.post(
        f"/modalities/{destination}/query",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "SOPInstanceUID": ""}},
    )
    qid = str(query["ID"])
    try:
        answers = rest.get(f"/queries/{qid}/answers?expand&simplify")
        if answers and not isinstance(answers[0], Mapping):  # indices only: one at a time
            answers = [
                rest.get(f"/queries/{qid}/answers/{index}/content?simplify") for index in answers
            ]
        return {sop for sop in map(_answer_sop, answers or []) if sop}
    finally:
        with contextlib.suppress(Exception):
            rest.delete(f"/queries/{qid}")


# ------------------------------------------------------------------------ the check


@dataclass
class Report:
    """What one run found: the metrics' values and what the journal says."""

    now: float
    orthanc_up: bool = False
    main_up: bool = False
    backlog_studies: int = 0
    backlog_instances: int | None = 0
    oldest_unsent_seconds: float = 0.0
    failed_attempts: int = 0
    confirmed_total: int = 0
    purged_total: int = 0
    kept_studies: int = 0
    confirmed_now: list[str] = field(default_factory=list)
    purged_now: list[tuple[str, int]] = field(default_factory=list)
    sent_again: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Probe:
    """Whether the main archive answered this run's C-FINDs, and how many it answered."""

    reachable: bool = True  # until a C-FIND fails: then no other is tried this run
    asked: int = 0


class Relay:
    """One check of the relay: confirm, give back, purge, count."""

    def __init__(
        self,
        config: Config,
        rest: Rest,
        queue: RoutingQueue,
        ledger: Ledger,
        *,
        log: Log = lambda _message: None,
    ) -> None:
        self.config = config
        self.rest = rest
        self.queue = queue
        self.ledger = ledger
        self.log = log

    def _orthanc_up(self) -> bool:
        try:
            self.rest.get("/system")
        except Exception as exc:  # any failure: Orthanc does not answer
            self.log(f"pacs-relay: the relay's Orthanc does not answer: {exc}")
            return False
        return True

    def run(self, now: float) -> Report:
        report = Report(now=now, orthanc_up=self._orthanc_up())
        jobs = self.queue.jobs()
        probe = _Probe()
        for study, job in jobs.items():
            self._check(study, job, now, report, probe)
        if not probe.reachable:
            report.main_up = False
        elif probe.asked:
            report.main_up = True
        else:
            report.main_up = report.orthanc_up and self._echo()
        self._count(report, jobs, now)
        self.ledger.note_run(now, report.orthanc_up, report.main_up)
        return report

    def _check(
        self, study: str, job: RoutingJob, now: float, report: Report, probe: _Probe
    ) -> None:
        """One study: waiting, confirmed (and kept), given back to routing, or purged."""
        record = self.ledger.record(study)
        if record is not None and record.state != BACKLOG and job.updated > record.at:
            # Queued or sent again since it was confirmed (or purged): what the main archive
            # held then proves nothing now (it may have lost images since); ask again, whole.
            self.ledger.forget(study)
        if job.state != DONE:
            self._waiting(study, job, record, now)
            return
        if record is not None and record.state in (PURGED, GONE) and job.updated <= record.at:
            return  # purged (or deleted by a person), and not sent again since
        kept = record is not None and record.state == CONFIRMED and job.updated <= record.at
        if not report.orthanc_up:
            if not kept:
                self._waiting(study, job, record, now)
            return
        if kept and record is not None and not self._keep_over(record.last_update, now):
            return  # confirmed, not sent since, kept a while yet: nothing to ask anyone
        local = self._stable_study(study, job, record, now)
        if local is None:
            return
        if not self._confirm(study, local, now, report, probe):
            self._waiting(study, job, record, now, uid=local.uid)
            return
        if not kept:
            self.ledger.set_state(
                study,
                CONFIRMED,
                now,
                uid=local.uid,
                instances=len(local.sops),
                last_update=local.last_update,
            )
            self.ledger.add("confirmed_studies")
            report.confirmed_now.append(local.uid)
            self.log(
                f"pacs-relay: study {local.uid} confirmed at the main archive"
                f" ({len(local.sops)} instance(s))"
            )
        if self._keep_over(local.last_update, now):
            self._purge(study, local, now, report)

    def _stable_study(
        self, study: str, job: RoutingJob, record: StudyRecord | None, now: float
    ) -> LocalStudy | None:
        """The study as the relay holds it, if it is there and stable (else it waits)."""
        try:
            local = local_study(self.rest, study)
        except NotFound:
            self.ledger.set_state(study, GONE, now)
            self.log(f"pacs-relay: study {study} is no longer on the relay (deleted by hand?)")
            return None
        except Exception as exc:
            self.log(f"pacs-relay: study {study}: the relay's Orthanc failed: {exc}")
            self._waiting(study, job, record, now)
            return None
        if not local.stable:
            # New images since routing sent it: routing sends it again once it is stable.
            self._waiting(study, job, record, now, uid=local.uid)
            return None
        return local

    def _confirm(
        self, study: str, local: LocalStudy, now: float, report: Report, probe: _Probe
    ) -> bool:
        """Whether the main archive holds every image of the study (asked if need be).

        Images it lacks: routing's job is pending again, due now."""
        unconfirmed = local.sops - self.ledger.confirmed(study)
        if not unconfirmed:
            return True
        if not probe.reachable:
            return False
        try:
            held = remote_sops(self.rest, self.config.destination, local.uid)
        except Exception as exc:
            probe.reachable = False
            self.log(
                f"pacs-relay: the main archive ({self.config.destination}) could not be"
                f" asked about study {local.uid}: {exc}"
            )
            return False
        probe.asked += 1
        self.ledger.confirm(study, unconfirmed & held, now)
        missing = unconfirmed - held
        if not missing:
            return True
        self.queue.send_again(
            study, now, f"pacs-relay: {len(missing)} instance(s) missing at the main archive"
        )
        report.sent_again.append((local.uid, len(missing)))
        self.log(
            f"pacs-relay: study {local.uid}: {len(missing)} of {len(local.sops)}"
            " instance(s) missing at the main archive; sent again"
        )
        return False

    def _waiting(
        self, study: str, job: RoutingJob, record: StudyRecord | None, now: float, uid: str = ""
    ) -> None:
        """The study waits for the main archive: since its job was made, or since it came
        back (new images after it was confirmed or purged)."""
        if record is None:
            self.ledger.set_state(study, BACKLOG, now, since=min(job.created, now), uid=uid)
        elif record.state != BACKLOG:
            self.ledger.set_state(
                study, BACKLOG, now, since=min(max(job.updated, record.at), now), uid=uid
            )
        elif uid and not record.uid:
            self.ledger.set_state(study, BACKLOG, now, uid=uid)

    def _keep_over(self, last_update: float, now: float) -> bool:
        keep = self.config.keep_days * 86400
        return keep <= 0 or now - last_update >= keep

    def _echo(self) -> bool:
        """A C-ECHO of the main archive, when no C-FIND said whether it answers."""
        try:
            self.rest.post(f"/modalities/{self.config.destination}/echo", {})
        except Exception as exc:
            self.log(
                f"pacs-relay: the main archive ({self.config.destination})"
                f" does not answer a C-ECHO: {exc}"
            )
            return False
        return True

    def _purge(self, study: str, first: LocalStudy, now: float, report: Report) -> None:
        """Delete a confirmed study, after counting its images again (some may have come)
        and asking the main archive once more that it holds every one (a person may have
        deleted some there since they were confirmed).

        The images are deleted one by one, those counted and confirmed only (Orthanc drops
        the study with its last image): an image that arrives meanwhile stays, with its
        study, until it is confirmed in turn."""
        try:
            again = local_study(self.rest, study)
            job = self.queue.jobs().get(study)
            confirmed = self.ledger.confirmed(study)
            if not again.stable or not again.sops <= confirmed or job is None or job.state != DONE:
                self.log(
                    f"pacs-relay: study {first.uid} got new images; kept until they are confirmed"
                )
                return
            lost = again.sops - remote_sops(self.rest, self.config.destination, again.uid)
            if lost:
                self._lost(study, again, lost, now, report)
                return
            for sop in sorted(again.sops):
                self.rest.delete(f"/instances/{again.instances[sop]}")
        except Exception as exc:
            self.log(f"pacs-relay: study {first.uid} not purged (or not whole): {exc}")
            return
        self.ledger.set_state(study, PURGED, now, instances=len(again.sops))
        self.ledger.forget(study)  # a study sent again is asked about whole: no need to keep them
        self.ledger.add("purged_studies")
        report.purged_now.append((again.uid, len(again.sops)))
        self.log(
            f"pacs-relay: purged study {again.uid} ({len(again.sops)} instance(s)), confirmed at"
            f" the main archive; last image {(now - again.last_update) / 86400:.1f} day(s) ago"
        )

    def _lost(
        self, study: str, local: LocalStudy, lost: frozenset[str], now: float, report: Report
    ) -> None:
        """Images confirmed before that the main archive no longer holds: sent again."""
        self.ledger.forget(study, lost)
        self.ledger.set_state(study, BACKLOG, now, since=now)
        self.queue.send_again(
            study, now, f"pacs-relay: {len(lost)} instance(s) no longer at the main archive"
        )
        report.sent_again.append((local.uid, len(lost)))
        self.log(
            f"pacs-relay: study {local.uid}: {len(lost)} of {len(local.sops)} instance(s)"
            " confirmed before are no longer at the main archive; not purged, sent again"
        )

    def _count(self, report: Report, jobs: Mapping[str, RoutingJob], now: float) -> None:
        records = self.ledger.records()
        waiting = [s for s, r in records.items() if r.state == BACKLOG and s in jobs]
        report.backlog_studies = len(waiting)
        report.oldest_unsent_seconds = max((now - records[s].since for s in waiting), default=0.0)
        report.failed_attempts = sum(j.attempts for j in jobs.values() if j.state != DONE)
        report.kept_studies = sum(
            1 for s, r in records.items() if r.state == CONFIRMED and s in jobs
        )
        report.confirmed_total = self.ledger.counter("confirmed_studies")
        report.purged_total = self.ledger.counter("purged_studies")
        if not report.orthanc_up:
            report.backlog_instances = None
            return
        count = 0
        for study in waiting:
            with contextlib.suppress(Exception):  # gone meanwhile: counted at the next run
                local = local_study(self.rest, study)
                count += len(local.sops - self.ledger.confirmed(study))
                if not records[study].uid:  # for `pacs-relay status`
                    self.ledger.set_state(study, BACKLOG, records[study].at, uid=local.uid)
        report.backlog_instances = count


# ------------------------------------------------------------------------- metrics


def metrics(report: Report, config: Config) -> list[str]:
    """The textfile collector's lines (HELP and TYPE for each)."""

    def one(name: str, kind: str, text: str, value: float | int) -> list[str]:
        number = int(value) if float(value).is_integer() else round(float(value), 3)
        return [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {number}"]

    lines = one(
        "pacs_relay_up",
        "gauge",
        "Whether the relay's Orthanc answered (1) or not (0).",
        int(report.orthanc_up),
    )
    lines += one(
        "pacs_relay_main_archive_up",
        "gauge",
        "Whether the main archive answered the relay's last C-FIND (1) or not (0).",
        int(report.main_up),
    )
    lines += one(
        "pacs_relay_backlog_studies",
        "gauge",
        "Studies on the relay that the main archive has not confirmed yet (to send, or sent).",
        report.backlog_studies,
    )
    if report.backlog_instances is not None:
        lines += one(
            "pacs_relay_backlog_instances",
            "gauge",
            "Images of those studies that the main archive has not confirmed yet.",
            report.backlog_instances,
        )
    lines += one(
        "pacs_relay_oldest_unsent_seconds",
        "gauge",
        "How long the oldest study not confirmed by the main archive has waited (0: none).",
        round(report.oldest_unsent_seconds),
    )
    lines += one(
        "pacs_relay_failed_attempts",
        "gauge",
        "Failed attempts to send the studies that routing still has to send.",
        report.failed_attempts,
    )
    lines += one(
        "pacs_relay_kept_studies",
        "gauge",
        "Studies confirmed by the main archive and still kept on the relay (relay_keep_days).",
        report.kept_studies,
    )
    lines += one(
        "pacs_relay_confirmed_studies_total",
        "counter",
        "Studies that the main archive confirmed holding whole.",
        report.confirmed_total,
    )
    lines += one(
        "pacs_relay_purged_studies_total",
        "counter",
        "Studies deleted from the relay once confirmed and kept relay_keep_days.",
        report.purged_total,
    )
    lines += one(
        "pacs_relay_backlog_alert_seconds",
        "gauge",
        "Past this wait, the oldest study alerts (relay_backlog_alert_seconds).",
        config.backlog_alert_seconds,
    )
    lines += one(
        "pacs_relay_last_run_timestamp_seconds",
        "gauge",
        "When pacs-relay last ran.",
        round(report.now),
    )
    return lines


def write_atomic(path: str, lines: Iterable[str]) -> None:
    """Write a file whole, by a rename: the collector never reads half of it."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def publish(source: str, directory: str) -> None:
    """Copy the run's metrics into the collector's folder (made if absent), atomically."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    target = os.path.join(directory, METRICS_NAME)
    handle, tmp = tempfile.mkstemp(prefix=f".{METRICS_NAME}.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -------------------------------------------------------------------------- status


def status(config: Config, now: float) -> dict[str, Any]:
    """The backlog for a person: read from routing.sqlite and relay.sqlite only."""
    ledger = Ledger(config.state_db)
    jobs = RoutingQueue(config.routing_db, config.destination).jobs()
    records = ledger.records()
    last = ledger.last_run()
    waiting: list[dict[str, Any]] = []
    for study, job in jobs.items():
        record = records.get(study)
        if record is not None and record.state in (CONFIRMED, PURGED, GONE) and job.state == DONE:
            continue
        since = record.since if record is not None else job.created
        waiting.append(
            {
                "study": study,
                "uid": record.uid if record is not None else "",
                "state": "sent, not confirmed yet" if job.state == DONE else job.state,
                "waiting_seconds": round(now - since),
                "attempts": job.attempts if job.state != DONE else 0,
                "next_try_seconds": round(job.next_at - now) if job.state != DONE else None,
                "confirmed_instances": len(ledger.confirmed(study)),
                "last_error": job.last_error,
            }
        )
    waiting.sort(key=lambda w: -int(w["waiting_seconds"]))
    return {
        "destination": config.destination,
        "main_aet": config.main_aet,
        "last_run_seconds_ago": None if last is None else round(now - last[0]),
        "orthanc_up": None if last is None else last[1],
        "main_archive_up": None if last is None else last[2],
        "waiting": waiting,
        "kept": sum(1 for s, r in records.items() if r.state == CONFIRMED and s in jobs),
        "keep_days": config.keep_days,
        "confirmed_total": ledger.counter("confirmed_studies"),
        "purged_total": ledger.counter("purged_studies"),
    }


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def status_text(data: Mapping[str, Any]) -> str:
    """``pacs-relay status`` for a person: one summary line, then the waiting studies."""
    waiting = data["waiting"]
    main = {True: "answers", False: "NOT answering", None: "?"}[data["main_archive_up"]]
    orthanc = {True: "up", False: "DOWN", None: "?"}[data["orthanc_up"]]
    head = (
        f"Main archive: {data['main_aet'] or '?'} (node {data['destination']}), {main};"
        f" relay's Orthanc {orthanc}; last check {_ago(data['last_run_seconds_ago'])} ago."
    )
    if data["last_run_seconds_ago"] is None:
        head = f"pacs-relay has not run yet (systemctl status pacs-relay.timer). {head}"
    lines = [head]
    if not waiting:
        lines.append("Nothing waiting: the main archive holds every study the relay received.")
    else:
        oldest = max(w["waiting_seconds"] for w in waiting)
        lines.append(
            f"{len(waiting)} study(ies) waiting for the main archive;"
            f" the oldest for {_ago(oldest)}:"
        )
        rows = [
            (
                "STUDY INSTANCE UID (or Orthanc ID)",
                "STATE",
                "WAITING",
                "TRIES",
                "NEXT TRY",
                "LAST ERROR",
            )
        ]
        for w in waiting:
            rows.append(
                (
                    w["uid"] or w["study"],
                    str(w["state"]),
                    _ago(w["waiting_seconds"]),
                    str(w["attempts"]),
                    "-"
                    if w["next_try_seconds"] is None
                    else (
                        "now" if w["next_try_seconds"] <= 0 else f"in {_ago(w['next_try_seconds'])}"
                    ),
                    str(w["last_error"])[:60],
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            lines.append(
                "  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:-1])) + "  " + row[-1]
            )
    lines.append(
        f"Confirmed and kept on the relay: {data['kept']}"
        f" (purged {data['keep_days']:g} day(s) after their last image);"
        f" confirmed so far: {data['confirmed_total']}; purged so far: {data['purged_total']}."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def _journal(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacs-relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG, help=f"relay.json (default {CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="confirm, give back, purge, write the metrics (the timer's job)")
    sub.add_parser("publish", help="copy the metrics into the textfile collector's folder (root)")
    show = sub.add_parser("status", help="what is waiting for the main archive")
    show.add_argument("--json", action="store_true", help="as JSON")
    check = sub.add_parser("check-config", help="check a candidate relay.json")
    check.add_argument("file")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        try:
            load_config(args.file)
        except (OSError, ValueError) as exc:
            print(f"{args.file}: {exc}", file=sys.stderr)
            return 1
        return 0
    config = load_config(args.config)
    if args.command == "publish":
        publish(config.metrics_file, config.textfile_directory)
        return 0
    if args.command == "status":
        data = status(config, time.time())
        print(json.dumps(data, indent=2) if args.json else status_text(data))
        return 0
    relay = Relay(
        config,
        HttpRest(config),
        RoutingQueue(config.routing_db, config.destination),
        Ledger(config.state_db),
        log=_journal,
    )
    report = relay.run(time.time())
    write_atomic(config.metrics_file, metrics(report, config))
    if report.backlog_studies:
        _journal(
            f"pacs-relay: {report.backlog_studies} study(ies) waiting for the main archive,"
            f" the oldest for {_ago(report.oldest_unsent_seconds)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
