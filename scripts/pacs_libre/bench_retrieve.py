"""``pacsctl bench retrieve``: a CT pulled to a workstation, against raw dcmtk, in one run.

One study (a 300-slice 512x512 CT of :mod:`pacs_libre.dicom.synth`, 158 MB, the one
``pacsctl bench view`` uses) is stored in the lab archive, then pulled to this machine,
which plays the workstation, in turn, ``runs`` times:

- **raw dcmtk**: ``storescu`` of the same files to the workstation's ``storescp``,
  machine to machine, nothing else: the ceiling of DICOM over this loopback;
- **C-MOVE**: ``movescu`` asks the archive to send the study to the workstation's
  ``storescp`` (the lab's move destination, ``LABWORKSTATION`` on port 11112);
- **C-GET**: ``getscu`` receives the study on its own association;
- **WADO-RS**: the whole study as ``multipart/related`` through the web gateway (HTTPS,
  the lab user), as Weasis and OHIF fetch it.

The workstation side always runs with ``TCP_NODELAY=1`` (dcmtk then turns Nagle's
algorithm off: otherwise each C-STORE response waits for the sender's delayed ACK,
about 40 ms an image; docs/archive.md). Each pull is timed from the client's start to
its exit, and counts the files that arrived (or the bytes, for WADO-RS): a pull that
brings fewer than the study's images is an error, not a rate.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_libre.errors import UserError

METHODS = ("raw dcmtk", "C-MOVE", "C-GET", "WADO-RS")
NODELAY = {"TCP_NODELAY": "1"}


@dataclass
class Pull:
    """One method's runs: seconds, and what each brought."""

    method: str
    images: int
    bytes: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.median_s if self.median_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.median_s if self.median_s else 0.0

    def as_dict(self, raw: Pull | None = None) -> dict[str, Any]:
        return {
            "method": self.method,
            "images": self.images,
            "bytes": self.bytes,
            "seconds": [round(s, 3) for s in self.seconds],
            "median_s": round(self.median_s, 3),
            "images_per_s": round(self.images_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 1),
            "of_raw": round(self.images_per_s / raw.images_per_s, 3)
            if raw and raw.images_per_s
            else None,
        }


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"dcmtk's {name} is not on PATH. Fix: `make prereqs` (apt package dcmtk)")
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"storescp exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise UserError(f"storescp did not listen on port {port}")


@contextmanager
def workstation(port: int, aet: str, inbox: Path) -> Iterator[subprocess.Popen[bytes]]:
    """dcmtk's ``storescp`` as the workstation (TCP_NODELAY), writing into ``inbox``."""
    proc = subprocess.Popen(
        [_tool("storescp"), "--fork", "-aet", aet, "-od", str(inbox), "--accept-all", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **NODELAY},
    )
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _received(inbox: Path) -> tuple[int, int]:
    files = [p for p in inbox.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _clear(inbox: Path) -> None:
    for p in inbox.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _run(argv: list[str], what: str) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **NODELAY}, check=False
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"{what} failed (exit {proc.returncode}): {detail[-1] if detail else '?'}")
    return seconds


@dataclass(frozen=True)
class Setup:
    """Who talks to whom: the archive, the workstation, the gateway."""

    archive_host: str
    archive_port: int
    archive_aet: str
    workstation_aet: str
    workstation_port: int
    study_uid: str
    files: tuple[Path, ...]
    web_url: str  # https://host:port of the gateway
    web_user: str
    web_password: str
    cafile: Path


def raw(setup: Setup, inbox: Path) -> float:
    """storescu of the study's files straight to the workstation's storescp."""
    return _run(
        [_tool("storescu"), "-aet", "RAWSCU", "-aec", setup.workstation_aet,
         "127.0.0.1", str(setup.workstation_port), *map(str, setup.files)],
        "storescu to the workstation",
    )  # fmt: skip


def move(setup: Setup, inbox: Path) -> float:
    return _run(
        [_tool("movescu"), "-S", "-aet", setup.workstation_aet, "-aec", setup.archive_aet,
         "-aem", setup.workstation_aet, "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={setup.study_uid}", "-to", "600", "-ta", "600", "-td", "600",
         setup.archive_host, str(setup.archive_port)],
        "C-MOVE (movescu)",
    )  # fmt: skip


def get(setup: Setup, inbox: Path) -> float:
    return _run(
        [_tool("getscu"), "-S", "-aet", setup.workstation_aet, "-aec", setup.archive_aet,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={setup.study_uid}",
         "-od", str(inbox), "-to", "600", "-ta", "600", "-td", "600",
         setup.archive_host, str(setup.archive_port)],
        "C-GET (getscu)",
    )  # fmt: skip


def wado(setup: Setup, inbox: Path) -> tuple[float, int]:
    """The study through the gateway, as ``multipart/related``: (seconds, bytes of body)."""
    host, _, port = setup.web_url.split("://", 1)[1].partition(":")
    context = ssl.create_default_context(cafile=str(setup.cafile))
    auth = base64.b64encode(f"{setup.web_user}:{setup.web_password}".encode()).decode()
    start = time.monotonic()
    conn = http.client.HTTPSConnection(host, int(port or 443), context=context, timeout=600)
    conn.request(
        "GET",
        f"/dicom-web/studies/{setup.study_uid}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            "Authorization": f"Basic {auth}",
        },
    )
    resp = conn.getresponse()
    size = 0
    with (inbox / "study.multipart").open("wb") as sink:
        while chunk := resp.read(1 << 20):
            sink.write(chunk)
            size += len(chunk)
    seconds = time.monotonic() - start
    conn.close()
    if resp.status != 200:
        raise UserError(f"WADO-RS through the gateway answered HTTP {resp.status}")
    return seconds, size


def measure(setup: Setup, runs: int, progress: Callable[[str], None] | None = None) -> list[Pull]:
    """Every method in turn, ``runs`` times (raw, C-MOVE, C-GET, WADO-RS, raw, ...)."""
    images = len(setup.files)
    total = sum(p.stat().st_size for p in setup.files)
    pulls = {m: Pull(m, images, total) for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="pacs-bench-retrieve-") as tmp:
        inbox = Path(tmp) / "in"
        inbox.mkdir()
        with workstation(setup.workstation_port, setup.workstation_aet, inbox):
            for run in range(runs):
                for method in METHODS:
                    _clear(inbox)
                    if progress:
                        progress(f"run {run + 1}/{runs}: {method}")
                    if method == "WADO-RS":
                        seconds, size = wado(setup, inbox)
                        if size < total:
                            raise UserError(
                                f"WADO-RS brought {size} bytes, less than the study's {total}"
                            )
                    else:
                        seconds = {"raw dcmtk": raw, "C-MOVE": move, "C-GET": get}[method](
                            setup, inbox
                        )
                        count, _size = _received(inbox)
                        if count != images:
                            raise UserError(
                                f"{method} brought {count} of the study's {images} images"
                            )
                    pulls[method].seconds.append(seconds)
    return list(pulls.values())
