"""Sizing model: from a hospital's activity to disks, servers, PostgreSQL settings and cost.

This module and pgtune's formulas (``pacs_libre.core``'s ``module_utils/pgtune.py``, which the
postgresql role's filter also runs) are the one source of truth for pacs-libre's sizing
arithmetic. ``pacsctl size`` prints it, and Ansible consumes it as plain group_vars YAML
(:func:`group_vars`, the contract of ``module_utils/sizing_vars.py``). The plot imports
matplotlib lazily.

Units are the ones disks are sold in: 1 TB = 10^12 bytes, 1 GB = 10^9 bytes,
1 MB = 10^6 bytes, 1 kB = 10^3 bytes. Server RAM is counted in GB as RAM is sold
(binary GiB, 2^30 bytes), which is also what pgtune assumes.

The model, year by year (year 1 is the first year of service):

* studies(year 1) per modality = beds x studies_per_bed, or the explicit count given;
* images(year 1) = sum of studies x images_per_study x mb_per_image / compression_ratio;
* database(year 1) = sum of studies x images_per_study x db_kb_per_instance
  (the index grows with the number of DICOM instances, not with their size);
* year n produces year 1's volume x (1 + growth)^(n - 1);
* what is stored at the end of year n is the production of the last ``retention`` years
  (all of it while n <= retention).

``years`` is the horizon reported and bought for; ``retention`` is how long images are kept.

Why one module of about 670 lines: it is the model, read top to bottom against docs/sizing.md
(inputs, then the arithmetic, then its group_vars); pgtune's formulas and the group_vars contract
are apart, in the roles' shared Python.
See docs/sizing.md for the defaults and their sources.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ansible_collections.pacs_libre.core.plugins.module_utils.pgtune import (
    WAL_SIZES_MB,
    DiskType,
    PgWorkload,
    SizingError,
    postgresql_settings,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.sizing_vars import SIZING_GROUP_VARS

TB = 10**12
GB = 10**9
MB = 10**6
KB = 10**3
GIB = 2**30

WORKING_DAYS_PER_YEAR = 250
"""Days a year on which imaging is produced and read at full load (weekdays minus holidays)."""


class Modality(StrEnum):
    """The modality groups the model counts studies for (DICOM modality codes)."""

    CT = "CT"
    MR = "MR"
    CR_DX = "CR/DX"
    US = "US"
    MG = "MG"
    XA = "XA"
    NM_PT = "NM/PT"


class RaidLevel(StrEnum):
    """Linux software RAID (mdadm) level, or the equivalent hardware RAID."""

    RAID0 = "0"
    RAID1 = "1"
    RAID5 = "5"
    RAID6 = "6"
    RAID10 = "10"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ModalityProfile(_Model):
    """What one modality produces: studies per bed and year, images per study, image size."""

    studies_per_bed: float = Field(ge=0.0, le=10_000.0, description="Studies per bed and year.")
    images_per_study: float = Field(gt=0.0, le=100_000.0, description="DICOM instances per study.")
    mb_per_image: float = Field(gt=0.0, le=10_000.0, description="MB per instance, uncompressed.")
    source: str = Field(default="", exclude=True, description="Where the figures come from.")

    @property
    def mb_per_study(self) -> float:
        """Average study size in MB, uncompressed."""
        return self.images_per_study * self.mb_per_image


# The default mix: a French "centre hospitalier" of about 200 beds with an emergency department
# and outpatient clinics. Image sizes are pixel arithmetic (rows x columns x bytes per pixel);
# study counts are chosen so that the mix gives the seed's 2.5 TB a year for 200 beds.
# docs/sizing.md explains each line; keep the two in step.
DEFAULT_MIX: dict[Modality, ModalityProfile] = {
    Modality.CT: ModalityProfile(
        studies_per_bed=30,
        images_per_study=500,
        mb_per_image=0.5,
        source="512x512 x 2 bytes = 0.52 MB; ~500 slices (1-3 mm series + reformats).",
    ),
    Modality.MR: ModalityProfile(
        studies_per_bed=8,
        images_per_study=400,
        mb_per_image=0.3,
        source="256x256 to 512x512 x 2 bytes (0.13-0.52 MB); ~400 images over 6-10 sequences.",
    ),
    Modality.CR_DX: ModalityProfile(
        studies_per_bed=100,
        images_per_study=2,
        mb_per_image=10,
        source="CR 1760x2140 to DX 2800x2800 x 2 bytes (7.5-15.7 MB); 2 views per study.",
    ),
    Modality.US: ModalityProfile(
        studies_per_bed=40,
        images_per_study=25,
        mb_per_image=0.8,
        source="800x600 RGB stills (1.4 MB) and grey stills (0.5 MB), a few short loops.",
    ),
    Modality.MG: ModalityProfile(
        studies_per_bed=5,
        images_per_study=4,
        mb_per_image=27,
        source="3328x4096 x 2 bytes = 27 MB; 4 views; no tomosynthesis.",
    ),
    Modality.XA: ModalityProfile(
        studies_per_bed=3,
        images_per_study=10,
        mb_per_image=15,
        source="10 multi-frame runs of ~60 frames of 512x512 x 1 byte.",
    ),
    Modality.NM_PT: ModalityProfile(
        studies_per_bed=2,
        images_per_study=300,
        mb_per_image=0.4,
        source="PET-CT: ~150 PET slices (128x128 to 200x200) and ~150 CT slices (0.5 MB).",
    ),
}

DEFAULT_DB_KB_PER_INSTANCE = 5.0
"""Index size per DICOM instance, in kB, indexes included.

