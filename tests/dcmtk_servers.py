"""Real dcmtk servers (storescp, dcmqrscp) on free loopback ports, for the tests."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until something listens on 127.0.0.1:port; fails at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen on {port} within {timeout} s")


@contextmanager
def server(argv: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (which listens on ``port``) for the duration of the block."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def storescp(inbox: Path, aet: str = "STORESCP", *options: str) -> Iterator[int]:
    """dcmtk's storage SCP writing into ``inbox``; yields its port."""
    port = free_port()
    with server(
        ["storescp", "--output-directory", str(inbox), "--aetitle", aet, *options, str(port)], port
    ):
        yield port
