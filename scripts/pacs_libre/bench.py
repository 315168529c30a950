"""``pacsctl bench ingest``: sustained C-STORE ingest, and a stock Orthanc to compare with.

Method (docs/performance.md):

1. **A pool of CT instances, made once.** 512x512 16-bit slices of the synthetic
   phantom, 300 per study, cached in ``<cache>/bench/ct512-v1/``. Their UIDs carry a
   fixed 16-digit token.
2. **Fresh UIDs for every run.** Before the clock starts, the pool is copied with the
   token replaced by a new one (same length, so no DICOM length changes): an archive
   never sees a duplicate, which it would skip without storing.
3. **N senders, one association each.** By default each sender is a dcmtk
   ``storescu`` process (``--sender dcmtk``): C++, a few milliseconds of CPU per
   image, so the harness is not the limit. The clock runs from the start of the
   first process to the exit of the last (association setup included, a few
   milliseconds). ``--sender python`` uses pynetdicom worker processes instead:
   every worker opens its association, all wait at a barrier, and the clock runs
   from the first C-STORE to the last response. Either way, each sender has
   ``TCP_NODELAY`` set.
4. **Counters.** When the archive is a lab container, the archive process's CPU time
   and disk writes are read from ``/proc`` before and after, with the machine's CPU
   split (user, system, iowait, idle), and the workers' own CPU time.

``--baseline`` runs the same load against a *stock* Orthanc on an identical lab host
(``pacs-bench-stock`` on the network ``pacs-bench``): Debian's ``orthanc`` package with
its own configuration (SQLite index), installed by apt.

Why one module of about 670 lines: the pool, both senders and the stock host are one
method whose parts must stay comparable run for run; ``bench_converge`` (another
method) and the CLI are apart.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacs_libre import lab
from pacs_libre.dicom import net, synth
from pacs_libre.errors import UserError

POOL_VERSION = "ct512-v1"
#: The placeholder in every UID of the pool; each run replaces it.
POOL_TOKEN = "1000000000000000"  # noqa: S105 (a UID component, not a secret)
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs
STUDY_SIZE = 300  # CT slices per study in the pool

STOCK_LAB = "pacs-bench"
STOCK_HOST = "stock"
STOCK_CONTAINER = f"{STOCK_LAB}-{STOCK_HOST}"
STOCK_AET = "ORTHANC"  # Debian's orthanc.json: "DicomAet" : "ORTHANC"
CALLING_AET = "PACSBENCH"
#: How the C-STOREs are sent: dcmtk storescu processes, or pynetdicom processes.
SENDERS = ("dcmtk", "python")


# ------------------------------------------------------------------------- pool


def pool_dir(cache: Path | None = None) -> Path:
    return (cache or lab.cache_dir() / "bench") / POOL_VERSION


def _pool_uid(study: int, kind: str, number: int = 0) -> str:
    return f"{UID_ROOT}{POOL_TOKEN}.{study}.{kind}.{number}"


def ct_pool(
    count: int,
    cache: Path | None = None,
    *,
    size: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """``count`` CT instances, generated once and reused (only missing ones are made)."""
    folder = pool_dir(cache).with_name(POOL_VERSION.replace("512", str(size)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.dcm" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    for done, index in enumerate(missing, 1):
        study, slice_no = divmod(index, STUDY_SIZE)
        ctx = synth.StudyContext(
            study_instance_uid=_pool_uid(study, "1"),
            accession_number=f"BENCH{study:06d}",
            study_date="20250101",
            study_time="080000",
            study_description="pacs-libre bench",
            patient_name="BENCH^Ingestion",
            patient_id=f"BENCH{study:06d}",
            patient_birth_date="19700101",
            patient_sex="O",
        )
        ds = synth.ct_dataset(
            ctx,
            series_uid=_pool_uid(study, "2"),
            frame_uid=_pool_uid(study, "3"),
            sop_instance=_pool_uid(study, "4", slice_no),
            index=slice_no,
            total=STUDY_SIZE,
            size=size,
        )
        tmp = paths[index].with_suffix(".tmp")
        synth.write(ds, tmp)
        tmp.replace(paths[index])
        if progress is not None:
            progress(done, len(missing))
    return paths


def new_token() -> str:
    """16 digits, not starting with 0, unlike any other run's (time + pid)."""
    stamp = f"{time.time_ns() // 1000 % 10**12:012d}{os.getpid() % 10000:04d}"
    return "9" + stamp[1:] if stamp[0] == "0" else stamp


