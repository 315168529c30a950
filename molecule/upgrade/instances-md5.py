#!/usr/bin/python3
"""SOPInstanceUID -> MD5 of the file the archive serves, as JSON (run on the archive host).

instances-md5.py USER PASSWORD
"""

import base64
import hashlib
import json
import sys
import urllib.request


def main(user: str, password: str) -> int:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(path: str) -> bytes:
        request = urllib.request.Request(
            "http://127.0.0.1:8042" + path, headers={"Authorization": "Basic " + auth}
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (127.0.0.1)
            return bytes(response.read())

    out = {}
    for item in json.loads(get("/instances?expand")):
        served = get("/instances/" + item["ID"] + "/file")
        out[item["MainDicomTags"]["SOPInstanceUID"]] = hashlib.md5(
            served, usedforsecurity=False
        ).hexdigest()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
