"""A peripheral site's relay forwards everything to the main archive, through a link that is cut.

site.yml converged the main site's archive and the peripheral site's relay, on two podman
networks joined only by their WireGuard link. Here, as a peripheral CT, this machine sends
a 300-image study to the relay. The link is slowed (so that the forwarding takes long
enough to be cut in its middle), then cut while the archive holds part of the study. While
it is down, the relay's backlog metric must show the study waiting, past its alert
threshold, and the relay's Orthanc is restarted. Then the link is repaired, and:

- every image reaches the archive exactly once, its pixel data byte-identical;
- the relay's queue empties, and it purges the study only once the archive has confirmed
  every image (``relay_keep_days: 0`` here);
- nothing was purged while the link was down.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import testinfra
from pacs_testlib import (
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_credentials,
    tcp_connects,
)

from pacs_libre.dicom.synth import StudyManifest, make_study

MAIN, RELAY = "pacs-mol-territory-main", "pacs-mol-territory-relay"
LINK = "wg-peri"
MAIN_END, PERIPHERAL_END = "10.200.9.1", "10.200.9.2"
WG_PORT = 51820
MAIN_AET, RELAY_AET, MODALITY = "MOLMAIN", "MOLRELAY", "MOLPERIMODALITY"
DICOM_PORT, TLS_PORT = 4242, 2762
IMAGES = 300
METRICS = "/var/lib/prometheus/node-exporter/pacs_relay.prom"
# The relay's limit on the link while the study goes through: about 4 MB/s, so the
# 300 images (about 160 MB) take some 40 s and the cut lands in their middle.
SLOW = "4 mbytes/second"
CUT_AT = 40  # images at the archive when the link is cut

testinfra_hosts = [host_spec(MAIN)]

# On a host, through its Orthanc's REST API: for one study, ``count`` prints how many
# instances it holds (0: none), ``pixels`` SOPInstanceUID -> MD5 of the pixel data it
# serves (its frames, raw, one after the other: the value of a native PixelData element).
STUDY = r"""
import base64, hashlib, json, sys, urllib.request
user, password, study_uid, what = sys.argv[1:5]
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
def call(path, body=None):
    req = urllib.request.Request("http://127.0.0.1:8042" + path, data=body,
                                 headers={"Authorization": "Basic " + auth})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
found = [e for e in json.loads(call("/tools/lookup", study_uid.encode())) if e["Type"] == "Study"]
instances = json.loads(call("/studies/" + found[0]["ID"] + "/instances")) if found else []
if what == "count":
    print(len(instances))
else:
    out = {}
    for item in instances:
        digest = hashlib.md5()
        for frame in json.loads(call("/instances/" + item["ID"] + "/frames")):
            digest.update(call("/instances/" + item["ID"] + "/frames/" + str(frame) + "/raw"))
        out[item["MainDicomTags"]["SOPInstanceUID"]] = digest.hexdigest()
    print(json.dumps(out))
"""

# The relay's nftables table of this test: the link's packets to the main end,
# slowed, then dropped (nothing else of the relay's firewall is touched).
THROTTLE = f"""
nft -f - <<'EOF'
table inet pacs_test_link {{
  chain out {{
    type filter hook output priority 0; policy accept;
    udp dport {WG_PORT} limit rate over {SLOW} drop
  }}
}}
EOF
"""
CUT = f"nft insert rule inet pacs_test_link out udp dport {WG_PORT} drop"
REPAIR = "nft delete table inet pacs_test_link"


def quote(text: str) -> str:
    return shlex.quote(text)


def metrics(host: testinfra.host.Host) -> dict[str, float]:
    """The relay's metrics, as node_exporter's textfile collector reads them."""
    text = host.file(METRICS).content_string if host.file(METRICS).exists else ""
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(pacs_relay_[a-z_]+)(?:\{[^}]*\})?\s+(\S+)", line.strip())
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last!r})")


class Territory:
    def __init__(self) -> None:
        self.main = lab_host(MAIN)
        self.relay = lab_host(RELAY)
        self.relay_address = address_of(self.relay)
        self.main_address = address_of(self.main)
        self.credentials = {
            MAIN: orthanc_credentials(self.main),
            RELAY: orthanc_credentials(self.relay),
        }

    def host(self, name: str) -> testinfra.host.Host:
        return self.main if name == MAIN else self.relay

    def study(self, name: str, study: str, what: str) -> str:
        """STUDY's answer on host ``name`` (``count`` or ``pixels``); raises if it fails."""
        user, password = self.credentials[name]
        return str(
            self.host(name).check_output(
                f"python3 -c {quote(STUDY)} {quote(user)} {quote(password)} {quote(study)} {what}"
            )
        )

    def count(self, name: str, study: str) -> int:
        return int(self.study(name, study, "count").strip())

    def pixels(self, name: str, study: str) -> dict[str, str]:
        return dict(json.loads(self.study(name, study, "pixels")))

    def send_to_relay(self, study: StudyManifest) -> None:
        result = subprocess.run(
            [
                dcmtk("storescu"),
                *("-aet", MODALITY, "-aec", RELAY_AET, "+sd", "+r"),
                *(self.relay_address, str(DICOM_PORT)),
                # The series' folders (beside them, manifest.json is not DICOM).
                *[str(d) for d in sorted(study.out_dir.iterdir()) if d.is_dir()],
            ],
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]

    def relay_status(self) -> dict[str, Any]:
        return dict(json.loads(self.relay.check_output("pacs-relay status --json")))