def prepare_run(pool: Sequence[Path], run_dir: Path, run_id: str | None = None) -> list[Path]:
    """Copies of the pool with fresh UIDs (the token replaced in place)."""
    token = run_id or new_token()
    if len(token) != len(POOL_TOKEN) or not token.isdigit() or token[0] == "0":
        raise ValueError("the run token must be 16 digits, not starting with 0")
    old = f"{UID_ROOT}{POOL_TOKEN}.".encode()
    new = f"{UID_ROOT}{token}.".encode()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in pool:
        target = run_dir / path.name
        target.write_bytes(path.read_bytes().replace(old, new))
        out.append(target)
    return out


# ---------------------------------------------------------------------- workers


@dataclass(frozen=True)
class Endpoint:
    """Where the benchmark sends: the archive's DICOM address, its AE title and ours."""

    host: str
    port: int
    called_aet: str
    calling_aet: str

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerJob:
    """What one pynetdicom worker process is given (pickled once, at spawn)."""

    index: int
    paths: list[str]
    where: Endpoint
    #: multiprocessing's Barrier, and Queues of progress ticks and of WorkerResult dicts.
    barrier: Any
    ticks: Any
    results: Any


@dataclass
class WorkerResult:
    """What one worker reports back, as a dict through the results queue."""

    index: int
    start: float = 0.0
    end: float = 0.0
    sent: int = 0
    failed: int = 0
    bytes: int = 0
    cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _worker(job: WorkerJob) -> None:
    """One association: connect, wait for all, send the share, report."""
    where, barrier, ticks = job.where, job.barrier, job.ticks
    result = WorkerResult(job.index)
    infos = [net.file_info(Path(p)) for p in job.paths]
    cpu0 = time.process_time()
    try:
        with net.associate(
            where.host,
            where.port,
            where.called_aet,
            where.calling_aet,
            net.storage_contexts(infos),
            timeout=120.0,
        ) as assoc:
            barrier.wait(timeout=300)
            result.start = time.monotonic()
            pending = 0
            for info in infos:
                outcome = net.store_one(assoc, info.path, info.sop_instance, info.size)
                if outcome.ok:
                    result.sent += 1
                    result.bytes += info.size
                else:
                    result.failed += 1
                    if len(result.errors) < 3:
                        status = "-" if outcome.status is None else f"0x{outcome.status:04X}"
                        result.errors.append(f"{info.path.name}: {status} {outcome.error}")
                pending += 1
                if pending >= 5:
                    ticks.put(pending)
                    pending = 0
            result.end = time.monotonic()
            ticks.put(pending)
    except UserError as exc:
        barrier.abort()
        result.errors.append(str(exc))
        result.failed = len(infos) - result.sent
    except threading.BrokenBarrierError:
        result.errors.append("another worker could not associate")
        result.failed = len(infos)
    result.cpu_seconds = time.process_time() - cpu0
    job.results.put(asdict(result))


@dataclass
class IngestResult:
    """What one ingest run measured."""

    label: str
    target: str
    associations: int
    instances: int
    sent: int
    failed: int
    bytes: int
    seconds: float
    client_cpu_seconds: float
    errors: list[str]
    server: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["images_per_s"] = round(self.images_per_s, 1)
        data["mb_per_s"] = round(self.mb_per_s, 1)
        data["seconds"] = round(self.seconds, 3)
        data["client_cpu_seconds"] = round(self.client_cpu_seconds, 2)
        return data


