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
stays, marked failed. ``MaxAttempts`` 0 (or less) never gives up: the job stays
pending and is tried again after each wait, however long the destination is down
(a relay, whose every study must reach the main archive).

The queue is a SQLite file in ``PacsLibre.StateDirectory``: a job written there
survives a restart of Orthanc or of the server, and is sent when it is due.

Orthanc knows which studies are still receiving images in memory only: a study
whose last images came less than ``StableAge`` before Orthanc stopped never
becomes stable after the restart. Orthanc's change log (``/changes``) is in its
database, so routing keeps its place there (``Replay``), and at startup
evaluates, as stable, the studies that got images after that place and that the
rules have not seen since.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    """The routing queue, in a SQLite file: it outlives the process that wrote it.

    The same file keeps routing's place in Orthanc's change log (``place``) and,
    for each study the rules saw since that place, where the log was then
    (``evaluated``): what ``Replay`` needs after a restart.
    """

    SCHEMA = (
        """
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
    )""",
        "CREATE TABLE IF NOT EXISTS place"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS evaluated (study TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                db.execute(statement)

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
        """Record a failed attempt: due again after the backoff, or failed for good once
        ``max_attempts`` are spent (never when ``max_attempts`` is 0 or less)."""
        attempts = job.attempts + 1
        state = FAILED if 0 < max_attempts <= attempts else PENDING
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

    def place(self) -> int | None:
        """Routing's place in Orthanc's change log; None if it was never saved."""
        with self._lock, self._connect() as db:
            row = db.execute("SELECT seq FROM place WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def advance_place(self, seq: int) -> None:
        """Move the place on to ``seq``; what the rules saw before it no longer matters."""
        with self._lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO place (id, seq) VALUES (1, ?)", (seq,))
            db.execute("DELETE FROM evaluated WHERE seq <= ?", (seq,))

    def reset_place(self, seq: int | None) -> None:
        """Start again at ``seq`` (None: no place), forgetting what the rules saw."""
        with self._lock, self._connect() as db:
            db.execute("DELETE FROM place")
            db.execute("DELETE FROM evaluated")
            if seq is not None:
                db.execute("INSERT INTO place (id, seq) VALUES (1, ?)", (seq,))

    def note_evaluated(self, study: str, seq: int) -> None:
        """The rules saw ``study`` when Orthanc's change log was at ``seq``."""
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT INTO evaluated (study, seq) VALUES (?, ?) ON CONFLICT (study)"
                " DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (study, seq),
            )

    def evaluated_at(self, study: str) -> int | None:
        """Where the change log was when the rules last saw ``study``; None: not since the place."""
        with self._lock, self._connect() as db:
            row = db.execute("SELECT seq FROM evaluated WHERE study = ?", (study,)).fetchone()
        return None if row is None else int(row[0])


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


# ------------------------------------------------- after a restart: the change log


def last_change(rest_get: Callable[[str], Any]) -> int:
    """The number of the last change in Orthanc's log (``/changes?last``; 0 if empty)."""
    return int(rest_get("/changes?last").get("Last") or 0)


def changes_between(
    rest_get: Callable[[str], Any], since: int, until: int, page: int = 500
) -> Iterator[Mapping[str, Any]]:
    """The changes of Orthanc's log after ``since`` and up to ``until``, oldest first.

    ``/changes?since=N&limit=P`` answers at most P changes after N, in order; ``Last``
    is the number of its last one (where the next page starts) and ``Done`` says
    that the log ends there.
    """
    while since < until:
        answer = rest_get(f"/changes?since={since}&limit={page}")
        changes = answer.get("Changes") or []
        for change in changes:
            if int(change["Seq"]) > until:
                return
            yield change
        following = int(answer.get("Last") or 0)
        if answer.get("Done") or not changes or following <= since:
            return
        since = following


def study_of_instance(
    rest_get: Callable[[str], Any], instance: str, series_study: dict[str, str]
) -> str:
    """The study of an instance, through its series (``series_study`` caches the series)."""
    series = str(rest_get(f"/instances/{instance}")["ParentSeries"])
    if series not in series_study:
        series_study[series] = str(rest_get(f"/series/{series}")["ParentStudy"])
    return series_study[series]


class Replay:
    """Routes the studies that a restart of Orthanc made it forget.

    Orthanc says that a study is stable ``StableAge`` seconds after its last image,
    and keeps that count in memory only: for a study whose last images came less
    than ``StableAge`` before Orthanc stopped, it never says so after the restart.
    Its change log is in its database, so routing keeps a place there, and notes
    for each study it evaluates where the log was then (``evaluate``). The place
    is the last change that Orthanc's log held ``hold`` seconds ago: by then every
    study with images up to it was stable and evaluated (``StableAge``, plus a
    margin for Orthanc's stability check and its change callbacks).

    At startup (``start``), every study with a NewInstance, NewStudy or StableStudy
    change after the place and none of its changes seen by the rules since (a
    stable-study change that Orthanc logged but did not deliver, as it stopped, is
    replayed too) is evaluated as stable ``StableAge`` seconds later, as Orthanc
    itself would have, unless Orthanc is receiving it again by then: it will then
    say that it is stable itself. A study that the rules saw after its last change
    is left alone, so a study already queued or sent is not queued again.
    """

    #: Seconds between two readings of the change log's last number.
    MARK_EVERY = 10.0
    #: Seconds to wait before reading the change log again after an error.
    RETRY_AFTER = 30.0

    def __init__(
        self,
        router: Router,
        queue: Queue,
        rest_get: Callable[[str], Any],
        *,
        stable_age: float = 60,
        margin: float = 60,
        page: int = 500,
        log: Log = lambda _message: None,
    ) -> None:
        self.router = router
        self.queue = queue
        self.rest_get = rest_get
        self.stable_age = stable_age
        self.hold = stable_age + margin
        self.page = page
        self.log = log
        self.started = False
        self.due: list[tuple[str, int]] = []
        self.due_at = 0.0
        self._marks: list[tuple[float, int]] = []
        self._retry_at = 0.0

    def evaluate(self, study: str, now: float) -> list[str]:
        """Evaluate the rules for a stable study, and note where the change log was."""
        seq = last_change(self.rest_get)
        matched = self.router.on_stable_study(study_facts(self.rest_get, study), now)
        self.queue.note_evaluated(study, seq)
        return matched

    def start(self, now: float) -> None:
        """Read the change log after the saved place; raises on an error of Orthanc."""
        last = last_change(self.rest_get)
        place = self.queue.place()
        if not self.router.rules:
            # Nothing routes: a place kept now would replay, under rules added later,
            # every study received meanwhile.
            self.queue.reset_place(None)
        elif place is None or place > last:
            self.queue.reset_place(last)
            self.log(
                f"routing: no place saved in Orthanc's change log, starting at change {last}"
                " (nothing replayed)"
                if place is None
                else f"routing: the saved place {place} is past the change log's end {last}"
                " (log cleared or index restored), starting there (nothing replayed)"
            )
        elif place == last:
            self.log(f"routing: no change in Orthanc's log after routing's place {place}")
        else:
            self._read(place, last, now)
        self.started = True
        self._marks = [(now, last)]

    def _read(self, place: int, last: int, now: float) -> None:
        latest: dict[str, int] = {}
        series_study: dict[str, str] = {}
        read = gone = 0
        for change in changes_between(self.rest_get, place, last, self.page):
            read += 1
            kind, seq, resource = change.get("ChangeType"), int(change["Seq"]), str(change["ID"])
            if kind == "NewInstance":
                try:
                    latest[study_of_instance(self.rest_get, resource, series_study)] = seq
                except Exception:  # deleted since: nothing to route
                    gone += 1
            elif kind in ("NewStudy", "StableStudy"):
                latest[resource] = seq
        seen = 0
        self.due = []
        for study, seq in latest.items():
            evaluated = self.queue.evaluated_at(study)
            if evaluated is not None and evaluated >= seq:
                seen += 1
            else:
                self.due.append((study, seq))
        self.due_at = now + self.stable_age
        self.log(
            f"routing: after the restart, {read} change(s) of Orthanc's log read ({place + 1} to"
            f" {last}): {len(latest)} study(ies), {seen} already seen by the rules,"
            f" {len(self.due)} to evaluate in {self.stable_age:.0f} s"
            + (f", {gone} image(s) deleted since" if gone else "")
        )

    def tick(self, now: float) -> None:
        """Start, evaluate the replayed studies when due, move the place on. Never raises."""
        if not self.started:
            if now < self._retry_at:
                return
            try:
                self.start(now)
            except Exception as exc:
                self._retry_at = now + self.RETRY_AFTER
                self.log(
                    f"routing: Orthanc's change log could not be read ({exc!r}); "
                    f"trying again in {self.RETRY_AFTER:.0f} s"
                )
                return
        if self.due:
            if now >= self.due_at:
                self._evaluate_due(now)
            return  # the place must not pass a replayed study before it is evaluated
        if not self.router.rules or now - self._marks[-1][0] < self.MARK_EVERY:
            return
        try:
            self._marks.append((now, last_change(self.rest_get)))
        except Exception as exc:
            self.log(f"routing: Orthanc's change log could not be read: {exc!r}")
            return
        old = [mark for mark in self._marks if mark[0] <= now - self.hold]
        if old:
            self._marks = [old[-1]] + [mark for mark in self._marks if mark[0] > now - self.hold]
            place = self.queue.place()
            if place is None or old[-1][1] > place:
                self.queue.advance_place(old[-1][1])

    def _evaluate_due(self, now: float) -> None:
        evaluated = receiving = seen = failed = 0
        for study, seq in self.due:
            try:
                at = self.queue.evaluated_at(study)
                if at is not None and at >= seq:
                    seen += 1  # Orthanc said it was stable meanwhile
                elif not self.rest_get(f"/studies/{study}").get("IsStable", True):
                    receiving += 1  # Orthanc will say that it is stable itself
                else:
                    self.evaluate(study, now)
                    evaluated += 1
            except Exception as exc:
                failed += 1
                self.log(f"routing: study {study} not evaluated after the restart: {exc!r}")
        self.due = []
        self.log(
            f"routing: {evaluated} study(ies) that were arriving when Orthanc stopped evaluated"
            f" as stable ({receiving} receiving again, {seen} stable meanwhile, {failed} failed)"
        )


def setup(orthanc: Any, settings: Mapping[str, Any]) -> None:
    """Start routing inside Orthanc (called by pacs_services.py)."""
    config = settings.get("Routing") or {}
    stable_age = float(json.loads(orthanc.GetConfiguration()).get("StableAge", 60))
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
    replay = Replay(router, queue, rest_get, stable_age=stable_age, log=orthanc.LogWarning)

    def worker() -> None:
        while not stop.wait(2.0):
            try:
                replay.tick(time.time())
                router.run_once(time.time())
            except Exception as exc:  # keep the worker alive whatever happens
                orthanc.LogError(f"routing: worker error: {exc!r}")

    thread = threading.Thread(target=worker, name="pacs-routing", daemon=True)

    def on_change(change_type: Any, _level: Any, resource: str) -> None:
        if change_type == orthanc.ChangeType.STABLE_STUDY and rules:
            try:
                replay.evaluate(resource, time.time())
            except Exception as exc:
                orthanc.LogError(f"routing: study {resource} not queued: {exc!r}")
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            thread.start()
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            stop.set()

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"routing: {len(rules)} rule(s), queue {queue.path}")
