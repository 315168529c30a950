"""roles/ohif_viewer/files/ohif_served.py: the checksum gate and what is served.

A small tarball shaped like npm's @ohif/app (package/dist/...) stands for the real one,
which the role's Molecule scenario uses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "roles" / "ohif_viewer" / "files" / "ohif_served.py"
INDEX = (
    b'<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    b'<script src="/app-config.js"></script></head><body>'
    b"<script>function f(n){return import(n)}</script>"
    b'<script defer src="/app.bundle.0123456789abcdef.js"></script></body></html>'
)
FILES = {
    "package/package.json": b"{}",
    "package/dist/index.html": INDEX,
    "package/dist/app.bundle.0123456789abcdef.js": b"console.log(1)",
    "package/dist/app.bundle.0123456789abcdef.js.map": b"{}",
    "package/dist/0123456789abcdef.wasm": b"\0asm",
    "package/dist/app-config.js": b"window.config = {}",
    "package/dist/_headers": b"",
    "package/dist/_redirects": b"/* /index.html 200",
    "package/dist/serve.json": b"{}",
    "package/dist/ort/ort.min.js": b"ort",
    "package/dist/ort/ort-wasm.wasm": b"\0asm",
    "package/dist/assets/favicon.ico": b"ico",
}


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "ohif-app-0.0.0.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False
    )


def members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_a_wrong_checksum_stops_before_anything_is_written(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "served.tar.gz"
    result = run(package, "sha512-" + "A" * 86 + "==", out)
    assert result.returncode == 1
    assert "is not the expected" in result.stderr and "Fix: remove the file" in result.stderr
    assert not out.exists()


def test_only_what_is_served_is_kept(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "served.tar.gz"
    result = run(package, integrity(package), out)
    assert result.returncode == 0, result.stderr
    assert members(out) == {
        "index.html",
        "app.bundle.0123456789abcdef.js",
        "0123456789abcdef.wasm",
        "assets/favicon.ico",
    }
    summary = json.loads(result.stdout)
    assert summary["files"] == 4
    assert summary["left_out_files"] == 7


def test_the_onnx_runtime_and_maps_on_demand(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "served.tar.gz"
    assert run(package, integrity(package), out, "--keep-onnx", "--keep-maps").returncode == 0
    kept = members(out)
    assert {"ort/ort.min.js", "ort/ort-wasm.wasm", "app.bundle.0123456789abcdef.js.map"} <= kept
    assert "app-config.js" not in kept


def test_the_archive_is_the_same_bytes_every_time(package: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert run(package, integrity(package), first).returncode == 0
    assert run(package, integrity(package), second).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert {(m.uid, m.gid, m.mtime) for m in tar.getmembers()} == {(0, 0, 0)}
        assert {m.mode for m in tar.getmembers() if m.isfile()} == {0o644}


def test_the_inline_scripts_hashes_are_those_of_index_html(package: Path, tmp_path: Path) -> None:
    result = run(package, integrity(package), tmp_path / "served.tar.gz")
    hashes = json.loads(result.stdout)["script_hashes"]
    expected = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in (b'window.PUBLIC_URL="/"', b"function f(n){return import(n)}")
    ]
    assert hashes == expected
