"""The routing service of the orthanc role: rules, its persistent queue, retries.

The module runs inside Orthanc; everything but ``setup`` is plain Python, tested
here. ``setup`` is tested with a stand-in for the ``orthanc`` module (the real one
exists only inside Orthanc), and for real by molecule/single-host; a restart of
Orthanc on a real host, by roles/orthanc/molecule/default (test_routing_restart.py).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

SERVICES = Path(__file__).resolve().parents[1] / "roles/orthanc/files/services"
_spec = importlib.util.spec_from_file_location("pacs_routing", SERVICES / "routing.py")
assert _spec and _spec.loader
routing = importlib.util.module_from_spec(_spec)
sys.modules["pacs_routing"] = routing
_spec.loader.exec_module(routing)


def rule(**entry: Any) -> Any:
    return routing.Rule.from_config({"Name": "r", "Destination": "ws", **entry})


def facts(**kw: Any) -> Any:
    return routing.StudyFacts(
        study=kw.pop("study", "s1"),
        tags=kw.pop("tags", {}),
        modalities=frozenset(kw.pop("modalities", [])),
        calling_aets=frozenset(kw.pop("calling_aets", [])),
    )


# ----------------------------------------------------------------------------- rules


def test_an_empty_rule_matches_every_study():
    assert rule().matches(facts())


def test_modalities_match_any_series_case_insensitive():
    cr = rule(Modalities=["CR", "DX"])
    assert cr.matches(facts(modalities=["CT", "cr"]))
    assert not cr.matches(facts(modalities=["CT", "MR"]))
    assert not cr.matches(facts())


def test_calling_aets_ignore_case_and_padding():
    r = rule(CallingAets=["CT_URG"])
    assert r.matches(facts(calling_aets=["ct_urg "]))
    assert not r.matches(facts(calling_aets=["IRM_1"]))


def test_tags_are_regular_expressions_that_match_whole():
    r = rule(Tags={"StudyDescription": "THORAX.*", "InstitutionName": "CH.*"})
    assert r.matches(facts(tags={"StudyDescription": "THORAX FACE", "InstitutionName": "CH X"}))
    assert not r.matches(facts(tags={"StudyDescription": "UN THORAX", "InstitutionName": "CH X"}))
    # A missing tag is an empty value.
    assert not r.matches(facts(tags={"StudyDescription": "THORAX"}))
    assert rule(Tags={"StudyDescription": ".*"}).matches(facts())


def test_all_criteria_must_hold():
    r = rule(Modalities=["CR"], Tags={"PatientID": "P.*"})
    assert r.matches(facts(modalities=["CR"], tags={"PatientID": "P1"}))
    assert not r.matches(facts(modalities=["CR"], tags={"PatientID": "X1"}))
    assert not r.matches(facts(modalities=["CT"], tags={"PatientID": "P1"}))


# ----------------------------------------------------------------------------- backoff


def test_retry_delay_doubles_up_to_the_cap():
    assert [routing.retry_delay(n, 30, 3600) for n in range(0, 9)] == [
        0,
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]


@given(st.integers(min_value=1, max_value=10_000), st.floats(1, 600), st.floats(1, 86400))
def test_retry_delay_never_exceeds_the_cap_and_never_shrinks(attempts, base, cap):
    delay = routing.retry_delay(attempts, base, cap)
    assert 0 < delay <= max(cap, 0)
    assert routing.retry_delay(attempts + 1, base, cap) >= delay


# ----------------------------------------------------------------------------- queue


@pytest.fixture
def queue(tmp_path: Path) -> Any:
    return routing.Queue(str(tmp_path / "routing.sqlite"))


def test_the_queue_survives_a_restart(tmp_path: Path):
    path = str(tmp_path / "routing.sqlite")
    routing.Queue(path).enqueue("s1", "r", "ws", now=100)
    # A new process opens the same file: the job is there, and due.
    again = routing.Queue(path)
    due = again.due(now=100)
    assert [(j.study, j.destination, j.state) for j in due] == [("s1", "ws", "pending")]


def test_a_queued_study_is_queued_once(queue: Any):
    assert queue.enqueue("s1", "r", "ws", now=0)
    assert not queue.enqueue("s1", "r", "ws", now=1)
    assert len(queue.jobs()) == 1


def test_a_sent_study_that_becomes_stable_again_is_sent_again(queue: Any):
    queue.enqueue("s1", "r", "ws", now=0)
    (job,) = queue.due(now=0)
    queue.succeeded(job, now=1)
    assert queue.due(now=2) == []
    assert queue.enqueue("s1", "r", "ws", now=3)
    assert [j.study for j in queue.due(now=3)] == ["s1"]


def test_a_failure_waits_then_gives_up(queue: Any):
    queue.enqueue("s1", "r", "ws", now=0)
    (job,) = queue.due(now=0)
    job = queue.failed(job, "refused", now=0, max_attempts=3, base=10, cap=100)
    assert (job.state, job.attempts, job.next_at) == ("pending", 1, 10)
    assert queue.due(now=9) == []
    (job,) = queue.due(now=10)
    job = queue.failed(job, "refused", now=10, max_attempts=3, base=10, cap=100)
    assert job.next_at == 30
    (job,) = queue.due(now=30)
    job = queue.failed(job, "refused", now=30, max_attempts=3, base=10, cap=100)
    assert job.state == "failed"
    assert queue.due(now=10**9) == []
    assert queue.jobs()[0].last_error == "refused"


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_zero_never_gives_up(queue: Any, max_attempts: int):
    """The relay's setting: a job stays pending, however long the destination is down."""
    queue.enqueue("s1", "r", "ws", now=0)
    now = 0.0
    for _ in range(50):
        (job,) = queue.due(now=now)
        job = queue.failed(job, "refused", now=now, max_attempts=max_attempts, base=15, cap=300)
        assert job.state == "pending"
        now = job.next_at
    assert job.attempts == 50
    assert queue.jobs()[0].state == "pending"
    # The waits still grow, up to the cap.
    assert routing.retry_delay(50, 15, 300) == 300