def run_ingest(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    associations: int,
    label: str = "target",
    progress: Callable[[int], None] | None = None,
    counters: ServerCounters | None = None,
    sender: str = "dcmtk",
) -> IngestResult:
    """Send ``paths`` over ``associations`` parallel associations, one process each."""
    if associations < 1:
        raise UserError("--associations must be 1 or more")
    if not paths:
        raise UserError("--instances must be 1 or more")
    if sender not in SENDERS:
        raise UserError(f"--sender {sender}: use one of {', '.join(SENDERS)}")
    associations = min(associations, len(paths))
    shares = [[str(p) for p in paths[i::associations]] for i in range(associations)]
    where = Endpoint(host, port, called_aet, calling_aet)
    if sender == "dcmtk":
        return _run_storescu(
            shares,
            where,
            label=label,
            progress=progress,
            counters=counters,
        )
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(associations)
    ticks = ctx.Queue()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(WorkerJob(i, shares[i], where, barrier, ticks, results),))
        for i in range(associations)
    ]
    for worker in workers:
        worker.start()
    before = counters.sample() if counters else None
    collected: list[dict[str, Any]] = []
    while len(collected) < associations:
        try:
            collected.append(results.get(timeout=0.2))
        except queue.Empty:
            if not any(w.is_alive() for w in workers) and results.empty():
                break
        _drain(ticks, progress)
    _drain(ticks, progress)
    after = counters.sample() if counters else None
    for worker in workers:
        worker.join(timeout=30)
    if len(collected) < associations:
        raise UserError("a benchmark worker died without a report: rerun with fewer --associations")
    started = [r["start"] for r in collected if r["start"]]
    ended = [r["end"] for r in collected if r["end"]]
    seconds = max(ended) - min(started) if started and ended else 0.0
    errors = [e for r in collected for e in r["errors"]]
    sent = sum(r["sent"] for r in collected)
    if sent == 0 and errors:
        raise UserError(f"no instance was stored: {errors[0]}")
    server = counters.delta(before, after, seconds) if counters and before and after else {}
    return IngestResult(
        label=label,
        target=f"{called_aet}@{host}:{port}",
        associations=associations,
        instances=len(paths),
        sent=sent,
        failed=sum(r["failed"] for r in collected),
        bytes=sum(r["bytes"] for r in collected),
        seconds=seconds,
        client_cpu_seconds=sum(r["cpu_seconds"] for r in collected),
        errors=errors[:5],
        server=server,
    )


#: storescu -v logs one of these per C-STORE response, with its status.
_RESPONSE = b"I: Received Store Response ("
_SENDING = b"I: Sending file: "
_RESPONSE_OK = (b"I: Received Store Response (Success", b"I: Received Store Response (Warning")


def _stored(lines: list[bytes]) -> tuple[int, int]:
    """Instances and bytes that storescu's log shows stored (response after each file)."""
    ok = nbytes = 0
    current: Path | None = None
    for line in lines:
        if line.startswith(_SENDING):
            current = Path(line[len(_SENDING) :].decode(errors="replace"))
        elif line.startswith(_RESPONSE_OK) and current is not None:
            ok += 1
            nbytes += current.stat().st_size
            current = None
    return ok, nbytes


