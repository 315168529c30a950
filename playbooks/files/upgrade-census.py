#!/usr/bin/python3
"""Count what the archive holds, before an upgrade, and compare after it.

Run on the archive host by playbooks/upgrade.yml, through Orthanc's local REST API:

    upgrade-census.py save FILE      writes the census (every study's StudyInstanceUID and
                                     instance count, the totals, Orthanc's versions) to FILE
    upgrade-census.py compare FILE   takes the census again and compares it with FILE

Each prints one JSON object. ``compare`` exits 1 when a study is missing or its
instance count went down, when the archive holds fewer instances, or when QIDO-RS does
not answer for the studies it samples (the first and the last). Environment: ORTHANC_URL (http://127.0.0.1:8042),
ORTHANC_USER, ORTHANC_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.parse
import urllib.request
from typing import Any

SHOWN = 20


def _client() -> Any:
    base = os.environ.get("ORTHANC_URL", "http://127.0.0.1:8042").rstrip("/")
    if not base.startswith("http://127.0.0.1:"):
        raise SystemExit(f"ORTHANC_URL must be the archive's local HTTP, not {base}")
    token = base64.b64encode(
        f"{os.environ['ORTHANC_USER']}:{os.environ['ORTHANC_PASSWORD']}".encode()
    ).decode()

    def get(path: str, accept: str = "application/json") -> Any:
        request = urllib.request.Request(  # noqa: S310 (checked above)
            base + path, headers={"Authorization": f"Basic {token}", "Accept": accept}
        )
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 (checked above)
            return json.loads(response.read() or b"null")

    return get


def census(get: Any) -> dict[str, Any]:
    system = get("/system")
    statistics = get("/statistics")
    studies: dict[str, int] = {}
    for study in get("/studies"):
        uid = get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
        studies[uid] = int(get(f"/studies/{study}/statistics")["CountInstances"])
    return {
        "orthanc_version": system.get("Version"),
        "database_version": system.get("DatabaseVersion"),
        "studies": int(statistics["CountStudies"]),
        "series": int(statistics["CountSeries"]),
        "instances": int(statistics["CountInstances"]),
        "per_study": studies,
    }


def qido_answers(get: Any, uids: list[str]) -> dict[str, bool]:
    answers = {}
    for uid in uids:
        query = urllib.parse.urlencode({"StudyInstanceUID": uid})
        found = get(f"/dicom-web/studies?{query}", "application/dicom+json") or []
        answers[uid] = any(s.get("0020000D", {}).get("Value", [None])[0] == uid for s in found)
    return answers


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        raise SystemExit(__doc__)
    get = _client()
    now = census(get)
    summary = {k: v for k, v in now.items() if k != "per_study"}
    if argv[1] == "save":
        os.makedirs(os.path.dirname(argv[2]), mode=0o700, exist_ok=True)
        with open(os.open(argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            json.dump(now, out)
        print(json.dumps(summary))
        return 0
    with open(argv[2], encoding="utf-8") as handle:
        before = json.load(handle)
    missing = sorted(set(before["per_study"]) - set(now["per_study"]))
    # A study may gain instances while the upgrade runs (a modality sends again); none may lose one.
    shrunk = sorted(
        uid
        for uid, count in before["per_study"].items()
        if uid in now["per_study"] and now["per_study"][uid] < count
    )
    grown = [u for u, c in before["per_study"].items() if now["per_study"].get(u, c) > c]
    added = sorted(set(now["per_study"]) - set(before["per_study"]))
    sample = sorted(before["per_study"])
    sample = sample[:1] + sample[-1:] if len(sample) > 1 else sample
    qido = qido_answers(get, sample)
    ok = (
        not missing
        and not shrunk
        and all(qido.values())
        and now["instances"] >= before["instances"]
    )
    print(
        json.dumps(
            {
                "ok": ok,
                "before": {k: v for k, v in before.items() if k != "per_study"},
                "after": summary,
                "missing_studies": missing[:SHOWN],
                "missing_count": len(missing),
                "shrunk_studies": shrunk[:SHOWN],
                "shrunk_count": len(shrunk),
                "grown_studies": len(grown),
                "new_studies": len(added),
                "qido": qido,
                "sample": sample,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
