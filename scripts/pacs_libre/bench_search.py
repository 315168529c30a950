"""``pacsctl bench search``: study lists and patient histories at hospital scale, vs stock.

Method (docs/performance.md, *Search*):

1. **A corpus, loaded once and kept.** :class:`pacs_libre.dicom.corpus.Corpus` makes N
   studies (the mix of ``pacsctl size``, several series each, French names in ISO_IR 100
   and ISO_IR 192, five years of dates). It is written in chunks of
   :data:`CHUNK` studies under ``<cache>/bench/search-v1-s<seed>-<anchor>/`` and sent by
   dcmtk ``storescu`` processes (:func:`pacs_libre.bench.run_ingest`), several
   associations at once, to the lab archive and to the stock Orthanc: the same files to
   both. Which chunks each archive holds is kept in ``loaded.json`` beside them, so a
   load that stops resumes where it was, and a larger N loads only the studies added.
2. **The queries that clients make**, with values drawn from the loaded studies
   (:func:`queries`): OHIF's study list and its filters over QIDO-RS, the IID service's
   ``/tools/find`` for a patient's history, and OsiriX's or Weasis's C-FIND with the
   return keys they ask for. Each is run ``runs`` times with a different value, after one
   run that is not counted.
3. **Where it is timed.** QIDO-RS and ``/tools/find`` from the archive host itself, on
   Orthanc's local HTTP with one kept-alive connection (:data:`HOST_SCRIPT`, plain
   Python 3 through ``podman exec``): the archive's time, not the gateway's. C-FIND from
   this machine to the published DICOM port, one association per query (as workstations
   do), association set-up included.
4. **p50 and p95** by linear interpolation between the closest ranks (:func:`percentile`,
   NumPy's and spreadsheets' default), and the ratio stock / pacs-libre of each.
"""

from __future__ import annotations

import fcntl
import json
import math
import random
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pacs_libre import bench, lab
from pacs_libre.dicom import corpus as corpus_mod
from pacs_libre.dicom import net
from pacs_libre.dicom.corpus import Corpus
from pacs_libre.errors import UserError

CORPUS_VERSION = "search-v1"
CHUNK = 1000  # studies per chunk: the unit of loading and of resuming

# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (NumPy's default)."""
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---------------------------------------------------------------------- corpus


def corpus_dir(corpus: Corpus, cache: Path) -> Path:
    return cache / f"{CORPUS_VERSION}-s{corpus.seed}-{corpus.anchor:%Y%m%d}"


def open_corpus(count: int, seed: int, cache: Path, anchor: date | None = None) -> Corpus:
    """The corpus of ``seed``: its anchor day is the one it was first made on (kept)."""
    if anchor is None:
        made = sorted(cache.glob(f"{CORPUS_VERSION}-s{seed}-*/corpus.json"))
        if made:
            anchor = date.fromisoformat(json.loads(made[-1].read_text())["anchor"])
    corpus = Corpus(count, seed=seed, anchor=anchor)
    folder = corpus_dir(corpus, cache)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.json").write_text(
        json.dumps({"seed": seed, "anchor": corpus.anchor.isoformat()}) + "\n"
    )
    return corpus


def chunk_name(corpus: Corpus, chunk: int) -> str:
    """``chunk-0031``, or ``chunk-0031-31500`` when the corpus ends inside it (a larger N loads
    the whole chunk again, under its full name: the part sent before is skipped as known)."""
    stop = min((chunk + 1) * CHUNK, corpus.count)
    return f"chunk-{chunk:04d}" if stop == (chunk + 1) * CHUNK else f"chunk-{chunk:04d}-{stop}"


def chunk_files(corpus: Corpus, chunk: int, cache: Path) -> list[Path]:
    """The files of chunk ``chunk`` (made if missing; a chunk is complete or absent)."""
    folder = corpus_dir(corpus, cache) / chunk_name(corpus, chunk)
    listing = folder / "files.txt"
    if listing.exists():
        return [folder / name for name in listing.read_text().split()]
    start, stop = chunk * CHUNK, min((chunk + 1) * CHUNK, corpus.count)
    paths = corpus_mod.write_studies(corpus, start, stop, folder)
    listing.write_text("\n".join(p.name for p in paths) + "\n")
    return paths


