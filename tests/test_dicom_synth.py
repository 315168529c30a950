"""The synthetic study: valid DICOM, accented names, deterministic; broken objects are broken."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from pacs_libre.dicom import synth

DCMDUMP = shutil.which("dcmdump")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return synth.make_study(out, ct_images=4, mr_images=2, cr_size=(96, 80), seed=7)


def test_study_has_ct_mr_cr_with_realistic_headers(study):
    modalities = sorted({i.modality for i in study.instances})
    assert modalities == ["CR", "CT", "MR"]
    assert len(study.instances) == 7
    ct = [i for i in study.instances if i.modality == "CT"]
    ds = dcmread(ct[1].path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == synth.CT_IMAGE_STORAGE
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "DUPRÉ^Hélène"
    assert ds.Manufacturer == "pacs-libre synth"
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 512, 16)
    assert ds.pixel_array.dtype == np.uint16
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
    assert ds.InstanceNumber == 2 and ds.SeriesNumber == 2
    assert float(ds.ImagePositionPatient[2]) == -1.25
    assert ds.AccessionNumber == study.accession_number
    assert ds.StudyInstanceUID == study.study_instance_uid
    # A phantom, not noise: air outside, soft tissue in the middle.
    hu = ds.pixel_array.astype(int) - 1024
    assert hu[5, 5] < -900 and -100 < hu[300, 256] < 200
    mr = dcmread(next(i.path for i in study.instances if i.modality == "MR"))
    assert mr.SOPClassUID == synth.MR_IMAGE_STORAGE and (mr.Rows, mr.Columns) == (256, 256)
    cr = dcmread(next(i.path for i in study.instances if i.modality == "CR"))
    assert cr.SOPClassUID == synth.CR_IMAGE_STORAGE and (cr.Rows, cr.Columns) == (96, 80)


def test_manifest_hashes_the_pixel_data_and_reloads(study):
    for record in study.instances:
        ds = dcmread(record.path)
        assert record.pixel_sha256 == hashlib.sha256(ds.PixelData).hexdigest()
        assert record.sop_instance_uid == ds.SOPInstanceUID
    again = synth.StudyManifest.load(study.out_dir / "manifest.json")
    assert again == study
    assert len({i.sop_instance_uid for i in study.instances}) == len(study.instances)


@pytest.mark.skipif(DCMDUMP is None, reason="dcmtk's dcmdump is not installed")
def test_dcmdump_shows_the_accented_names(study):
    path = study.instances[1].path
    proc = subprocess.run([DCMDUMP, str(path)], capture_output=True, check=True)
    text = proc.stdout.decode("utf-8")
    assert "DUPRÉ^Hélène" in text
    assert "LEFÈVRE^François" in text
    assert "ISO_IR 192" in text


def test_same_seed_same_bytes_other_seed_other_uids(tmp_path):
    a = synth.make_study(tmp_path / "a", ct_images=2, mr_images=1, cr=False, seed=3)
    b = synth.make_study(tmp_path / "b", ct_images=2, mr_images=1, cr=False, seed=3)
    c = synth.make_study(tmp_path / "c", ct_images=2, mr_images=1, cr=False, seed=4)
    for x, y in zip(a.instances, b.instances, strict=True):
        assert x.path.read_bytes() == y.path.read_bytes()
    assert a.study_instance_uid != c.study_instance_uid
    assert a.instances[0].pixel_sha256 != c.instances[0].pixel_sha256


def test_other_patient_names_encode(tmp_path):
    m = synth.make_study(tmp_path, ct_images=1, mr_images=0, cr=False, patient="LEFÈVRE^François")
    ds = dcmread(m.instances[0].path)
    assert str(ds.PatientName) == "LEFÈVRE^François"
    raw = m.instances[0].path.read_bytes()
    assert "LEFÈVRE^François".encode() in raw  # UTF-8 on the wire


def test_truncated_file_is_really_truncated(study, tmp_path):
    src = study.instances[1].path
    bad = synth.make_truncated(src, tmp_path / "bad.dcm")
    assert 0 < bad.stat().st_size < src.stat().st_size - 100_000
    ds = dcmread(bad)  # pydicom reads what is there...
    assert len(ds.PixelData) < 512 * 512 * 2  # ...and the pixel data is short
    if DCMDUMP:
        proc = subprocess.run([DCMDUMP, str(bad)], capture_output=True, text=True, check=False)
        assert proc.returncode != 0
        assert "premature end" in proc.stderr or "larger" in proc.stderr


def test_wrong_transfer_syntax_is_unreadable(study, tmp_path):
    src = study.instances[1].path
    bad = synth.make_wrong_transfer_syntax(src, tmp_path / "wrong.dcm")
    assert dcmread(bad, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        ExplicitVRBigEndian
    )
    if DCMDUMP:
        proc = subprocess.run([DCMDUMP, str(bad)], capture_output=True, check=False)
        assert proc.returncode != 0


def test_negative_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="zero or more"):
        synth.make_study(tmp_path, ct_images=-1)
