"""A deterministic, realistic synthetic study: CT, MR and CR, with French patient names.

``make_study`` writes one study for one patient (a seed decides every UID, date
and pixel), and returns a manifest that a verifier uses to prove that what the
archive gives back is byte-identical: each instance's SOPInstanceUID and the
SHA-256 of its PixelData bytes.

Choices, so that the study looks like what modalities send:

- **Encoding.** Explicit VR Little Endian, Part 10 files with a proper file meta.
- **Character set.** ``SpecificCharacterSet`` is ``ISO_IR 192`` (UTF-8). It can
  carry every name a French hospital meets (``DUPRÉ^Hélène``, ``LEFÈVRE^François``,
  and names that Latin-1 cannot hold, such as ``Œ``). Orthanc, dcm4chee and dcmtk
  all understand it; queries must say ``ISO_IR 192`` too (``net.find`` does).
- **Pixels.** Not random noise: a phantom (body, fat, lungs, spine, vessels, a
  lesion) plus mild noise, so that the images compress like real ones.
  CT: 512x512, 16 bits allocated, 12 stored, rescale -1024 to Hounsfield units.
  MR: 256x256 brain slices. CR: one chest radiograph (2500x2048 by default).

Negative-test objects: ``make_truncated`` (a file cut in the middle of its pixel
data) and ``make_wrong_transfer_syntax`` (a file whose meta header declares
Explicit VR *Big* Endian while its data set is encoded little endian, so any
parser that trusts the header reads garbage lengths).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")

CHARSET = "ISO_IR 192"
MANUFACTURER = "pacs-libre synth"
INSTITUTION = "Centre hospitalier de démonstration"
DEFAULT_PATIENT = "DUPRÉ^Hélène"

Pixels = npt.NDArray[np.uint16]


class InstanceRecord(BaseModel):
    """One written instance, and what proves it came back unchanged."""

    path: Path
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: int
    instance_number: int
    rows: int
    columns: int
    #: SHA-256 (hex) of the PixelData element's value bytes.
    pixel_sha256: str
    #: Size of the file on disk, in bytes.
    size: int


class StudyManifest(BaseModel):
    """What ``make_study`` wrote: the study's keys and every instance."""

    out_dir: Path
    study_instance_uid: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    specific_character_set: str = CHARSET
    seed: int
    instances: list[InstanceRecord]

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.instances)

    def series(self) -> dict[str, list[InstanceRecord]]:
        """Instances grouped by SeriesInstanceUID, in instance order."""
        grouped: dict[str, list[InstanceRecord]] = {}
        for record in self.instances:
            grouped.setdefault(record.series_instance_uid, []).append(record)
        return grouped

    def by_sop_instance_uid(self) -> dict[str, InstanceRecord]:
        return {i.sop_instance_uid: i for i in self.instances}

    def write(self, path: Path | None = None) -> Path:
        """Save as JSON (``OUT_DIR/manifest.json`` by default)."""
        target = path or self.out_dir / "manifest.json"
        target.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: Path) -> StudyManifest:
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class StudyContext:
    """The study-level attributes that every instance of the study repeats."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_id: str = "1"


def pixel_sha256(ds: Dataset) -> str:
    """SHA-256 of a data set's PixelData value bytes (what WADO must give back)."""
    return hashlib.sha256(bytes(ds.PixelData)).hexdigest()


def study_context(patient: str = DEFAULT_PATIENT, seed: int = 0) -> StudyContext:
    """The study keys that ``make_study`` derives from a patient name and a seed."""
    digest = hashlib.sha256(f"{patient}|{seed}".encode()).hexdigest()
    number = int(digest[:12], 16)
    study_day = date(2024, 1, 2) + timedelta(days=number % 365)
    birth = date(1940, 1, 1) + timedelta(days=(number // 365) % (60 * 365))
    minutes = 8 * 60 + (number // 7) % (10 * 60)
    given = patient.split("^")[1] if "^" in patient else ""
    sex = "F" if given.rstrip().endswith(("e", "a", "è", "é")) else "M"
    return StudyContext(
        study_instance_uid=_uid(seed, patient, "study"),
        accession_number=f"PL{number % 10**10:010d}",
        study_date=study_day.strftime("%Y%m%d"),
        study_time=f"{minutes // 60:02d}{minutes % 60:02d}00",
        study_description="Bilan d'extension — TDM, IRM et radiographie",
        patient_name=patient,
        patient_id=f"IPP{number % 10**8:08d}",
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex=sex,
        study_id=str(1 + number % 9999),
    )


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["pacs-libre", str(seed), *map(str, parts)]))


# ------------------------------------------------------------------------- pixels


class _Grid:
    """Pixel-centre coordinates in [-1, 1], computed once per image size."""

    def __init__(self, rows: int, columns: int) -> None:
        y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
        x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)
        self.y, self.x = np.meshgrid(y, x, indexing="ij")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> npt.NDArray[np.bool_]:
        inside: npt.NDArray[np.bool_] = ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0
        return inside


