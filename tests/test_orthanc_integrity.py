"""The integrity service of the orthanc role: truncated pixel data is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pydicom
import pytest

from pacs_libre.dicom.synth import make_study, make_truncated

SERVICES = Path(__file__).resolve().parents[1] / "roles/orthanc/files/services"
_spec = importlib.util.spec_from_file_location("pacs_integrity", SERVICES / "integrity.py")
assert _spec and _spec.loader
integrity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integrity)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = make_study(tmp_path_factory.mktemp("s"), ct_images=1, mr_images=0, cr=False)
    return study.instances[0].path


def _tags(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return {k: str(ds.get(k, "")) for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")}


def test_a_whole_image_passes(image: Path):
    ts = str(pydicom.dcmread(image, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert integrity.pixel_data_problem(image.read_bytes(), ts, _tags(image)) is None


def test_a_truncated_file_is_refused(image: Path, tmp_path: Path):
    bad = make_truncated(image, tmp_path / "bad.dcm")
    ts = "1.2.840.10008.1.2.1"
    problem = integrity.pixel_data_problem(bad.read_bytes(), ts, _tags(image))
    assert problem and "follow" in problem


def test_pixel_data_shorter_than_the_image_is_refused(image: Path):
    # What Orthanc's parser hands over for a truncated file: a consistent element,
    # too short for the image.
    raw = image.read_bytes()
    start = raw.rfind(integrity.PIXEL_DATA_LE)
    half = 512 * 512
    cut = raw[: start + 8] + half.to_bytes(4, "little") + raw[start + 12 : start + 12 + half]
    problem = integrity.pixel_data_problem(cut, "1.2.840.10008.1.2.1", _tags(image))
    assert problem == f"PixelData holds {half} bytes, the image needs {2 * half}"


def test_implicit_vr_is_read_too():
    tags = {"Rows": "2", "Columns": "2", "BitsAllocated": "16"}
    element = integrity.PIXEL_DATA_LE + (8).to_bytes(4, "little")
    assert (
        integrity.pixel_data_problem(b"xx" + element + b"\0" * 8, "1.2.840.10008.1.2", tags) is None
    )
    assert integrity.pixel_data_problem(b"xx" + element + b"\0" * 4, "1.2.840.10008.1.2", tags)


def test_compressed_and_image_less_objects_are_not_judged():
    assert integrity.pixel_data_problem(b"\0" * 10, "1.2.840.10008.1.2.4.70", {}) is None
    assert integrity.pixel_data_problem(b"no pixels", "1.2.840.10008.1.2.1", {}) is None


def test_expected_size_counts_frames_and_samples():
    tags = {"Rows": "10", "Columns": "10", "BitsAllocated": "8", "SamplesPerPixel": "3"}
    assert integrity.expected_pixel_bytes({**tags, "NumberOfFrames": "2"}) == 600
    assert integrity.expected_pixel_bytes({"Rows": "10"}) is None
