#!/usr/bin/python3
"""Verify a restored archive through Orthanc's own REST API and DICOMweb.

Run on the archive host by playbooks/restore-drill.yml, after the restore.
For every instance of the restored index: the file that Orthanc serves must
have the MD5 that Orthanc recorded when the source archive received it. Then
the counts (index, statistics) and a QIDO-RS query must agree. Prints one JSON
object; exits 1 if anything disagrees.

With ORTHANC_ISOLATED=1 (the drill's scratch archive), Orthanc must also declare
no DICOM modality and no peer: a copy of the archive never sends anything.

Environment: ORTHANC_URL (http://127.0.0.1:8042), ORTHANC_USER, ORTHANC_PASSWORD,
ORTHANC_ISOLATED (1 or 0).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import urllib.request


def main() -> int:
    base = os.environ.get("ORTHANC_URL", "http://127.0.0.1:8042").rstrip("/")
    token = base64.b64encode(
        f"{os.environ['ORTHANC_USER']}:{os.environ['ORTHANC_PASSWORD']}".encode()
    ).decode()

    if not base.startswith("http://127.0.0.1:"):
        raise SystemExit(f"ORTHANC_URL must be the archive's local HTTP, not {base}")

    def get(path: str, accept: str = "application/json") -> bytes:
        request = urllib.request.Request(  # noqa: S310 (checked above)
            base + path, headers={"Authorization": f"Basic {token}", "Accept": accept}
        )
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (checked above)
            return bytes(response.read())

    instances: list[str] = json.loads(get("/instances"))
    mismatched: list[dict[str, str]] = []
    unreadable: list[dict[str, str]] = []
    verified = 0
    for instance in instances:
        try:
            recorded = (
                get(f"/instances/{instance}/attachments/dicom/md5", "text/plain").decode().strip()
            )
            served = get(f"/instances/{instance}/file", "application/dicom")
            # The checksum that Orthanc records, not a security measure.
            actual = hashlib.md5(served, usedforsecurity=False).hexdigest()
        except OSError as exc:
            unreadable.append({"instance": instance, "error": str(exc)})
            continue
        if recorded.lower() != actual:
            mismatched.append({"instance": instance, "recorded": recorded, "actual": actual})
        else:
            verified += 1
    statistics = json.loads(get("/statistics"))
    studies = json.loads(get("/studies"))
    qido = json.loads(get("/dicom-web/studies", "application/dicom+json"))
    qido_uids = sorted(s["0020000D"]["Value"][0] for s in qido)
    index_uids = sorted(
        json.loads(get(f"/studies/{s}"))["MainDicomTags"]["StudyInstanceUID"] for s in studies
    )
    modalities: list[str] = json.loads(get("/modalities"))
    peers: list[str] = json.loads(get("/peers"))
    isolated = os.environ.get("ORTHANC_ISOLATED", "0") == "1"
    report = {
        "instances": len(instances),
        "instances_md5_verified": verified,
        "md5_mismatches": mismatched,
        "unreadable": unreadable,
        "statistics_instances": statistics.get("CountInstances"),
        "studies": len(studies),
        "qido_studies": len(qido),
        "qido_matches_index": qido_uids == index_uids,
        "study_instance_uids": index_uids,
        "modalities": modalities,
        "peers": peers,
        "isolated": isolated,
    }
    ok = (
        not mismatched
        and not unreadable
        and verified == len(instances)
        and statistics.get("CountInstances") == len(instances)
        and report["qido_matches_index"]
        and not (isolated and (modalities or peers))
    )
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