_GRIDS: dict[tuple[int, int], _Grid] = {}


def _grid(rows: int, columns: int) -> _Grid:
    key = (rows, columns)
    if key not in _GRIDS:
        _GRIDS[key] = _Grid(rows, columns)
    return _GRIDS[key]


def ct_pixels(index: int, total: int, seed: int = 0, size: int = 512) -> Pixels:
    """One axial CT slice of a chest-abdomen phantom, stored values (HU + 1024)."""
    g = _grid(size, size)
    t = index / max(total - 1, 1)  # 0 at the lung apex, 1 in the abdomen
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
    hu[g.ellipse(0.0, 0.05, 0.80, 0.58)] = -100.0  # subcutaneous fat
    hu[g.ellipse(0.0, 0.05, 0.74, 0.52)] = 40.0  # soft tissue
    lung = max(0.0, 1.0 - 1.6 * t)  # lungs shrink towards the abdomen
    if lung > 0.05:
        for side in (-1.0, 1.0):
            hu[g.ellipse(side * 0.36, -0.02, 0.26 * lung + 0.02, 0.38 * lung + 0.02)] = -850.0
    liver = max(0.0, 1.6 * t - 0.5)
    if liver > 0.05:
        hu[g.ellipse(-0.30, 0.05, 0.34 * min(liver, 1.0), 0.32 * min(liver, 1.0))] = 60.0
    hu[g.ellipse(0.0, 0.38, 0.11, 0.10)] = 700.0  # vertebral body
    hu[g.ellipse(0.0, 0.38, 0.07, 0.06)] = 250.0  # its cancellous bone
    hu[g.ellipse(0.0, 0.55, 0.04, 0.06)] = 900.0  # spinous process
    hu[g.ellipse(0.08, 0.22, 0.05, 0.05)] = 200.0  # aorta, contrast-enhanced
    hu[g.ellipse(-0.06, 0.20, 0.045, 0.045)] = 150.0  # vena cava
    if 0.35 < t < 0.45:  # a small lesion over a few slices
        r = 0.05 * (1.0 - abs(t - 0.40) / 0.05)
        hu[g.ellipse(0.40, -0.10, r + 0.005, r + 0.005)] = 90.0
    rng = np.random.default_rng([seed, index, 1])
    hu += rng.standard_normal((size, size), dtype=np.float32) * 8.0
    stored: Pixels = np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)
    return stored


def mr_pixels(index: int, total: int, seed: int = 0, size: int = 256) -> Pixels:
    """One axial T1-like brain slice (arbitrary signal units, 12 bits)."""
    g = _grid(size, size)
    t = index / max(total - 1, 1)
    scale = 0.55 + 0.4 * float(np.sin(np.pi * (0.15 + 0.7 * t)))
    img = np.zeros((size, size), dtype=np.float32)
    img[g.ellipse(0.0, 0.0, 0.72 * scale, 0.86 * scale)] = 300.0  # scalp
    img[g.ellipse(0.0, 0.0, 0.66 * scale, 0.80 * scale)] = 150.0  # CSF
    img[g.ellipse(0.0, 0.0, 0.62 * scale, 0.76 * scale)] = 900.0  # grey matter
    img[g.ellipse(0.0, 0.0, 0.48 * scale, 0.62 * scale)] = 1200.0  # white matter
    for side in (-1.0, 1.0):
        img[g.ellipse(side * 0.10, -0.05, 0.05, 0.18 * scale)] = 200.0  # ventricles
    rng = np.random.default_rng([seed, index, 2])
    img += np.abs(rng.standard_normal((size, size), dtype=np.float32)) * 20.0
    return np.clip(img, 0, 4095).astype(np.uint16)


