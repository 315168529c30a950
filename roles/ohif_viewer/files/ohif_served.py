#!/usr/bin/env python3
"""Build the archive of what the gateway serves from OHIF's npm tarball.

Runs on the controller (stdlib only):

    ohif_served.py PACKAGE.tgz INTEGRITY OUT.tar.gz [--keep-onnx] [--keep-maps]

1. Checks the npm tarball against its registry integrity (``sha512-<base64>``,
   ``npm view @ohif/app@<version> dist.integrity``); a mismatch stops here.
2. Writes OUT.tar.gz with ``package/dist/`` only, without what is not served:
   the ONNX runtime (``ort/``, only for the AI segmentation tools), the source
   maps (``*.map``), the bundled ``app-config.js`` (the role renders its own) and
   the files of OHIF's own hosting (``_headers``, ``_redirects``, ``serve.json``).
   The archive is reproducible (sorted members, fixed owners, modes and times,
   gzip without a timestamp): the same input gives the same bytes, so copying it
   to a host is idempotent.
3. Prints a JSON summary: file count and bytes served and left out, and the CSP
   hashes (``'sha256-...'``) of the inline scripts of ``index.html``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile

PREFIX = "package/dist/"
NOT_SERVED = ("_headers", "_redirects", "serve.json", "app-config.js")
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)


def integrity_of(path: str) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def served(name: str, keep_onnx: bool, keep_maps: bool) -> bool:
    rel = name[len(PREFIX) :]
    if rel in NOT_SERVED:
        return False
    if not keep_onnx and (rel == "ort" or rel.startswith("ort/")):
        return False
    return keep_maps or not rel.endswith(".map")


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    package, expected, out = argv[1], argv[2], argv[3]
    keep_onnx, keep_maps = "--keep-onnx" in argv, "--keep-maps" in argv
    actual = integrity_of(package)
    if actual != expected:
        print(
            f"{package}: integrity {actual} is not the expected {expected}. "
            "Fix: remove the file and run again; if it comes back the same, the package "
            "is not the pinned release (check ohif_viewer_version and ohif_viewer_integrity).",
            file=sys.stderr,
        )
        return 1
    summary = {
        "files": 0,
        "bytes": 0,
        "left_out_files": 0,
        "left_out_bytes": 0,
        "script_hashes": [],
    }
    members = []
    with tarfile.open(package, "r:gz") as source:
        for member in source.getmembers():
            if not member.name.startswith(PREFIX) or not member.isfile():
                continue
            if not served(member.name, keep_onnx, keep_maps):
                summary["left_out_files"] += 1
                summary["left_out_bytes"] += member.size
                continue
            extracted = source.extractfile(member)
            if extracted is None:
                continue
            members.append((member.name[len(PREFIX) :], extracted.read()))
    members.sort()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as target:
        folders: set[str] = set()
        for rel, data in members:
            parts = rel.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    target.addfile(info)
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            target.addfile(info, io.BytesIO(data))
            summary["files"] += 1
            summary["bytes"] += len(data)
            if rel == "index.html":
                summary["script_hashes"] = [
                    "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
                    for body in INLINE_SCRIPT.findall(data)
                ]
    if "index.html" not in {rel for rel, _ in members}:
        print(f"{package}: no {PREFIX}index.html: not an @ohif/app build", file=sys.stderr)
        return 1
    partial = out + ".part"
    with (
        open(partial, "wb") as handle,
        gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="") as packed,
    ):
        packed.write(raw.getvalue())
    os.replace(partial, out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
