"""The search benchmark: its corpus's mix, its percentile maths, its loader state and C-FIND.

No timing thresholds: the figures come from ``pacsctl bench search`` on the lab.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread

import dcmtk_servers
from pacs_libre import bench_retrieve, bench_search
from pacs_libre.dicom import corpus
from pacs_libre.sizing import DEFAULT_MIX, Modality

ANCHOR = date(2026, 12, 1)


@pytest.fixture(scope="module")
def sample() -> list[corpus.Study]:
    return list(corpus.Corpus(6000, seed=3, anchor=ANCHOR).studies())


# ----------------------------------------------------------------- percentile


def test_percentile_by_hand():
    values = [10.0, 20.0, 30.0, 40.0]
    assert bench_search.percentile(values, 50) == 25.0
    assert bench_search.percentile(values, 0) == 10.0
    assert bench_search.percentile(values, 100) == 40.0
    # rank (4 - 1) * 0.95 = 2.85: 30 + 0.85 * (40 - 30)
    assert bench_search.percentile(values, 95) == pytest.approx(38.5)
    assert bench_search.percentile([7.0], 95) == 7.0
    assert bench_search.percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter


def test_percentile_refuses_nonsense():
    with pytest.raises(ValueError, match="no values"):
        bench_search.percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        bench_search.percentile([1.0], 101)


@settings(max_examples=200)
@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=60),
    st.floats(0, 100),
)
def test_percentile_is_numpys_linear_method(values, q):
    expected = float(np.percentile(values, q, method="linear"))
    assert bench_search.percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=2, max_size=60))
def test_p95_is_never_below_p50(values):
    assert bench_search.percentile(values, 95) >= bench_search.percentile(values, 50)


# ---------------------------------------------------------------------- corpus


def test_modalities_follow_the_sizing_mix(sample):
    counts = Counter(s.group for s in sample)
    total = sum(p.studies_per_bed for p in DEFAULT_MIX.values())
    for group, profile in DEFAULT_MIX.items():
        share = profile.studies_per_bed / total
        # 6,000 draws: within 4 standard deviations of the expected share.
        sigma = (share * (1 - share) / len(sample)) ** 0.5
        assert abs(counts[group] / len(sample) - share) < 4 * sigma + 1e-3, group


def test_studies_have_the_series_of_their_kind(sample):
    expected = {
        Modality.CT: (range(3, 5), {("CT",)}),
        Modality.MR: (range(4, 8), {("MR",)}),
        Modality.CR_DX: (range(1, 3), {("CR",), ("DX",)}),
        Modality.US: (range(1, 2), {("US",)}),
        Modality.MG: (range(2, 3), {("MG",)}),
        Modality.XA: (range(2, 3), {("XA",)}),
        Modality.NM_PT: (range(2, 3), {("CT", "PT")}),
    }
    for study in sample:
        n = len(study.series)
        counts, modalities = expected[study.group]
        assert n in counts and study.modalities in modalities, (study.group, study.series)
        assert len({s.uid for s in study.series}) == n
    assert sum(len(s.series) for s in sample) / len(sample) > 1.5  # several series per study


def test_both_character_sets_and_accents(sample):
    charsets = Counter(s.charset for s in sample)
    assert charsets[corpus.LATIN1] > 0.3 * len(sample)
    assert charsets[corpus.UTF8] > 0.3 * len(sample)
    for study in sample:
        if not study.patient.latin1:  # "Œ" cannot be Latin-1
            assert study.charset == corpus.UTF8
    names = {s.patient.name for s in sample}
    assert any("É" in n or "È" in n for n in names) and any("Œ" in n for n in names)
    assert sum(s.patient.family.startswith("DUP") for s in sample) > 0.03 * len(sample)
    assert sum(s.patient.family.startswith("LEF") for s in sample) > 0.03 * len(sample)


def test_five_years_of_dates_up_to_the_anchor():
    studies = list(corpus.Corpus(20000, seed=3, anchor=ANCHOR).studies())
    days = [
        date.fromisoformat(f"{d[:4]}-{d[4:6]}-{d[6:]}") for d in (s.study_date for s in studies)
    ]
    assert max(days) == ANCHOR  # "today's studies" has answers
    assert min(days) == ANCHOR - timedelta(days=corpus.DAYS - 1)
    years = Counter(d.year for d in days)
    assert len(years) == 6 and all(years[y] > 3000 for y in range(2022, 2026))


def test_patients_come_back_with_the_same_identity(sample):
    by_patient: dict[str, set[tuple[str, str, str]]] = {}
    for study in sample:
        p = study.patient
        by_patient.setdefault(p.patient_id, set()).add((p.name, p.birth_date, p.sex))
    assert all(len(identities) == 1 for identities in by_patient.values())
    visits = Counter(s.patient.patient_id for s in sample)
    assert 0.15 * len(sample) < len(visits) < 0.5 * len(sample)
    assert max(visits.values()) >= 10  # some patients have a long history
    assert len({s.accession_number for s in sample}) == len(sample)
    assert len({s.uid for s in sample}) == len(sample)


def test_a_small_corpus_is_the_start_of_a_larger_one():
    small = corpus.Corpus(50, seed=9, anchor=ANCHOR)
    large = corpus.Corpus(5000, seed=9, anchor=ANCHOR)
    assert list(small.studies()) == list(large.studies(0, 50))
    assert corpus.Corpus(50, seed=10, anchor=ANCHOR).study(1) != small.study(1)


def test_files_read_back_with_every_attribute(tmp_path, sample):
    kinds = {}
    for study in sample:
        kinds.setdefault((study.group, study.charset), study)
    assert len(kinds) >= 12  # every modality group in both character sets (but Œ-only ones)
    for study in kinds.values():
        for series in study.series:
            path = tmp_path / f"{series.instance_uid}.dcm"
            path.write_bytes(corpus.encode(study, series))
            got = dcmread(path)
            expected = corpus.dataset(study, series)
            for element in expected:
                assert got[element.tag].value == element.value, (element.keyword, path)
            assert got.file_meta.MediaStorageSOPInstanceUID == series.instance_uid
            assert str(got.PatientName) == study.patient.name
            raw = path.read_bytes()
            codec = "latin-1" if study.charset == corpus.LATIN1 else "utf-8"
            assert study.patient.name.encode(codec) in raw


# ----------------------------------------------------------------- load state


def test_chunks_are_made_once_and_the_state_resumes(tmp_path):
    c = bench_search.open_corpus(2500, 4, tmp_path, anchor=ANCHOR)
    assert bench_search.chunks(c) == 3
    files = bench_search.chunk_files(c, 2, tmp_path)
    assert len(files) == sum(len(s.series) for s in c.studies(2000, 2500))
    stamp = files[0].stat().st_mtime_ns
    assert bench_search.chunk_files(c, 2, tmp_path) == files
    assert files[0].stat().st_mtime_ns == stamp
    # The anchor is kept: reopening the corpus another day gives the same studies.
    again = bench_search.open_corpus(2500, 4, tmp_path)
    assert again.anchor == ANCHOR and again.study(7) == c.study(7)
    state = bench_search.LoadState(c, tmp_path)
    state.mark("a", "chunk-0000")
    other = bench_search.LoadState(c, tmp_path)  # a second load, at the same time
    other.mark("b", "chunk-0001")
    state.mark("a", bench_search.chunk_name(c, 2))
    assert bench_search.LoadState(c, tmp_path).data == {
        "a": ["chunk-0000", "chunk-0002-2500"],
        "b": ["chunk-0001"],
    }
    state.forget("a")
    assert bench_search.LoadState(c, tmp_path).data == {"b": ["chunk-0001"]}


def test_a_partial_last_chunk_is_loaded_whole_when_the_corpus_grows(tmp_path):
    small = bench_search.open_corpus(2500, 4, tmp_path, anchor=ANCHOR)
    large = bench_search.open_corpus(3000, 4, tmp_path, anchor=ANCHOR)
    assert bench_search.chunk_name(small, 2) == "chunk-0002-2500"
    assert bench_search.chunk_name(large, 2) == "chunk-0002"
    part = bench_search.chunk_files(small, 2, tmp_path)
    whole = bench_search.chunk_files(large, 2, tmp_path)
    assert {p.name for p in part} < {p.name for p in whole}
    assert len(whole) == sum(len(s.series) for s in large.studies(2000, 3000))
    # The first form of loaded.json (whole numbers) still reads as full chunks.
    state = bench_search.LoadState(large, tmp_path)
    state.path.write_text('{"x": [0, 1]}')
    assert bench_search.LoadState(large, tmp_path).loaded("x") == {"chunk-0000", "chunk-0001"}


def test_the_catalogue_draws_values_from_loaded_studies():
    c = corpus.Corpus(3000, seed=5, anchor=ANCHOR)
    catalogue = bench_search.queries(c, 1000, runs=8)
    ids = {s.patient.patient_id for s in c.studies(0, 1000)}
    for q in catalogue:
        assert len(q.runs) == 8, q.name
        if q.protocol == "C-FIND" and "PatientID" in q.runs[0]:
            assert {r["PatientID"] for r in q.runs} <= ids
    protocols = Counter(q.protocol for q in catalogue)
    assert protocols["QIDO-RS"] >= 8 and protocols["C-FIND"] >= 5 and protocols["REST"] == 1
    today = [q for q in catalogue if q.name == "today's studies"]
    assert {q.protocol for q in today} == {"QIDO-RS", "C-FIND"}
    assert all("20261201" in str(q.runs[0]) for q in today)


# --------------------------------------------------------- C-FIND against dcmtk


@pytest.mark.skipif(
    shutil.which("dcmqrscp") is None or shutil.which("storescu") is None,
    reason="needs dcmtk (dcmqrscp, storescu): apt-get install dcmtk",
)
def test_cfind_timing_counts_the_answers_of_a_real_scp(tmp_path):
    c = corpus.Corpus(40, seed=6, anchor=ANCHOR)
    files = corpus.write_studies(c, 0, 40, tmp_path / "files")
    port = dcmtk_servers.free_port()
    (tmp_path / "db").mkdir()
    (tmp_path / "qr.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nQRSCP {tmp_path / 'db'} RW (200, 200mb) ANY\nAETable END\n"
    )
    with dcmtk_servers.server(["dcmqrscp", "--config", str(tmp_path / "qr.cfg")], port):
        subprocess.run(
            ["storescu", "-aet", "LOADER", "-aec", "QRSCP", "127.0.0.1", str(port),
             *map(str, files)],
            check=True, capture_output=True,
        )  # fmt: skip
        archive = bench_search.Archive("pacs-libre", "-", "127.0.0.1", port, "QRSCP", "PACSBENCH")
        patient = c.study(0).patient.patient_id
        query = bench_search.Query("patient ID", "test", "C-FIND", ({"PatientID": patient},) * 3)
        timing = bench_search.time_cfind(archive, query)
    expected = sum(s.patient.patient_id == patient for s in c.studies())
    assert timing.answers == [expected] * 3 and expected >= 1
    assert len(timing.seconds) == 3 and all(s > 0 for s in timing.seconds)
    assert timing.p95_ms >= timing.p50_ms > 0
    rows = bench_search.compare([timing])
    assert rows[0]["answers"] == str(expected) and rows[0]["ratio_p95"] is None


# ----------------------------------------------------------- retrieve harness


@pytest.mark.skipif(
    shutil.which("storescp") is None or shutil.which("storescu") is None,
    reason="needs dcmtk (storescp, storescu): apt-get install dcmtk",
)
def test_the_raw_dcmtk_path_brings_every_file_to_the_workstation(tmp_path):
    c = corpus.Corpus(5, seed=8, anchor=ANCHOR)
    files = corpus.write_studies(c, 0, 5, tmp_path / "files")
    inbox = tmp_path / "in"
    inbox.mkdir()
    port = dcmtk_servers.free_port()
    setup = bench_retrieve.Setup(
        archive_host="127.0.0.1", archive_port=1, archive_aet="NONE",
        workstation_aet="WORKSTATION", workstation_port=port, study_uid="1.2",
        files=tuple(files), web_url="https://127.0.0.1:1", web_user="-",
        web_password="-", cafile=tmp_path / "ca.crt",  # noqa: S106 (no web here)
    )  # fmt: skip
    with bench_retrieve.workstation(port, "WORKSTATION", inbox):
        seconds = bench_retrieve.raw(setup, inbox)
    assert seconds > 0
    received = sorted(p for p in inbox.rglob("*") if p.is_file())
    assert len(received) == len(files)
    assert {dcmread(p).SOPInstanceUID for p in received} == {
        dcmread(p).SOPInstanceUID for p in files
    }
    pull = bench_retrieve.Pull("raw dcmtk", len(files), sum(p.stat().st_size for p in files))
    pull.seconds = [seconds, 2 * seconds, 3 * seconds]
    assert pull.median_s == 2 * seconds
    assert pull.as_dict(pull)["of_raw"] == 1.0


@pytest.mark.skipif(shutil.which("movescu") is None, reason="needs dcmtk's movescu")
def test_a_retrieve_that_fails_names_the_method(tmp_path):
    setup = bench_retrieve.Setup(
        archive_host="127.0.0.1", archive_port=dcmtk_servers.free_port(), archive_aet="NONE",
        workstation_aet="WORKSTATION", workstation_port=1, study_uid="1.2", files=(),
        web_url="https://127.0.0.1:1", web_user="-",
        web_password="-", cafile=tmp_path / "x",  # noqa: S106 (no web here)
    )  # fmt: skip
    with pytest.raises(bench_search.UserError, match=r"C-MOVE \(movescu\) failed"):
        bench_retrieve.move(setup, tmp_path)