def cr_pixels(rows: int = 2500, columns: int = 2048, seed: int = 0) -> Pixels:
    """A PA chest radiograph: lungs dark, mediastinum and spine bright."""
    g = _grid(rows, columns)
    img = np.full((rows, columns), 3600.0, dtype=np.float32) - 900.0 * g.y
    img[g.ellipse(0.0, 0.1, 0.85, 0.95)] = 2600.0  # soft tissue
    for side in (-1.0, 1.0):
        img[g.ellipse(side * 0.38, -0.05, 0.30, 0.62)] = 900.0  # lungs
    img[g.ellipse(0.0, 0.0, 0.12, 0.95)] = 3000.0  # mediastinum and spine
    img[g.ellipse(0.10, 0.25, 0.22, 0.25)] = 2800.0  # heart
    rng = np.random.default_rng([seed, 3])
    img += rng.standard_normal((rows, columns), dtype=np.float32) * 15.0
    out: Pixels = np.clip(img, 0, 4095).astype(np.uint16)
    return out


# ----------------------------------------------------------------------- data sets


def _base(ctx: StudyContext, sop_class: UID, sop_instance: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = CHARSET
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ctx.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = ctx.study_time
    ds.AccessionNumber = ctx.accession_number
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = "LEFÈVRE^François"
    ds.StudyDescription = ctx.study_description
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ctx.patient_birth_date
    ds.PatientSex = ctx.patient_sex
    ds.StudyInstanceUID = ctx.study_instance_uid
    ds.StudyID = ctx.study_id
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _set_pixels(ds: Dataset, pixels: Pixels) -> None:
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelData = pixels.astype("<u2", copy=False).tobytes()


def ct_dataset(
    ctx: StudyContext,
    *,
    series_uid: str,
    frame_uid: str,
    sop_instance: str,
    index: int,
    total: int,
    seed: int = 0,
    series_number: int = 2,
    size: int = 512,
) -> Dataset:
    """Slice ``index`` (0-based) of an axial CT series of ``total`` slices (sizexsize)."""
    ds = _base(ctx, CT_IMAGE_STORAGE, sop_instance)
    thickness = 1.25
    z = -index * thickness
    ds.Modality = "CT"
    ds.SeriesDescription = "Thorax-abdomen IV+ 1.25 mm"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.SliceThickness = f"{thickness}"
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.2f}"
    spacing = f"{500.0 / size:.7g}"
    ds.PixelSpacing = [spacing, spacing]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.ConvolutionKernel = "STANDARD"
    _set_pixels(ds, ct_pixels(index, total, seed, size))
    return ds