def chunks(corpus: Corpus) -> int:
    return math.ceil(corpus.count / CHUNK)


@dataclass
class LoadReport:
    """What one archive received in this run."""

    label: str
    studies_before: int
    studies_loaded: int
    instances: int
    failed: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    @property
    def studies_per_s(self) -> float:
        return self.studies_loaded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 1)
        data["instances_per_s"] = round(self.instances_per_s, 1)
        data["studies_per_s"] = round(self.studies_per_s, 1)
        return data


class LoadState:
    """Which chunks each archive holds, by name (``loaded.json`` beside the corpus)."""

    def __init__(self, corpus: Corpus, cache: Path) -> None:
        self.path = corpus_dir(corpus, cache) / "loaded.json"
        self.data: dict[str, list[str]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )

    def loaded(self, key: str) -> set[str]:
        # Whole numbers: the first form of this file, full chunks only.
        return {f"chunk-{c:04d}" if isinstance(c, int) else str(c) for c in self.data.get(key, [])}

    def _update(self, change: Callable[[dict[str, list[str]]], None]) -> None:
        """Read, change and write the file under a lock: two loads may run at once."""
        with self.path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
            change(self.data)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1) + "\n")
            tmp.replace(self.path)

    def mark(self, key: str, name: str) -> None:
        def add(data: dict[str, list[str]]) -> None:
            self.data = data
            data[key] = sorted(self.loaded(key) | {name})

        self._update(add)

    def forget(self, key: str) -> None:
        def drop(data: dict[str, list[str]]) -> None:
            data.pop(key, None)

        self._update(drop)