def test_the_router_with_max_attempts_zero_sends_once_the_destination_is_back(queue: Any):
    down = [True]
    sent: list[str] = []

    def send(dest: str, study: str) -> None:
        if down[0]:
            raise RuntimeError("association refused")
        sent.append(study)

    router = routing.Router(
        [rule()], queue, send, max_attempts=0, retry_seconds=15, retry_max_seconds=300
    )
    router.on_stable_study(facts(), now=0)
    now = 0.0
    for _ in range(30):  # hours of failures
        router.run_once(now=now)
        now = queue.jobs()[0].next_at
    assert queue.jobs()[0].state == "pending"
    down[0] = False
    router.run_once(now=now)
    assert sent == ["s1"]
    assert [j.state for j in queue.jobs()] == ["done"]


# ----------------------------------------------------------------------------- router


def test_the_router_queues_matching_studies_and_sends_them(queue: Any):
    sent: list[tuple[str, str]] = []
    router = routing.Router(
        [rule(Name="cr", Modalities=["CR"]), rule(Name="all", Destination="backup")],
        queue,
        lambda dest, study: sent.append((dest, study)),
    )
    assert router.on_stable_study(facts(study="a", modalities=["CR"]), now=0) == ["cr", "all"]
    assert router.on_stable_study(facts(study="b", modalities=["CT"]), now=0) == ["all"]
    assert router.run_once(now=0) == 3
    assert sorted(sent) == [("backup", "a"), ("backup", "b"), ("ws", "a")]
    assert router.run_once(now=1) == 0


def test_the_router_retries_a_failed_send(queue: Any):
    calls = []

    def flaky(dest: str, study: str) -> None:
        calls.append(study)
        if len(calls) == 1:
            raise RuntimeError("association refused")

    router = routing.Router([rule()], queue, flaky, retry_seconds=5, retry_max_seconds=60)
    router.on_stable_study(facts(), now=0)
    router.run_once(now=0)
    assert queue.jobs()[0].state == "pending"
    router.run_once(now=4)
    assert len(calls) == 1
    router.run_once(now=5)
    assert [j.state for j in queue.jobs()] == ["done"]


# ----------------------------------------------------------------------------- Orthanc boundary


