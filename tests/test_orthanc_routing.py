"""The routing service of the orthanc role: rules, its persistent queue, retries.

The module runs inside Orthanc; everything but ``setup`` is plain Python, tested
here. ``setup`` is tested with a stand-in for the ``orthanc`` module (the real one
exists only inside Orthanc), and for real by molecule/single-host.
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

    def RestApiGet(self, uri: str) -> str:
        return json.dumps(
            {
                "/studies/s1": {"MainDicomTags": {}, "PatientMainDicomTags": {}},
                "/studies/s1/series": [{"MainDicomTags": {"Modality": "CR"}, "Instances": []}],
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
    jobs = routing.Queue(str(tmp_path / "routing.sqlite")).jobs()
    assert [(j.study, j.destination, j.state) for j in jobs] == [("s1", "ws", "pending")]
    fake.callback(fake.ChangeType.ORTHANC_STOPPED, None, "")
