"""The archive's search tuning is in force, and a re-index keeps every answer right.

- orthanc.json says what roles/orthanc says (StorageAccessOnFind; ExtraMainDicomTags on
  Debian 13, which Orthanc 1.10 on Debian 12 lacks), and the background re-index that
  the role started after converge has gone through every study;
- the index pacs_libre_dicomidentifiers_tag_value exists in the archive's database and
  the planner uses it for a range of study dates;
- a study stored, then re-indexed (``/studies/{id}/reconstruct``, what
  pacs-orthanc-reindex does to every study after a change of ExtraMainDicomTags), is
  still found by C-FIND
  and QIDO-RS with every returned tag equal to what the modality sent, accents in
  Latin-1 (ISO_IR 100) included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from base64 import b64encode
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pacs_testlib import (
    ExecTunnel,
    address_of,
    dcmtk,
    host_spec,
    lab_host,
    orthanc_config,
    orthanc_credentials,
)

from pacs_libre.dicom import corpus

HOSTS = {"pacs-mol-single-d13": "MOLPACS13", "pacs-mol-single-d12": "MOLPACS12"}
MODALITY, WORKSTATION = "MOLMODALITY", "MOLOSIRIX"
INDEX = "pacs_libre_dicomidentifiers_tag_value"

testinfra_hosts = [host_spec(name) for name in HOSTS]


def is_d13(name: str) -> bool:
    return name.endswith("d13")


def psql(host: Any, query: str) -> str:
    return str(
        host.check_output(f"runuser -u postgres -- psql -d orthanc -Atc {json.dumps(query)}")
    )


@pytest.mark.parametrize("name", list(HOSTS))
def test_the_search_settings_are_in_force(name: str) -> None:
    config = orthanc_config(lab_host(name))
    assert config["StorageAccessOnFind"] == "Answers"
    if is_d13(name):
        assert {"InstitutionName", "TimezoneOffsetFromUTC"} <= set(
            config["ExtraMainDicomTags"]["Study"]
        )
    else:  # Orthanc 1.10 has no such setting
        assert "ExtraMainDicomTags" not in config


@pytest.mark.parametrize("name", list(HOSTS))
def test_the_background_reindex_went_through_every_study(name: str) -> None:
    host = lab_host(name)
    if not is_d13(name):
        assert not host.file("/usr/local/sbin/pacs-orthanc-reindex").exists
        return
    deadline = time.monotonic() + 120  # started in the background by the converge
    while True:
        status = json.loads(host.check_output("/usr/local/sbin/pacs-orthanc-reindex --status"))
        if status["done"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status["done"] is True and status["offset"] >= 0, status
    assert status["signature"] and status["offset"] <= status["total"], status


@pytest.mark.parametrize("name", list(HOSTS))
def test_the_identifier_index_exists_and_serves_date_ranges(name: str) -> None:
    host = lab_host(name)
    definition = psql(host, f"SELECT indexdef FROM pg_indexes WHERE indexname = '{INDEX}'")  # noqa: S608
    assert "(taggroup, tagelement, value)" in definition, definition
    assert (
        psql(host, f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{INDEX}'::regclass")  # noqa: S608
        == "t"
    )
    # A tiny database would rather scan: forbid that, and see which index the plan takes.
    plan = psql(
        host,
        "SET enable_seqscan = off; EXPLAIN SELECT id FROM dicomidentifiers "
        "WHERE taggroup = 8 AND tagelement = 32 AND value >= '20240101'",
    )
    assert INDEX in plan, plan


def get_json(url: str, user: str, password: str, body: Any = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (the tunnel's http://127.0.0.1)
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode(),
            "Accept": "application/dicom+json, application/json",
        },
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


def a_latin1_study() -> corpus.Study:
    """A corpus study in ISO_IR 100 with an accented name and two series or more.

    Not a CR: the scenario's routing rule would forward it, and test_single_host counts
    what the router receives.
    """
    made = corpus.Corpus(400, seed=41, anchor=date(2026, 11, 30))
    return next(
        s
        for s in made.studies()
        if s.charset == corpus.LATIN1
        and any(c in s.patient.name for c in "ÉÈÊËÇÀÂÎÏÔÖÜéèêëçàâîïôöü")
        and len(s.series) >= 2
        and "CR" not in s.modalities
    )


def test_a_study_stored_before_a_reindex_is_found_with_every_tag_after_it() -> None:
    name = "pacs-mol-single-d13"
    host = lab_host(name)
    study = a_latin1_study()
    folder = Path(tempfile.mkdtemp(prefix="pacs-reindex-"))
    try:
        files = [folder / f"{s.number}.dcm" for s in study.series]
        for path, series in zip(files, study.series, strict=True):
            path.write_bytes(corpus.encode(study, series))
        sent = subprocess.run(
            [dcmtk("storescu"), "-aet", MODALITY, "-aec", HOSTS[name], address_of(host), "4242",
             *map(str, files)],
            capture_output=True, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr.decode(errors="replace")
        user, password = orthanc_credentials(host)
        with ExecTunnel(name, 8042) as tunnel:
            ids = get_json(
                f"{tunnel.url}/tools/find", user, password,
                body={"Level": "Study", "Query": {"StudyInstanceUID": study.uid}},
            )  # fmt: skip
            assert len(ids) == 1, ids
            # What pacs-orthanc-reindex does to each study after ExtraMainDicomTags changes.
            get_json(f"{tunnel.url}/studies/{ids[0]}/reconstruct", user, password, body={})
            qido = get_json(
                f"{tunnel.url}/dicom-web/studies?StudyInstanceUID={study.uid}"
                "&includefield=00080080&includefield=00081030&includefield=00080061"
                "&includefield=00201206",
                user, password,
            )  # fmt: skip
        answers = cfind(address_of(host), HOSTS[name], study)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    expected = {
        "PatientName": study.patient.name,
        "PatientID": study.patient.patient_id,
        "PatientBirthDate": study.patient.birth_date,
        "PatientSex": study.patient.sex,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "StudyDescription": study.description,
        "InstitutionName": study.institution,
        "ModalitiesInStudy": "\\".join(study.modalities),
        "NumberOfStudyRelatedSeries": str(len(study.series)),
    }
    assert len(answers) == 1
    got = {k: answers[0].get(k) for k in expected}
    got = {k: ("\\".join(v) if isinstance(v, pydicom.multival.MultiValue) else str(v))
           for k, v in got.items()}  # fmt: skip
    assert got == expected
    assert len(qido) == 1
    tags = {
        "00100010": study.patient.name,
        "00100020": study.patient.patient_id,
        "00080020": study.study_date,
        "00080050": study.accession_number,
        "00080080": study.institution,
        "00081030": study.description,
    }
    for tag, value in tags.items():
        element = qido[0][tag]["Value"][0]
        assert (element["Alphabetic"] if isinstance(element, dict) else element) == value, tag
    assert qido[0]["00080061"]["Value"] == list(study.modalities)
    assert qido[0]["00201206"]["Value"] == [len(study.series)]


def cfind(address: str, aet: str, study: corpus.Study) -> list[pydicom.Dataset]:
    """C-FIND by PatientID as a workstation, with the keys OsiriX and Weasis ask for."""
    out = Path(tempfile.mkdtemp(prefix="pacs-find-"))
    keys = ["PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "AccessionNumber", "StudyDescription", "InstitutionName", "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries", "StudyInstanceUID"]  # fmt: skip
    try:
        result = subprocess.run(
            [dcmtk("findscu"), "-S", "-X", "-od", str(out), "-aet", WORKSTATION, "-aec", aet,
             "-k", "QueryRetrieveLevel=STUDY", "-k", "SpecificCharacterSet=ISO_IR 192",
             "-k", f"PatientID={study.patient.patient_id}",
             "-k", f"StudyInstanceUID={study.uid}",
             *[arg for key in keys if key != "StudyInstanceUID" for arg in ("-k", key)],
             address, "4242"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    finally:
        shutil.rmtree(out, ignore_errors=True)
