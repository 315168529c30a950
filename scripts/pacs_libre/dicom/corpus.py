"""A hospital's worth of study *index*: many small studies with a realistic mix, made fast.

``pacsctl bench search`` needs an archive that holds what a 200-bed hospital's index holds
after years: tens of thousands of studies, each with several series, across thousands of
patients. What the queries touch is the index, not the pixels, so every instance here is a
tiny image (16x16) with the full set of study, series and patient attributes that
modalities send. Choices:

- **Deterministic.** Study ``i`` of a corpus depends only on ``(seed, i, anchor)``: the
  corpus can be made, and loaded, in any number of pieces and resumed.
- **The mix of ``pacsctl size``.** Each study's modality is drawn with the weights of
  :data:`pacs_libre.sizing.DEFAULT_MIX` (studies per bed and year), and each modality has
  the series a real study of it has (a CT: scout and two reconstructions; an MR: four to
  seven sequences; a PET-CT: a PET and a CT series, so ``ModalitiesInStudy`` is ``CT\\PT``).
  One instance per series: the index cost of a study is its series, and loading stays fast.
- **French names, both character sets.** Families and given names with accents
  (``DUPRÉ``, ``LEFÈVRE``, ``Hélène``, ``Œ``); about half of the studies say
  ``ISO_IR 100`` (Latin-1, what older modalities send) and the rest ``ISO_IR 192``
  (UTF-8). A name that Latin-1 cannot hold (``Œ``) is always sent in UTF-8.
- **Five years of dates**, ending on the corpus's ``anchor`` day (the day it was first
  made), so that "today's studies" has answers: about one study in 1,826 is on that day.
- **Patients come back.** About one patient per three studies, drawn with a skew, so
  that some patients have one study and others dozens: "all studies of this patient" is
  a real history. Study ``i`` draws its patient among the first ``0.32 * (i + 1)``, so a
  corpus of N studies is the first N studies of any larger one (with the same seed and
  anchor): an archive loaded with 20,000 grows to 100,000 by loading the rest.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from pacs_libre.sizing import DEFAULT_MIX, Modality

UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # pydicom's root, then a branch of ours
YEARS = 5
DAYS = YEARS * 365 + 1  # the anchor day and five years before it
PATIENTS_PER_STUDY = 0.32  # the lab: 20,000 studies across 6,357 patients
IMAGE_SIZE = 16  # rows = columns of every instance's pixel data
LATIN1 = "ISO_IR 100"
UTF8 = "ISO_IR 192"

FAMILIES = (
    "DUPONT", "DUPRÉ", "DUPUIS", "DUPUY", "LEFÈVRE", "LEFEBVRE", "LEFORT", "LEFRANÇOIS",
    "MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "MOREAU", "LAURENT",
    "SIMON", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX", "VINCENT", "FOURNIER",
    "MOREL", "GIRARD", "ANDRÉ", "MERCIER", "BONNET", "FRANÇOIS", "FAURE", "BLANC",
    "GUÉRIN", "MÜLLER", "HENRY", "ROUSSEL", "NICOLAS", "PERRIN", "MORIN", "MATHIEU",
    "CLÉMENT", "GAUTHIER", "DUMONT", "LOPEZ", "FONTAINE", "CHEVALIER", "ROBIN", "MASSON",
    "NOËL", "BOURGEOIS", "LŒUILLET", "CŒURDEROY", "BRIÈRE", "DESCHÊNES", "PRÉVOST",
    "BÉGUIN", "LEGRAND", "GAUDIN", "BARBIER", "ARNAUD",
)  # fmt: skip
GIVEN = (
    ("Hélène", "F"), ("François", "M"), ("Élodie", "F"), ("Jérôme", "M"), ("Zoé", "F"),
    ("Gaëlle", "F"), ("Anaïs", "F"), ("Loïc", "M"), ("Benoît", "M"), ("Cécile", "F"),
    ("Joël", "M"), ("Agnès", "F"), ("Thérèse", "F"), ("Noémie", "F"), ("Raphaël", "M"),
    ("Chloé", "F"), ("Léa", "F"), ("Maël", "M"), ("Inès", "F"), ("Stéphane", "M"),
    ("Frédéric", "M"), ("Françoise", "F"), ("Béatrice", "F"), ("Aurélie", "F"),
    ("Michèle", "F"), ("Céline", "F"), ("René", "M"), ("André", "M"), ("Jean", "M"),
    ("Marie", "F"), ("Pierre", "M"), ("Louis", "M"), ("Camille", "F"), ("Sophie", "F"),
    ("Nicolas", "M"), ("Œdipe", "M"),
)  # fmt: skip
INSTITUTIONS = ("Centre hospitalier de démonstration", "Clinique Sainte-Thérèse")
REFERRING = ("LEFÈVRE^François", "DURAND^Amélie", "GARNIER^Noël", "")

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}

#: Per modality group: the study's description, and its series (modality, description);
#: series after the ``required`` count are present with probability one half each.
STUDY_KINDS: dict[Modality, tuple[str, int, tuple[tuple[str, str], ...]]] = {
    Modality.CT: (
        "TDM thoraco-abdomino-pelvienne",
        3,
        (("CT", "Topogramme"), ("CT", "TAP IV+ 1.25 mm"), ("CT", "TAP IV+ 5 mm"),
         ("CT", "Reconstructions MIP")),
    ),
    Modality.MR: (
        "IRM cérébrale",
        4,
        (("MR", "AX T1 SE"), ("MR", "AX T2 FSE"), ("MR", "AX FLAIR"), ("MR", "DWI b1000"),
         ("MR", "3D T1 gado"), ("MR", "SWI"), ("MR", "COR T2")),
    ),
    Modality.CR_DX: ("Radiographie thoracique", 1,
                     (("CR", "Thorax face"), ("CR", "Thorax profil"))),
    Modality.US: ("Échographie abdominale", 1, (("US", "Abdomen"),)),
    Modality.MG: ("Mammographie bilatérale", 2, (("MG", "Sein droit"), ("MG", "Sein gauche"))),
    Modality.XA: ("Coronarographie", 2, (("XA", "Coronaire gauche"), ("XA", "Coronaire droite"))),
    Modality.NM_PT: ("TEP-TDM corps entier", 2,
                     (("PT", "TEP corps entier"), ("CT", "TDM basse dose"))),
}  # fmt: skip


@dataclass(frozen=True)
class Patient:
    """One patient of the corpus: always the same name, birth date and sex."""

    index: int
    patient_id: str
    family: str
    given: str
    sex: str
    birth_date: str

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"

    @property
    def latin1(self) -> bool:
        """Whether Latin-1 (ISO_IR 100) can hold the name."""
        try:
            self.name.encode("latin-1")
        except UnicodeEncodeError:
            return False
        return True


@dataclass(frozen=True)
class Series:
    modality: str
    description: str
    number: int
    uid: str
    instance_uid: str


@dataclass(frozen=True)
class Study:
    """One study of the corpus, with everything its instances carry."""

    index: int
    group: Modality
    uid: str
    patient: Patient
    study_date: str
    study_time: str
    accession_number: str
    description: str
    charset: str
    institution: str
    referring: str
    series: tuple[Series, ...]

    @property
    def modalities(self) -> tuple[str, ...]:
        """ModalitiesInStudy, as an archive computes it (sorted, distinct)."""
        return tuple(sorted({s.modality for s in self.series}))


class Corpus:
    """``count`` studies made from ``seed``, dated over the five years up to ``anchor``."""

    def __init__(self, count: int, seed: int = 1, anchor: date | None = None) -> None:
        if count < 1:
            raise ValueError("a corpus holds at least one study")
        self.count = count
        self.seed = seed
        self.anchor = anchor or date.today()
        groups = list(DEFAULT_MIX)
        self._groups = groups
        self._weights = [DEFAULT_MIX[g].studies_per_bed for g in groups]

    def patient(self, index: int) -> Patient:
        rng = random.Random(f"{self.seed}:patient:{index}")  # noqa: S311 (test data)
        given, sex = rng.choice(GIVEN)
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
        return Patient(
            index=index,
            patient_id=f"IPP{self.seed % 100:02d}{index:07d}",
            family=rng.choice(FAMILIES),
            given=given,
            sex=sex,
            birth_date=birth.strftime("%Y%m%d"),
        )

    def study(self, index: int) -> Study:
        if not 0 <= index < self.count:
            raise IndexError(f"study {index} is not in a corpus of {self.count}")
        rng = random.Random(f"{self.seed}:study:{index}")  # noqa: S311 (test data)
        # A skewed draw among the patients met so far: low numbers come back often.
        pool = max(1, round((index + 1) * PATIENTS_PER_STUDY))
        patient = self.patient(min(pool - 1, int(pool * rng.random() ** 1.7)))
        group = rng.choices(self._groups, self._weights)[0]
        description, required, kinds = STUDY_KINDS[group]
        chosen = list(kinds[:required]) + [k for k in kinds[required:] if rng.random() < 0.5]
        if group is Modality.CR_DX and rng.random() < 0.5:
            chosen = [("DX", d) for _m, d in chosen]  # flat-panel rooms say DX
        day = self.anchor - timedelta(days=rng.randrange(DAYS))
        minutes = 7 * 60 + rng.randrange(13 * 60)
        uid = f"{UID_ROOT}.{self.seed}.{index}"
        series = tuple(
            Series(modality, text, number, f"{uid}.{number}", f"{uid}.{number}.1")
            for number, (modality, text) in enumerate(chosen, 1)
        )
        charset = LATIN1 if patient.latin1 and rng.random() < 0.5 else UTF8
        return Study(
            index=index,
            group=group,
            uid=uid,
            patient=patient,
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{minutes // 60:02d}{minutes % 60:02d}{rng.randrange(60):02d}",
            accession_number=f"A{self.seed % 100:02d}{index:08d}",
            description=description,
            charset=charset,
            institution=rng.choice(INSTITUTIONS),
            referring=rng.choice(REFERRING),
            series=series,
        )

    def studies(self, start: int = 0, stop: int | None = None) -> Iterator[Study]:
        for index in range(start, self.count if stop is None else min(stop, self.count)):
            yield self.study(index)


_PIXELS = bytes(range(256)) * (IMAGE_SIZE * IMAGE_SIZE * 2 // 256)
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UT"}
_LONG_VRS = {"OB", "OW", "SQ", "UN", "UT", "UC", "UR"}


def elements(study: Study, series: Series) -> list[tuple[int, str, str | bytes | int]]:
    """The data set of ``series``'s one instance: (tag, VR, value), in tag order."""
    return [
        (0x00080005, "CS", study.charset),
        (0x00080008, "CS", "ORIGINAL\\PRIMARY"),
        (0x00080016, "UI", SOP_CLASSES[series.modality]),
        (0x00080018, "UI", series.instance_uid),
        (0x00080020, "DA", study.study_date),
        (0x00080021, "DA", study.study_date),
        (0x00080023, "DA", study.study_date),
        (0x00080030, "TM", study.study_time),
        (0x00080031, "TM", study.study_time),
        (0x00080033, "TM", study.study_time),
        (0x00080050, "SH", study.accession_number),
        (0x00080060, "CS", series.modality),
        (0x00080070, "LO", "pacs-libre corpus"),
        (0x00080080, "LO", study.institution),
        (0x00080090, "PN", study.referring),
        (0x00081030, "LO", study.description),
        (0x0008103E, "LO", series.description),
        (0x00100010, "PN", study.patient.name),
        (0x00100020, "LO", study.patient.patient_id),
        (0x00100030, "DA", study.patient.birth_date),
        (0x00100040, "CS", study.patient.sex),
        (0x0020000D, "UI", study.uid),
        (0x0020000E, "UI", series.uid),
        (0x00200010, "SH", str(study.index % 100000)),
        (0x00200011, "IS", str(series.number)),
        (0x00200013, "IS", "1"),
        (0x00280002, "US", 1),
        (0x00280004, "CS", "MONOCHROME2"),
        (0x00280010, "US", IMAGE_SIZE),
        (0x00280011, "US", IMAGE_SIZE),
        (0x00280100, "US", 16),
        (0x00280101, "US", 12),
        (0x00280102, "US", 11),
        (0x00280103, "US", 0),
        (0x7FE00010, "OW", _PIXELS),
    ]