def load(
    corpus: Corpus,
    cache: Path,
    archive: Archive,
    *,
    associations: int,
    progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Send the chunks that ``archive`` lacks; ``progress(instances_done, total)``."""
    state = LoadState(corpus, cache)
    key = archive.container
    counts = archive.statistics()
    held = state.loaded(key)
    names = {c: chunk_name(corpus, c) for c in range(chunks(corpus))}
    done_chunks = [c for c, name in names.items() if name in held]
    studies_before = sum(min(CHUNK, corpus.count - c * CHUNK) for c in done_chunks)
    if counts.get("CountStudies", 0) < studies_before:
        # The archive was emptied since (lab down --purge, bench clean): load again.
        state.forget(key)
        done_chunks, studies_before = [], 0
    todo = [c for c in names if c not in done_chunks]
    total = sum(len(chunk_files(corpus, c, cache)) for c in todo)
    done = 0
    report = LoadReport(archive.label, studies_before, 0, 0, 0, 0.0)
    for chunk in todo:
        files = chunk_files(corpus, chunk, cache)
        base = done

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        result = bench.run_ingest(
            files,
            archive.host,
            archive.port,
            archive.aet,
            archive.calling_aet,
            associations=associations,
            label=archive.label,
            progress=tick,
        )
        done = base + len(files)
        report.instances += result.sent
        report.failed += result.failed
        report.seconds += result.seconds
        report.errors.extend(result.errors)
        if result.failed:
            raise UserError(
                f"{archive.label}: {result.failed} of {len(files)} instances of chunk {chunk} "
                f"were not stored ({'; '.join(result.errors[:2])}): rerun to resume"
            )
        state.mark(key, names[chunk])
        report.studies_loaded += min(CHUNK, corpus.count - chunk * CHUNK)
    return report


# -------------------------------------------------------------------- archives

# Runs on an archive host (python3 of Debian 12 or 13, nothing else): each request
# of the spec in turn over one kept-alive HTTP connection to Orthanc, and one JSON
# line per request: seconds, HTTP status and the number of answers.
HOST_SCRIPT = r"""
import base64, http.client, json, sys, time
spec = json.loads(sys.stdin.readline())
headers = {"Accept": "application/dicom+json, application/json"}
try:
    with open("/etc/orthanc/orthanc.json") as f:
        conf = json.loads("".join(l for l in f if not l.lstrip().startswith("//")))
    users = conf.get("RegisteredUsers") or {}
except (OSError, ValueError):
    users = {}
if users:
    user = "%s:%s" % next(iter(users.items()))
    headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
conn = http.client.HTTPConnection("127.0.0.1", spec.get("port", 8042), timeout=600)
for i, req in enumerate(spec["requests"]):
    body = req.get("body")
    data = json.dumps(body).encode() if body is not None else None
    start = time.perf_counter()
    conn.request(req.get("method", "GET"), req["path"], body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    seconds = time.perf_counter() - start
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    answers = parsed if req.get("raw") else (len(parsed) if isinstance(parsed, list) else None)
    print(json.dumps({"i": i, "seconds": seconds, "status": resp.status, "answers": answers}),
          flush=True)
"""


@dataclass(frozen=True)
class Archive:
    """One archive under test: its DICOM endpoint and the lab container it runs in."""

    label: str
    container: str
    host: str
    port: int
    aet: str
    calling_aet: str

    def http(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``requests`` on the archive host itself (:data:`HOST_SCRIPT`)."""
        proc = subprocess.run(
            ["podman", "exec", "-i", self.container, "python3", "-c", HOST_SCRIPT],
            input=json.dumps({"requests": list(requests)}) + "\n",
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise UserError(
                f"{self.label}: the HTTP requests on {self.container} failed: "
                f"{proc.stderr.strip()[-600:]}"
            )
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        bad = [r for r in rows if r["status"] != 200]
        if bad:
            path = requests[bad[0]["i"]]["path"]
            raise UserError(f"{self.label}: {path} answered HTTP {bad[0]['status']}")
        return rows

    def statistics(self) -> dict[str, int]:
        rows = self.http([{"path": "/statistics", "raw": True}])
        return {k: int(v) for k, v in (rows[0]["answers"] or {}).items() if str(v).isdigit()}


# --------------------------------------------------------------------- queries

#: What OsiriX and Weasis ask for at the study level (their C-FIND return keys).
WORKSTATION_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "StudyID",
    "ReferringPhysicianName", "InstitutionName", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
OHIF_LIST = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
HISTORY_FIELDS = "includefield=00081030%2C00080061%2C00201206%2C00201208"


@dataclass(frozen=True)
class Query:
    """One kind of query, and the value of each run (QIDO path, C-FIND keys or REST body)."""

    name: str
    client: str
    protocol: str  # QIDO-RS, C-FIND or REST
    runs: tuple[Any, ...]
    list_query: bool = False  # a study list (the 5x target), not a single-patient lookup


def _span(first: date, days: int) -> str:
    return f"{first:%Y%m%d}-{first + timedelta(days=days - 1):%Y%m%d}"


def queries(corpus: Corpus, loaded: int, runs: int, seed: int = 7) -> list[Query]:
    """The catalogue, with ``runs`` values each drawn from the first ``loaded`` studies."""
    rng = random.Random(f"{corpus.seed}:{seed}:queries")  # noqa: S311 (a sample, not a secret)
    picks = [corpus.study(rng.randrange(loaded)) for _ in range(runs)]
    anchor = corpus.anchor
    months = [anchor - timedelta(days=rng.randrange(corpus_mod.DAYS - 31)) for _ in range(runs)]
    years = [anchor - timedelta(days=rng.randrange(corpus_mod.DAYS - 365)) for _ in range(runs)]
    today = f"{anchor:%Y%m%d}"
    quote = urllib.parse.quote
    return [
        Query("patient ID", "OHIF", "QIDO-RS",
              tuple(f"/dicom-web/studies?PatientID={quote(s.patient.patient_id)}" for s in picks)),
        Query("accession number", "OHIF", "QIDO-RS",
              tuple(f"/dicom-web/studies?AccessionNumber={s.accession_number}" for s in picks)),
        Query("PatientName=DUP*, limit 101", "OHIF", "QIDO-RS",
              ("/dicom-web/studies?PatientName=DUP*&limit=101",) * runs, True),
        Query("PatientName=LEF* fuzzy, limit 101", "OHIF", "QIDO-RS",
              ("/dicom-web/studies?PatientName=LEF*&fuzzymatching=true&limit=101",) * runs, True),
        Query("one month, limit 101", "OHIF", "QIDO-RS",
              tuple(f"/dicom-web/studies?StudyDate={_span(m, 31)}&limit=101" for m in months),
              True),
        Query("study list", "OHIF", "QIDO-RS", (f"/dicom-web/studies?{OHIF_LIST}",) * runs, True),
        Query("MR in one year, limit 101", "OHIF", "QIDO-RS",
              tuple(f"/dicom-web/studies?ModalitiesInStudy=MR&StudyDate={_span(y, 365)}"
                    f"&{OHIF_LIST}" for y in years), True),
        Query("all studies of a patient", "OHIF", "QIDO-RS",
              tuple(f"/dicom-web/studies?PatientID={quote(s.patient.patient_id)}&"
                    f"{HISTORY_FIELDS}" for s in picks)),
        Query("today's studies", "OHIF", "QIDO-RS",
              (f"/dicom-web/studies?StudyDate={today}&{HISTORY_FIELDS}",) * runs, True),
        Query("all studies of a patient", "IID", "REST",
              tuple({"Level": "Study", "Query": {"PatientID": s.patient.patient_id},
                     "Expand": True} for s in picks)),
        Query("patient ID", "OsiriX/Weasis", "C-FIND",
              tuple({"PatientID": s.patient.patient_id} for s in picks)),
        Query("accession number", "OsiriX/Weasis", "C-FIND",
              tuple({"AccessionNumber": s.accession_number} for s in picks)),
        Query("PatientName=DUP*", "OsiriX/Weasis", "C-FIND",
              ({"PatientName": "DUP*"},) * runs, True),
        Query("one month", "OsiriX/Weasis", "C-FIND",
              tuple({"StudyDate": _span(m, 31)} for m in months), True),
        Query("MR in one year", "OsiriX/Weasis", "C-FIND",
              tuple({"ModalitiesInStudy": "MR", "StudyDate": _span(y, 365)} for y in years),
              True),
        Query("today's studies", "OsiriX/Weasis", "C-FIND",
              ({"StudyDate": today},) * runs, True),
    ]  # fmt: skip


@dataclass
class Timing:
    """One query on one archive: the seconds of each run and the answers of each."""

    query: Query
    archive: str
    seconds: list[float] = field(default_factory=list)
    answers: list[int | None] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return 1000.0 * percentile(self.seconds, 50)

    @property
    def p95_ms(self) -> float:
        return 1000.0 * percentile(self.seconds, 95)

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query.name,
            "client": self.query.client,
            "protocol": self.query.protocol,
            "archive": self.archive,
            "p50_ms": round(self.p50_ms, 1),
            "p95_ms": round(self.p95_ms, 1),
            "runs": len(self.seconds),
            "answers": self.answers,
        }


def _http_request(query: Query, value: Any) -> dict[str, Any]:
    if query.protocol == "REST":
        return {"method": "POST", "path": "/tools/find", "body": value}
    return {"path": value}


def time_http(archive: Archive, query: Query) -> Timing:
    """One unmeasured run, then every run of ``query`` on the archive host."""
    requests = [_http_request(query, query.runs[0])]
    requests += [_http_request(query, v) for v in query.runs]
    rows = archive.http(requests)[1:]
    return Timing(query, archive.label, [r["seconds"] for r in rows], [r["answers"] for r in rows])


def _cfind(archive: Archive, keys: dict[str, str]) -> int:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = "STUDY"
    for keyword in WORKSTATION_KEYS:
        setattr(query, keyword, "")
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    answers = 0
    with net.associate(
        archive.host,
        archive.port,
        archive.aet,
        archive.calling_aet,
        [(net.STUDY_ROOT_FIND, [])],
        timeout=600,
    ) as assoc:
        for status, identifier in assoc.send_c_find(query, net.STUDY_ROOT_FIND):
            code = int(status.Status) if status and "Status" in status else -1
            if code in (0xFF00, 0xFF01) and identifier is not None:
                answers += 1
            elif code != 0:
                raise UserError(f"{archive.label}: C-FIND {keys} failed, status {code:#06x}")
    return answers


def time_cfind(archive: Archive, query: Query) -> Timing:
    """One unmeasured run, then every run: association, C-FIND, release."""
    _cfind(archive, query.runs[0])
    timing = Timing(query, archive.label)
    for keys in query.runs:
        start = time.perf_counter()
        timing.answers.append(_cfind(archive, keys))
        timing.seconds.append(time.perf_counter() - start)
    return timing


def measure(
    archives: Sequence[Archive],
    catalogue: Sequence[Query],
    progress: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Each query on each archive in turn (query by query, so noise hits both alike)."""
    out = []
    for query in catalogue:
        for archive in archives:
            if progress:
                progress(f"{archive.label}: {query.protocol} {query.name}")
            out.append(
                time_cfind(archive, query)
                if query.protocol == "C-FIND"
                else time_http(archive, query)
            )
    return out


def lab_archive(where: Any, container: str | None) -> Archive:
    """The lab archive behind a resolved ``--target`` (a lab container on 127.0.0.1)."""
    name = container or bench.container_for_port(where.port)
    if not name:
        raise UserError(
            f"no lab container publishes port {where.port}: bench search times QIDO on the "
            "archive host itself, so it needs the lab (`make lab`)"
        )
    return Archive("pacs-libre", name, where.host, where.port, where.aet, where.calling_aet)


def stock_archive(debian: str, progress: Callable[[str], None]) -> Archive:
    """The stock Orthanc host, with Debian's DICOMweb plugin package as shipped.

    One setting of Debian's ``orthanc.json`` changes: ``DicomAlwaysAllowFind`` becomes
    true, since the stock archive declares no modality and would refuse every C-FIND.
    """
    host, port, aet = bench.ensure_stock(debian, progress=progress)
    progress("apt-get install orthanc-dicomweb (Debian's plugin, its own configuration)")
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; "
        "if ! dpkg-query -W -f='${Status}' orthanc-dicomweb 2>/dev/null | grep -q 'ok installed';"
        " then apt-get install -y --no-install-recommends orthanc-dicomweb >/tmp/dw.log 2>&1"
        " || { tail -5 /tmp/dw.log; exit 1; }; systemctl restart orthanc; fi; "
        # The one change to Debian's orthanc.json: workstations' C-FIND is refused from
        # an AE title that is not declared, and the benchmark's is not.
        "if grep -q '\"DicomAlwaysAllowFind\" : false' /etc/orthanc/orthanc.json; then "
        'sed -i \'s/"DicomAlwaysAllowFind" : false/"DicomAlwaysAllowFind" : true/\' '
        "/etc/orthanc/orthanc.json; systemctl restart orthanc; fi"
    )
    proc = lab.run_tool(["podman", "exec", bench.STOCK_CONTAINER, "sh", "-c", script], check=False)
    if proc.returncode != 0:
        raise UserError(
            f"installing orthanc-dicomweb in {bench.STOCK_CONTAINER} failed: "
            f"{(proc.stdout + proc.stderr).strip()[-300:]}"
        )
    archive = Archive("stock", bench.STOCK_CONTAINER, host, port, aet, bench.CALLING_AET)
    deadline = time.monotonic() + 90
    while True:
        try:
            archive.http([{"path": "/dicom-web/studies?limit=1"}])
            return archive
        except UserError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def compare(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    """One row per query: each archive's figures, the answers, and stock p95 / ours."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for t in timings:
        key = (t.query.client, t.query.protocol, t.query.name)
        row = rows.setdefault(
            key,
            {
                "client": key[0],
                "protocol": key[1],
                "query": key[2],
                "list_query": t.query.list_query,
            },
        )
        row[t.archive] = t.as_dict()
    for row in rows.values():
        ours, stock = row.get("pacs-libre"), row.get("stock")
        answers = ours["answers"] if ours else []
        row["answers"] = _answers_summary(answers)
        row["ratio_p95"] = (
            round(stock["p95_ms"] / ours["p95_ms"], 2)
            if ours and stock and ours["p95_ms"]
            else None
        )
        row["same_answers"] = None if not (ours and stock) else ours["answers"] == stock["answers"]
    return list(rows.values())


def _answers_summary(answers: Sequence[int | None]) -> str:
    real = [a for a in answers if a is not None]
    if not real:
        return "-"
    low, high = min(real), max(real)
    return str(low) if low == high else f"{low}-{high}"