Calibrated on the seed: ~4.0 million instances a year for 200 beds give its 20 GB a year.
Measure yours with the archive's own database (see docs/sizing.md) and override it.
"""


class StorageOptions(_Model):
    """One disk array: RAID level, disks, and how full it may get."""

    raid: RaidLevel = RaidLevel.RAID6
    disk_type: DiskType = DiskType.HDD
    disk_tb: float = Field(default=8.0, gt=0.0, le=1000.0, description="Size of one disk, TB.")
    max_fill: float = Field(default=0.8, gt=0.0, le=1.0, description="Fill ratio not to exceed.")
    fs_overhead: Fraction = Field(default=0.05, description="Filesystem metadata and reserve.")
    hot_spares: int = Field(default=0, ge=0, le=100)


class BackupOptions(_Model):
    """Backups: how many copies (each on its own host/site) and how long they are kept."""

    copies: int = Field(default=2, ge=0, le=10)
    retention_days: int = Field(default=30, ge=1, le=3650)
    full_every_days: int = Field(default=7, ge=1, le=365)
    storage: StorageOptions = StorageOptions()


class Prices(_Model):
    """Prices in euros, excluding VAT. Defaults are street prices to replace by real quotes."""

    eur_per_tb_hdd: float = Field(default=25.0, ge=0.0)
    eur_per_tb_ssd: float = Field(default=90.0, ge=0.0)
    eur_per_tb_nvme: float = Field(default=110.0, ge=0.0)
    eur_per_gb_ram: float = Field(default=6.0, ge=0.0)
    archive_server_eur: float = Field(default=6000.0, ge=0.0)
    database_server_eur: float = Field(default=5000.0, ge=0.0)
    backup_server_eur: float = Field(default=4000.0, ge=0.0)
    setup_eur: float = Field(default=10000.0, ge=0.0)
    vat_rate: float = Field(default=0.20, ge=0.0, le=1.0)
    budget_eur: float = Field(default=50000.0, gt=0.0)

    def eur_per_tb(self, disk: DiskType) -> float:
        """Price of one TB of the given disk type."""
        return {
            DiskType.HDD: self.eur_per_tb_hdd,
            DiskType.SSD: self.eur_per_tb_ssd,
            DiskType.NVME: self.eur_per_tb_nvme,
        }[disk]


class FilmOptions(_Model):
    """Film printing that the PACS replaces (seed: ~50 films a day at 1.20 EUR)."""

    films_per_day: float = Field(default=50.0, ge=0.0, le=100_000.0)
    eur_per_film: float = Field(default=1.20, ge=0.0, le=1000.0)
    days_per_year: int = Field(default=240, ge=1, le=366)


class SizingInputs(_Model):
    """Everything the model needs. Only ``beds`` (or ``studies``) has no default."""

    beds: int | None = Field(default=None, gt=0, le=100_000)
    studies: dict[Modality, Annotated[int, Field(ge=0, le=100_000_000)]] = Field(
        default_factory=dict,
        description="Explicit first-year study counts; they replace beds x studies_per_bed.",
    )
    mix: dict[Modality, ModalityProfile] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    years: int = Field(default=5, ge=1, le=100, description="Horizon reported and bought for.")
    server_life_years: int = Field(
        default=5, ge=1, le=30, description="RAM and CPU are sized for this year's load."
    )
    growth: float = Field(default=0.05, ge=-0.5, le=1.0, description="Yearly volume growth.")
    retention: int = Field(default=20, ge=1, le=200, description="Years images are kept.")
    compression_ratio: float = Field(default=1.0, ge=1.0, le=20.0)
    db_kb_per_instance: float = Field(default=DEFAULT_DB_KB_PER_INSTANCE, gt=0.0, le=1000.0)
    storage: StorageOptions = StorageOptions()
    db_storage: StorageOptions = StorageOptions(
        raid=RaidLevel.RAID1, disk_type=DiskType.SSD, disk_tb=1.92
    )
    backup: BackupOptions = BackupOptions()
    ram_gb: int | None = Field(default=None, ge=1, le=4096, description="Database host RAM.")
    cpus: int | None = Field(default=None, ge=1, le=1024, description="Database host CPUs.")
    pg_workload: PgWorkload = PgWorkload.OLTP
    pg_max_connections: int = Field(default=100, ge=5, le=10_000)
    pg_version: int = Field(default=17, ge=10, le=30)
    prices: Prices = Prices()
    film: FilmOptions = FilmOptions()

    @model_validator(mode="after")
    def _beds_or_studies(self) -> Self:
        if self.beds is None and not self.studies:
            raise ValueError("give the number of beds, or explicit yearly study counts")
        missing = [m.value for m in Modality if m not in self.mix]
        if missing:
            raise ValueError(f"the modality mix lacks {', '.join(missing)}")
        return self


class YearRow(_Model):
    """One year of the horizon."""

    year: int
    studies: int
    images_tb: float = Field(description="Images produced this year, TB (after compression).")
    database_gb: float = Field(description="Database growth this year, GB.")
    images_tb_stored: float = Field(description="Images kept at the end of the year, TB.")
    database_gb_stored: float = Field(description="Database size at the end of the year, GB.")
    archive_fill: float = Field(description="Stored images / archive filesystem capacity.")


class ArrayPlan(_Model):
    """A disk array to buy."""

    raid: RaidLevel
    disk_type: DiskType
    disk_tb: float
    disks: int = Field(description="Disks to buy, hot spares included.")
    hot_spares: int
    needed_tb: float = Field(description="Data to hold at the horizon, TB.")
    filesystem_tb: float = Field(description="Filesystem size needed: needed / max fill, TB.")
    usable_tb: float = Field(description="Capacity the array gives after RAID, TB.")
    raw_tb: float = Field(description="Sum of the disks bought, TB.")


class HostSpec(_Model):
    """RAM and CPU cores for one server."""

    ram_gb: int
    cpus: int


class CostEstimate(_Model):
    """Investment estimate against the envelope."""

    items_eur: dict[str, float] = Field(description="Cost per line, excluding VAT.")
    total_excl_vat_eur: float
    total_eur: float = Field(description="Total including VAT.")
    budget_eur: float
    within_budget: bool
    margin_eur: float = Field(description="Budget minus total (negative when over).")


class SizingResult(_Model):
    """What ``pacsctl size`` reports. Top-level keys are a stable interface (JSON, YAML)."""

    inputs: SizingInputs
    studies_per_year: dict[Modality, int] = Field(description="First year, per modality.")
    instances_per_year: int = Field(description="DICOM instances, first year.")
    images_tb_per_year: float = Field(description="Images, first year, TB.")
    database_gb_per_year: float = Field(description="Database growth, first year, GB.")
    years: list[YearRow]
    images_tb_total: float = Field(description="Images stored at the horizon, TB.")
    database_gb_total: float = Field(description="Database size at the horizon, GB.")
    archive: ArrayPlan
    usable_disk_tb: float = Field(description="Archive array capacity after RAID, TB.")
    raw_disk_tb: float = Field(description="Archive disks to buy, TB.")
    disk_count: int = Field(description="Archive disks to buy.")
    database_storage: ArrayPlan
    backup_tb: float = Field(description="Backup data over all copies at the horizon, TB.")
    backup_tb_per_copy: float
    backup: ArrayPlan | None = Field(description="Array of one backup copy (None: no backup).")
    archive_host: HostSpec
    database_host: HostSpec
    postgresql: dict[str, str] = Field(description="postgresql.conf setting -> value.")
    cost: CostEstimate
    film_savings_eur_per_year: float
    payback_years: float | None = Field(description="Total cost / film savings.")
    warnings: list[str]


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------


def first_year_studies(inputs: SizingInputs) -> dict[Modality, int]:
    """Studies in year 1 per modality: explicit counts, else beds x studies per bed."""
    studies: dict[Modality, int] = {}
    for modality in Modality:
        if modality in inputs.studies:
            studies[modality] = inputs.studies[modality]
        elif inputs.beds is not None:
            studies[modality] = round(inputs.beds * inputs.mix[modality].studies_per_bed)
        else:
            studies[modality] = 0
    return studies


def _production_factors(years: int, growth: float) -> list[float]:
    """Volume of year n relative to year 1, for n = 1..years."""
    return [(1.0 + growth) ** n for n in range(years)]


def _stored_factors(years: int, growth: float, retention: int) -> list[float]:
    """What is kept at the end of year n (relative to year 1): the last ``retention`` years."""
    produced = _production_factors(years, growth)
    return [sum(produced[max(0, n - retention + 1) : n + 1]) for n in range(years)]


def plan_array(needed_tb: float, options: StorageOptions) -> ArrayPlan:
    """The smallest array of ``options.disk_tb`` disks that holds ``needed_tb`` below max fill.

    The filesystem must be ``needed / max_fill`` large; the RAID must give that plus the
    filesystem overhead. Minimum disk counts: RAID 1 two, RAID 5 three, RAID 6 and 10 four.
    """
    filesystem_tb = needed_tb / options.max_fill
    array_tb = filesystem_tb / (1.0 - options.fs_overhead)
    data_disks = max(1, math.ceil(array_tb / options.disk_tb - 1e-9))
    raid = options.raid
    if raid is RaidLevel.RAID0:
        disks = data_disks
    elif raid is RaidLevel.RAID1:
        if data_disks > 1:
            raise SizingError(
                f"RAID 1 mirrors one {options.disk_tb:g} TB disk but {array_tb:.2f} TB are "
                "needed: choose bigger disks or RAID 10"
            )
        disks = 2
    elif raid is RaidLevel.RAID5:
        disks = max(3, data_disks + 1)
        data_disks = disks - 1
    elif raid is RaidLevel.RAID6:
        disks = max(4, data_disks + 2)
        data_disks = disks - 2
    else:  # RAID 10: mirrored pairs, striped
        disks = max(4, 2 * data_disks)
        data_disks = disks // 2
    total = disks + options.hot_spares
    return ArrayPlan(
        raid=raid,
        disk_type=options.disk_type,
        disk_tb=options.disk_tb,
        disks=total,
        hot_spares=options.hot_spares,
        needed_tb=needed_tb,
        filesystem_tb=filesystem_tb,
        usable_tb=data_disks * options.disk_tb,
        raw_tb=total * options.disk_tb,
    )


def _round_up(value: float, step: int) -> int:
    return step * math.ceil(value / step - 1e-9)


def _cost(
    inputs: SizingInputs,
    *,
    archive: ArrayPlan,
    database_storage: ArrayPlan,
    backup: ArrayPlan | None,
    archive_host: HostSpec,
    database_host: HostSpec,
) -> CostEstimate:
    """Servers, disks and setup, against the envelope."""
    prices = inputs.prices
    copies = inputs.backup.copies
    items = {
        "archive server": prices.archive_server_eur + archive_host.ram_gb * prices.eur_per_gb_ram,
        "archive disks": archive.raw_tb * prices.eur_per_tb(archive.disk_type),
        "database server": prices.database_server_eur
        + database_host.ram_gb * prices.eur_per_gb_ram,
        "database disks": database_storage.raw_tb * prices.eur_per_tb(database_storage.disk_type),
        "backup servers": prices.backup_server_eur * copies,
        "backup disks": (
            backup.raw_tb * prices.eur_per_tb(backup.disk_type) * copies if backup else 0.0
        ),
        "setup": prices.setup_eur,
    }
    excl_vat = sum(items.values())
    total = excl_vat * (1.0 + prices.vat_rate)
    return CostEstimate(
        items_eur=items,
        total_excl_vat_eur=excl_vat,
        total_eur=total,
        budget_eur=prices.budget_eur,
        within_budget=total <= prices.budget_eur,
        margin_eur=prices.budget_eur - total,
    )


def _warnings(inputs: SizingInputs, archive: ArrayPlan, cost: CostEstimate) -> list[str]:
    """Things a person should look at before buying."""
    warnings: list[str] = []
    if not cost.within_budget:
        warnings.append(
            f"the estimate ({cost.total_eur:,.0f} EUR incl. VAT) exceeds the "
            f"{cost.budget_eur:,.0f} EUR envelope"
        )
    if (
        archive.raid is RaidLevel.RAID5
        and archive.disk_tb > 2
        and archive.disk_type is DiskType.HDD
    ):
        warnings.append("RAID 5 on large hard disks risks a second failure during the rebuild")
    if archive.raid is RaidLevel.RAID0:
        warnings.append("RAID 0 loses every image when one disk fails")
    if archive.disks > 24:
        warnings.append(f"{archive.disks} archive disks need a disk shelf: consider bigger disks")
    if inputs.backup.copies == 0:
        warnings.append("no backup copy: a disk array is not a backup")
    return warnings


def size(inputs: SizingInputs) -> SizingResult:
    """Run the sizing model."""
    studies = first_year_studies(inputs)
    instances = sum(studies[m] * inputs.mix[m].images_per_study for m in Modality)
    images_mb = sum(studies[m] * inputs.mix[m].mb_per_study for m in Modality)
    images_tb_1 = images_mb * MB / TB / inputs.compression_ratio
    database_gb_1 = instances * inputs.db_kb_per_instance * KB / GB

    produced = _production_factors(inputs.years, inputs.growth)
    stored = _stored_factors(inputs.years, inputs.growth, inputs.retention)
    images_tb_total = images_tb_1 * stored[-1]
    database_gb_total = database_gb_1 * stored[-1]

    warnings: list[str] = []
    archive = plan_array(images_tb_total, inputs.storage)
    archive_fs_tb = archive.usable_tb * (1.0 - inputs.storage.fs_overhead)

    rows = [
        YearRow(
            year=n + 1,
            studies=round(sum(studies.values()) * produced[n]),
            images_tb=images_tb_1 * produced[n],
            database_gb=database_gb_1 * produced[n],
            images_tb_stored=images_tb_1 * stored[n],
            database_gb_stored=database_gb_1 * stored[n],
            archive_fill=images_tb_1 * stored[n] / archive_fs_tb,
        )
        for n in range(inputs.years)
    ]

    # Servers are sized for the last year of their service life (or of the horizon).
    server_year = min(inputs.years, inputs.server_life_years) - 1
    # Database host: keep the last year of index in RAM, plus 4 GB for the OS and backups.
    last_db_gb = database_gb_1 * produced[server_year]
    studies_per_day = sum(studies.values()) * produced[server_year] / WORKING_DAYS_PER_YEAR
    db_ram = inputs.ram_gb or max(8, _round_up(4 + last_db_gb, 8))
    db_cpus = inputs.cpus or max(4, 2 * math.ceil(studies_per_day / 100))
    database_host = HostSpec(ram_gb=db_ram, cpus=db_cpus)
    postgresql = postgresql_settings(
        ram_bytes=db_ram * GIB,
        cpus=db_cpus,
        disk=inputs.db_storage.disk_type,
        max_connections=inputs.pg_max_connections,
        workload=inputs.pg_workload,
        pg_version=inputs.pg_version,
    )
    max_wal_gb = WAL_SIZES_MB[inputs.pg_workload][1] * 2**20 / GB
    # Room for bloat, REINDEX and a copy-mode major upgrade (x1.5), plus the WAL.
    db_needed_tb = (database_gb_total * 1.5 + max_wal_gb * 1.5) * GB / TB
    db_storage_options = inputs.db_storage
    if (
        db_storage_options.raid is RaidLevel.RAID1
        and db_needed_tb / db_storage_options.max_fill / (1.0 - db_storage_options.fs_overhead)
        > db_storage_options.disk_tb
    ):
        db_storage_options = db_storage_options.model_copy(update={"raid": RaidLevel.RAID10})
        warnings.append(
            "the database does not fit one mirrored pair of "
            f"{inputs.db_storage.disk_tb:g} TB disks: sized as RAID 10"
        )
    database_storage = plan_array(db_needed_tb, db_storage_options)

    # Archive host: 8 GB for the system and services, plus a working day of new images in
    # the page cache (the studies read most are the ones just acquired).
    images_gb_per_day = images_tb_1 * produced[server_year] * TB / GB / WORKING_DAYS_PER_YEAR
    archive_host = HostSpec(
        ram_gb=max(16, _round_up(8 + images_gb_per_day, 8)),
        cpus=max(4, 2 * math.ceil(studies_per_day / 50)),
    )

    # Backups: every image once per copy (DICOM files never change, restic deduplicates), and
    # the PostgreSQL full backups that the retention keeps (one a week, plus one in rotation).
    backup_opts = inputs.backup
    full_backups = math.ceil(backup_opts.retention_days / backup_opts.full_every_days) + 1
    backup_tb_per_copy = images_tb_total + database_gb_total * full_backups * GB / TB
    backup_tb = backup_tb_per_copy * backup_opts.copies
    backup = plan_array(backup_tb_per_copy, backup_opts.storage) if backup_opts.copies else None

    cost = _cost(
        inputs,
        archive=archive,
        database_storage=database_storage,
        backup=backup,
        archive_host=archive_host,
        database_host=database_host,
    )
    film = inputs.film
    savings = film.films_per_day * film.eur_per_film * film.days_per_year
    warnings += _warnings(inputs, archive, cost)

    return SizingResult(
        inputs=inputs,
        studies_per_year=studies,
        instances_per_year=round(instances),
        images_tb_per_year=images_tb_1,
        database_gb_per_year=database_gb_1,
        years=rows,
        images_tb_total=images_tb_total,
        database_gb_total=database_gb_total,
        archive=archive,
        usable_disk_tb=archive.usable_tb,
        raw_disk_tb=archive.raw_tb,
        disk_count=archive.disks,
        database_storage=database_storage,
        backup_tb=backup_tb,
        backup_tb_per_copy=backup_tb_per_copy,
        backup=backup,
        archive_host=archive_host,
        database_host=database_host,
        postgresql=postgresql,
        cost=cost,
        film_savings_eur_per_year=savings,
        payback_years=cost.total_eur / savings if savings > 0 else None,
        warnings=warnings,
    )


def group_vars(result: SizingResult) -> list[tuple[str, Any, str]]:
    """The group_vars the roles consume: (name, value, comment), in the contract's order.

    The names, types and comments are the contract of ``module_utils/sizing_vars.py``; this
    function gives each its value, and fails loudly if the two ever disagree.
    """
    inputs = result.inputs
    archive = result.archive
    values: dict[str, Any] = {
        "pacs_sizing_beds": inputs.beds,
        "pacs_sizing_years": inputs.years,
        "pacs_sizing_retention_years": inputs.retention,
        "pacs_sizing_growth": inputs.growth,
        "pacs_sizing_studies_per_year": {m.value: n for m, n in result.studies_per_year.items()},
        "pacs_sizing_images_tb_per_year": result.images_tb_per_year,
        "pacs_sizing_images_tb_total": result.images_tb_total,
        "pacs_sizing_archive_storage_tb": archive.filesystem_tb,
        "pacs_sizing_archive_max_fill": inputs.storage.max_fill,
        "pacs_sizing_archive_raid_level": archive.raid.value,
        "pacs_sizing_archive_disk_type": archive.disk_type.value,
        "pacs_sizing_archive_disk_tb": archive.disk_tb,
        "pacs_sizing_archive_disk_count": archive.disks,
        "pacs_sizing_archive_raw_disk_tb": archive.raw_tb,
        "pacs_sizing_archive_usable_tb": archive.usable_tb,
        "pacs_sizing_archive_ram_gb": result.archive_host.ram_gb,
        "pacs_sizing_archive_cpus": result.archive_host.cpus,
        "pacs_sizing_backup_copies": inputs.backup.copies,
        "pacs_sizing_backup_retention_days": inputs.backup.retention_days,
        "pacs_sizing_backup_tb_per_copy": result.backup_tb_per_copy,
        "pacs_sizing_backup_tb": result.backup_tb,
        "postgresql_sizing_database_gb_per_year": result.database_gb_per_year,
        "postgresql_sizing_database_gb_total": result.database_gb_total,
        "postgresql_sizing_storage_gb": result.database_storage.filesystem_tb * 1000,
        "postgresql_sizing_ram_gb": result.database_host.ram_gb,
        "postgresql_sizing_cpus": result.database_host.cpus,
        "postgresql_sizing_settings": dict(result.postgresql),
    }
    if list(values) != list(SIZING_GROUP_VARS):
        missing = sorted(set(SIZING_GROUP_VARS) - set(values))
        extra = sorted(set(values) - set(SIZING_GROUP_VARS))
        raise AssertionError(f"sizing group_vars out of contract: missing {missing}, extra {extra}")
    return [(name, values[name], comment) for name, (_, comment) in SIZING_GROUP_VARS.items()]


def plot_storage_growth(result: SizingResult, path: Path, title: str | None = None) -> None:
    """Draw stored images over the horizon against the archive capacity (PNG or SVG).

    matplotlib is imported here, with the Agg canvas, so that importing this module stays
    light (Ansible filter plugins import it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise SizingError(f"cannot draw '{path}': the plot is a .png or a .svg file")
    storage = result.inputs.storage
    years = [row.year for row in result.years]
    produced = [row.images_tb for row in result.years]
    stored = [row.images_tb_stored for row in result.years]
    filesystem = result.archive.usable_tb * (1.0 - storage.fs_overhead)

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(years, produced, color="#9ecae1", label="images produced in the year")
    ax.plot(years, stored, marker="o", color="#08519c", label="images stored (retention applied)")
    ax.axhline(filesystem, color="#a50f15", label=f"archive filesystem: {filesystem:.1f} TB")
    ax.axhline(
        filesystem * storage.max_fill,
        color="#a50f15",
        linestyle="--",
        label=f"max fill ({storage.max_fill:.0%})",
    )
    ax.set_xlabel("year of service")
    ax.set_ylabel("TB")
    ax.set_xlim(0.4, len(years) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, filesystem * 1.08)
    inputs = result.inputs
    who = f"{inputs.beds} beds" if inputs.beds else "explicit study counts"
    ax.set_title(
        title
        or (
            f"Archive storage: {who}, growth {inputs.growth:.0%}/yr, retention "
            f"{inputs.retention} yr, {result.archive.disks} x {storage.disk_tb:g} TB RAID "
            f"{storage.raid.value}"
        ),
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    metadata: dict[str, str | None] = (
        {"Software": None} if suffix == ".png" else {"Date": None, "Creator": None}
    )
    fig.savefig(path, metadata=metadata)
