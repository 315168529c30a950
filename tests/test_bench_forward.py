"""pacsctl bench forward: its arithmetic and its refusals (the run itself needs a territory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_libre import bench_forward
from pacs_libre.cli import main
from pacs_libre.errors import UserError


def test_rates_are_of_the_median_run_and_the_ratio_is_against_raw() -> None:
    raw = bench_forward.Transfer("raw dcmtk", 300, 150_000_000, [5.0, 4.0, 6.0])
    forwarded = bench_forward.Transfer("forwarding", 300, 150_000_000, [8.0, 6.0])
    assert raw.median_s == 5.0
    assert (raw.images_per_s, raw.mb_per_s) == (60.0, 30.0)
    row = forwarded.as_dict(raw)
    assert row["median_s"] == 7.0
    assert row["of_raw"] == round(5.0 / 7.0, 3)
    assert raw.as_dict(raw)["of_raw"] == 1.0


def test_a_transfer_without_runs_has_no_rate() -> None:
    empty = bench_forward.Transfer("forwarding", 300, 1)
    assert (empty.images_per_s, empty.mb_per_s, empty.as_dict(None)["of_raw"]) == (0.0, 0.0, None)


def test_a_missing_ssh_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no ssh config.*make lab.*--ssh-config"):
        bench_forward.Remote(tmp_path / "config")


def test_too_few_images_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "forward", "--images", "5"]) == 2
    assert "--images" in capsys.readouterr().err