def _run_storescu(
    shares: list[list[str]],
    where: Endpoint,
    *,
    label: str,
    progress: Callable[[int], None] | None,
    counters: ServerCounters | None,
) -> IngestResult:
    """One dcmtk ``storescu`` process per association, all started at once.

    ``-v`` makes storescu log each response with its status: the stored and failed
    counts come from there, and an instance without a response counts as failed.
    """
    storescu = shutil.which("storescu")
    if storescu is None:
        raise UserError(
            "dcmtk's storescu is not on PATH. Fix: `make prereqs` (apt package dcmtk), "
            "or pass --sender python"
        )
    host, port, called, calling = where.host, where.port, where.called_aet, where.calling_aet
    env = {**os.environ, "TCP_NODELAY": "1"}
    with tempfile.TemporaryDirectory(prefix="pacs-bench-storescu-") as tmp:
        logs = [Path(tmp) / f"association-{i}.log" for i in range(len(shares))]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = counters.sample() if counters else None
        start = time.monotonic()
        procs = []
        for share, log in zip(shares, logs, strict=True):
            with log.open("wb") as sink:
                procs.append(
                    subprocess.Popen(
                        [
                            storescu,
                            "-v",
                            "-nh",
                            "-to",
                            "120",
                            "-ta",
                            "120",
                            "-td",
                            "120",
                            "-aet",
                            calling,
                            "-aec",
                            called,
                            host,
                            str(port),
                            *share,
                        ],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        seen = [0] * len(procs)
        while True:
            running = any(p.poll() is None for p in procs)
            for i, log in enumerate(logs):
                count = log.read_bytes().count(_RESPONSE)
                if progress is not None and count > seen[i]:
                    progress(count - seen[i])
                seen[i] = count
            if not running:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - start
        after = counters.sample() if counters else None
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sent = nbytes = 0
        errors: list[str] = []
        for i, (share, log, proc) in enumerate(zip(shares, logs, procs, strict=True)):
            lines = log.read_bytes().splitlines()
            ok, stored_bytes = _stored(lines)
            sent += ok
            nbytes += stored_bytes
            if ok < len(share):
                bad = [line for line in lines if line.startswith((b"E:", b"F:", b"W:"))]
                bad += [
                    line
                    for line in lines
                    if line.startswith(_RESPONSE) and not line.startswith(_RESPONSE_OK)
                ]
                detail = b"; ".join(bad[:3]).decode(errors="replace") or "no response"
                errors.append(
                    f"storescu {i} (exit {proc.returncode}): "
                    f"{len(share) - ok} of {len(share)} not stored: {detail}"
                )
    total = sum(len(share) for share in shares)
    if sent == 0 and errors:
        raise UserError(f"no instance was stored: {errors[0]}")
    server = counters.delta(before, after, seconds) if counters and before and after else {}
    return IngestResult(
        label=label,
        target=f"{called}@{host}:{port}",
        associations=len(shares),
        instances=total,
        sent=sent,
        failed=total - sent,
        bytes=nbytes,
        seconds=seconds,
        client_cpu_seconds=(usage1.ru_utime - usage0.ru_utime)
        + (usage1.ru_stime - usage0.ru_stime),
        errors=errors[:5],
        server=server,
    )


def _drain(ticks: Any, progress: Callable[[int], None] | None) -> None:
    while True:
        try:
            count = ticks.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(int(count))


@contextmanager
def run_files(pool: Sequence[Path], cache: Path | None = None) -> Iterator[list[Path]]:
    """A run's fresh copies of the pool, removed afterwards."""
    base = (cache or lab.cache_dir() / "bench") / "runs"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        yield prepare_run(pool, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- counters


class ServerCounters:
    """CPU and I/O of the archive process in a lab container, and the machine's CPU."""

    def __init__(self, container: str, unit: str = "orthanc") -> None:
        self.container = container
        self.unit = unit
        self.pid = self._host_pid()

    def _host_pid(self) -> int:
        """The archive's main process, as the machine sees it (its /proc is readable here)."""
        proc = lab.run_tool(
            ["podman", "exec", self.container, "systemctl", "show", "-P", "MainPID", self.unit],
            check=False,
        )
        inner = proc.stdout.strip()
        if proc.returncode != 0 or not inner or inner == "0":
            raise UserError(f"{self.unit} is not running in {self.container}")
        top = lab.run_tool(["podman", "top", self.container, "pid", "hpid"], check=False)
        for line in top.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 2 and fields[0] == inner and fields[1].isdigit():
                return int(fields[1])
        raise UserError(f"cannot find the {self.unit} process of {self.container} on this machine")

    def sample(self) -> dict[str, float]:
        data: dict[str, float] = {}
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[-1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            data["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
            data["iowait_seconds"] = int(fields[39]) / ticks  # delayacct_blkio_ticks
            for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in {"write_bytes", "syscw", "read_bytes"}:
                    data[key] = float(value)
        except (OSError, IndexError, ValueError):
            pass  # not readable (not root): the machine counters remain
        data.update(_machine_cpu())
        return data

    def delta(
        self, before: dict[str, float], after: dict[str, float], seconds: float
    ) -> dict[str, Any]:
        diff = {k: after[k] - before[k] for k in before if k in after}
        wall = max(seconds, 1e-9)
        cpu_total = sum(diff.get(f"machine_{k}", 0.0) for k in _CPU_FIELDS)
        share = {
            k: round(100.0 * diff.get(f"machine_{k}", 0.0) / cpu_total, 1) if cpu_total else 0.0
            for k in ("user", "system", "iowait", "idle")
        }
        return {
            "container": self.container,
            "archive_cpu_seconds": round(diff.get("cpu_seconds", 0.0), 2),
            # 100 % is one core busy all the time; the lab machine has os.cpu_count() cores.
            "archive_cpu_percent": round(100.0 * diff.get("cpu_seconds", 0.0) / wall, 1),
            "archive_write_mb": round(diff.get("write_bytes", 0.0) / 1e6, 1),
            "archive_write_syscalls": int(diff.get("syscw", 0.0)),
            "archive_blkio_wait_seconds": round(diff.get("iowait_seconds", 0.0), 2),
            "machine_cores": os.cpu_count() or 1,
            "machine_cpu_percent": share,
        }


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _machine_cpu() -> dict[str, float]:
    """Whole-machine CPU time by kind, from /proc/stat (jiffies)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return {}
    return {f"machine_{k}": float(v) for k, v in zip(_CPU_FIELDS, first[1:], strict=False)}


def container_for_port(port: int) -> str | None:
    """The running lab container that publishes ``port`` on 127.0.0.1, if any."""
    proc = lab.run_tool(["podman", "ps", "--format", "json"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    for entry in json.loads(proc.stdout):
        for mapping in entry.get("Ports") or []:
            if int(mapping.get("host_port", 0)) == port:
                names = entry.get("Names") or []
                return str(names[0]) if names else None
    return None


# ------------------------------------------------------------------ stock host


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _published_port(container: str) -> int | None:
    proc = lab.run_tool(["podman", "port", container, "4242/tcp"], check=False)
    text = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not text:
        return None
    return int(text[0].rsplit(":", 1)[-1])


def stock_lab(port: int, debian: str = lab.DEFAULT_DEBIAN) -> lab.Lab:
    """The baseline's one-host lab, built in code: its own names, network and volume."""
    host = lab.LabHost(
        name=STOCK_HOST,
        container=STOCK_CONTAINER,
        debian=debian,
        ports=[(port, 4242, "tcp")],
    )
    return lab.Lab(inventory=Path("<pacs-bench>"), name=STOCK_LAB, network=STOCK_LAB, hosts=[host])


#: Debian's orthanc.json, as shipped, is kept whole. The only deviation:
#: none so far (DicomAet ORTHANC, port 4242, DicomCheckCalledAet false and
#: DicomAlwaysAllowStore true accept the benchmark as shipped); see
#: docs/performance.md. The check below fails loudly if a Debian update changes that.
STOCK_INSTALL = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' orthanc 2>/dev/null | grep -q 'install ok installed'; then
  apt-get install -y --no-install-recommends orthanc >/tmp/pacs-bench-apt.log 2>&1 \
    || { tail -5 /tmp/pacs-bench-apt.log; exit 1; }
fi
systemctl enable --now orthanc >/dev/null 2>&1
dpkg-query -W -f='${Version}' orthanc
"""


def ensure_stock(
    debian: str = lab.DEFAULT_DEBIAN, progress: Callable[[str], None] = lambda _m: None
) -> tuple[str, int, str]:
    """Start (or reuse) the stock Orthanc host; return (host, port, AE title)."""
    port = _published_port(STOCK_CONTAINER) or free_port()
    the_lab = stock_lab(port, debian)
    recipe = lab.ImageRecipe.for_debian(debian)
    progress(f"image {recipe.image}")
    lab.build_image(recipe)
    lab.ensure_networks(the_lab)
    host = the_lab.hosts[0]
    progress(f"host {STOCK_CONTAINER}")
    lab.ensure_host(the_lab, host)
    lab.wait_booted(host)
    progress("apt-get install orthanc (Debian's package, its own configuration)")
    proc = lab.run_tool(["podman", "exec", STOCK_CONTAINER, "sh", "-c", STOCK_INSTALL], check=False)
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().splitlines()
        raise UserError(
            f"installing orthanc in {STOCK_CONTAINER} failed: {detail[-1] if detail else '?'}"
            " — retry, or `pacsctl bench clean` and retry"
        )
    progress(f"waiting for Orthanc {proc.stdout.strip()} on 127.0.0.1:{port}")
    deadline = time.monotonic() + 90
    while True:
        try:
            net.echo("127.0.0.1", port, STOCK_AET, CALLING_AET, timeout=5)
            break
        except UserError as exc:
            if time.monotonic() > deadline:
                raise UserError(
                    f"the stock Orthanc in {STOCK_CONTAINER} does not answer: {exc}"
                ) from exc
            time.sleep(1)
    return "127.0.0.1", port, STOCK_AET


def stock_version() -> str:
    proc = lab.run_tool(
        ["podman", "exec", STOCK_CONTAINER, "dpkg-query", "-W", "-f=${Version}", "orthanc"],
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def clean() -> list[str]:
    """Remove the stock host, its volume and network (names ``pacs-bench*`` only)."""
    return lab.down(stock_lab(0), purge=True)
