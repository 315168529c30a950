"""``pacsctl bench forward``: a relay forwarding over the site link, against raw dcmtk.

On a territory (``make lab``'s relay1 and pacs1, or a scenario's hosts), ``rounds`` times:

- **raw dcmtk**: the study's files, copied onto the relay, sent by ``storescu`` (one
  association) to a ``storescp`` on the main host, at the main end's tunnel address: plain
  DICOM through the same WireGuard link, nothing else. The main host's firewall lets that
  port in from the relay's tunnel address for the run only (a rule inserted into
  pacs-libre's table and removed after; the next firewall reload would drop it anyway).
- **forwarding**: the same images under new UIDs, stored into the relay's Orthanc through
  its REST API (not timed), then sent by the relay's routing, as it sends every study
  (an Orthanc store job to the main archive, through stunnel's DICOM TLS and the link).
  Its time is that job's own running time (``EffectiveRuntime``): the wait for the study
  to become stable and for the queue's next turn is left out.

Each run is a new synthetic study (its own seed), so the archive never already holds what
it receives. At the end the benchmark's studies are deleted from the relay and the
archive (patient ``BENCH^FORWARD``), and the scratch folders removed. dcmtk is installed
on the two hosts if it is missing. For a lab or a test territory: it writes to the
archive.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacs_libre.bench_retrieve import Pull
from pacs_libre.dicom.synth import StudyManifest, make_study
from pacs_libre.errors import UserError

METHODS = ("raw dcmtk", "forwarding")
PATIENT = "BENCH^FORWARD"
SCRATCH = "/srv/pacs/.bench-forward"
RAW_PORT = 11300
RAW_AET = "BENCHSCP"
#: The comment that names the main host's temporary firewall rule.
RULE_TAG = "pacs-bench-forward"

# On a host, as root, python3: Orthanc's local REST API with the administrator's
# account from orthanc.json. ARGS: what to do, then its arguments.
REST = r"""
import base64, json, os, sys, time, urllib.request
text = open("/etc/orthanc/orthanc.json").read()
conf = json.loads("".join(l for l in text.splitlines(True) if not l.lstrip().startswith("//")))
user, password = next(iter(conf["RegisteredUsers"].items()))
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
def call(method, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (conf.get("HttpPort", 8042), path),
                                 data=body, method=method, headers={"Authorization": auth})
    with urllib.request.urlopen(req, timeout=120) as r:
        data = r.read()
    return json.loads(data) if data else None
def study(uid):
    found = [e["ID"] for e in call("POST", "/tools/lookup", uid.encode()) if e["Type"] == "Study"]
    return found[0] if found else None
what = sys.argv[1]
if what == "upload":
    for root, _dirs, files in os.walk(sys.argv[2]):
        for name in sorted(files):
            if name.endswith(".dcm"):
                with open(os.path.join(root, name), "rb") as f:
                    call("POST", "/instances", f.read())
    print(json.dumps({"study": study(sys.argv[3])}))
elif what == "job":
    # The routing's store job of the study: wait for its end, then its running time.
    orthanc_id, deadline = study(sys.argv[2]), time.time() + float(sys.argv[3])
    while time.time() < deadline:
        for job in call("GET", "/jobs?expand") or []:
            content = job.get("Content") or {}
            if job.get("Type") == "DicomModalityStore" and orthanc_id in (
                content.get("ParentResources") or []
            ):
                if job["State"] == "Success":
                    print(json.dumps({"seconds": job["EffectiveRuntime"],
                                      "instances": content.get("InstancesCount"),
                                      "failed": content.get("FailedInstancesCount")}))
                    sys.exit(0)
                if job["State"] == "Failure":
                    print(json.dumps({"error": job.get("ErrorDescription", "failed")}))
                    sys.exit(0)
        time.sleep(0.5)
    print(json.dumps({"error": "no finished store job for the study in time"}))