def _encode(tag: int, vr: str, value: str | bytes | int, codec: str) -> bytes:
    """One element in Explicit VR Little Endian."""
    if isinstance(value, int):
        raw = value.to_bytes(2, "little")
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = value.encode(codec if vr in {"PN", "LO", "SH", "LT", "ST", "UT"} else "ascii")
    if len(raw) % 2:
        raw += b" " if vr in _TEXT_VRS else b"\0"
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + len(raw).to_bytes(4, "little") + raw
    return head + vr.encode() + len(raw).to_bytes(2, "little") + raw


def encode(study: Study, series: Series) -> bytes:
    """The Part 10 file of ``series``'s one instance (preamble, file meta, data set).

    Written by hand rather than by pydicom: 16 times faster here, which is what lets a
    100,000-study corpus be made in minutes. The unit tests read every kind of file
    back with pydicom and compare each attribute.
    """
    codec = "latin-1" if study.charset == LATIN1 else "utf-8"
    meta_items: list[tuple[int, str, str | bytes | int]] = [
        (0x00020001, "OB", b"\0\1"),
        (0x00020002, "UI", SOP_CLASSES[series.modality]),
        (0x00020003, "UI", series.instance_uid),
        (0x00020010, "UI", str(ExplicitVRLittleEndian)),
        (0x00020012, "UI", str(PYDICOM_IMPLEMENTATION_UID)),
    ]
    meta = b"".join(_encode(t, v, x, "ascii") for t, v, x in meta_items)
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(meta).to_bytes(4, "little")
    body = b"".join(_encode(t, v, x, codec) for t, v, x in elements(study, series))
    return b"\0" * 128 + b"DICM" + group_length + meta + body


def dataset(study: Study, series: Series) -> Dataset:
    """The same instance as :func:`encode`, as a pydicom data set (for tests and checks)."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASSES[series.modality])
    meta.MediaStorageSOPInstanceUID = UID(series.instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    for tag, vr, value in elements(study, series):
        if vr == "OW":
            ds.add_new(tag, vr, value)
        elif isinstance(value, str) and "\\" in value:
            ds.add_new(tag, vr, value.split("\\"))
        else:
            ds.add_new(tag, vr, value)
    return ds


def write_studies(corpus: Corpus, start: int, stop: int, folder: Path) -> list[Path]:
    """Write studies ``start`` to ``stop`` (excluded) as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for study in corpus.studies(start, stop):
        for series in study.series:
            path = folder / f"{study.index:07d}-{series.number}.dcm"
            path.write_bytes(encode(study, series))
            paths.append(path)
    return paths