@pytest.fixture(scope="module")
def territory() -> Territory:
    return Territory()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(
        tmp_path_factory.mktemp("peripheral-ct"), ct_images=IMAGES, mr_images=0, cr=False, seed=12
    )


def pixel_md5(path: Path) -> str:
    return hashlib.md5(pydicom.dcmread(path).PixelData, usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def forwarded(territory: Territory, study: StudyManifest) -> Iterator[dict[str, Any]]:
    """Send the study to the relay, cut the link mid-forwarding, restart, repair; what was seen."""
    uid = study.study_instance_uid
    seen: dict[str, Any] = {"uid": uid}
    territory.relay.check_output(THROTTLE)
    try:
        territory.send_to_relay(study)
        seen["relay_after_send"] = territory.count(RELAY, uid)
        seen["at_cut"] = wait_for(
            f"{CUT_AT} images of the study at the main archive (forwarding under way)",
            lambda: (n := territory.count(MAIN, uid)) >= CUT_AT and n,
            timeout=240,
            every=0.5,
        )
        territory.relay.check_output(CUT)
        seen["cut_at"] = time.monotonic()
        # While the link is down: the backlog shows, and passes its alert threshold.
        seen["metrics_down"] = wait_for(
            "the relay's backlog metric past its alert threshold while the link is down",
            lambda: (
                (m := metrics(territory.relay)).get("pacs_relay_backlog_studies", 0) >= 1
                and m.get("pacs_relay_oldest_unsent_seconds", 0)
                > m.get("pacs_relay_backlog_alert_seconds", 1e9)
                and m
            ),
            timeout=180,
        )
        seen["main_while_down"] = territory.count(MAIN, uid)
        # The relay restarted during the backlog.
        territory.relay.check_output("systemctl restart orthanc.service")
        wait_for(
            "the relay's Orthanc answering after its restart",
            lambda: (
                territory.relay.run(
                    f"python3 -c {quote(STUDY)} "
                    + " ".join(quote(x) for x in (*territory.credentials[RELAY], uid, "count"))
                ).rc
                == 0
            ),
            timeout=120,
        )
        seen["relay_while_down"] = territory.count(RELAY, uid)
        seen["down_seconds"] = time.monotonic() - seen["cut_at"]
    finally:
        territory.relay.run(REPAIR)
    seen["complete"] = wait_for(
        f"all {IMAGES} images at the main archive after the repair",
        lambda: territory.count(MAIN, uid) == IMAGES,
        timeout=600,
        every=5,
    )
    seen["purged"] = wait_for(
        "the relay's copy purged once confirmed, and its backlog empty",
        lambda: (
            territory.count(RELAY, uid) == 0
            and metrics(territory.relay).get("pacs_relay_backlog_studies", 1) == 0
        ),
        timeout=300,
        every=5,
    )
    seen["metrics_after"] = metrics(territory.relay)
    seen["main_pixels"] = territory.pixels(MAIN, uid)
    seen["status_after"] = territory.relay_status()
    seen["journal"] = territory.relay.check_output(
        "journalctl --no-pager -o cat -u pacs-relay.service"
    )
    yield seen


def test_the_link_is_up_with_a_recent_handshake(territory: Territory) -> None:
    shown = territory.relay.check_output(f"wg show {LINK} latest-handshakes")
    stamp = int(shown.split()[-1])
    assert stamp > 0, f"no handshake on {LINK}: {shown}"
    received, sent = territory.relay.check_output(f"wg show {LINK} transfer").split()[-2:]
    assert int(received) > 0 and int(sent) > 0, "nothing through the link"


def test_the_relay_reaches_the_archive_only_through_the_link(territory: Territory) -> None:
    """DICOM TLS through the tunnel; not on the archive's own network address."""
    relay = territory.relay
    assert tcp_connects(relay, MAIN_END, TLS_PORT), "the archive's DICOM TLS port through the link"
    for port in (DICOM_PORT, TLS_PORT):
        assert not tcp_connects(relay, territory.main_address, port), (
            f"the archive's port {port} answers on its own network address"
        )


def test_the_study_reached_the_relay_whole(forwarded: dict[str, Any]) -> None:
    assert forwarded["relay_after_send"] == IMAGES


def test_the_link_was_cut_in_the_middle_of_the_forwarding(forwarded: dict[str, Any]) -> None:
    assert CUT_AT <= forwarded["at_cut"] < IMAGES, forwarded["at_cut"]
    assert forwarded["main_while_down"] < IMAGES, "the link was cut after the whole study went"


def test_the_backlog_metric_showed_the_backlog_while_the_link_was_down(
    forwarded: dict[str, Any],
) -> None:
    down = forwarded["metrics_down"]
    assert down["pacs_relay_backlog_studies"] >= 1
    assert down["pacs_relay_oldest_unsent_seconds"] > down["pacs_relay_backlog_alert_seconds"]
    assert down["pacs_relay_up"] == 1


def test_nothing_was_lost_or_purged_while_the_link_was_down(forwarded: dict[str, Any]) -> None:
    """The relay's Orthanc restarted during the backlog; its copy stayed whole."""
    assert forwarded["relay_while_down"] == IMAGES


def test_every_image_arrived_exactly_once_with_identical_pixel_data(
    forwarded: dict[str, Any], study: StudyManifest
) -> None:
    sent = {record.sop_instance_uid: pixel_md5(record.path) for record in study.instances}
    arrived = forwarded["main_pixels"]
    assert len(sent) == IMAGES
    assert sorted(arrived) == sorted(sent), "images missing at the archive, or extra ones"
    differ = [uid for uid in sent if arrived[uid] != sent[uid]]
    assert differ == [], f"{len(differ)} images' pixel data differ at the archive"


def test_the_relay_purged_only_what_the_archive_confirmed(forwarded: dict[str, Any]) -> None:
    journal = forwarded["journal"]
    assert re.search(rf"purged study {re.escape(forwarded['uid'])} \({IMAGES} instance", journal), (
        journal[-3000:]
    )
    after = forwarded["metrics_after"]
    assert after["pacs_relay_backlog_studies"] == 0
    assert after["pacs_relay_oldest_unsent_seconds"] == 0
    assert after["pacs_relay_purged_studies_total"] >= 1
    assert after["pacs_relay_confirmed_studies_total"] >= 1


def test_nothing_is_waiting_at_the_relay(forwarded: dict[str, Any]) -> None:
    status = forwarded["status_after"]
    assert status["waiting"] == [], status
    assert status["orthanc_up"] and status["main_archive_up"], status


def test_the_relay_and_the_link_came_back_with_their_services(territory: Territory) -> None:
    for host, units in (
        (territory.relay, ["orthanc.service", f"wg-quick@{LINK}.service", "pacs-relay.timer"]),
        (territory.main, ["orthanc.service", f"wg-quick@{LINK}.service"]),
    ):
        for unit in units:
            assert host.service(unit).is_running, unit
        failed = host.run(
            "systemctl list-units --state=failed --plain --no-legend"
            " 'pacs-*' 'orthanc*' 'wg-quick@*' 'stunnel@*'"
        ).stdout
        assert failed.strip() == "", failed
