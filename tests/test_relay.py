"""pacs-relay (roles/relay/files/pacs_relay.py): confirm, give back, purge, count.

Routing's queue is the real one (roles/orthanc/files/services/routing.py, on a SQLite
file); Orthanc's REST API is a small in-memory fake that answers what the relay's
Orthanc answers (its studies, and the main archive's C-FIND through it). The real
thing runs on two lab hosts (roles/relay/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


relay = _load("pacs_relay", ROOT / "roles/relay/files/pacs_relay.py")
routing = _load("pacs_routing_for_relay", ROOT / "roles/orthanc/files/services/routing.py")

DAY = 86400.0
T0 = 1_700_000_000.0


def stamp(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))


class FakeOrthanc:
    """The relay's Orthanc: its studies, and the main archive behind /modalities/.../query."""

    def __init__(self) -> None:
        self.up = True
        self.main_up = True
        self.studies: dict[str, dict[str, Any]] = {}
        # StudyInstanceUID -> the SOPInstanceUIDs that the main archive holds.
        self.main: dict[str, set[str]] = {}
        self.deleted: list[str] = []
        self.queries: dict[str, str] = {}
        self.calls: list[str] = []
        self.simplified = True

    def add(self, study: str, sops: list[str], last: float, *, stable: bool = True) -> None:
        self.studies[study] = {
            "uid": f"1.2.{study}",
            "sops": list(sops),
            "last": last,
            "stable": stable,
        }

    def archive(self, study: str, sops: list[str] | None = None) -> None:
        """The main archive holds these images of the study (all of them by default)."""
        data = self.studies[study]
        self.main.setdefault(data["uid"], set()).update(sops if sops is not None else data["sops"])

    def _check(self, uri: str) -> None:
        self.calls.append(uri)
        if not self.up:
            raise ConnectionRefusedError("connection refused")

    def get(self, uri: str) -> Any:
        self._check(uri)
        if uri == "/system":
            return {"Version": "1.12.7"}
        if uri.startswith("/queries/"):
            qid = uri.split("/")[2]
            uid = self.queries[qid]
            sops = sorted(self.main.get(uid, set()))
            if "/answers/" in uri:
                index = int(uri.split("/")[4])
                return {"SOPInstanceUID": sops[index]}
            if not self.simplified:
                return [str(i) for i in range(len(sops))]
            return [{"SOPInstanceUID": s, "StudyInstanceUID": uid} for s in sops]
        parts = uri.split("/")
        study = self.studies.get(parts[2])
        if study is None:
            raise relay.NotFound(uri)
        if len(parts) == 3:
            return {
                "ID": parts[2],
                "MainDicomTags": {"StudyInstanceUID": study["uid"]},
                "LastUpdate": stamp(study["last"]),
                "IsStable": study["stable"],
            }
        assert parts[3] == "instances"
        return [
            {"ID": f"i-{sop}", "MainDicomTags": {"SOPInstanceUID": sop}} for sop in study["sops"]
        ]

    def post(self, uri: str, body: Mapping[str, Any]) -> Any:
        self._check(uri)
        assert uri.startswith("/modalities/main-archive/")
        if not self.main_up:
            raise RuntimeError("HTTP 500 DICOM association failed")
        if uri.endswith("/echo"):
            return {}
        assert body["Level"] == "Instance"
        assert body["Query"]["SOPInstanceUID"] == ""
        qid = f"q{len(self.queries)}"
        self.queries[qid] = body["Query"]["StudyInstanceUID"]
        return {"ID": qid, "Path": f"/queries/{qid}"}

    def delete(self, uri: str) -> Any:
        """DELETE /instances/i-<sop>: the image goes; the study goes with its last image."""
        self._check(uri)
        if uri.startswith("/queries/"):
            return {}
        assert uri.startswith("/instances/i-"), uri
        sop = uri.removeprefix("/instances/i-")
        study = next(s for s, data in self.studies.items() if sop in data["sops"])
        self.studies[study]["sops"].remove(sop)
        self.on_delete(study)
        if not self.studies[study]["sops"]:
            del self.studies[study]
            self.deleted.append(study)
        return {}

    def on_delete(self, study: str) -> None:
        """What happens while a purge deletes the images (nothing, unless a test says)."""


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    class Setup:
        def __init__(self) -> None:
            self.config = relay.Config(
                user="admin",
                password="pw",  # noqa: S106 (a fake Orthanc's)
                destination="main-archive",
                main_aet="PACS_GHT",
                routing_db=str(tmp_path / "routing.sqlite"),
                state_db=str(tmp_path / "relay.sqlite"),
                metrics_file=str(tmp_path / "run" / "pacs_relay.prom"),
                textfile_directory=str(tmp_path / "textfile"),
                keep_days=7,
                backlog_alert_seconds=1800,
            )
            self.routing = routing.Queue(self.config.routing_db)
            self.orthanc = FakeOrthanc()
            self.logs: list[str] = []

        def relay(self, **changes: Any) -> Any:
            config = relay.Config(**{**self.config.__dict__, **changes})
            return relay.Relay(
                config,
                self.orthanc,
                relay.RoutingQueue(config.routing_db, config.destination),
                relay.Ledger(config.state_db),
                log=self.logs.append,
            )

        def sent(self, study: str, now: float) -> None:
            """Routing queued the study and sent it."""
            self.routing.enqueue(study, "main-archive", "main-archive", now)
            (job,) = [j for j in self.routing.due(now) if j.study == study]
            self.routing.succeeded(job, now)

        def state(self, study: str) -> str:
            return next(j.state for j in self.routing.jobs() if j.study == study)

    return Setup()


