"""``pacsctl size``: formats, group_vars, plot, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pacs_libre.cli import main

PACSCTL = Path(sys.executable).parent / "pacsctl"


def size_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["size", *args, "--format", "json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_done_criterion_200_beds_one_year(capsys: pytest.CaptureFixture[str]) -> None:
    data = size_json(capsys, "--beds", "200", "--years", "1")
    assert data["images_tb_per_year"] == pytest.approx(2.5, rel=0.02)
    assert data["database_gb_per_year"] == pytest.approx(20, rel=0.05)
    for key in ("images_tb_total", "database_gb_total", "raw_disk_tb", "backup_tb"):
        assert isinstance(data[key], float | int)
        assert data[key] > 0
    postgresql = data["postgresql"]
    assert isinstance(postgresql, dict)
    assert postgresql["shared_buffers"].endswith("GB")
    assert all(isinstance(value, str) for value in postgresql.values())


def test_doubling_beds_doubles_both(capsys: pytest.CaptureFixture[str]) -> None:
    one = size_json(capsys, "--beds", "200", "--years", "1")
    two = size_json(capsys, "--beds", "400", "--years", "1")
    for key in ("images_tb_per_year", "database_gb_per_year"):
        assert two[key] == pytest.approx(2 * one[key], rel=1e-4)  # type: ignore[operator]


def test_yaml_matches_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = size_json(capsys, "--beds", "120", "--years", "3")
    assert main(["size", "--beds", "120", "--years", "3", "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == data


def test_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["size", "--beds", "200", "--disk", "nvme", "--ram-gb", "16"]) == 0
    out = capsys.readouterr().out
    for text in ("CT", "Year by year", "Storage to buy", "shared_buffers", "4GB", "envelope"):
        assert text in out
    assert "Traceback" not in out


def test_options_reach_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    data = size_json(
        capsys,
        "--beds", "200",
        "--years", "10",
        "--retention", "4",
        "--growth", "0",
        "--compression", "2",
        "--studies", "XA=0",
        "--study-mb", "CT=500",
        "--raid", "10",
        "--disk-tb", "4",
        "--db-disk", "hdd",
        "--pg-workload", "web",
        "--price", "setup_eur=0",
        "--films-per-day", "10",
    )  # fmt: skip
    # CT doubles (+1.5 TB), XA goes (-0.09 TB), then everything is halved by compression.
    assert data["images_tb_per_year"] == pytest.approx((2.498 + 1.5 - 0.09) / 2, rel=1e-4)
    assert data["images_tb_total"] == pytest.approx(4 * data["images_tb_per_year"], rel=1e-4)  # type: ignore[operator]
    archive = data["archive"]
    assert isinstance(archive, dict)
    assert archive["raid"] == "10"
    assert data["postgresql"]["random_page_cost"] == "4"  # type: ignore[index]
    assert data["postgresql"]["max_wal_size"] == "4GB"  # type: ignore[index]
    assert data["cost"]["items_eur"]["setup"] == 0  # type: ignore[index]
    assert data["film_savings_eur_per_year"] == pytest.approx(10 * 1.2 * 240)


def test_write_group_vars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "group_vars" / "all" / "sizing.yml"
    assert main(["size", "--beds", "200", "--years", "5", "--write-group-vars", str(target)]) == 0
    capsys.readouterr()
    text = target.read_text()
    assert text.startswith("---\n")
    assert f"pacsctl size --beds 200 --years 5 --write-group-vars {target}" in text
    data = yaml.safe_load(text)
    assert all(key.startswith(("pacs_sizing_", "postgresql_sizing_")) for key in data)
    assert data["pacs_sizing_images_tb_per_year"] == pytest.approx(2.5, rel=0.02)
    assert data["pacs_sizing_archive_storage_tb"] > data["pacs_sizing_images_tb_total"]
    assert data["postgresql_sizing_settings"]["max_connections"] == "100"
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith(("#", " ", "---")):
            assert lines[number - 1].startswith("# "), f"no comment above {line!r}"


def test_group_vars_command_reproduces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sizing.yml"
    args = ["size", "--beds", "150", "--studies", "MG=0", "--disk", "ssd"]
    assert main([*args, "--format", "json", "--write-group-vars", str(target)]) == 0
    first = target.read_text()
    command = []
    for line in first.splitlines()[2:]:
        command.append(line.removeprefix("#   ").rstrip(" \\"))
        if not line.endswith("\\"):
            break
    assert command[0].startswith("pacsctl size --beds 150 --studies MG=0")
    target.unlink()
    rerun = " ".join(command).split()[1:]
    assert main(rerun) == 0
    assert target.read_text() == first


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / f"growth{suffix}"
    assert main(["size", "--beds", "200", "--years", "8", "--plot", str(target)]) == 0
    capsys.readouterr()
    head = target.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in target.read_bytes()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--beds", "-5"], "--beds"),
        (["--beds", "0"], "--beds"),
        (["--beds", "200", "--years", "0"], "--years"),
        (["--beds", "200", "--ram-gb", "100000"], "--ram-gb"),
        (["--beds", "200", "--ram-gb", "0"], "--ram-gb"),
        (["--beds", "200", "--growth", "5"], "--growth"),
        (["--beds", "200", "--max-fill", "1.5"], "--max-fill"),
        (["--beds", "200", "--plot", "growth.pdf"], "--plot"),
        (["--beds", "200", "--studies", "XX=3"], "--studies"),
        (["--beds", "200", "--raid", "1"], "RAID 1"),
        ([], "beds"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["size", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("pacsctl: error: ")
    assert needle in err


@pytest.mark.parametrize(
    "args",
    [
        ["--beds", "-5"],
        ["--beds", "200", "--years", "0"],
        ["--beds", "200", "--ram-gb", "100000"],
    ],
)
def test_bad_input_through_the_installed_command(args: list[str]) -> None:
    proc = subprocess.run(
        [str(PACSCTL), "size", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_wrong_type_through_the_installed_command() -> None:
    proc = subprocess.run(
        [str(PACSCTL), "size", "--beds", "many"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert "--beds" in proc.stderr
