"""pacsctl dicom: bad input exits 2 with one line; the commands work against dcmtk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dcmtk_servers import storescp
from pacs_libre.cli import main
from pacs_libre.dicom.target import parse_hostport, resolve_target
from pacs_libre.dicom_cli import parse_date
from pacs_libre.errors import UserError

NO_LAB = ["--inventory", "/nonexistent/inventory"]
NO_LAB_PATH = Path("/nonexistent/inventory")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["dicom", "echo", "--target", "nohost", "--aet", "A", "--calling-aet", "B"], "--target"),
        (["dicom", "echo", "--target", "h:99999", "--aet", "A", "--calling-aet", "B"], "--target"),
        (["dicom", "echo", *NO_LAB], "--target"),
        (["dicom", "echo", "--target", "127.0.0.1:4242", *NO_LAB], "--aet"),
        (["dicom", "echo", "--target", "127.0.0.1:4242", "--aet", "A", *NO_LAB], "--calling-aet"),
        (["dicom", "find", "--date", "2024-13", "--target", "h:1"], "--date"),
        (["dicom", "find", "--format", "xml"], "--format"),
        (["dicom", "find", "--level", "SERIES", "--target", "h:1"], "--study-uid"),
        (["dicom", "synth", "out", "--ct", "-1"], "--ct"),
        (["dicom", "send", "/nonexistent/file.dcm", "--target", "h:1"], "does not exist"),
        (["bench", "ingest", "--associations", "0"], "--associations"),
        (["bench", "ingest", "--debian", "11"], "Debian"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pacsctl: error:")
    assert "\n" not in err
    assert needle in err


def test_parsers():
    assert parse_hostport("127.0.0.1:4242") == ("127.0.0.1", 4242)
    assert parse_hostport("[::1]:104") == ("::1", 104)
    assert parse_date("2024-03-05") == "20240305"
    assert parse_date("20240101-") == "20240101-"
    assert parse_date("20240101-20241231") == "20240101-20241231"
    with pytest.raises(UserError):
        parse_date("-")


def test_explicit_options_need_no_lab():
    target = resolve_target("127.0.0.1:11112", "ARCHIVE", "ME", NO_LAB_PATH)
    assert (target.host, target.port, target.aet, target.calling_aet) == (
        "127.0.0.1",
        11112,
        "ARCHIVE",
        "ME",
    )


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk's storescp")
def test_synth_then_send_then_echo(tmp_path, capsys):
    args = ["dicom", "synth", str(tmp_path / "s"), "--ct", "2", "--mr", "1", "--no-cr"]
    assert main([*args, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["instances"] == 3 and summary["patient_name"] == "DUPRÉ^Hélène"
    inbox = tmp_path / "in"
    inbox.mkdir()
    with storescp(inbox, "SCP") as port:
        where = ["--target", f"127.0.0.1:{port}", "--aet", "SCP", "--calling-aet", "ME"]
        assert main(["dicom", "send", str(tmp_path / "s"), *where, "--format", "json"]) == 0
        sent = json.loads(capsys.readouterr().out)
        assert sent["sent"] == 3 and sent["failed"] == 0
        assert len(list(inbox.iterdir())) == 3
        assert main(["dicom", "echo", *where]) == 0
        assert "success" in capsys.readouterr().out
