"""``pacsctl bench view``: how fast a CT opens, through the gateway and from Orthanc direct.

Two measures, in one run, on one study (a 300-slice 512x512 CT by default, made
by :mod:`pacs_libre.dicom.synth` and stored in the archive first):

- **WADO-RS throughput**, in MB/s: the whole study retrieved through the web
  gateway (HTTPS, the auth hook, nginx) against the same retrieval from Orthanc's
  own HTTP, both from the archive host itself so that only the gateway differs.
  The runs alternate (gateway, direct, gateway, ...) so that a noisy neighbour
  hits both alike; the script that does it (:data:`WADO_SCRIPT`) is plain
  Python 3 and runs on the host over the lab's SSH.
- **OHIF in Chromium**: the time to the first image and to the whole series
  (:func:`pacs_libre.viewer.open_study`), each run in a fresh browser profile.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacs_libre import lab, viewer
from pacs_libre.dicom.synth import StudyManifest, make_study
from pacs_libre.errors import UserError

# Runs on the archive host (python3 of Debian 12 or 13, nothing else): GETs each
# URL in turn, ``runs`` times, and prints one JSON line per retrieval.
WADO_SCRIPT = r"""
import base64, json, ssl, sys, time, urllib.request
spec = json.loads(sys.stdin.readline())
ctx = ssl.create_default_context(cafile=spec["cafile"]) if spec.get("cafile") else None
def orthanc_auth():
    # Orthanc's own administrator account, from its configuration (root reads it).
    with open("/etc/orthanc/orthanc.json") as f:
        conf = json.loads("".join(l for l in f if not l.lstrip().startswith("//")))
    return "%s:%s" % next(iter(conf["RegisteredUsers"].items()))
for target in spec["targets"]:
    if target["auth"] == "@orthanc":
        target["auth"] = orthanc_auth()
for run in range(spec["runs"]):
    for target in spec["targets"]:
        req = urllib.request.Request(target["url"], headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            "Authorization": "Basic " + base64.b64encode(target["auth"].encode()).decode(),
        })
        start = time.perf_counter(); size = 0
        tls = ctx if target["url"].startswith("https") else None
        with urllib.request.urlopen(req, context=tls, timeout=600) as r:
            while True:
                chunk = r.read(1 << 20)
                if not chunk: break
                size += len(chunk)
        print(json.dumps({"label": target["label"], "run": run, "bytes": size,
                          "seconds": time.perf_counter() - start}), flush=True)
"""


@dataclass
class Retrieval:
    """The WADO-RS retrievals of one path (gateway or direct)."""

    label: str
    url: str
    bytes: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        """Median throughput over the runs."""
        if not self.seconds:
            return 0.0
        return self.bytes / 1e6 / statistics.median(self.seconds)


@dataclass
class ViewRuns:
    """OHIF's timings over several fresh-browser runs."""

    first_image_s: list[float] = field(default_factory=list)
    all_frames_s: list[float | None] = field(default_factory=list)
    frames: int = 0
    expected_frames: int = 0

    @staticmethod
    def _median(values: Sequence[float | None]) -> float | None:
        real = [v for v in values if v is not None]
        return statistics.median(real) if real and len(real) == len(values) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "first_image_median_s": self._median(self.first_image_s),
            "all_frames_median_s": self._median(self.all_frames_s),
        }


