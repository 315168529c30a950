"""Routing: stable studies that match a rule are sent to a declared DICOM node.

A rule (``PacsLibre.Routing.Rules`` in orthanc.json, from ``orthanc_routing_rules``)
names a destination, a node of ``DicomModalities``, and a filter: the modalities of
the study's series, the AE titles that sent it, and regular expressions on its
study and patient tags. When Orthanc says a study is stable (no new image for
``StableAge`` seconds), every matching rule puts a job in a queue. A worker thread
sends the due jobs with a C-STORE (an asynchronous Orthanc job from
``/modalities/{node}/store``, polled: a synchronous call would hold Python's
global lock for the whole transfer, and every incoming C-STORE waits for that
lock in the integrity service), and on failure tries again later, waiting twice
as long each time, up to ``RetryMaxSeconds``, until ``MaxAttempts``; then the job
stays, marked failed.

The queue is a SQLite file in ``PacsLibre.StateDirectory``: a job written there
survives a restart of Orthanc or of the server, and is sent when it is due.

Everything here but ``setup`` is plain Python, tested in
tests/test_orthanc_routing.py; ``setup`` is the boundary with Orthanc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class StudyFacts:
    """What a rule may look at: the study's tags, its modalities, who sent it."""

    study: str
    tags: Mapping[str, str] = field(default_factory=dict)
    modalities: frozenset[str] = frozenset()
    calling_aets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """One routing rule; an empty criterion matches every study."""

    name: str
    destination: str
    modalities: frozenset[str] = frozenset()
    calling_aets: frozenset[str] = frozenset()
    tags: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Rule:
        return cls(
            name=str(entry["Name"]),
            destination=str(entry["Destination"]),
            modalities=frozenset(str(m).upper() for m in entry.get("Modalities", [])),
            calling_aets=frozenset(str(a).strip().upper() for a in entry.get("CallingAets", [])),
            tags=tuple(
                (str(tag), re.compile(str(pattern)))
                for tag, pattern in sorted((entry.get("Tags") or {}).items())
            ),
        )

    def matches(self, facts: StudyFacts) -> bool:
        if self.modalities and not self.modalities & {m.upper() for m in facts.modalities}:
            return False
        if self.calling_aets and not self.calling_aets & {
            a.strip().upper() for a in facts.calling_aets
        }:
            return False
        return all(
            pattern.fullmatch(str(facts.tags.get(tag, ""))) is not None
            for tag, pattern in self.tags
        )


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: base, 2 base, 4 base... up to cap."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(attempts - 1, 32)))


@dataclass(frozen=True)
class Job:
    id: int
    study: str
    rule: str
    destination: str
    state: str
    attempts: int
    next_at: float
    last_error: str


class Queue:
    """The routing queue, in a SQLite file: it outlives the process that wrote it."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        study TEXT NOT NULL,
        rule TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (study, rule)
    )"""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(self.SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def enqueue(self, study: str, rule: str, destination: str, now: float) -> bool:
        """Queue a study for a rule. A study already queued is left alone; one that was
        sent (or gave up) is queued again, since it became stable again with new images."""
        with self._lock, self._connect() as db:
            row = db.execute(
                "SELECT state FROM jobs WHERE study = ? AND rule = ?", (study, rule)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO jobs (study, rule, destination, state, next_at, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study, rule, destination, PENDING, now, now, now),
                )
                return True
            if row[0] == PENDING:
                return False
            db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, next_at = ?, last_error = '',"
                " destination = ?, updated = ? WHERE study = ? AND rule = ?",
                (PENDING, now, destination, now, study, rule),
            )
            return True

    def due(self, now: float, limit: int = 10) -> list[Job]:
        with self._lock, self._connect() as db:
            rows = db.execute(
                "SELECT id, study, rule, destination, state, attempts, next_at, last_error"
                " FROM jobs WHERE state = ? AND next_at <= ? ORDER BY next_at, id LIMIT ?",
                (PENDING, now, limit),
            ).fetchall()
        return [Job(*row) for row in rows]

    def succeeded(self, job: Job, now: float) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, last_error = '', updated = ?"
                " WHERE id = ?",
                (DONE, now, job.id),
            )

    def failed(
        self, job: Job, error: str, now: float, *, max_attempts: int, base: float, cap: float
    ) -> Job:
        """Record a failed attempt: due again after the backoff, or failed for good."""
        attempts = job.attempts + 1
        state = FAILED if attempts >= max_attempts else PENDING
        next_at = now + retry_delay(attempts, base, cap)
        with self._lock, self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated = ?"
                " WHERE id = ?",
                (state, attempts, next_at, error[:2000], now, job.id),
            )
        return Job(job.id, job.study, job.rule, job.destination, state, attempts, next_at, error)

    def jobs(self) -> list[Job]:
        with self._lock, self._connect() as db:
            rows = db.execute(
                "SELECT id, study, rule, destination, state, attempts, next_at, last_error"
                " FROM jobs ORDER BY id"
            ).fetchall()
        return [Job(*row) for row in rows]


Log = Callable[[str], None]


