"""net.send/echo/find against real dcmtk servers: storescp (storage) and dcmqrscp (Q/R)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

import dcmtk_servers
from pacs_libre.dicom import net, synth
from pacs_libre.errors import UserError

pytestmark = pytest.mark.skipif(
    shutil.which("storescp") is None or shutil.which("dcmqrscp") is None,
    reason="needs dcmtk (storescp, dcmqrscp, storescu): apt-get install dcmtk",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("netstudy")
    return synth.make_study(out, ct_images=3, mr_images=2, cr_size=(64, 48), seed=1)


@pytest.fixture
def storescp(tmp_path):
    """A real dcmtk storage SCP on a free loopback port, writing into tmp_path/in."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    with dcmtk_servers.storescp(inbox) as port:
        yield port, inbox


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory, study):
    """dcmtk's dcmqrscp with the study stored in it (by dcmtk's storescu)."""
    base = tmp_path_factory.mktemp("qr")
    port = dcmtk_servers.free_port()
    (base / "db").mkdir()
    (base / "locked").mkdir()
    (base / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nknown = (KNOWNSCU, 127.0.0.1, 11999)\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        "AETable BEGIN\n"
        f"QRSCP {base / 'db'} RW (100, 200mb) ANY\n"
        f"LOCKED {base / 'locked'} RW (10, 10mb) known\n"
        "AETable END\n"
    )
    with dcmtk_servers.server(["dcmqrscp", "--config", str(base / "dcmqrscp.cfg")], port):
        files = [str(p) for p in study.paths]
        subprocess.run(
            ["storescu", "--aetitle", "LOADER", "--call", "QRSCP", "127.0.0.1", str(port), *files],
            check=True,
            capture_output=True,
        )
        yield port


def test_echo_answers(storescp):
    port, _ = storescp
    assert net.echo("127.0.0.1", port, "STORESCP", "PACSCTL") > 0


def test_send_is_byte_identical(storescp, study):
    port, inbox = storescp
    report = net.send([study.out_dir], "127.0.0.1", port, "STORESCP", "PACSCTL")
    assert report.sent == len(study.instances) and not report.failed
    assert report.bytes_sent == study.total_bytes
    received = {}
    for path in inbox.iterdir():
        ds = dcmread(path)
        received[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    expected = {i.sop_instance_uid: i.pixel_sha256 for i in study.instances}
    assert received == expected


def test_send_reports_a_broken_file_per_instance(storescp, study, tmp_path):
    port, _ = storescp
    bad = synth.make_wrong_transfer_syntax(study.instances[1].path, tmp_path / "w.dcm")
    good = study.instances[2].path
    report = net.send([good, bad], "127.0.0.1", port, "STORESCP", "PACSCTL")
    assert report.sent >= 1
    statuses = {r.path: r.ok for r in report.results}
    assert statuses[good] is True


def test_nothing_listening_is_one_clear_error():
    port = dcmtk_servers.free_port()
    with pytest.raises(UserError, match=f"nothing answers at 127.0.0.1:{port}"):
        net.echo("127.0.0.1", port, "ARCHIVE", "PACSCTL", timeout=3)


def test_bad_aet_is_refused_before_connecting():
    with pytest.raises(UserError, match="not valid"):
        net.echo("127.0.0.1", 1, "A" * 17, "PACSCTL")


def test_find_by_accented_name_accession_and_date(qrscp, study):
    found = net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", PatientName="DUPRÉ*")
    assert [str(d.StudyInstanceUID) for d in found] == [study.study_instance_uid]
    assert str(found[0].PatientName) == "DUPRÉ^Hélène"
    exact = net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", PatientName="DUPRÉ^Hélène")
    assert len(exact) == 1
    assert net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", PatientName="LEFÈVRE*") == []
    by_accession = net.find(
        "127.0.0.1", qrscp, "QRSCP", "PACSCTL", AccessionNumber=study.accession_number
    )
    assert len(by_accession) == 1
    day = study.study_date
    in_range = net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", StudyDate=f"{day}-{day}")
    assert len(in_range) == 1
    before = net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", StudyDate="19000101-19000102")
    assert before == []


def test_find_series_and_images(qrscp, study):
    series = net.find(
        "127.0.0.1",
        qrscp,
        "QRSCP",
        "PACSCTL",
        level="SERIES",
        StudyInstanceUID=study.study_instance_uid,
    )
    assert sorted(str(d.Modality) for d in series) == ["CR", "CT", "MR"]
    images = net.find(
        "127.0.0.1",
        qrscp,
        "QRSCP",
        "PACSCTL",
        level="IMAGE",
        StudyInstanceUID=study.study_instance_uid,
    )
    assert {str(d.SOPInstanceUID) for d in images} == set(study.by_sop_instance_uid())


def test_undeclared_calling_aet_is_named_in_the_error(qrscp):
    with pytest.raises(UserError) as info:
        net.find("127.0.0.1", qrscp, "LOCKED", "STRANGER", PatientName="*")
    message = str(info.value)
    assert "STRANGER" in message and "refused the association" in message
    assert "declare" in message and "\n" not in message


def test_unknown_query_key_is_a_user_error(qrscp):
    with pytest.raises(UserError, match="not a DICOM keyword"):
        net.find("127.0.0.1", qrscp, "QRSCP", "PACSCTL", NotAKeyword="x")


def test_expand_paths_skips_the_manifest(study):
    paths = net.expand_paths([study.out_dir])
    assert len(paths) == len(study.instances)
    assert all(p.suffix == ".dcm" for p in paths)
    with pytest.raises(UserError, match="does not exist"):
        net.expand_paths([Path("/nonexistent/x.dcm")])
