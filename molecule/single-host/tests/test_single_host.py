"""The whole stack on one host, driven by real clients from this machine.

For each host (Debian 13 and Debian 12): a realistic study (pacs_libre.dicom.synth:
CT of 300 512x512 16-bit images, MR, CR, a patient name with French accents in
ISO_IR 192) is sent with dcmtk's storescu as the declared modality; then

- C-FIND (findscu) finds it by patient name with its accents, by accession
  number and by date;
- C-MOVE (movescu) to the declared workstation (a storescp playing OsiriX)
  delivers every instance;
- DICOMweb: QIDO-RS finds the study and WADO-RS returns pixel data identical,
  byte for byte, to what was sent (dicomweb-client);
- the routing service forwards the study (it holds a CR series) to its node;
- an undeclared AE title is refused; a truncated file and a file with a wrong
  transfer syntax are refused, and the archive stays up;
- DICOM TLS (stunnel) answers the node declared with tls, which the plain port
  refuses.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pacs_testlib import (
    ExecTunnel,
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_credentials,
    run_check_mode,
    storescp,
)
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from pacs_libre.dicom.synth import (
    StudyManifest,
    make_study,
    make_truncated,
    make_wrong_transfer_syntax,
)

HOSTS = {"pacs-mol-single-d13": "MOLPACS13", "pacs-mol-single-d12": "MOLPACS12"}
MODALITY, WORKSTATION, ROUTED, TLS_NODE = "MOLMODALITY", "MOLOSIRIX", "MOLROUTED", "MOLTLS"
WORKSTATION_PORT, ROUTED_PORT = 11190, 11191

testinfra_hosts = [host_spec(name) for name in HOSTS]


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    """One study, made once for both hosts (the same bytes each time: seed 0)."""
    return make_study(tmp_path_factory.mktemp("study"), ct_images=300, mr_images=40, cr=True)


def received(folder: Path) -> dict[str, str]:
    """SOPInstanceUID -> SHA-256 of PixelData, for every file storescp wrote."""
    out = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    return out


def wait_for(folder: Path, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(folder.iterdir())) >= count:
            break
        time.sleep(1)
    time.sleep(1)  # the last file is complete
    return len(list(folder.iterdir()))


class Archive:
    """One host of the scenario, as the clients on this machine see it."""

    def __init__(self, name: str) -> None:
        self.name, self.aet = name, HOSTS[name]
        self.host = lab_host(name)
        self.address = address_of(self.host)

    def dcmtk(
        self,
        tool: str,
        *args: str,
        calling: str = MODALITY,
        port: int = 4242,
        files: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        """A dcmtk tool from this machine to the archive, as ``calling``."""
        return subprocess.run(
            [
                dcmtk(tool),
                "-aet",
                calling,
                "-aec",
                self.aet,
                *args,
                self.address,
                str(port),
                *files,
            ],
            capture_output=True,
            check=False,
        )

    def find(self, *keys: str, level: str = "STUDY") -> list[pydicom.Dataset]:
        """C-FIND (findscu, study root); the answers as data sets."""
        out = Path(tempfile.mkdtemp(prefix="pacs-find-"))
        try:
            result = self.dcmtk(
                "findscu",
                "-S",
                "-X",
                "-od",
                str(out),
                "-k",
                f"QueryRetrieveLevel={level}",
                "-k",
                "SpecificCharacterSet=ISO_IR 192",
                "-k",
                "StudyInstanceUID",
                "-k",
                "PatientName",
                "-k",
                "NumberOfStudyRelatedInstances",
                *[arg for key in keys for arg in ("-k", key)],
            )
            assert result.returncode == 0, result.stderr.decode(errors="replace")
            return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        finally:
            shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module", params=list(HOSTS))
def archive(request: pytest.FixtureRequest, study: StudyManifest) -> Iterator[Archive]:
    """A host that holds the study: sent once with storescu, as the modality."""
    target = Archive(request.param)
    with storescp(ROUTED, ROUTED_PORT) as routed:
        target.routed = routed  # type: ignore[attr-defined]
        result = target.dcmtk(
            "storescu",
            "+sd",
            "+r",
            files=tuple(str(study.out_dir / m) for m in ("CT", "MR", "CR")),
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        # The routing rule sends the study (it holds a CR series) once it is stable.
        target.routed_count = wait_for(routed, len(study.instances), timeout=120)  # type: ignore[attr-defined]
        target.routed_files = received(routed)  # type: ignore[attr-defined]
    yield target


def test_cfind_by_patient_name_with_accents(archive: Archive, study: StudyManifest) -> None:
    assert study.patient_name != study.patient_name.encode("ascii", "ignore").decode()
    answers = archive.find(f"PatientName={study.patient_name}")
    assert [str(a.StudyInstanceUID) for a in answers] == [study.study_instance_uid]
    assert str(answers[0].PatientName) == study.patient_name
    assert int(answers[0].NumberOfStudyRelatedInstances) == len(study.instances)


def test_cfind_by_accession_number(archive: Archive, study: StudyManifest) -> None:
    answers = archive.find(f"AccessionNumber={study.accession_number}")
    assert [str(a.StudyInstanceUID) for a in answers] == [study.study_instance_uid]


def test_cfind_by_date(archive: Archive, study: StudyManifest) -> None:
    answers = archive.find(f"StudyDate={study.study_date}")
    assert study.study_instance_uid in [str(a.StudyInstanceUID) for a in answers]
    assert archive.find("StudyDate=19000101-19000102") == []


def test_cmove_to_the_workstation_delivers_every_instance(
    archive: Archive, study: StudyManifest
) -> None:
    with storescp(WORKSTATION, WORKSTATION_PORT) as folder:
        result = archive.dcmtk(
            "movescu",
            "-S",
            "-aem",
            WORKSTATION,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study.study_instance_uid}",
            calling=WORKSTATION,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        wait_for(folder, len(study.instances), timeout=60)
        got = received(folder)
    sent = {i.sop_instance_uid: i.pixel_sha256 for i in study.instances}
    assert got == sent


def test_routing_forwards_the_cr_study(archive: Archive, study: StudyManifest) -> None:
    sent = {i.sop_instance_uid: i.pixel_sha256 for i in study.instances}
    assert archive.routed_files == sent  # type: ignore[attr-defined]
    queue = archive.host.check_output(
        "python3 -c \"import sqlite3;print(sqlite3.connect('/var/lib/orthanc/pacs-libre/"
        "routing.sqlite').execute('select state, rule from jobs').fetchall())\""
    )
    assert "('done', 'cr-to-reading')" in queue


def test_dicomweb_qido_and_wado_return_identical_pixels(
    archive: Archive, study: StudyManifest
) -> None:
    user, password = orthanc_credentials(archive.host)
    with ExecTunnel(archive.name, 8042) as tunnel:
        client = DICOMwebClient(f"{tunnel.url}/dicom-web")
        client._session.auth = (user, password)
        found = client.search_for_studies(
            search_filters={"AccessionNumber": study.accession_number}
        )
        assert [s["0020000D"]["Value"][0] for s in found] == [study.study_instance_uid]
        returned = {}
        for series_uid, records in study.series().items():
            for ds in client.retrieve_series(study.study_instance_uid, series_uid):
                returned[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
            assert len(records) > 0
    assert returned == {i.sop_instance_uid: i.pixel_sha256 for i in study.instances}


def test_the_index_is_reached_on_the_local_socket(archive: Archive) -> None:
    # The database is on this host: Orthanc uses PostgreSQL's Unix socket (no
    # client address), not TCP (roles/orthanc/molecule covers TCP with TLS).
    out = archive.host.check_output(
        "runuser -u postgres -- psql -Atc "
        "\"SELECT count(*), count(client_addr) FROM pg_stat_activity WHERE usename = 'orthanc'\""
    )
    connections, over_tcp = map(int, out.split("|"))
    assert connections >= 1 and over_tcp == 0, out


def test_an_undeclared_ae_title_is_refused(archive: Archive) -> None:
    result = archive.dcmtk("echoscu", calling="INTRUDER")
    assert result.returncode != 0
    assert b"Calling AE Title Not Recognized" in result.stderr
    assert archive.dcmtk("echoscu").returncode == 0


def send_raw(archive: Archive, path: Path) -> str:
    """C-STORE a file's data set bytes exactly as they are, under the transfer syntax
    that its meta header declares: "stored", "refused" (a failure status) or
    "aborted" (the archive dropped the association, or gave no answer within
    pynetdicom's DIMSE timeout).

    dcmtk and pynetdicom's high-level send both parse the file first and refuse to
    send a broken one; the archive must be the one that judges it, so the request
    is built from pynetdicom's DIMSE primitives.
    """
    raw = path.read_bytes()
    group_length = struct.unpack("<I", raw[140:144])[0]  # (0002,0000), after the preamble
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    client = AE(ae_title=MODALITY)
    # Orthanc 1.10 and 1.12 alike give a broken object no answer at all (every
    # case waited out pynetdicom's 30 s default): 10 s is plenty for an answer
    # that comes, and the outcome is the same ("aborted" is not "stored").
    client.dimse_timeout = 10
    client.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = client.associate(archive.address, 4242, ae_title=archive.aet)
    assert assoc.is_established
    response = None
    try:
        if not assoc.accepted_contexts:
            return "refused"  # the transfer syntax itself
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
        request.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
        request.Priority = 2
        request.DataSet = io.BytesIO(raw[144 + group_length :])
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _context, response = assoc.dimse.get_msg(block=True)
        if assoc.is_aborted or response is None:
            return "aborted"
        return "stored" if response.Status == 0x0000 else "refused"
    finally:
        # Hang up as a modality does. An association left open after a broken
        # object holds one of the archive's DICOM threads until its
        # DicomScpTimeout (30 s): Debian 12's Orthanc then let the next
        # association wait past dcmtk's own 30 s (docs/testing.md, "Flakes").
        if assoc.is_established:
            if response is None:
                assoc.abort()
            else:
                assoc.release()


@pytest.mark.parametrize("kind", ["truncated", "wrong-transfer-syntax"])
def test_a_malformed_object_is_refused_and_the_archive_stays_up(
    archive: Archive, study: StudyManifest, kind: str, tmp_path: Path
) -> None:
    # A new image (its own SOP Instance UID: a copy of a stored one would be
    # answered "already stored"), then broken.
    fresh = pydicom.dcmread(study.instances[0].path)
    fresh.SOPInstanceUID = fresh.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    fresh.save_as(tmp_path / "fresh.dcm", enforce_file_format=True)
    bad = (
        make_truncated(tmp_path / "fresh.dcm", tmp_path / "bad.dcm")
        if kind == "truncated"
        else make_wrong_transfer_syntax(tmp_path / "fresh.dcm", tmp_path / "bad.dcm")
    )
    assert send_raw(archive, bad) != "stored", f"{kind} was stored"
    answers = archive.find(f"SOPInstanceUID={fresh.SOPInstanceUID}", level="IMAGE")
    assert answers == [], f"{kind} is in the archive"
    # The archive stays up: it answers, it has not restarted, the study is whole.
    assert archive.dcmtk("echoscu").returncode == 0
    assert archive.host.check_output("systemctl show -p NRestarts --value orthanc") == "0"
    (answer,) = archive.find(f"StudyInstanceUID={study.study_instance_uid}")
    assert int(answer.NumberOfStudyRelatedInstances) == len(study.instances)


def test_dicom_tls_answers_the_tls_node_only_through_tls(archive: Archive) -> None:
    # The client trusts the deployment's CA (on the controller, beside the inventory) and
    # checks the archive's certificate with it: dcmtk verifies the peer by default.
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"])
    ca = (inventory if inventory.is_dir() else inventory.parent) / "pki" / "ca.crt"
    over_tls = archive.dcmtk("echoscu", "+tla", "+cf", str(ca), calling=TLS_NODE, port=2762)
    assert over_tls.returncode == 0, over_tls.stderr.decode(errors="replace")
    # The same AE title on the plain port comes from the wrong address: refused.
    assert archive.dcmtk("echoscu", calling=TLS_NODE).returncode != 0


def test_check_mode_on_converged_hosts_reports_no_change() -> None:
    recap, changed = run_check_mode()
    for name in HOSTS:
        assert recap.get(name) == 0, changed