class Router:
    """Matches stable studies against the rules and sends the queued jobs."""

    def __init__(
        self,
        rules: Iterable[Rule],
        queue: Queue,
        send: Callable[[str, str], None],
        *,
        max_attempts: int = 10,
        retry_seconds: float = 30,
        retry_max_seconds: float = 3600,
        log: Log = lambda _message: None,
    ) -> None:
        self.rules = list(rules)
        self.queue = queue
        self.send = send
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.log = log

    def on_stable_study(self, facts: StudyFacts, now: float) -> list[str]:
        """Queue the study for every rule it matches; the names of those rules."""
        matched = [rule for rule in self.rules if rule.matches(facts)]
        for rule in matched:
            if self.queue.enqueue(facts.study, rule.name, rule.destination, now):
                self.log(
                    f"routing: study {facts.study} queued for {rule.destination} ({rule.name})"
                )
        return [rule.name for rule in matched]

    def run_once(self, now: float) -> int:
        """Send every due job once; the number of jobs tried."""
        jobs = self.queue.due(now)
        for job in jobs:
            try:
                self.send(job.destination, job.study)
            except Exception as exc:  # any failure of the C-STORE: try again later
                after = self.queue.failed(
                    job,
                    str(exc) or type(exc).__name__,
                    now,
                    max_attempts=self.max_attempts,
                    base=self.retry_seconds,
                    cap=self.retry_max_seconds,
                )
                if after.state == FAILED:
                    self.log(
                        f"routing: study {job.study} to {job.destination} failed for good after "
                        f"{after.attempts} attempts: {exc}"
                    )
                else:
                    self.log(
                        f"routing: study {job.study} to {job.destination} failed "
                        f"(attempt {after.attempts}), next in {after.next_at - now:.0f} s: {exc}"
                    )
            else:
                self.queue.succeeded(job, now)
                self.log(f"routing: study {job.study} sent to {job.destination} ({job.rule})")
        return len(jobs)


# ------------------------------------------------------------- sending, as a job

#: Orthanc's job states that are not final.
_JOB_RUNNING = {"Pending", "Running", "Retry", "Paused"}


def send_as_job(
    rest_post: Callable[[str, str], Any],
    rest_get: Callable[[str], Any],
    wait: Callable[[float], bool],
    destination: str,
    study: str,
    *,
    poll_seconds: float = 1.0,
) -> None:
    """C-STORE a study to a node through an asynchronous Orthanc job, and wait for it.

    ``wait(seconds)`` sleeps (releasing Python's lock) and returns True when the
    service must stop. Raises when the job fails, when any instance is refused,
    or when Orthanc stops first (the queue then tries again after the restart).
    """
    body = json.dumps({"Resources": [study], "Synchronous": False})
    job = rest_post(f"/modalities/{destination}/store", body)["ID"]
    while True:
        status = rest_get(f"/jobs/{job}")
        state = status.get("State")
        if state not in _JOB_RUNNING:
            break
        if wait(poll_seconds):
            raise RuntimeError(f"Orthanc stopped while job {job} was {state}")
    if state != "Success":
        raise RuntimeError(
            f"job {job} {state}: {status.get('ErrorDescription') or status.get('ErrorCode')}"
            f" {status.get('ErrorDetails') or ''}".rstrip()
        )
    failed = int((status.get("Content") or {}).get("FailedInstancesCount", 0) or 0)
    if failed > 0:
        raise RuntimeError(f"{failed} instance(s) refused (job {job})")


# ----------------------------------------------------------------- Orthanc boundary


def study_facts(rest_get: Callable[[str], Any], study: str) -> StudyFacts:
    """A study's facts from Orthanc's REST API (``rest_get`` returns parsed JSON)."""
    info = rest_get(f"/studies/{study}")
    tags = {**info.get("PatientMainDicomTags", {}), **info.get("MainDicomTags", {})}
    modalities: set[str] = set()
    aets: set[str] = set()
    for series in rest_get(f"/studies/{study}/series"):
        modality = series.get("MainDicomTags", {}).get("Modality")
        if modality:
            modalities.add(str(modality))
        instances = series.get("Instances") or []
        if instances:
            # No metadata (an instance from the REST API): the sender stays unknown.
            with contextlib.suppress(Exception):
                aets.add(str(rest_get(f"/instances/{instances[0]}/metadata?expand")["RemoteAET"]))
    return StudyFacts(study, tags, frozenset(modalities), frozenset(aets))


def setup(orthanc: Any, settings: Mapping[str, Any]) -> None:
    """Start routing inside Orthanc (called by pacs_services.py)."""
    config = settings.get("Routing") or {}
    rules = [Rule.from_config(entry) for entry in config.get("Rules", [])]
    state_dir = settings.get("StateDirectory", "/var/lib/orthanc/pacs-libre")
    os.makedirs(state_dir, exist_ok=True)
    queue = Queue(os.path.join(state_dir, "routing.sqlite"))

    def rest_get(uri: str) -> Any:
        return json.loads(orthanc.RestApiGet(uri))

    def rest_post(uri: str, body: str) -> Any:
        return json.loads(orthanc.RestApiPost(uri, body))

    stop = threading.Event()

    def send(destination: str, study: str) -> None:
        send_as_job(rest_post, rest_get, stop.wait, destination, study)

    router = Router(
        rules,
        queue,
        send,
        max_attempts=int(config.get("MaxAttempts", 10)),
        retry_seconds=float(config.get("RetrySeconds", 30)),
        retry_max_seconds=float(config.get("RetryMaxSeconds", 3600)),
        log=orthanc.LogWarning,
    )

    def worker() -> None:
        while not stop.wait(2.0):
            try:
                router.run_once(time.time())
            except Exception as exc:  # keep the worker alive whatever happens
                orthanc.LogError(f"routing: worker error: {exc!r}")

    thread = threading.Thread(target=worker, name="pacs-routing", daemon=True)

    def on_change(change_type: Any, _level: Any, resource: str) -> None:
        if change_type == orthanc.ChangeType.STABLE_STUDY and rules:
            try:
                router.on_stable_study(study_facts(rest_get, resource), time.time())
            except Exception as exc:
                orthanc.LogError(f"routing: study {resource} not queued: {exc!r}")
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            thread.start()
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            stop.set()

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"routing: {len(rules)} rule(s), queue {queue.path}")
