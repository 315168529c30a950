"""Routing across a restart of Orthanc, on a real host: every study arrives once.

Orthanc counts a study's StableAge in memory only, and routing's queue is a SQLite
file. The verifier restarts Orthanc once, with studies in both states, and counts
what dcmtk's storescp on this machine (the rule's node, MOLROUTED) receives:

- two studies stable while the node is down: their jobs wait in the queue,
  failing; the node comes up after the restart, and each study arrives once;
- a study sent just before Orthanc stops (StableAge is 20 s here): it has no job
  when Orthanc stops, and Orthanc never says after the restart that it is stable;
  routing finds it in Orthanc's change log, and it arrives once.

Every wait is for an outcome, with a generous bound; nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pacs_testlib import address_of, dcmtk, host_spec, lab_host, orthanc_credentials, storescp

from pacs_libre.dicom.synth import StudyManifest, make_study

HOST = "pacs-mol-orthanc-d13"
AET, SENDER, ROUTED, ROUTED_PORT = "MOLARCHIVE", "MOLROUTING", "MOLROUTED", 11194

testinfra_hosts = [host_spec(HOST)]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(1)


def store(address: str, study: StudyManifest) -> None:
    """storescu, as the modality whose studies the rule routes."""
    result = subprocess.run(
        [dcmtk("storescu"), "-to", "20", "-aet", SENDER, "-aec", AET, "+sd", address, "4242",
         str(study.out_dir / "CT")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def answers(address: str) -> bool:
    echo = subprocess.run(
        [dcmtk("echoscu"), "-to", "5", "-aet", SENDER, "-aec", AET, address, "4242"],
        capture_output=True,
        check=False,
    )
    return echo.returncode == 0


def api(host: Any, uri: str, body: str | None = None) -> Any:
    """Orthanc's REST API, which answers its own host only, as its administrator."""
    user, password = orthanc_credentials(host)
    out = host.check_output(
        "python3 -c 'import base64,sys,urllib.request as u;"
        'r=u.Request("http://127.0.0.1:8042"+sys.argv[2],'
        "data=sys.argv[3].encode() if len(sys.argv)>3 else None);"
        'r.add_header("Authorization","Basic "+base64.b64encode(sys.argv[1].encode()).decode());'
        "print(u.urlopen(r).read().decode())' %s %s" + (" %s" if body is not None else ""),
        f"{user}:{password}",
        uri,
        *([body] if body is not None else []),
    )
    return json.loads(out)


def orthanc_id(host: Any, study: StudyManifest) -> str:
    found = api(host, "/tools/lookup", study.study_instance_uid)
    return str(next(item["ID"] for item in found if item["Type"] == "Study"))


def jobs(host: Any) -> dict[str, tuple[str, int]]:
    """Routing's queue on the host: study -> (state, attempts)."""
    out = host.check_output(
        'python3 -c "import json,sqlite3;print(json.dumps(sqlite3.connect('
        "'/var/lib/orthanc/pacs-libre/routing.sqlite')"
        ".execute('select study, state, attempts from jobs').fetchall()))\""
    )
    return {study: (state, attempts) for study, state, attempts in json.loads(out)}


def received(folder: Path) -> Counter[str]:
    """SOP Instance UID -> how many times storescp received it (one file each time)."""
    got: Counter[str] = Counter()
    for path in folder.iterdir():
        # A file still being written is counted at the next look.
        with contextlib.suppress(Exception):
            got[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
    return got


def orthanc_log(host: Any) -> str:
    invocation = host.check_output("systemctl show -p InvocationID --value orthanc").strip()
    return str(
        host.check_output(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    )


@pytest.fixture(scope="module")
def restart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    host = lab_host(HOST)
    address = address_of(host)
    root = tmp_path_factory.mktemp("routing")
    queued = [
        make_study(root / f"queued-{n}", ct_images=2, mr_images=0, cr=False, seed=40 + n)
        for n in range(2)
    ]
    arriving = make_study(root / "arriving", ct_images=3, mr_images=0, cr=False, seed=42)

    # The node is down: the two studies become stable, are queued, and fail.
    for study in queued:
        store(address, study)
    queued_ids = [orthanc_id(host, study) for study in queued]
    wait_until(
        lambda: all(jobs(host).get(i, ("", 0))[1] >= 1 for i in queued_ids),
        timeout=120,
        what="a failed first send of each queued study (StableAge 20 s, node down)",
    )
    # A study arrives, and Orthanc stops before it is stable.
    store(address, arriving)
    assert host.run("systemctl stop orthanc").rc == 0
    at_stop = jobs(host)
    assert host.run("systemctl start orthanc").rc == 0
    wait_until(lambda: answers(address), timeout=90, what="Orthanc answering again")
    # Then the node comes up.
    studies = [*queued, arriving]
    expected = {i.sop_instance_uid for study in studies for i in study.instances}
    ids = [*queued_ids, orthanc_id(host, arriving)]
    with storescp(ROUTED, ROUTED_PORT) as folder:
        wait_until(
            lambda: expected <= set(received(folder)),
            timeout=120,
            what="every routed image at the node",
        )
        # Nothing more can come: the restart's replay is over and no job is left to send.
        wait_until(
            lambda: "that were arriving when Orthanc stopped evaluated" in orthanc_log(host),
            timeout=60,
            what="routing's replay of the change log after the restart",
        )
        wait_until(
            lambda: all(jobs(host).get(i, ("", 0))[0] == "done" for i in ids),
            timeout=60,
            what="every job done",
        )
        got = received(folder)
    return {
        "studies": studies,
        "ids": ids,
        "at_stop": at_stop,
        "got": got,
        "log": orthanc_log(host),
    }


def test_studies_queued_across_a_restart_are_each_sent_once(restart: dict[str, Any]) -> None:
    queued, queued_ids = restart["studies"][:2], restart["ids"][:2]
    for study_id in queued_ids:
        assert restart["at_stop"][study_id][0] == "pending", restart["at_stop"]
    for study in queued:
        assert {
            i.sop_instance_uid: restart["got"][i.sop_instance_uid] for i in study.instances
        } == {i.sop_instance_uid: 1 for i in study.instances}


def test_a_study_arriving_when_orthanc_stopped_is_sent_once_after_the_restart(
    restart: dict[str, Any],
) -> None:
    arriving, arriving_id = restart["studies"][2], restart["ids"][2]
    assert arriving_id not in restart["at_stop"], "the study was stable before the stop: no proof"
    assert {i.sop_instance_uid: restart["got"][i.sop_instance_uid] for i in arriving.instances} == {
        i.sop_instance_uid: 1 for i in arriving.instances
    }
    assert "routing: after the restart" in restart["log"]
