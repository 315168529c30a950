"""pgtune's formulas: PostgreSQL settings for a dedicated database host, in one place.

Part of the Python that pacs-libre's roles and pacsctl share (docs/architecture.md, "Shared
Python"). ``pacsctl size`` prints these settings for a planned server (pacs_libre.sizing) and
the postgresql role's ``postgresql_pgtune`` filter writes them for a real one, from its facts.
Standard library only: it runs in whichever Python runs Ansible.
"""

from __future__ import annotations

import math
from enum import StrEnum


class SizingError(ValueError):
    """Inputs that are valid one by one but cannot be built (e.g. RAID 1 over several disks)."""


class DiskType(StrEnum):
    """Disk technology: sets the price per TB and PostgreSQL's planner and I/O settings."""

    HDD = "hdd"
    SSD = "ssd"
    NVME = "nvme"


class PgWorkload(StrEnum):
    """pgtune's "DB type"."""

    WEB = "web"
    OLTP = "oltp"
    DW = "dw"
    DESKTOP = "desktop"
    MIXED = "mixed"


# --------------------------------------------------------------------------------------------
# PostgreSQL: pgtune's formulas, in one place.
# --------------------------------------------------------------------------------------------

_PG_KB_PER_MB = 1024
_PG_KB_PER_GB = 1024 * 1024

_PG_MAX_CONNECTIONS = {
    PgWorkload.WEB: 200,
    PgWorkload.OLTP: 300,
    PgWorkload.DW: 40,
    PgWorkload.DESKTOP: 20,
    PgWorkload.MIXED: 100,
}
WAL_SIZES_MB = {  # (min_wal_size, max_wal_size)
    PgWorkload.WEB: (1024, 4096),
    PgWorkload.OLTP: (2048, 8192),
    PgWorkload.DW: (4096, 16384),
    PgWorkload.DESKTOP: (100, 2048),
    PgWorkload.MIXED: (1024, 4096),
}
_PG_RANDOM_PAGE_COST = {DiskType.HDD: "4", DiskType.SSD: "1.1", DiskType.NVME: "1.1"}
_PG_EFFECTIVE_IO_CONCURRENCY = {DiskType.HDD: "2", DiskType.SSD: "200", DiskType.NVME: "1000"}
_PG_DEFAULT_MAX_WORKER_PROCESSES = 8


def pg_size(kb: int) -> str:
    """Render a size in kB as PostgreSQL (and pgtune) do: GB or MB when exact, else kB."""
    if kb % _PG_KB_PER_GB == 0:
        return f"{kb // _PG_KB_PER_GB}GB"
    if kb % _PG_KB_PER_MB == 0:
        return f"{kb // _PG_KB_PER_MB}MB"
    return f"{kb}kB"