# ------------------------------------------------------------------ confirm, give back


def test_a_study_the_main_archive_holds_whole_is_confirmed(setup: Any):
    setup.orthanc.add("s1", ["a", "b", "c"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    report = setup.relay().run(T0 + 70)
    assert report.confirmed_now == ["1.2.s1"]
    assert (report.backlog_studies, report.backlog_instances, report.kept_studies) == (0, 0, 1)
    assert report.confirmed_total == 1
    assert report.main_up
    assert setup.orthanc.deleted == []  # kept 7 days
    assert any("confirmed at the main archive (3 instance(s))" in line for line in setup.logs)
    # Confirmed once: the next runs ask the main archive nothing, and count it once.
    setup.orthanc.calls.clear()
    report = setup.relay().run(T0 + 100)
    assert report.confirmed_total == 1
    assert not [c for c in setup.orthanc.calls if "/query" in c]


def test_images_missing_at_the_main_archive_go_back_to_routing(setup: Any):
    setup.orthanc.add("s1", ["a", "b", "c"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1", ["a"])
    report = setup.relay().run(T0 + 70)
    assert report.sent_again == [("1.2.s1", 2)]
    assert setup.state("s1") == "pending"
    (job,) = setup.routing.due(T0 + 70)  # due now, attempts counted from 0
    assert (job.attempts, job.last_error) == (
        0,
        "pacs-relay: 2 instance(s) missing at the main archive",
    )
    assert (report.backlog_studies, report.backlog_instances) == (1, 2)
    assert report.confirmed_now == []
    assert any(
        "2 of 3 instance(s) missing at the main archive; sent again" in m for m in setup.logs
    )
    # Routing sends it again; the main archive now holds everything.
    setup.routing.succeeded(job, T0 + 80)
    setup.orthanc.archive("s1")
    report = setup.relay().run(T0 + 90)
    assert report.confirmed_now == ["1.2.s1"]
    # Only the two missing were asked about again; "a" was recorded the first time.
    assert setup.relay().ledger.confirmed("s1") == {"a", "b", "c"}


def test_answers_in_orthancs_older_shape_are_read_one_by_one(setup: Any):
    setup.orthanc.simplified = False
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    assert setup.relay().run(T0 + 70).confirmed_now == ["1.2.s1"]


def test_the_answers_full_format_is_read_too():
    assert relay._answer_sop({"0008,0018": {"Name": "SOPInstanceUID", "Value": "1.2.3"}}) == "1.2.3"
    assert relay._answer_sop({"SOPInstanceUID": "1.2.4"}) == "1.2.4"
    assert relay._answer_sop("0") == ""


def test_a_study_still_receiving_images_is_not_asked_about(setup: Any):
    setup.orthanc.add("s1", ["a", "b"], last=T0, stable=False)
    setup.sent("s1", T0 + 60)
    report = setup.relay().run(T0 + 70)
    assert report.backlog_studies == 1
    assert not [c for c in setup.orthanc.calls if "/query" in c]
    assert setup.state("s1") == "done"  # routing sends it again itself once it is stable


# ------------------------------------------------------------------------------ purge


def test_a_confirmed_study_is_purged_after_keep_days_only(setup: Any):
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    setup.relay().run(T0 + 70)
    assert setup.relay().run(T0 + 7 * DAY - 1).purged_now == []
    report = setup.relay().run(T0 + 7 * DAY + 1)
    assert report.purged_now == [("1.2.s1", 2)]
    assert setup.orthanc.deleted == ["s1"]
    assert (report.purged_total, report.kept_studies, report.backlog_studies) == (1, 0, 0)
    assert any("purged study 1.2.s1 (2 instance(s))" in m for m in setup.logs)
    # Its confirmations go with it: relay.sqlite does not grow with every image ever relayed.
    assert setup.relay().ledger.confirmed("s1") == set()
    # Gone from the relay: nothing more is asked, nothing counted twice.
    assert setup.relay().run(T0 + 8 * DAY).purged_total == 1


def test_keep_days_zero_purges_as_soon_as_confirmed(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    report = setup.relay(keep_days=0).run(T0 + 70)
    assert report.confirmed_now == ["1.2.s1"]
    assert report.purged_now == [("1.2.s1", 1)]


def test_a_study_is_never_purged_with_an_unconfirmed_image(setup: Any):
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1", ["a"])
    for day in range(1, 30):
        setup.relay(keep_days=0).run(T0 + day * DAY)
        assert setup.orthanc.deleted == []


def test_new_images_just_before_the_purge_keep_the_study(setup: Any):
    """The images are counted again at purge time: one that came after the confirmation
    (not at the main archive) keeps the study."""
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")

    fake = setup.orthanc
    instances_reads = []
    original_get = fake.get

    def get(uri: str) -> Any:
        if uri == "/studies/s1/instances":
            instances_reads.append(uri)
            if len(instances_reads) == 2:  # the re-count at purge time
                fake.studies["s1"]["sops"].append("late")
        return original_get(uri)

    fake.get = get
    report = setup.relay(keep_days=0).run(T0 + 70)
    assert report.confirmed_now == ["1.2.s1"]
    assert report.purged_now == []
    assert fake.deleted == []
    assert any("got new images; kept until they are confirmed" in m for m in setup.logs)


def test_an_image_that_arrives_while_the_purge_deletes_stays_with_its_study(setup: Any):
    """The purge deletes the images it counted and found confirmed, one by one: an image
    stored between that count and the deletes is not among them, and keeps its study."""
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")

    def arrives(study: str) -> None:
        if "late" not in setup.orthanc.studies[study]["sops"]:
            setup.orthanc.studies[study]["sops"].append("late")

    setup.orthanc.on_delete = arrives
    report = setup.relay(keep_days=0).run(T0 + 70)
    assert report.purged_now == [("1.2.s1", 2)]
    assert setup.orthanc.studies["s1"]["sops"] == ["late"]
    assert setup.orthanc.deleted == []
    assert [c for c in setup.orthanc.calls if c.startswith("/instances/")] == [
        "/instances/i-a",
        "/instances/i-b",
    ]


def test_a_study_that_comes_back_after_its_purge_is_handled_again(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    setup.relay(keep_days=0).run(T0 + 70)
    # The modality sends the study again (a late series): Orthanc makes the same study ID.
    setup.orthanc.add("s1", ["a", "z"], last=T0 + 1000)
    setup.sent("s1", T0 + 1060)
    report = setup.relay(keep_days=0).run(T0 + 1070)
    assert report.sent_again == [("1.2.s1", 1)]
    setup.orthanc.archive("s1")
    (job,) = setup.routing.due(T0 + 1080)
    setup.routing.succeeded(job, T0 + 1080)
    report = setup.relay(keep_days=0).run(T0 + 1090)
    assert report.purged_now == [("1.2.s1", 2)]
    assert report.purged_total == 2


def test_a_study_sent_again_is_asked_about_whole_not_from_old_confirmations(setup: Any):
    """Found on the lab: a study sent again (same images) after its purge, of which the main
    archive had lost images meanwhile, must not be purged on the strength of the first
    confirmation."""
    setup.orthanc.add("s1", ["a", "b", "c"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    setup.relay(keep_days=0).run(T0 + 70)
    assert setup.orthanc.deleted == ["s1"]
    setup.orthanc.main["1.2.s1"] -= {"b", "c"}  # deleted at the main archive by a person
    setup.orthanc.add("s1", ["a", "b", "c"], last=T0 + 1000)  # the modality sends it again
    setup.sent("s1", T0 + 1060)
    report = setup.relay(keep_days=0).run(T0 + 1070)
    assert report.purged_now == []
    assert report.sent_again == [("1.2.s1", 2)]
    assert setup.state("s1") == "pending"
    # What the main archive holds now ("a") stays confirmed: 2 images wait, not 3.
    assert (report.backlog_studies, report.backlog_instances) == (1, 2)


def test_images_lost_at_the_main_archive_before_the_purge_keep_the_study(setup: Any):
    """The purge asks the main archive once more: confirmations are days old by then."""
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    assert setup.relay().run(T0 + 70).confirmed_now == ["1.2.s1"]
    setup.orthanc.main["1.2.s1"].discard("b")
    report = setup.relay().run(T0 + 8 * DAY)
    assert (report.purged_now, report.sent_again) == ([], [("1.2.s1", 1)])
    assert setup.orthanc.deleted == []
    assert setup.state("s1") == "pending"
    assert report.backlog_studies == 1
    assert any("no longer at the main archive; not purged, sent again" in m for m in setup.logs)
    # Routing sends it; the main archive holds it again; the next run purges it.
    (job,) = setup.routing.due(T0 + 8 * DAY)
    setup.routing.succeeded(job, T0 + 8 * DAY + 5)
    setup.orthanc.archive("s1")
    report = setup.relay().run(T0 + 8 * DAY + 10)
    assert report.purged_now == [("1.2.s1", 2)]


# ------------------------------------------------------------------ down, backlog, age


def test_the_main_archive_down_leaves_everything_in_place(setup: Any):
    setup.orthanc.main_up = False
    for study in ("s1", "s2"):
        setup.orthanc.add(study, ["a", "b"], last=T0)
        setup.sent(study, T0 + 60)
    report = setup.relay(keep_days=0).run(T0 + 70)
    assert not report.main_up
    assert report.backlog_studies == 2
    assert setup.orthanc.deleted == []
    # One failed C-FIND, and no other tried in the same run.
    assert len([c for c in setup.orthanc.calls if c.endswith("/query")]) == 1
    assert [setup.state(s) for s in ("s1", "s2")] == ["done", "done"]


def test_the_relays_orthanc_down_still_counts_the_backlog(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0)
    (job,) = setup.routing.due(T0)
    setup.routing.failed(job, "refused", T0, max_attempts=0, base=15, cap=300)
    setup.orthanc.up = False
    report = setup.relay().run(T0 + 600)
    assert not report.orthanc_up
    assert (report.backlog_studies, report.failed_attempts) == (1, 1)
    assert report.backlog_instances is None
    assert report.oldest_unsent_seconds == 600
    lines = relay.metrics(report, setup.config)
    assert "pacs_relay_up 0" in lines
    assert not [line for line in lines if line.startswith("pacs_relay_backlog_instances")]


def test_the_oldest_waits_from_its_jobs_creation_and_clears_once_confirmed(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0)
    assert setup.relay().run(T0 + 100).oldest_unsent_seconds == 100
    assert setup.relay().run(T0 + 3000).oldest_unsent_seconds == 3000
    (job,) = setup.routing.due(T0 + 3000)
    setup.routing.succeeded(job, T0 + 3001)
    setup.orthanc.archive("s1")
    report = setup.relay().run(T0 + 3010)
    assert (report.oldest_unsent_seconds, report.backlog_studies) == (0, 0)


def test_a_confirmed_study_that_gets_new_images_waits_from_then_not_from_its_first_job(
    setup: Any,
):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    setup.relay().run(T0 + 70)
    # A day later, a late image: routing queues the study again (its job keeps its creation).
    setup.orthanc.add("s1", ["a", "late"], last=T0 + DAY)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0 + DAY + 60)
    report = setup.relay().run(T0 + DAY + 70)
    assert report.backlog_studies == 1
    assert report.oldest_unsent_seconds == 10


def test_a_study_deleted_by_hand_is_left_out(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    del setup.orthanc.studies["s1"]
    report = setup.relay().run(T0 + 70)
    assert report.backlog_studies == 0
    assert any("no longer on the relay" in m for m in setup.logs)


def test_only_the_jobs_to_the_main_archive_count(setup: Any):
    setup.routing.enqueue("s9", "to-a-workstation", "lecture-1", T0)
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0)
    assert setup.relay().run(T0 + 10).backlog_studies == 1


def test_without_routings_file_yet_nothing_waits(tmp_path: Path):
    queue = relay.RoutingQueue(str(tmp_path / "none.sqlite"), "main-archive")
    assert queue.jobs() == {}


# ---------------------------------------------------------------------------- metrics


def test_the_metrics_file_has_help_and_type_and_is_written_whole(setup: Any, tmp_path: Path):
    setup.orthanc.add("s1", ["a", "b"], last=T0)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0)
    report = setup.relay().run(T0 + 120)
    lines = relay.metrics(report, setup.config)
    relay.write_atomic(setup.config.metrics_file, lines)
    relay.publish(setup.config.metrics_file, setup.config.textfile_directory)
    text = (Path(setup.config.textfile_directory) / "pacs_relay.prom").read_text()
    samples = dict(
        line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples == {
        "pacs_relay_up": "1",
        "pacs_relay_main_archive_up": "1",
        "pacs_relay_backlog_studies": "1",
        "pacs_relay_backlog_instances": "2",
        "pacs_relay_oldest_unsent_seconds": "120",
        "pacs_relay_failed_attempts": "0",
        "pacs_relay_kept_studies": "0",
        "pacs_relay_confirmed_studies_total": "0",
        "pacs_relay_purged_studies_total": "0",
        "pacs_relay_backlog_alert_seconds": "1800",
        "pacs_relay_last_run_timestamp_seconds": f"{T0 + 120:.0f}",
    }
    for name in samples:
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}" in text
    # No temporary file is left beside it.
    assert sorted(p.name for p in Path(setup.config.textfile_directory).iterdir()) == [
        "pacs_relay.prom"
    ]


def test_the_counters_survive_the_runs(setup: Any):
    for n, study in enumerate(("s1", "s2", "s3")):
        setup.orthanc.add(study, ["a"], last=T0)
        setup.sent(study, T0 + 60 + n)
        setup.orthanc.archive(study)
        setup.relay(keep_days=0).run(T0 + 100 + n)
    again = relay.Ledger(setup.config.state_db)
    assert (again.counter("confirmed_studies"), again.counter("purged_studies")) == (3, 3)


# ----------------------------------------------------------------------------- status


def test_status_lists_what_waits_oldest_first(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.orthanc.add("s2", ["a"], last=T0)
    setup.routing.enqueue("s1", "main-archive", "main-archive", T0)
    (job,) = setup.routing.due(T0)
    setup.routing.failed(job, "association refused", T0, max_attempts=0, base=15, cap=300)
    setup.sent("s2", T0 + 500)
    setup.orthanc.main_up = False
    setup.relay().run(T0 + 600)
    data = relay.status(setup.config, T0 + 610)
    assert [(w["study"], w["state"]) for w in data["waiting"]] == [
        ("s1", "pending"),
        ("s2", "sent, not confirmed yet"),
    ]
    assert data["waiting"][0]["attempts"] == 1
    assert data["waiting"][0]["last_error"] == "association refused"
    assert data["main_archive_up"] is False
    json.dumps(data)
    text = relay.status_text(data)
    assert "2 study(ies) waiting for the main archive; the oldest for 10 min" in text
    assert "NOT answering" in text
    assert "association refused" in text


def test_status_says_when_nothing_waits(setup: Any):
    setup.orthanc.add("s1", ["a"], last=T0)
    setup.sent("s1", T0 + 60)
    setup.orthanc.archive("s1")
    setup.relay().run(T0 + 70)
    text = relay.status_text(relay.status(setup.config, T0 + 80))
    assert "Nothing waiting" in text
    assert "Confirmed and kept on the relay: 1" in text


# ----------------------------------------------------------------------------- config


def test_the_config_check_names_what_is_wrong(tmp_path: Path):
    good = tmp_path / "relay.json"
    good.write_text(
        "// Ansible managed\n"
        + json.dumps({"user": "u", "password": "p", "destination": "main-archive", "keep_days": 0})
    )
    assert relay.main(["check-config", str(good)]) == 0
    assert relay.load_config(str(good)).keep_days == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"user": "u", "destination": "", "keep_days": -1, "typo": 1}))
    with pytest.raises(ValueError) as caught:
        relay.load_config(str(bad))
    message = str(caught.value)
    for part in ("password is missing", "destination is missing", "keep_days -1", "['typo']"):
        assert part in message


def test_orthancs_last_update_is_read_as_utc():
    assert relay.orthanc_time(stamp(T0)) == T0
    assert relay.orthanc_time("") == 0