elif what == "count":
    orthanc_id = study(sys.argv[2])
    print(len(call("GET", f"/studies/{orthanc_id}/instances")) if orthanc_id else 0)
elif what == "delete":
    for uid in sys.argv[2:]:
        orthanc_id = study(uid)
        if orthanc_id:
            call("DELETE", f"/studies/{orthanc_id}")
"""

# On the relay: the tunnel's interface, its own address and the main end's (its one peer).
TUNNEL = r"""
set -eu
link=$(wg show interfaces | awk '{print $1}')
[ -n "$link" ] || { echo "no WireGuard interface on this host: is it a relay?" >&2; exit 3; }
mine=$(ip -4 -o addr show dev "$link" | awk '{print $4}' | cut -d/ -f1)
peer=$(wg show "$link" allowed-ips | awk '{print $2}' | cut -d/ -f1)
echo "$link $mine $peer"
"""

# Install dcmtk where it is missing (the raw baseline's tools).
DCMTK = (
    "command -v storescu >/dev/null || DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y -qq --no-install-recommends dcmtk >/dev/null"
)


#: One method's runs, and what each carried: the record ``pacsctl bench retrieve`` keeps.
Transfer = Pull


@dataclass(frozen=True)
class Territory:
    """The two hosts, as an ssh config names them, and the link between them."""

    relay: str
    main: str
    ssh_config: Path
    link: str = ""
    relay_end: str = ""
    main_end: str = ""


class Remote:
    """Commands on the territory's hosts, over SSH as Ansible reaches them."""

    def __init__(self, ssh_config: Path) -> None:
        if not ssh_config.exists():
            raise UserError(
                f"{ssh_config}: no ssh config; start the lab (make lab) or pass --ssh-config"
            )
        self.ssh_config = ssh_config

    def run(self, host: str, command: str, *, stdin: str | bytes | None = None) -> str:
        proc = subprocess.run(
            ["ssh", "-F", str(self.ssh_config), host, command],
            input=stdin.encode() if isinstance(stdin, str) else stdin,
            capture_output=True,
            check=False,
            timeout=3600,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()[-1500:]
            raise UserError(f"on {host}: `{command[:120]}` failed ({proc.returncode}): {detail}")
        return proc.stdout.decode(errors="replace")

    def rest(self, host: str, *args: str) -> str:
        return self.run(host, "python3 - " + " ".join(shlex.quote(a) for a in args), stdin=REST)

    def put_tree(self, host: str, local: Path, remote: str) -> None:
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(local, arcname=".")
            archive.seek(0)
            self.run(
                host,
                f"rm -rf {remote} && mkdir -p {remote} && tar -C {remote} -x",
                stdin=archive.read(),
            )


def find_link(remote: Remote, relay: str, main: str) -> Territory:
    """The relay's WireGuard interface, its tunnel address and the main end's."""
    link, relay_end, main_end = remote.run(relay, "sh -s", stdin=TUNNEL).split()
    return Territory(relay, main, remote.ssh_config, link, relay_end, main_end)


def _study(out_dir: Path, images: int, seed: int) -> StudyManifest:
    return make_study(out_dir, ct_images=images, mr_images=0, cr=False, patient=PATIENT, seed=seed)


def raw(remote: Remote, where: Territory, folder: str) -> float:
    """storescu on the relay to storescp on the main host, through the link; its seconds."""
    inbox = f"{SCRATCH}/in"
    rule = (
        f"nft insert rule inet pacs_libre input ip saddr {where.relay_end} tcp dport {RAW_PORT}"
        f' accept comment \\"{RULE_TAG}\\"'
    )
    remote.run(
        where.main,
        f"rm -rf {inbox} && mkdir -p {inbox} && sh -c '{rule}' && "
        f"(TCP_NODELAY=1 nohup storescp -aet {RAW_AET} -od {inbox} {RAW_PORT}"
        f" >/dev/null 2>&1 & echo $! > {SCRATCH}/storescp.pid) && sleep 1",
    )
    try:
        # The series' folders only: beside them, the manifest is not DICOM.
        out = remote.run(
            where.relay,
            "set -e; export LC_ALL=C; start=$(date +%s.%N);"
            f" TCP_NODELAY=1 storescu -aet BENCHRELAY -aec {RAW_AET} +sd +r"
            f" {where.main_end} {RAW_PORT} {folder}/*/; end=$(date +%s.%N);"
            ' awk -v a="$start" -v b="$end" \'BEGIN { printf "%.3f", b - a }\'',
        )
        received = int(remote.run(where.main, f"find {inbox} -type f | wc -l").strip())
    finally:
        remote.run(
            where.main,
            f"kill $(cat {SCRATCH}/storescp.pid) 2>/dev/null; rm -rf {inbox};"
            f" for h in $(nft -a list chain inet pacs_libre input | grep '{RULE_TAG}'"
            " | sed 's/.*# handle //'); do nft delete rule inet pacs_libre input handle $h; done",
        )
    images = int(remote.run(where.relay, f"find {folder} -name '*.dcm' | wc -l").strip())
    if received != images:
        raise UserError(
            f"raw dcmtk: storescp on {where.main} received {received} of the study's"
            f" {images} images"
        )
    return float(out.strip())


def forwarding(remote: Remote, where: Territory, folder: str, study: StudyManifest) -> float:
    """Store the study into the relay's Orthanc; the running time of routing's store job."""
    remote.rest(where.relay, "upload", folder, study.study_instance_uid)
    answer = json.loads(remote.rest(where.relay, "job", study.study_instance_uid, "900"))
    if "error" in answer:
        raise UserError(
            f"forwarding: {answer['error']} (the relay's journal: journalctl -u orthanc)"
        )
    if answer.get("failed"):
        raise UserError(f"forwarding: {answer['failed']} images refused by the main archive")
    arrived = int(remote.rest(where.main, "count", study.study_instance_uid).strip())
    if arrived != len(study.instances):
        raise UserError(
            f"forwarding: the main archive holds {arrived} of the study's "
            f"{len(study.instances)} images"
        )
    return float(answer["seconds"])


def measure(
    remote: Remote,
    where: Territory,
    *,
    images: int = 300,
    rounds: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[Transfer]:
    """Raw, then forwarding, ``rounds`` times, each with a new study; the benchmark's studies
    are deleted from both hosts at the end."""
    say = progress or (lambda _text: None)
    say("dcmtk on both hosts")
    for host in (where.relay, where.main):
        remote.run(host, DCMTK)
    transfers: dict[str, Transfer] = {}
    made: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pacs-bench-forward-") as tmp:
            for run in range(rounds):
                for index, method in enumerate(METHODS):
                    seed = int(time.time()) * 10 + run * len(METHODS) + index
                    study = _study(Path(tmp) / f"{run}-{index}", images, seed)
                    made.append(study.study_instance_uid)
                    folder = f"{SCRATCH}/study-{run}-{index}"
                    say(f"run {run + 1}/{rounds}: {method}: copying the study onto the relay")
                    remote.put_tree(where.relay, study.out_dir, folder)
                    say(f"run {run + 1}/{rounds}: {method}")
                    transfer = transfers.setdefault(
                        method, Transfer(method, len(study.instances), study.total_bytes)
                    )
                    seconds = (
                        raw(remote, where, folder)
                        if method == "raw dcmtk"
                        else forwarding(remote, where, folder, study)
                    )
                    transfer.seconds.append(seconds)
    finally:
        say("removing the benchmark's studies and scratch folders")
        for host in (where.relay, where.main):
            remote.rest(host, "delete", *made)
        remote.run(where.relay, f"rm -rf {SCRATCH}")
        remote.run(where.main, f"rm -rf {SCRATCH}")
    return [transfers[m] for m in METHODS if m in transfers]
