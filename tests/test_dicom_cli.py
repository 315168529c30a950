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


def _two_site_lab(tmp_path: Path) -> Path:
    inv = tmp_path / "lab"
    (inv / "host_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    pacs1:\n    relay1:\n")
    (inv / "host_vars/pacs1.yml").write_text(
        "lab_endpoints:\n  dicom: {host: 127.0.0.1, port: 4242, aet: MAIN,"
        " test_calling_aets: [MODALITY]}\n"
    )
    (inv / "host_vars/relay1.yml").write_text(
        "lab_network: lab-peripheral\nlab_site: peripheral\n"
        "lab_endpoints:\n  dicom_peripheral: {host: 127.0.0.1, port: 4252, aet: RELAY,"
        " test_calling_aets: [PERIMODALITY]}\n"
    )
    return inv


def test_the_peripheral_site_sends_to_its_relay(tmp_path):
    inv = _two_site_lab(tmp_path)
    main_site = resolve_target(None, None, None, inv)
    peripheral = resolve_target(None, None, None, inv, "peripheral")
    assert (main_site.port, main_site.aet, main_site.calling_aet) == (4242, "MAIN", "MODALITY")
    assert (peripheral.port, peripheral.aet, peripheral.calling_aet) == (
        4252,
        "RELAY",
        "PERIMODALITY",
    )


def test_a_site_the_lab_does_not_have_is_named_with_its_key(tmp_path):
    inv = _two_site_lab(tmp_path)
    with pytest.raises(UserError, match=r"site 'bourg'.*dicom_bourg"):
        resolve_target(None, None, None, inv, "bourg")
