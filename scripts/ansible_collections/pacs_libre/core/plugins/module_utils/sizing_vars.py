"""The sizing group_vars: the contract between ``pacsctl size`` and the roles.

``pacsctl size --write-group-vars FILE`` writes exactly these variables
(``pacs_libre.sizing.group_vars``, checked against this table by the unit tests), the roles read
them, and the inventory rules know their names and types from here: name -> (type, comment),
in the order the file lists them. A new sizing output is one line here and one value there.
"""

from __future__ import annotations

SIZING_GROUP_VARS: dict[str, tuple[str, str]] = {
    "pacs_sizing_beds": ("int", "Beds the model was run for (null: explicit counts)."),
    "pacs_sizing_years": ("int", "Horizon, in years, that the storage is bought for."),
    "pacs_sizing_retention_years": ("int", "Years images are kept."),
    "pacs_sizing_growth": ("float", "Yearly growth of the volume (0.05 = 5 %)."),
    "pacs_sizing_studies_per_year": ("dict", "Studies in the first year, per modality."),
    "pacs_sizing_images_tb_per_year": (
        "float",
        "Images produced in the first year, TB (after lossless compression, if any).",
    ),
    "pacs_sizing_images_tb_total": ("float", "Images stored at the horizon, TB."),
    "pacs_sizing_archive_storage_tb": (
        "float",
        "Minimum size of the archive filesystem, TB: images at the horizon / max fill.",
    ),
    "pacs_sizing_archive_max_fill": ("float", "Fill ratio not to exceed."),
    "pacs_sizing_archive_raid_level": ("str", "RAID level of the archive."),
    "pacs_sizing_archive_disk_type": ("str", "Archive disk technology."),
    "pacs_sizing_archive_disk_tb": ("float", "Size of one archive disk, TB."),
    "pacs_sizing_archive_disk_count": ("int", "Archive disks, hot spares included."),
    "pacs_sizing_archive_raw_disk_tb": ("float", "Archive disks bought, TB."),
    "pacs_sizing_archive_usable_tb": ("float", "Archive array after RAID, TB."),
    "pacs_sizing_archive_ram_gb": ("int", "Archive host RAM, GB."),
    "pacs_sizing_archive_cpus": ("int", "Archive host CPU cores."),
    "pacs_sizing_backup_copies": ("int", "Backup copies, each on its host."),
    "pacs_sizing_backup_retention_days": ("int", "Days backups are kept."),
    "pacs_sizing_backup_tb_per_copy": ("float", "Data one backup copy holds at the horizon, TB."),
    "pacs_sizing_backup_tb": ("float", "Backup data over all copies, TB."),
    "postgresql_sizing_database_gb_per_year": ("float", "Database growth in the first year, GB."),
    "postgresql_sizing_database_gb_total": ("float", "Database size at the horizon, GB."),
    "postgresql_sizing_storage_gb": (
        "float",
        "Minimum size of the PostgreSQL data filesystem, GB (room for bloat, WAL, upgrade).",
    ),
    "postgresql_sizing_ram_gb": ("int", "Database host RAM, GB."),
    "postgresql_sizing_cpus": ("int", "Database host CPU cores."),
    "postgresql_sizing_settings": (
        "dict",
        "postgresql.conf settings from pgtune's formulas for that host.",
    ),
}