def mr_dataset(
    ctx: StudyContext,
    *,
    series_uid: str,
    frame_uid: str,
    sop_instance: str,
    index: int,
    total: int,
    seed: int = 0,
    series_number: int = 3,
) -> Dataset:
    """Slice ``index`` of an axial T1 brain series of ``total`` slices."""
    ds = _base(ctx, MR_IMAGE_STORAGE, sop_instance)
    thickness = 4.0
    z = 40.0 + index * thickness
    ds.Modality = "MR"
    ds.SeriesDescription = "AX T1 SE"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "12"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "1.5"
    ds.ImagedNucleus = "1H"
    ds.SliceThickness = f"{thickness}"
    ds.SpacingBetweenSlices = f"{thickness}"
    ds.ImagePositionPatient = ["-115.0", "-115.0", f"{z:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.1f}"
    ds.PixelSpacing = ["0.8984375", "0.8984375"]
    ds.WindowCenter = "700"
    ds.WindowWidth = "1400"
    _set_pixels(ds, mr_pixels(index, total, seed))
    return ds


def cr_dataset(
    ctx: StudyContext,
    *,
    series_uid: str,
    sop_instance: str,
    seed: int = 0,
    size: tuple[int, int] = (2500, 2048),
    series_number: int = 1,
) -> Dataset:
    """A PA chest radiograph."""
    ds = _base(ctx, CR_IMAGE_STORAGE, sop_instance)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Modality = "CR"
    ds.SeriesDescription = "Thorax face"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.KVP = "125"
    ds.ImagerPixelSpacing = ["0.168", "0.168"]
    ds.PixelSpacing = ["0.168", "0.168"]
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    _set_pixels(ds, cr_pixels(size[0], size[1], seed))
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write a Part 10 file (preamble, file meta, Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# -------------------------------------------------------------------------- study


def make_study(
    out_dir: Path,
    *,
    ct_images: int = 300,
    mr_images: int = 40,
    cr: bool = True,
    patient: str = DEFAULT_PATIENT,
    seed: int = 0,
    cr_size: tuple[int, int] = (2500, 2048),
    progress: Callable[[int, int], None] | None = None,
) -> StudyManifest:
    """Write one study (CT, MR and CR series) under ``out_dir`` and its manifest.

    Files are ``out_dir/<modality>/<instance number>.dcm``; ``out_dir/manifest.json``
    holds the manifest. The same arguments always give the same bytes.
    ``progress(done, total)`` is called after each file.
    """
    if ct_images < 0 or mr_images < 0:
        raise ValueError("image counts must be zero or more")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = study_context(patient, seed)
    total = ct_images + mr_images + (1 if cr else 0)
    records: list[InstanceRecord] = []

    def emit(ds: Dataset, path: Path) -> None:
        write(ds, path)
        records.append(
            InstanceRecord(
                path=path,
                modality=str(ds.Modality),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                series_number=int(ds.SeriesNumber),
                instance_number=int(ds.InstanceNumber),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                pixel_sha256=pixel_sha256(ds),
                size=path.stat().st_size,
            )
        )
        if progress is not None:
            progress(len(records), total)

    if cr:
        ds = cr_dataset(
            ctx,
            series_uid=_uid(seed, patient, "series", "CR"),
            sop_instance=_uid(seed, patient, "CR", 0),
            seed=seed,
            size=cr_size,
        )
        emit(ds, out_dir / "CR" / "0001.dcm")
    ct_series = _uid(seed, patient, "series", "CT")
    ct_frame = _uid(seed, patient, "frame", "CT")
    for index in range(ct_images):
        ds = ct_dataset(
            ctx,
            series_uid=ct_series,
            frame_uid=ct_frame,
            sop_instance=_uid(seed, patient, "CT", index),
            index=index,
            total=ct_images,
            seed=seed,
        )
        emit(ds, out_dir / "CT" / f"{index + 1:04d}.dcm")
    mr_series = _uid(seed, patient, "series", "MR")
    mr_frame = _uid(seed, patient, "frame", "MR")
    for index in range(mr_images):
        ds = mr_dataset(
            ctx,
            series_uid=mr_series,
            frame_uid=mr_frame,
            sop_instance=_uid(seed, patient, "MR", index),
            index=index,
            total=mr_images,
            seed=seed,
        )
        emit(ds, out_dir / "MR" / f"{index + 1:04d}.dcm")
    manifest = StudyManifest(
        out_dir=out_dir,
        study_instance_uid=ctx.study_instance_uid,
        accession_number=ctx.accession_number,
        study_date=ctx.study_date,
        study_time=ctx.study_time,
        study_description=ctx.study_description,
        patient_name=ctx.patient_name,
        patient_id=ctx.patient_id,
        patient_birth_date=ctx.patient_birth_date,
        patient_sex=ctx.patient_sex,
        seed=seed,
        instances=records,
    )
    manifest.write()
    return manifest


# ------------------------------------------------------------ negative-test objects


def _meta_end(raw: bytes) -> int:
    """Offset of the data set after a Part 10 file's preamble and file meta."""
    if raw[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no 'DICM' after the preamble)")
    # (0002,0000) UL 4 <group length>: explicit VR little endian, 12 bytes.
    group_length = int.from_bytes(raw[140:144], "little")
    return 144 + group_length


def make_truncated(src: Path, dst: Path, *, keep: float = 0.5) -> Path:
    """Copy ``src`` cut in the middle of its pixel data (``keep`` of the pixel bytes).

    A receiver must refuse it: the PixelData element declares more bytes than follow.
    """
    raw = Path(src).read_bytes()
    tag = b"\xe0\x7f\x10\x00"  # (7FE0,0010) in little endian
    start = raw.rfind(tag)
    if start < 0:
        raise ValueError(f"{src} has no PixelData to cut")
    header = 12  # tag, VR 'OW', 2 reserved bytes, 4-byte length
    length = int.from_bytes(raw[start + 8 : start + 12], "little")
    cut = start + header + max(1, int(length * keep))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(raw[:cut])
    return Path(dst)


def make_wrong_transfer_syntax(src: Path, dst: Path) -> Path:
    """Copy ``src`` with a file meta that declares Explicit VR Big Endian.

    The data set itself stays little endian, so a parser that trusts the declared
    transfer syntax reads garbage lengths and fails; a storage SCP that accepts it
    stores an object nobody can read. The archive must refuse it.
    """
    raw = Path(src).read_bytes()
    body = raw[_meta_end(raw) :]
    meta = dcmread(src, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = ExplicitVRBigEndian
    del meta.FileMetaInformationGroupLength
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(buf.getvalue() + body)
    return Path(dst)