def test_study_facts_reads_tags_modalities_and_sender():
    answers = {
        "/studies/s1": {
            "MainDicomTags": {"StudyDescription": "THORAX"},
            "PatientMainDicomTags": {"PatientID": "P1"},
        },
        "/studies/s1/series": [
            {"MainDicomTags": {"Modality": "CR"}, "Instances": ["i1"]},
            {"MainDicomTags": {"Modality": "CT"}, "Instances": []},
        ],
        "/instances/i1/metadata?expand": {"RemoteAET": "DX_SALLE1"},
    }
    got = routing.study_facts(answers.__getitem__, "s1")
    assert got.tags == {"StudyDescription": "THORAX", "PatientID": "P1"}
    assert got.modalities == {"CR", "CT"}
    assert got.calling_aets == {"DX_SALLE1"}


class JobApi:
    """Orthanc's /modalities/{node}/store and /jobs/{id}, as answers in sequence."""

    def __init__(self, *states: dict[str, Any]) -> None:
        self.states = list(states)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.waits = 0

    def post(self, uri: str, body: str) -> dict[str, Any]:
        self.posts.append((uri, json.loads(body)))
        return {"ID": "j1", "Path": "/jobs/j1"}

    def get(self, uri: str) -> dict[str, Any]:
        assert uri == "/jobs/j1"
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def wait(self, _seconds: float) -> bool:
        self.waits += 1
        return False


def test_a_study_is_sent_as_an_asynchronous_job_polled_until_it_ends():
    api = JobApi(
        {"State": "Pending"},
        {"State": "Running"},
        {"State": "Success", "Content": {"FailedInstancesCount": 0}},
    )
    routing.send_as_job(api.post, api.get, api.wait, "ws", "s1")
    assert api.posts == [("/modalities/ws/store", {"Resources": ["s1"], "Synchronous": False})]
    assert api.waits == 2  # the lock is released between polls, never held for the transfer


@pytest.mark.parametrize(
    ("final", "message"),
    [
        ({"State": "Failure", "ErrorDescription": "DICOM network error"}, "DICOM network error"),
        ({"State": "Success", "Content": {"FailedInstancesCount": 3}}, "3 instance"),
    ],
)
def test_a_failed_or_partial_job_is_a_failed_send(final: dict[str, Any], message: str):
    api = JobApi({"State": "Running"}, final)
    with pytest.raises(RuntimeError, match=message):
        routing.send_as_job(api.post, api.get, api.wait, "ws", "s1")


def test_orthanc_stopping_ends_the_wait_as_a_failure_to_retry():
    api = JobApi({"State": "Running"})
    with pytest.raises(RuntimeError, match="Orthanc stopped"):
        routing.send_as_job(api.post, api.get, lambda _seconds: True, "ws", "s1")


class FakeOrthanc:
    """A stand-in for the ``orthanc`` module at the plugin API boundary only."""

    ChangeType = SimpleNamespace(STABLE_STUDY=1, ORTHANC_STARTED=2, ORTHANC_STOPPED=3)

    def __init__(self) -> None:
        self.callback: Any = None
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.logs: list[str] = []

    def RegisterOnChangeCallback(self, callback: Any) -> None:
        self.callback = callback

    def GetConfiguration(self) -> str:
        return json.dumps({"StableAge": 20})

    def RestApiGet(self, uri: str) -> str:
        return json.dumps(
            {
                "/studies/s1": {"MainDicomTags": {}, "PatientMainDicomTags": {}},
                "/studies/s1/series": [{"MainDicomTags": {"Modality": "CR"}, "Instances": []}],
                "/changes?last": {"Changes": [{"Seq": 7}], "Done": True, "Last": 7},
            }[uri]
        )

    def RestApiPost(self, uri: str, body: str) -> str:
        self.posts.append((uri, json.loads(body)))
        return json.dumps({"ID": "job-1", "Path": "/jobs/job-1"})

    def LogWarning(self, message: str) -> None:
        self.logs.append(message)

    LogError = LogWarning


def test_setup_queues_stable_studies_in_the_state_directory(tmp_path: Path):
    fake = FakeOrthanc()
    settings = {
        "StateDirectory": str(tmp_path),
        "Routing": {"Rules": [{"Name": "cr", "Destination": "ws", "Modalities": ["CR"]}]},
    }
    routing.setup(fake, settings)
    fake.callback(fake.ChangeType.STABLE_STUDY, None, "s1")
    queue = routing.Queue(str(tmp_path / "routing.sqlite"))
    assert [(j.study, j.destination, j.state) for j in queue.jobs()] == [("s1", "ws", "pending")]
    # Where Orthanc's change log was when the rules saw it: a restart will not replay it.
    assert queue.evaluated_at("s1") == 7
    fake.callback(fake.ChangeType.ORTHANC_STOPPED, None, "")


