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
processes it started spent, ssh included (``getrusage`` of its children), and the
seconds its threads spent runnable but waiting for a core (the second field of
each thread's ``/proc/<pid>/task/<tid>/schedstat``, read every 0.1 s while it
runs). CPU seconds close to the wall-clock seconds, or above on two cores, say
the CPU is the limit; far below, the waits are elsewhere (the network, round
trips, the disk) -- unless the wait for a core fills the gap: then the restore
had work to do and no core to do it on, a machine too busy rather than a slow
restore.

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

# PROBE FILE COMMAND...: runs COMMAND; then writes to FILE "user system wait": the
# CPU seconds of it and of what it started (getrusage of the children), and the
# seconds their threads were runnable but waiting for a core. schedstat's second
# field is that wait, in ns, since the thread started; it is read every 0.1 s over
# the whole process tree (restic, then its ssh), and each thread's last reading
# counts, so at most its final 0.1 s is missed.
PROBE = r"""
import os, resource, subprocess, sys, time


def tree(root):
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


waits = {}
command = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
while command.poll() is None:
    for pid in tree(command.pid):
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    waits[pid, tid] = int(stat.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    time.sleep(0.1)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write("%.3f %.3f %.3f" % (usage.ru_utime, usage.ru_stime, sum(waits.values()) / 1e9))
sys.exit(command.returncode)
"""

# Runs on the host, as root; prints one JSON object. The arguments are the scratch
# folder and the disk baseline's size in MiB; PROBE is written into it.
SCRIPT = r"""
set -eu
# Decimal points, not the host's locale's commas.
export LC_ALL=C
scratch=$1; size_mb=$2
probe=$(cat <<'PROBE'
@PROBE@
PROBE
)
rm -rf "$scratch"; mkdir -p "$scratch"
trap 'rm -rf "$scratch"' EXIT
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
bytes() { du -sb "$1" | cut -f1; }
# cpu FILE COMMAND...: runs COMMAND, then writes to FILE the CPU seconds (user,
# system) of it and of every process it started and waited for, and the seconds
# their threads waited for a core (bench_restore.PROBE).
cpu() { python3 -c "$probe" "$@"; }
cpu_json() { awk '{ printf "{\"user\": %s, \"system\": %s, \"wait\": %s}", $1, $2, $3 }' "$1"; }
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
""".replace("@PROBE@", PROBE.strip())


@dataclass
class Measure:
    name: str
    bytes: int
    seconds: float
    detail: str = ""
    # CPU seconds (user + system) of the command and what it started; None for dd.
    cpu_seconds: float | None = None
    # Seconds its threads were runnable but waiting for a core; None for dd.
    wait_seconds: float | None = None

    @property
    def cpu_share(self) -> float | None:
        """CPU seconds per wall-clock second: 1.0 is one core busy the whole time."""
        if self.cpu_seconds is None or self.seconds <= 0:
            return None
        return self.cpu_seconds / self.seconds

    @property
    def wait_share(self) -> float | None:
        """Seconds waiting for a core per wall-clock second (summed over its threads)."""
        if self.wait_seconds is None or self.seconds <= 0:
            return None
        return self.wait_seconds / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        share, wait = self.cpu_share, self.wait_share
        return {
            **asdict(self),
            "mb_per_s": round(self.mb_per_s, 1),
            "cpu_share": None if share is None else round(share, 2),
            "wait_share": None if wait is None else round(wait, 2),
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
        None if cpu is None else float(cpu["wait"]),
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
