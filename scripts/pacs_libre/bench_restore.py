"""Restore throughput of the backups, side by side with the disk's own bandwidth.

On one archive host, in one run, one after the other:

``disk``
    the disk's sequential write bandwidth where restores land: ``dd`` of
    ``size_mb`` MiB with ``conv=fdatasync`` (the data is on the disk when it ends);
``files``
    ``restic restore`` of the latest DICOM snapshot into a scratch folder, then
    ``sync``: what a restore of the images costs;
``link``
    the repository's encrypted pack files copied as they are, over the same SSH
    connection that restic uses (``sftp get -r``), then ``sync``: what the
    transport alone costs, without restic's decryption, decompression and
    reassembly;
``postgresql``
    ``pgbackrest restore`` of the latest backup of the index into a scratch
    folder (the archive's own cluster is left alone), then ``sync``.

Each restore also reports the CPU seconds (user and system) that it and the
processes it started spent, ssh included (``getrusage`` of its children): CPU
seconds close to the wall-clock seconds, or above on two cores, say the CPU is
the limit; far below, the waits are elsewhere (the network, round trips, the disk).

Each restore's rate is its bytes written over its seconds, and its ratio is that
rate over the disk's. The scratch folder is removed at the end. Nothing here is a
timed test: the figures go to docs/performance.md with the command that made them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pacs_libre.errors import UserError

# On the filesystem of the archive's own data, so that the disk measured is theirs.
SCRATCH = "/srv/pacs/.bench-restore"

# Runs on the host, as root; prints one JSON object. The arguments are the scratch
# folder and the disk baseline's size in MiB.
SCRIPT = r"""
set -eu
# Decimal points, not the host's locale's commas.
export LC_ALL=C
scratch=$1; size_mb=$2
rm -rf "$scratch"; mkdir -p "$scratch"
trap 'rm -rf "$scratch"' EXIT
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
bytes() { du -sb "$1" | cut -f1; }
# cpu FILE COMMAND...: runs COMMAND, then writes to FILE the CPU seconds (user,
# system) of it and of every process it started and waited for.
cpu() {
  python3 -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.3f %.3f" % (r.ru_utime, r.ru_stime))
sys.exit(rc)' "$@"
}
cpu_json() { awk '{ printf "{\"user\": %s, \"system\": %s}", $1, $2 }' "$1"; }
sync
t0=$(now)
dd if=/dev/zero of="$scratch/dd" bs=1M count="$size_mb" conv=fdatasync status=none
t1=$(now)
disk_bytes=$(bytes "$scratch/dd"); rm -f "$scratch/dd"; sync
snapshot=$(/usr/local/sbin/pacs-restic snapshots --json --tag pacs-files --latest 1 \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s[-1]["short_id"] if s else "")')
if [ -z "$snapshot" ]; then
  echo '{"error": "no DICOM snapshot: run systemctl start pacs-backup-dicom-files first"}'; exit 0
fi
mkdir -p "$scratch/files"
t2=$(now)
cpu "$scratch/files.cpu" /usr/local/sbin/pacs-restic restore "$snapshot" --target "$scratch/files"
sync; t3=$(now)
files_bytes=$(bytes "$scratch/files"); files_count=$(find "$scratch/files" -type f | wc -l)
rm -rf "$scratch/files"; sync
# The transport alone: the repository's packs as they are, over restic's own SSH.
etc=/etc/pacs-libre/backup
repository=$(. "$etc/restic.env"; echo "${RESTIC_REPOSITORY#sftp:pacs-backup-repo:}")
mkdir -p "$scratch/link"
t6=$(now)
echo "get -r $repository/data $scratch/link" > "$scratch/link.batch"
cpu "$scratch/link.cpu" \
  sftp -q -F "$etc/ssh_config" -b "$scratch/link.batch" pacs-backup-repo
sync; t7=$(now)
link_bytes=$(bytes "$scratch/link")
rm -rf "$scratch/link"; sync
install -d -o postgres -g postgres -m 0700 "$scratch/pg"
t4=$(now)
cpu "$scratch/pg.cpu" runuser -u postgres -- pgbackrest --stanza=pacs --pg1-path="$scratch/pg" \
  --archive-mode=off --type=immediate --target-action=shutdown --log-level-console=warn restore
sync; t5=$(now)
pg_bytes=$(bytes "$scratch/pg")
cat <<JSON
{"disk": {"bytes": $disk_bytes, "seconds": $(minus "$t1" "$t0")},
 "files": {"bytes": $files_bytes, "files": $files_count, "seconds": $(minus "$t3" "$t2"),
           "snapshot": "$snapshot", "cpu": $(cpu_json "$scratch/files.cpu")},
 "link": {"bytes": $link_bytes, "seconds": $(minus "$t7" "$t6"),
          "cpu": $(cpu_json "$scratch/link.cpu")},
 "postgresql": {"bytes": $pg_bytes, "seconds": $(minus "$t5" "$t4"),
                "cpu": $(cpu_json "$scratch/pg.cpu")}}
JSON
"""


@dataclass
class Measure:
    name: str
    bytes: int
    seconds: float
    detail: str = ""
    # CPU seconds (user + system) of the command and what it started; None for dd.
    cpu_seconds: float | None = None

    @property
    def cpu_share(self) -> float | None:
        """CPU seconds per wall-clock second: 1.0 is one core busy the whole time."""
        if self.cpu_seconds is None or self.seconds <= 0:
            return None
        return self.cpu_seconds / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        share = self.cpu_share
        return {
            **asdict(self),
            "mb_per_s": round(self.mb_per_s, 1),
            "cpu_share": None if share is None else round(share, 2),
        }


def _measure(name: str, part: dict[str, Any], detail: str = "") -> Measure:
    """One part of the host's JSON (its bytes, seconds and, for a restore, CPU) as a Measure."""
    cpu = part.get("cpu")
    return Measure(
        name,
        int(part["bytes"]),
        float(part["seconds"]),
        detail,
        None if cpu is None else float(cpu["user"]) + float(cpu["system"]),
    )


def run(
    host: str, ssh_config: Path, *, size_mb: int = 1024, timeout: float = 7200
) -> list[Measure]:
    """Measure on ``host`` (an ssh Host of ``ssh_config``); the disk first, then the restores."""
    if not ssh_config.exists():
        raise UserError(
            f"{ssh_config}: no ssh config; start the lab (make lab) or pass --ssh-config"
        )
    proc = subprocess.run(
        ["ssh", "-F", str(ssh_config), host, "sh", "-s", "--", SCRATCH, str(size_mb)],
        input=SCRIPT,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise UserError(f"restore benchmark on {host} failed: {proc.stderr.strip()[-2000:]}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"restore benchmark on {host}: unexpected output {proc.stdout[-500:]!r}"
        ) from exc
    if "error" in data:
        raise UserError(f"restore benchmark on {host}: {data['error']}")
    files = data["files"]
    return [
        _measure("disk (dd, sequential write, fdatasync)", data["disk"]),
        _measure(
            "DICOM files (restic restore, then sync)",
            files,
            f"{files['files']} files, snapshot {files['snapshot']}",
        ),
        _measure(
            "the repository's packs over the same SSH (sftp get, then sync)",
            data["link"],
            "the transport alone, without restic's work",
        ),
        _measure("PostgreSQL (pgbackrest restore, then sync)", data["postgresql"]),
    ]