# ----------------------------------------------------------------------------- restarts


class ChangeLog:
    """Orthanc's change log and the resources it names, behind ``get`` (its REST API).

    As Orthanc's ``/changes``: ``since`` is exclusive, ``limit`` caps a page, ``Last`` is
    the number of the page's last change (of the log's, for an empty page) and ``Done``
    says that nothing follows; ``?last`` answers the last change. The stability of a
    study is not here: it is what Orthanc keeps in memory, so each test says when
    Orthanc logs a StableStudy change (``stable``) and whether its callback came.
    """

    def __init__(self) -> None:
        self.changes: list[dict[str, Any]] = []
        self.series: dict[str, str] = {}
        self.instances: dict[str, str] = {}
        self.unstable: set[str] = set()
        self.calls: list[str] = []
        self.broken = False

    def _log(self, kind: str, level: str, resource: str) -> int:
        seq = len(self.changes) + 1
        self.changes.append({"Seq": seq, "ChangeType": kind, "ResourceType": level, "ID": resource})
        return seq

    def image(self, study: str, instance: str) -> int:
        """An image of ``study`` is stored: NewStudy and NewSeries the first time, NewInstance."""
        series = f"{study}.1"
        if series not in self.series:
            self._log("NewStudy", "Study", study)
            self._log("NewSeries", "Series", series)
            self.series[series] = study
        self.instances[instance] = series
        return self._log("NewInstance", "Instance", instance)

    def stable(self, study: str) -> int:
        return self._log("StableStudy", "Study", study)

    def get(self, uri: str) -> Any:
        self.calls.append(uri)
        if self.broken:
            raise RuntimeError("Internal error")
        path, _, query = uri.partition("?")
        if path == "/changes":
            args = dict(arg.partition("=")[::2] for arg in query.split("&"))
            end = self.changes[-1]["Seq"] if self.changes else 0
            if "last" in args:
                return {"Changes": self.changes[-1:], "Done": True, "Last": end}
            since, limit = int(args.get("since", 0)), int(args.get("limit", 100))
            after = [c for c in self.changes if c["Seq"] > since]
            page = after[:limit]
            return {
                "Changes": page,
                "Done": len(after) <= limit,
                "Last": page[-1]["Seq"] if page else end,
            }
        parts = path.strip("/").split("/")
        if parts[0] == "instances":
            return {"ParentSeries": self.instances[parts[1]]}
        if parts[0] == "series":
            return {"ParentStudy": self.series[parts[1]]}
        if parts[0] == "studies" and parts[1] in self.series.values():
            if len(parts) == 3:
                return [{"MainDicomTags": {"Modality": "CR"}, "Instances": []}]
            return {
                "MainDicomTags": {},
                "PatientMainDicomTags": {},
                "IsStable": parts[1] not in self.unstable,
            }
        raise KeyError(f"404 {uri}")


class Lifetime:
    """One run of Orthanc with routing: a rule that matches every study, the queue's file."""

    STABLE_AGE, MARGIN = 20, 60

    def __init__(self, log: ChangeLog, path: Path, *, rules: tuple[Any, ...] = (rule(),)) -> None:
        self.sent: list[str] = []
        self.messages: list[str] = []
        self.queue = routing.Queue(str(path / "routing.sqlite"))
        self.router = routing.Router(
            rules, self.queue, lambda _dest, study: self.sent.append(study)
        )
        self.replay = routing.Replay(
            self.router,
            self.queue,
            log.get,
            stable_age=self.STABLE_AGE,
            margin=self.MARGIN,
            page=4,
            log=self.messages.append,
        )

    def run(self, start: float, end: float, step: float = 2) -> None:
        """The worker's loop from ``start`` to ``end``: the replay's tick, then the sends."""
        now = start
        while now <= end:
            self.replay.tick(now)
            self.router.run_once(now)
            now += step

    def stable(self, study: str, now: float) -> None:
        """Orthanc's StableStudy callback (it says so after logging the change)."""
        self.replay.evaluate(study, now)