def postgresql_settings(
    ram_bytes: int,
    cpus: int,
    disk: DiskType | str = DiskType.SSD,
    max_connections: int | None = None,
    *,
    workload: PgWorkload | str = PgWorkload.WEB,
    pg_version: int = 17,
) -> dict[str, str]:
    """PostgreSQL settings for a dedicated Linux database host, by pgtune's formulas.

    Follows pgtune (github.com/le0pard/pgtune, ``configurationSlice.js``) for Linux:

    * ``shared_buffers`` = RAM/4 (desktop RAM/16); ``effective_cache_size`` = 3/4 RAM
      (desktop RAM/4);
    * ``maintenance_work_mem`` = RAM/16 (dw RAM/8), capped at 8 GB;
    * ``work_mem`` = (RAM - shared_buffers) / ((max_connections + max_worker_processes) x 3),
      halved for dw and mixed, /6 for desktop, at least 4 MB;
    * ``wal_buffers`` = 3 % of shared_buffers, between 32 kB and 16 MB;
    * ``min_wal_size`` / ``max_wal_size`` by workload; ``random_page_cost`` and
      ``effective_io_concurrency`` by disk type; parallel workers from 4 CPUs up.

    Returns setting -> value as postgresql.conf takes it ("4GB", "20560kB", "1.1"), in
    pgtune's order. ``max_connections`` defaults to pgtune's figure for the workload.
    """
    disk = DiskType(disk)
    workload = PgWorkload(workload)
    if ram_bytes < 256 * 2**20:
        raise SizingError(f"{ram_bytes} bytes of RAM is too little for a PostgreSQL server")
    if cpus < 1:
        raise SizingError(f"{cpus} CPUs: a server has at least one")
    total_kb = ram_bytes // 1024
    connections = max_connections or _PG_MAX_CONNECTIONS[workload]
    desktop = workload is PgWorkload.DESKTOP

    shared_buffers = total_kb // 16 if desktop else total_kb // 4
    effective_cache_size = total_kb // 4 if desktop else total_kb * 3 // 4
    maintenance = total_kb // 8 if workload is PgWorkload.DW else total_kb // 16
    maintenance = min(maintenance, 8 * _PG_KB_PER_GB)

    wal_buffers = min(3 * shared_buffers // 100, 16 * _PG_KB_PER_MB)
    if 14 * _PG_KB_PER_MB < wal_buffers < 16 * _PG_KB_PER_MB:
        wal_buffers = 16 * _PG_KB_PER_MB
    wal_buffers = max(wal_buffers, 32)

    parallel: dict[str, str] = {}
    workers = _PG_DEFAULT_MAX_WORKER_PROCESSES
    if cpus >= 4:
        workers = cpus
        per_gather = math.ceil(cpus / 2)
        if workload is not PgWorkload.DW:
            per_gather = min(per_gather, 4)
        parallel["max_worker_processes"] = str(cpus)
        parallel["max_parallel_workers_per_gather"] = str(per_gather)
        if pg_version >= 10:
            parallel["max_parallel_workers"] = str(cpus)
        if pg_version >= 11:
            parallel["max_parallel_maintenance_workers"] = str(min(math.ceil(cpus / 2), 4))

    work_mem_base = (total_kb - shared_buffers) / ((connections + workers) * 3)
    divisor = {PgWorkload.DW: 2, PgWorkload.MIXED: 2, PgWorkload.DESKTOP: 6}.get(workload, 1)
    work_mem = max(math.floor(work_mem_base / divisor), 4 * _PG_KB_PER_MB)

    min_wal_mb, max_wal_mb = WAL_SIZES_MB[workload]
    settings: dict[str, str] = {
        "max_connections": str(connections),
        "shared_buffers": pg_size(shared_buffers),
        "effective_cache_size": pg_size(effective_cache_size),
        "maintenance_work_mem": pg_size(maintenance),
        "checkpoint_completion_target": "0.9",
        "wal_buffers": pg_size(wal_buffers),
        "default_statistics_target": "500" if workload is PgWorkload.DW else "100",
        "random_page_cost": _PG_RANDOM_PAGE_COST[disk],
        "effective_io_concurrency": _PG_EFFECTIVE_IO_CONCURRENCY[disk],
        "work_mem": pg_size(work_mem),
        "huge_pages": "try" if shared_buffers >= 2 * _PG_KB_PER_GB else "off",
    }
    if pg_version >= 12 and workload in (PgWorkload.WEB, PgWorkload.OLTP, PgWorkload.MIXED):
        settings["jit"] = "off"
    if pg_version >= 10:
        settings["wal_compression"] = "lz4" if pg_version >= 15 else "on"
    if cpus >= 16:
        settings["autovacuum_max_workers"] = "5" if cpus >= 32 else "4"
    if maintenance >= 2 * _PG_KB_PER_GB:
        settings["autovacuum_work_mem"] = pg_size(2 * _PG_KB_PER_GB)
    settings["min_wal_size"] = pg_size(min_wal_mb * _PG_KB_PER_MB)
    settings["max_wal_size"] = pg_size(max_wal_mb * _PG_KB_PER_MB)
    settings.update(parallel)
    if desktop:
        settings["wal_level"] = "minimal"
        settings["max_wal_senders"] = "0"
    return settings
