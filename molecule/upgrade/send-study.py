"""Make a small study (CT, MR, CR) and send it to the scenario's archive with dcmtk's storescu.

send-study.py FOLDER ADDRESS
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pacs_libre.dicom.synth import make_study


def main(folder: str, address: str) -> int:
    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    study = make_study(out, ct_images=30, mr_images=8, cr=True, seed=15)
    storescu = shutil.which("storescu", path="/usr/bin:/usr/local/bin") or "storescu"
    series = [str(d) for d in sorted(study.out_dir.iterdir()) if d.is_dir()]
    command = [storescu, "-aet", "MOLMODALITY", "-aec", "MOLUPGRADE", "+sd", "+r", address, "4242"]
    subprocess.run([*command, *series], check=True)
    print(study.study_instance_uid)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