def test_a_study_that_was_arriving_when_orthanc_stopped_is_routed_once_after_the_restart(
    tmp_path: Path,
):
    log = ChangeLog()
    first = Lifetime(log, tmp_path)
    first.run(0, 10)
    # Study a arrives, is stable, routed; the place in the log moves past it.
    log.image("a", "a1")
    log.stable("a")
    first.stable("a", 12)
    first.run(12, 200)
    assert first.sent == ["a"]
    assert first.queue.place() == len(log.changes)
    # Study b's images arrive; Orthanc stops 5 s later, before b is stable (StableAge 20).
    log.image("b", "b1")
    log.image("b", "b2")
    first.run(200, 205)
    assert first.sent == ["a"]

    # After the restart, Orthanc knows nothing of b's stability: no StableStudy change comes.
    second = Lifetime(log, tmp_path)
    second.run(300, 318)
    assert second.sent == []
    assert any("1 to evaluate in 20 s" in m for m in second.messages), second.messages
    second.run(320, 330)
    assert second.sent == ["b"]
    assert [(j.study, j.state) for j in second.queue.jobs()] == [("a", "done"), ("b", "done")]
    second.run(330, 400)
    assert second.sent == ["b"]

    # Another restart soon after (the place is still before b): b is not routed again.
    third = Lifetime(log, tmp_path)
    third.run(400, 500)
    assert third.sent == []


def test_a_study_that_was_stable_and_routed_is_not_routed_again_after_a_restart(tmp_path: Path):
    log = ChangeLog()
    first = Lifetime(log, tmp_path)
    first.run(0, 10)
    log.image("a", "a1")
    log.stable("a")
    first.stable("a", 30)
    first.run(30, 40)  # Orthanc stops before the place moves past a
    assert first.sent == ["a"]
    assert first.queue.place() == 0

    second = Lifetime(log, tmp_path)
    second.run(100, 300)
    assert second.sent == []
    assert [(j.study, j.state, j.attempts) for j in second.queue.jobs()] == [("a", "done", 1)]
    assert any("1 already seen by the rules, 0 to evaluate" in m for m in second.messages)


def test_a_stable_study_whose_callback_orthanc_did_not_deliver_is_routed_after_the_restart(
    tmp_path: Path,
):
    """Orthanc logs StableStudy, then stops before its callback runs: it drops pending changes."""
    log = ChangeLog()
    Lifetime(log, tmp_path).run(0, 10)
    log.image("a", "a1")
    log.stable("a")
    second = Lifetime(log, tmp_path)
    second.run(100, 200)
    assert second.sent == ["a"]


def test_late_images_after_a_routed_study_are_routed_again_after_a_restart(tmp_path: Path):
    """As without a restart: a study stable again with new images is sent again, once."""
    log = ChangeLog()
    first = Lifetime(log, tmp_path)
    first.run(0, 10)
    log.image("a", "a1")
    log.stable("a")
    first.stable("a", 30)
    first.run(30, 40)
    log.image("a", "a2")  # then Orthanc stops
    second = Lifetime(log, tmp_path)
    second.run(100, 300)
    assert first.sent + second.sent == ["a", "a"]


def test_a_study_receiving_again_after_the_restart_is_left_to_orthanc(tmp_path: Path):
    log = ChangeLog()
    Lifetime(log, tmp_path).run(0, 10)
    log.image("b", "b1")
    second = Lifetime(log, tmp_path)
    second.run(100, 110)
    # The modality sends the rest of b: Orthanc counts StableAge again and will say so.
    log.image("b", "b2")
    log.unstable.add("b")
    second.run(110, 130)
    assert second.sent == []
    log.unstable.discard("b")
    log.stable("b")
    second.stable("b", 140)
    second.run(140, 300)
    assert second.sent == ["b"]


def test_a_replayed_study_that_orthanc_says_is_stable_before_it_is_due_is_routed_once(
    tmp_path: Path,
):
    log = ChangeLog()
    Lifetime(log, tmp_path).run(0, 10)
    log.image("b", "b1")
    second = Lifetime(log, tmp_path)
    second.run(100, 100)  # b is due at 120; the worker is then busy sending until 150
    log.image("b", "b2")  # the modality sends b again at once
    log.stable("b")
    second.stable("b", 118)
    second.router.run_once(119)
    second.run(150, 300)
    assert second.sent == ["b"]
    assert any("1 stable meanwhile" in m for m in second.messages), second.messages


