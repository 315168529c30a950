"""The ingest benchmark's harness on a tiny run against dcmtk's storescp (no timing thresholds)."""

from __future__ import annotations

import shutil

import pytest
from pydicom import dcmread

from dcmtk_servers import storescp
from pacs_libre import bench


def test_pool_is_cached_and_runs_get_fresh_uids(tmp_path):
    pool = bench.ct_pool(3, tmp_path, size=32)
    stamp = [p.stat().st_mtime_ns for p in pool]
    assert [p.stat().st_mtime_ns for p in bench.ct_pool(3, tmp_path, size=32)] == stamp
    first = bench.prepare_run(pool, tmp_path / "r1", run_id="2000000000000001")
    second = bench.prepare_run(pool, tmp_path / "r2", run_id="3000000000000002")
    a, b, orig = dcmread(first[0]), dcmread(second[0]), dcmread(pool[0])
    assert a.SOPInstanceUID != b.SOPInstanceUID != orig.SOPInstanceUID
    assert a.SOPInstanceUID == a.file_meta.MediaStorageSOPInstanceUID
    assert "2000000000000001" in a.StudyInstanceUID
    assert a.PixelData == orig.PixelData and (a.Rows, a.Columns) == (32, 32)
    assert first[0].stat().st_size == pool[0].stat().st_size
    with pytest.raises(ValueError, match="16 digits"):
        bench.prepare_run(pool, tmp_path / "r3", run_id="12")


def test_new_tokens_are_valid_uid_components():
    token = bench.new_token()
    assert len(token) == 16 and token.isdigit() and token[0] != "0"


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk's storescp")
@pytest.mark.parametrize("sender", bench.SENDERS)
def test_tiny_ingest_against_storescp(tmp_path, sender):
    inbox = tmp_path / "in"
    inbox.mkdir()
    pool = bench.ct_pool(20, tmp_path / "cache", size=64)
    ticks: list[int] = []
    with (
        storescp(inbox, "SINK", "--fork") as port,
        bench.run_files(pool, tmp_path / "cache") as files,
    ):
        result = bench.run_ingest(
            files, "127.0.0.1", port, "SINK", "PACSBENCH", associations=2,
            progress=ticks.append, sender=sender,
        )  # fmt: skip
    assert not list((tmp_path / "cache" / "runs").iterdir())  # run copies removed
    assert (result.sent, result.failed, result.associations) == (20, 0, 2)
    assert sum(ticks) == 20
    assert result.seconds > 0 and result.images_per_s > 0 and result.mb_per_s > 0
    assert result.bytes == sum(p.stat().st_size for p in pool)
    assert len(list(inbox.iterdir())) == 20
    data = result.as_dict()
    assert data["images_per_s"] > 0 and data["errors"] == []


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk's storescp")
@pytest.mark.parametrize("sender", bench.SENDERS)
def test_an_archive_that_refuses_everything_is_an_error_not_a_rate(tmp_path, sender):
    pool = bench.ct_pool(4, tmp_path / "cache", size=32)
    with (
        storescp(tmp_path, "SINK", "--fork", "--refuse") as port,
        bench.run_files(pool, tmp_path / "cache") as files,
        pytest.raises(bench.UserError, match="no instance was stored"),
    ):
        bench.run_ingest(
            files, "127.0.0.1", port, "SINK", "PACSBENCH", associations=2, sender=sender
        )
