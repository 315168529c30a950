"""The sizing model: the seed's figures, monotony, linearity, pgtune's formulas."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.pacs_libre.core.plugins.module_utils.pgtune import (
    DiskType,
    PgWorkload,
    SizingError,
    pg_size,
    postgresql_settings,
)
from ansible_collections.pacs_libre.core.plugins.module_utils.sizing_vars import SIZING_GROUP_VARS
from pacs_libre.sizing import (
    DEFAULT_MIX,
    GIB,
    Modality,
    RaidLevel,
    SizingInputs,
    StorageOptions,
    group_vars,
    plan_array,
    size,
)

FAST = settings(max_examples=40, deadline=None)
beds_st = st.integers(min_value=1, max_value=5000)
years_st = st.integers(min_value=1, max_value=40)
growth_st = st.floats(min_value=0.0, max_value=0.3, allow_nan=False)


# --- The seed: 200 beds give 2.5 TB of images and 20 GB of database a year. -----------------


def test_200_beds_give_the_seed_figures() -> None:
    result = size(SizingInputs(beds=200, years=1))
    assert result.images_tb_per_year == pytest.approx(2.5, rel=0.02)
    assert result.database_gb_per_year == pytest.approx(20.0, rel=0.05)
    assert result.images_tb_total == result.images_tb_per_year
    assert result.database_gb_total == result.database_gb_per_year


def test_every_default_has_a_source() -> None:
    assert set(DEFAULT_MIX) == set(Modality)
    for profile in DEFAULT_MIX.values():
        assert profile.source


def test_one_year_table_adds_up() -> None:
    result = size(SizingInputs(beds=200, years=5))
    assert [row.year for row in result.years] == [1, 2, 3, 4, 5]
    assert sum(row.images_tb for row in result.years) == pytest.approx(result.images_tb_total)
    assert result.years[1].images_tb == pytest.approx(result.images_tb_per_year * 1.05)
    assert result.years[-1].archive_fill < result.inputs.storage.max_fill


# --- Monotony and linearity. -----------------------------------------------------------------


@FAST
@given(beds=beds_st, extra=st.integers(min_value=1, max_value=1000), years=years_st)
def test_more_beds_more_storage(beds: int, extra: int, years: int) -> None:
    small = size(SizingInputs(beds=beds, years=years))
    large = size(SizingInputs(beds=beds + extra, years=years))
    assert large.images_tb_per_year > small.images_tb_per_year
    assert large.database_gb_per_year > small.database_gb_per_year
    assert large.images_tb_total > small.images_tb_total
    assert large.raw_disk_tb >= small.raw_disk_tb
    assert large.backup_tb > small.backup_tb
    assert large.cost.total_eur >= small.cost.total_eur


@FAST
@given(beds=beds_st, years=years_st, growth=growth_st, retention=st.integers(1, 40))
def test_more_years_more_storage(beds: int, years: int, growth: float, retention: int) -> None:
    shorter = size(SizingInputs(beds=beds, years=years, growth=growth, retention=retention))
    longer = size(SizingInputs(beds=beds, years=years + 1, growth=growth, retention=retention))
    assert longer.images_tb_total >= shorter.images_tb_total
    assert longer.database_gb_total >= shorter.database_gb_total
    assert longer.raw_disk_tb >= shorter.raw_disk_tb
    if years < retention:  # nothing is purged yet: every year adds
        assert longer.images_tb_total > shorter.images_tb_total


@FAST
@given(beds=beds_st, years=st.integers(2, 40), growth=growth_st, more=st.floats(0.001, 0.2))
def test_more_growth_more_storage(beds: int, years: int, growth: float, more: float) -> None:
    slow = size(SizingInputs(beds=beds, years=years, growth=growth))
    fast = size(SizingInputs(beds=beds, years=years, growth=growth + more))
    assert fast.images_tb_per_year == pytest.approx(slow.images_tb_per_year)
    assert fast.images_tb_total > slow.images_tb_total
    assert fast.database_gb_total > slow.database_gb_total


@FAST
@given(beds=st.integers(1, 2500).map(lambda b: 2 * b), years=years_st, growth=growth_st)
def test_volume_is_linear_in_beds(beds: int, years: int, growth: float) -> None:
    # Even bed counts, so that studies = beds x rate rounds the same way at both sizes.
    half = size(SizingInputs(beds=beds // 2, years=years, growth=growth))
    full = size(SizingInputs(beds=beds, years=years, growth=growth))
    for key in ("images_tb_per_year", "database_gb_per_year", "images_tb_total"):
        assert getattr(full, key) == pytest.approx(2 * getattr(half, key), rel=1e-9)
    assert full.database_gb_total == pytest.approx(2 * half.database_gb_total, rel=1e-9)


def test_doubling_200_beds_doubles_both_figures() -> None:
    one = size(SizingInputs(beds=200, years=1))
    two = size(SizingInputs(beds=400, years=1))
    assert two.images_tb_per_year == pytest.approx(2 * one.images_tb_per_year)
    assert two.database_gb_per_year == pytest.approx(2 * one.database_gb_per_year)


def test_retention_keeps_only_the_last_years() -> None:
    result = size(SizingInputs(beds=200, years=8, growth=0.0, retention=3))
    stored = [row.images_tb_stored for row in result.years]
    first = result.images_tb_per_year
    assert stored[:3] == pytest.approx([first, 2 * first, 3 * first])
    assert stored[3:] == pytest.approx([3 * first] * 5)


def test_compression_divides_images_not_the_database() -> None:
    plain = size(SizingInputs(beds=200, years=3))
    packed = size(SizingInputs(beds=200, years=3, compression_ratio=2.5))
    assert packed.images_tb_total == pytest.approx(plain.images_tb_total / 2.5)
    assert packed.database_gb_total == pytest.approx(plain.database_gb_total)


def test_explicit_counts_replace_beds_per_modality() -> None:
    result = size(SizingInputs(beds=200, studies={Modality.XA: 0, Modality.CT: 12000}))
    assert result.studies_per_year[Modality.XA] == 0
    assert result.studies_per_year[Modality.CT] == 12000
    assert result.studies_per_year[Modality.MR] == 1600
    only = size(SizingInputs(studies={Modality.CR_DX: 1000}))
    assert only.studies_per_year[Modality.CR_DX] == 1000
    assert only.images_tb_per_year == pytest.approx(1000 * 20 / 1e6)


@pytest.mark.parametrize(
    "bad",
    [{}, {"beds": 0}, {"beds": -1}, {"beds": 200, "years": 0}, {"beds": 200, "ram_gb": 10**6}],
)
def test_bad_inputs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        SizingInputs.model_validate(bad)


# --- Disk arrays. ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raid", "needed", "disks", "usable"),
    [
        (RaidLevel.RAID6, 17.0, 5, 24.0),  # 17 / 0.8 / 0.95 = 22.4 TB: 3 data + 2 parity
        (RaidLevel.RAID6, 1.0, 4, 16.0),  # RAID 6 needs 4 disks
        (RaidLevel.RAID5, 1.0, 3, 16.0),
        (RaidLevel.RAID10, 17.0, 6, 24.0),
        (RaidLevel.RAID1, 5.0, 2, 8.0),
        (RaidLevel.RAID0, 17.0, 3, 24.0),
    ],
)
def test_plan_array(raid: RaidLevel, needed: float, disks: int, usable: float) -> None:
    plan = plan_array(needed, StorageOptions(raid=raid, disk_tb=8))
    assert (plan.disks, plan.usable_tb, plan.raw_tb) == (disks, usable, disks * 8)
    assert plan.usable_tb * 0.95 * 0.8 >= needed


def test_raid1_cannot_span_disks() -> None:
    with pytest.raises(SizingError, match="RAID 10"):
        plan_array(20.0, StorageOptions(raid=RaidLevel.RAID1, disk_tb=8))


def test_hot_spares_are_bought_not_used() -> None:
    plan = plan_array(17.0, StorageOptions(disk_tb=8, hot_spares=1))
    assert (plan.disks, plan.usable_tb, plan.raw_tb) == (6, 24.0, 48.0)


# --- PostgreSQL: pgtune's formulas at known points. ----------------------------------------
# Expected values are pgtune's output (le0pard/pgtune: Linux, PostgreSQL 17) for the same
# inputs, written as pgtune renders them.

PGTUNE_16GB_WEB_4CPU_SSD = {
    "max_connections": "200",
    "shared_buffers": "4GB",
    "effective_cache_size": "12GB",
    "maintenance_work_mem": "1GB",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "16MB",
    "default_statistics_target": "100",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "work_mem": "20560kB",  # (16 GB - 4 GB) / ((200 + 4) x 3)
    "huge_pages": "try",
    "jit": "off",
    "wal_compression": "lz4",
    "min_wal_size": "1GB",
    "max_wal_size": "4GB",
    "max_worker_processes": "4",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_workers": "4",
    "max_parallel_maintenance_workers": "2",
}

PGTUNE_8GB_OLTP_4CPU_HDD = {
    "max_connections": "300",
    "shared_buffers": "2GB",
    "effective_cache_size": "6GB",
    "maintenance_work_mem": "512MB",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "16MB",
    "default_statistics_target": "100",
    "random_page_cost": "4",
    "effective_io_concurrency": "2",
    "work_mem": "6898kB",  # (8 GB - 2 GB) / ((300 + 4) x 3)
    "huge_pages": "try",
    "jit": "off",
    "wal_compression": "lz4",
    "min_wal_size": "2GB",
    "max_wal_size": "8GB",
    "max_worker_processes": "4",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_workers": "4",
    "max_parallel_maintenance_workers": "2",
}


def test_pgtune_16gb_web() -> None:
    assert postgresql_settings(16 * GIB, 4, "ssd", workload="web") == PGTUNE_16GB_WEB_4CPU_SSD


def test_pgtune_8gb_oltp() -> None:
    got = postgresql_settings(8 * GIB, 4, DiskType.HDD, workload=PgWorkload.OLTP)
    assert got == PGTUNE_8GB_OLTP_4CPU_HDD
    assert list(got) == list(PGTUNE_8GB_OLTP_4CPU_HDD)  # pgtune's order


def test_pgtune_caps_and_floors() -> None:
    # pgtune's own test points: 256 GB caps maintenance_work_mem at 8 GB and sets
    # autovacuum_work_mem to 2 GB; 20 connections on 256 GB give 2796202kB of work_mem;
    # 9999 connections on 4 GB floor work_mem at 4 MB.
    big = postgresql_settings(256 * GIB, 4, "ssd", 20, workload="web")
    assert big["maintenance_work_mem"] == "8GB"
    assert big["autovacuum_work_mem"] == "2GB"
    assert big["work_mem"] == "2796202kB"
    assert postgresql_settings(4 * GIB, 4, "ssd", 9999)["work_mem"] == "4MB"
    small = postgresql_settings(4 * GIB, 2, "nvme")
    assert small["huge_pages"] == "off"  # shared_buffers 1 GB < 2 GB
    assert small["effective_io_concurrency"] == "1000"
    assert "max_worker_processes" not in small  # fewer than 4 CPUs: no parallel settings
    # Without parallel settings work_mem counts PostgreSQL's 8 default worker processes.
    assert small["work_mem"] == pg_size((4 * 2**20 - 2**20) // ((200 + 8) * 3))
    many = postgresql_settings(64 * GIB, 32, "ssd", workload="dw")
    assert many["max_parallel_workers_per_gather"] == "16"
    assert many["max_parallel_maintenance_workers"] == "4"
    assert many["autovacuum_max_workers"] == "5"
    assert many["default_statistics_target"] == "500"
    assert "jit" not in many


@FAST
@given(ram_gb=st.integers(1, 1024), cpus=st.integers(1, 128), conns=st.integers(5, 2000))
def test_pgtune_ratios_hold(ram_gb: int, cpus: int, conns: int) -> None:
    got = postgresql_settings(ram_gb * GIB, cpus, "ssd", conns, workload="web")
    kb = ram_gb * 2**20
    assert got["shared_buffers"] == pg_size(kb // 4)
    assert got["effective_cache_size"] == pg_size(kb * 3 // 4)
    assert got["maintenance_work_mem"] == pg_size(min(kb // 16, 8 * 2**20))
    workers = cpus if cpus >= 4 else 8
    work_mem = max((kb - kb // 4) // ((conns + workers) * 3), 4096)
    assert got["work_mem"] == pg_size(work_mem)


def test_pg_size_units() -> None:
    assert [pg_size(v) for v in (4 * 2**20, 512 * 1024, 20560, 32)] == [
        "4GB",
        "512MB",
        "20560kB",
        "32kB",
    ]


def test_model_postgresql_follows_ram_override() -> None:
    result = size(SizingInputs(beds=200, ram_gb=16, cpus=4, pg_workload=PgWorkload.WEB))
    assert result.database_host.ram_gb == 16
    expected = postgresql_settings(16 * GIB, 4, "ssd", 100, workload="web")
    assert result.postgresql == expected


def test_sizing_imports_without_matplotlib_or_typer() -> None:
    code = (
        "import sys, pacs_libre.sizing as s; "
        "s.postgresql_settings(8 * s.GIB, 4); "
        "bad = [m for m in ('matplotlib', 'typer', 'rich') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Cost and film. -------------------------------------------------------------------------


def test_seed_hospital_fits_the_envelope_and_saves_film() -> None:
    result = size(SizingInputs(beds=200))
    assert result.cost.within_budget
    assert result.cost.total_eur < 50_000
    assert result.film_savings_eur_per_year == pytest.approx(50 * 1.20 * 240)  # ~1200 EUR/month
    assert result.payback_years == pytest.approx(result.cost.total_eur / 14_400)


def test_over_budget_is_reported() -> None:
    result = size(SizingInputs(beds=2000, years=20))
    assert not result.cost.within_budget
    assert any("envelope" in warning for warning in result.warnings)


# --- The group_vars contract. ---------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        SizingInputs(beds=200),
        SizingInputs(beds=600, years=10, ram_gb=64, cpus=16),
        SizingInputs(beds=None, studies={Modality.CT: 9000, Modality.MR: 3000}),
    ],
    ids=["seed", "big", "explicit-counts"],
)
def test_group_vars_keep_their_contract(inputs: SizingInputs) -> None:
    """Every sizing variable is written, in the contract's order, with the contract's type."""
    written = group_vars(size(inputs))
    assert [name for name, _, _ in written] == list(SIZING_GROUP_VARS)
    python_types = {"int": (int,), "float": (int, float), "str": (str,), "dict": (dict,)}
    for name, value, comment in written:
        kind, declared = SIZING_GROUP_VARS[name]
        assert comment == declared
        if value is None:
            assert name == "pacs_sizing_beds"  # explicit counts: no beds
            continue
        assert isinstance(value, python_types[kind]) and not isinstance(value, bool), name