def test_the_place_moves_only_once_a_study_had_time_to_be_stable(tmp_path: Path):
    log = ChangeLog()
    life = Lifetime(log, tmp_path)
    life.run(0, 10)
    log.image("a", "a1")
    seq = log.image("a", "a2")
    life.run(12, 12 + Lifetime.STABLE_AGE + Lifetime.MARGIN - 2)
    assert life.queue.place() == 0
    life.run(92, 120)
    assert life.queue.place() == seq


def test_the_change_log_is_read_a_page_at_a_time_up_to_its_end_at_startup(tmp_path: Path):
    log = ChangeLog()
    for n in range(3):
        log.image("x", f"x{n}")
    place = len(log.changes)
    routing.Queue(str(tmp_path / "routing.sqlite")).advance_place(place)
    log.image("a", "a1")
    log.image("a", "a2")
    log.image("b", "b1")
    log.image("c", "c1")  # 10 changes: 3 pages of 4
    log.calls.clear()
    life = Lifetime(log, tmp_path)
    life.replay.tick(100)
    pages = [c for c in log.calls if c.startswith("/changes?since")]
    assert pages == [f"/changes?since={place + n}&limit=4" for n in (0, 4, 8)]
    assert sorted(study for study, _ in life.replay.due) == ["a", "b", "c"]
    # Each instance's study, through its series: a's series is read once for its two images.
    series = sorted(c for c in log.calls if c.startswith("/series/"))
    assert series == ["/series/a.1", "/series/b.1", "/series/c.1"]
    life.run(120, 130)
    assert sorted(life.sent) == ["a", "b", "c"]


def test_reading_stops_at_the_last_change_of_startup():
    log = ChangeLog()
    for n in range(7):
        log.image("a", f"a{n}")
    got = [c["Seq"] for c in routing.changes_between(log.get, 2, 6, page=3)]
    assert got == [3, 4, 5, 6]
    assert log.calls == ["/changes?since=2&limit=3", "/changes?since=5&limit=3"]
    assert list(routing.changes_between(log.get, 6, 6)) == []


def test_a_first_start_without_a_saved_place_replays_nothing(tmp_path: Path):
    """An archive that routing never ran on: its history is not replayed."""
    log = ChangeLog()
    for study in "abc":
        log.image(study, f"{study}1")  # and never a StableStudy change
    life = Lifetime(log, tmp_path)
    life.run(0, 300)
    assert life.sent == []
    assert life.queue.jobs() == []
    assert life.queue.place() == len(log.changes)
    assert any("no place saved" in m and "nothing replayed" in m for m in life.messages)


def test_a_place_past_the_end_of_the_log_starts_again_at_its_end(tmp_path: Path):
    log = ChangeLog()
    log.image("a", "a1")
    routing.Queue(str(tmp_path / "routing.sqlite")).advance_place(500)
    life = Lifetime(log, tmp_path)
    life.run(0, 200)
    assert life.sent == []
    assert life.queue.place() == len(log.changes)
    assert any("past the change log's end" in m for m in life.messages)


def test_without_rules_no_place_is_kept(tmp_path: Path):
    """Rules added later must not replay every study received while nothing routed."""
    log = ChangeLog()
    log.image("a", "a1")
    routing.Queue(str(tmp_path / "routing.sqlite")).advance_place(1)
    life = Lifetime(log, tmp_path, rules=())
    life.run(0, 200)
    assert life.queue.place() is None


def test_an_error_of_orthanc_is_logged_and_reading_tried_again(tmp_path: Path):
    log = ChangeLog()
    Lifetime(log, tmp_path).run(0, 10)
    log.image("b", "b1")
    log.broken = True
    life = Lifetime(log, tmp_path)
    life.run(100, 110)  # never raises
    assert any("could not be read" in m and "trying again in 30 s" in m for m in life.messages)
    assert not life.replay.started
    log.broken = False
    life.run(110, 200)
    assert life.sent == ["b"]


def test_a_study_that_fails_to_evaluate_does_not_stop_the_others(tmp_path: Path):
    log = ChangeLog()
    Lifetime(log, tmp_path).run(0, 10)
    log.image("a", "a1")
    log.image("b", "b1")
    life = Lifetime(log, tmp_path)
    life.run(100, 110)
    del log.series["a.1"]  # a is deleted before it is due
    life.run(110, 200)
    assert life.sent == ["b"]
    assert any("study a not evaluated after the restart" in m for m in life.messages)
    assert any("1 study(ies) that were arriving" in m and "1 failed" in m for m in life.messages)