def wado_throughput(
    ssh: Sequence[str],
    targets: Sequence[dict[str, str]],
    *,
    runs: int,
    cafile: str | None,
    progress: Callable[[str], None] | None = None,
) -> list[Retrieval]:
    """Run :data:`WADO_SCRIPT` on the host behind ``ssh`` (an ssh command line).

    ``targets`` are ``{"label", "url", "auth"}`` (``auth`` is ``user:password``, or
    ``@orthanc`` for Orthanc's administrator account, read on the host); they are
    retrieved in turn, ``runs`` times.
    """
    results = {t["label"]: Retrieval(t["label"], t["url"]) for t in targets}
    spec = json.dumps({"runs": runs, "targets": list(targets), "cafile": cafile})
    proc = subprocess.Popen(
        [*ssh, "python3", "-c", _quoted(WADO_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.stdin is None or proc.stdout is None:
        raise RuntimeError("ssh started without pipes")
    proc.stdin.write(spec + "\n")
    proc.stdin.close()
    for line in proc.stdout:
        row = json.loads(line)
        got = results[row["label"]]
        if got.bytes and row["bytes"] != got.bytes:
            raise UserError(
                f"WADO-RS {row['label']}: {row['bytes']} bytes, but {got.bytes} before: "
                "the study changed during the benchmark"
            )
        got.bytes = row["bytes"]
        got.seconds.append(row["seconds"])
        if progress:
            rate = row["bytes"] / 1e6 / row["seconds"]
            progress(f"{row['label']} run {row['run'] + 1}: {rate:.0f} MB/s")
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise UserError(f"the WADO-RS retrieval on the archive host failed: {err.strip()[-800:]}")
    sizes = {r.bytes for r in results.values()}
    if len(sizes) != 1:
        raise UserError(
            f"the gateway and Orthanc returned different sizes for the same study: "
            f"{ {r.label: r.bytes for r in results.values()} }"
        )
    return list(results.values())


def _quoted(script: str) -> str:
    """``script`` as one shell word for the remote side of ssh."""
    return "'" + script.replace("'", "'\"'\"'") + "'"


def ohif_runs(
    base_url: str,
    study_uid: str,
    *,
    user: str,
    password: str,
    expected_frames: int,
    runs: int,
    screenshot_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ViewRuns:
    """Open the study in OHIF ``runs`` times, each in a fresh browser, through /iid."""
    out = ViewRuns(expected_frames=expected_frames)
    for run in range(runs):
        view = viewer.open_study(
            base_url,
            f"/iid?requestType=STUDY&studyUID={study_uid}&viewerType=ohif",
            user=user,
            password=password,
            expected_frames=expected_frames,
            screenshot=screenshot_dir / f"ohif-run{run + 1}.png" if screenshot_dir else None,
        )
        out.first_image_s.append(view.first_image_s)
        out.all_frames_s.append(view.all_frames_s)
        out.frames = max(out.frames, view.frames)
        if progress:
            total = "-" if view.all_frames_s is None else f"{view.all_frames_s:.2f} s"
            progress(
                f"OHIF run {run + 1}: first image {view.first_image_s:.2f} s, all frames {total}"
            )
    return out


def view_study(
    slices: int, cache: Path, progress: Callable[[int, int], None] | None = None
) -> StudyManifest:
    """The benchmark's CT (``slices`` 512x512 images), made once and kept in ``cache``."""
    folder = cache / f"view-ct{slices}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        return StudyManifest.load(manifest)
    study = make_study(
        folder, ct_images=slices, mr_images=0, cr=False, seed=slices, progress=progress
    )
    study.write()
    return study


@dataclass(frozen=True)
class WebEndpoint:
    """The lab's gateway, as ``lab_endpoints.web`` describes it (``pacsctl lab status``)."""

    url: str
    user: str
    password: str
    host: str  # the lab host's container name, reached with the lab's ssh config
    ssh: tuple[str, ...]


def web_endpoint(the_lab: Any) -> WebEndpoint:
    """The lab's gateway (``lab_endpoints.web``), its user and password, or a UserError."""
    holder = next((h for h in the_lab.hosts if isinstance(h.endpoints.get("web"), dict)), None)
    if holder is None or not holder.endpoints["web"].get("url"):
        raise UserError(
            "the lab publishes no web endpoint (`pacsctl lab status`): converge the gateway "
            "first (`make lab`), or check lab_endpoints.web in the inventory's host_vars"
        )
    web = holder.endpoints["web"]
    password_file = Path(str(web.get("password_file", "")))
    if not password_file.is_absolute():  # as lab status shows it: from the project's root
        password_file = lab.project_root() / password_file
    if not password_file.is_file():
        raise UserError(
            f"the lab user's password file {password_file} does not exist: run `make lab` first"
        )
    if the_lab.ssh_dir is None:
        raise UserError("this lab has no SSH folder: run `make lab` first")
    return WebEndpoint(
        url=str(web["url"]).rstrip("/"),
        user=str(web["user"]),
        password=password_file.read_text(encoding="utf-8").strip(),
        host=holder.container,
        ssh=("ssh", "-F", str(Path(the_lab.ssh_dir) / "config"), holder.container),
    )
