"""Demo data: deterministic bytes, every planted personal value really present, consistent DICOM geometry,
UIDs and timing, a head with a face, junk files, consent and demographics tables."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from bidsafe.cli import main
from bidsafe.demo import (
    DWI_BVALUE,
    DWI_DIRECTIONS,
    DemoSeries,
    DemoSession,
    consent_level,
    generate,
    plan_sessions,
    write_consent_registry,
    write_demographics,
)
from bidsafe.errors import BidsafeError

from helpers.demo_inbox import DEMO_SEED

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(series: DemoSeries) -> list[Dataset]:
    return [pydicom.dcmread(f) for f in series.files]


def _by_description(session: DemoSession, fragment: str) -> DemoSeries:
    matches = [s for s in session.series if fragment in s.description]
    assert len(matches) == 1, fragment
    return matches[0]


def _seconds(tm: str) -> float:
    return (datetime.strptime(tm, "%H%M%S.%f") - datetime(1900, 1, 1)).total_seconds()


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_and_the_cli_writes_the_tables(two_session_demo, tmp_path, capsys):
    """The CLI with the same seed, asked for fewer sessions, rewrites the first session byte for byte."""
    root, sessions = two_session_demo
    again = tmp_path / "again"
    consent, demographics = tmp_path / "consent.tsv", tmp_path / "demographics.tsv"
    code = main(["demo-data", str(again), "--subjects", "1", "--sessions", "1", "--seed", str(DEMO_SEED),
                 "--consent", str(consent), "--demographics", str(demographics)])
    assert code == 0
    first = sessions[0].folder.relative_to(root)
    expected = {k: v for k, v in _tree_digest(root).items() if k.startswith(str(first))}
    assert expected and _tree_digest(again) == expected
    # Nothing identifying on the console: exports are named after patients.
    out = capsys.readouterr().out
    assert sessions[0].family_name not in out and sessions[0].patient_id not in out
    rows = list(csv.DictReader(consent.open(), delimiter="\t"))
    assert [r["patient_id"] for r in rows] == [sessions[0].patient_id]
    assert demographics.read_text().startswith("patient_id\tgestational_age_weeks")


def test_other_seed_other_people(tmp_path):
    a = plan_sessions(tmp_path, subjects=3, seed=1)
    b = plan_sessions(tmp_path, subjects=3, seed=2)
    assert {s.patient_id for s in a}.isdisjoint({s.patient_id for s in b})
    assert len({s.family_name for s in a}) == 3
    # A patient does not depend on how many follow it.
    assert plan_sessions(tmp_path, subjects=1, seed=1)[0].planted == a[0].planted


def test_invalid_counts_are_rejected(tmp_path):
    with pytest.raises(BidsafeError):
        generate(tmp_path, subjects=0)


# -------------------------------------------------------------------------------------- personal data


@pytest.mark.slow
def test_every_planted_value_is_in_the_image_headers_or_paths(two_session_demo):
    """Later "no leak" tests are only meaningful if every planted value is really there to leak."""
    _, sessions = two_session_demo
    for session in sessions:
        image_files = [f for s in session.series for f in s.files]
        blob = b"".join(f.read_bytes() for f in image_files)
        paths = "\n".join(str(f) for f in image_files)
        for field, value in session.planted.items():
            assert len(value) >= 4, field
            if field == "PatientFolder":
                assert value in paths
            else:
                assert value.encode() in blob, field
        # The patient's name is in at least one file name, as in real exports.
        assert any(session.family_name in f.name for f in image_files)


@pytest.mark.slow
def test_identity_sits_where_real_exports_carry_it(two_session_demo):
    _, sessions = two_session_demo
    session = sessions[0]
    ds = pydicom.dcmread(_by_description(session, "bold").files[0])
    assert str(ds.PatientName) == session.patient_name
    assert ds.PatientID == session.patient_id and ds.PatientBirthDate == session.birth_date
    assert ds.PatientSex == session.sex and ds.PatientAge == session.age
    assert f"{float(ds.PatientWeight):.1f}" == session.weight
    assert ds.AccessionNumber == session.accession and ds.StudyID == session.study_id
    assert ds.OtherPatientIDsSequence[0].PatientID == session.planted["OtherPatientIDs"]
    assert str(ds.RequestAttributesSequence[0].PatientName) == session.patient_name
    assert ds.ReferencedPatientSequence[0].PatientID == session.patient_id
    for keyword in ("PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
                    "StationName", "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName",
                    "OperatorsName"):
        assert str(ds.data_element(keyword).value) == session.planted[keyword], keyword
    for keyword in ("StudyDescription", "ImageComments", "PatientComments", "AdditionalPatientHistory"):
        text = str(ds.data_element(keyword).value).upper()
        assert session.family_name in text or session.patient_id in text, keyword
    block = ds.private_block(0x0033, "MITRA OBJECT UTF8 ATTRIBUTES 1.0")
    assert block[0x13].value.rstrip(b"\x00").decode("utf-8") == session.patient_name  # OB pads to even length


@pytest.mark.slow
def test_same_patient_across_sessions_months_apart(two_session_demo):
    _, (first, second) = two_session_demo
    assert (first.patient_id, first.patient_name, first.birth_date) == (
        second.patient_id, second.patient_name, second.birth_date)
    assert first.patient_folder == second.patient_folder and first.folder != second.folder
    assert first.study_instance_uid != second.study_instance_uid and first.accession != second.accession
    gap = datetime.strptime(second.study_date, "%Y%m%d") - datetime.strptime(first.study_date, "%Y%m%d")
    assert gap.days >= 90
    a = pydicom.dcmread(first.series[1].files[0])
    b = pydicom.dcmread(second.series[1].files[0])
    assert (a.PatientID, a.PatientBirthDate) == (b.PatientID, b.PatientBirthDate)
    assert a.StudyDate == first.study_date and b.StudyDate == second.study_date


# ------------------------------------------------------------------------------------- DICOM structure


@pytest.mark.slow
def test_uids_meta_and_counts_are_consistent(two_session_demo):
    _, sessions = two_session_demo
    session = sessions[0]
    sop_uids: set[str] = set()
    series_uids = set()
    frames = set()
    for series in session.series:
        datasets = _read(series)
        assert {str(d.SeriesInstanceUID) for d in datasets} != set()
        assert len({str(d.SeriesInstanceUID) for d in datasets}) == 1, series.description
        series_uids.add(str(datasets[0].SeriesInstanceUID))
        for d in datasets:
            assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
            assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID
            assert d.StudyInstanceUID == session.study_instance_uid
            assert int(d.SeriesNumber) == series.number
            assert pydicom.uid.UID(d.SOPInstanceUID).is_valid
            sop_uids.add(str(d.SOPInstanceUID))
            if d.SOPClassUID == MR_IMAGE_STORAGE:
                frames.add(str(d.FrameOfReferenceUID))
                assert d.Manufacturer and d.ManufacturerModelName and float(d.MagneticFieldStrength) == 3.0
                assert float(d.RepetitionTime) > 0 and float(d.EchoTime) > 0 and float(d.FlipAngle) > 0
                assert d.AcquisitionDateTime.startswith(session.study_date)
                assert len(d.PixelData) == d.Rows * d.Columns * 2
        instance_numbers = sorted(int(d.InstanceNumber) for d in datasets)
        assert instance_numbers == list(range(1, len(datasets) + 1))
    assert len(sop_uids) == sum(len(s.files) for s in session.series)
    assert len(series_uids) == len(session.series) and len(frames) == 1


@pytest.mark.slow
@pytest.mark.parametrize("fragment", ["localizer", "mprage", "t2_tse", "bold", "diff", "FieldMap_AP"])
def test_slice_geometry_is_consistent(two_session_demo, fragment):
    """Within each orientation the slices lie on one line along the normal, spaced as declared."""
    _, sessions = two_session_demo
    datasets = _read(_by_description(sessions[0], fragment))
    groups: dict[tuple, list[Dataset]] = defaultdict(list)
    for d in datasets:
        groups[tuple(round(float(v), 5) for v in d.ImageOrientationPatient)].append(d)
    assert len(groups) == (3 if fragment == "localizer" else 1)
    for iop, members in groups.items():
        row, col = np.array(iop[:3]), np.array(iop[3:])
        assert abs(np.dot(row, col)) < 1e-6 and abs(np.linalg.norm(row) - 1) < 1e-5
        normal = np.cross(row, col)
        positions = np.unique(np.array([[float(v) for v in d.ImagePositionPatient] for d in members]), axis=0)
        along = positions @ normal
        order = np.argsort(along)
        steps = np.diff(along[order])
        spacing = float(members[0].SpacingBetweenSlices)
        assert np.allclose(steps, spacing, atol=1e-3)
        offsets = positions[order] - positions[order][0]
        assert np.allclose(offsets - np.outer(offsets @ normal, normal), 0, atol=1e-3)
        assert float(members[0].SliceThickness) <= spacing + 1e-6
        assert len(members) % len(positions) == 0  # whole volumes only
        pixel = [float(v) for v in members[0].PixelSpacing]
        assert all(0.5 < p < 4 for p in pixel)


@pytest.mark.slow
def test_structural_images_have_the_expected_grids_and_a_face(two_session_demo):
    _, sessions = two_session_demo
    t1 = _read(_by_description(sessions[0], "mprage"))
    assert (len(t1), t1[0].Rows, t1[0].Columns) == (176, 224, 224)
    assert [float(v) for v in t1[0].PixelSpacing] == [1.0, 1.0]
    assert [round(float(v)) for v in t1[0].ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]  # sagittal
    t2 = _read(_by_description(sessions[0], "t2_tse"))
    assert (t2[0].Rows, t2[0].Columns, float(t2[0].SliceThickness)) == (224, 192, 2.0)

    # Tissue in front of the skull below the eyes (nose, mouth), air further in front: a face.
    volume = np.stack([d.pixel_array for d in t1]).astype(float)
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in t1])
    iop = np.array([float(v) for v in t1[0].ImageOrientationPatient])
    k, i, j = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    lps = ipp[k] + j[..., None] * iop[:3] + i[..., None] * iop[3:]
    x, y, z = -lps[..., 0], -lps[..., 1], lps[..., 2]  # RAS
    face = (abs(x) < 30) & (y > 80) & (y < 95) & (z > -60) & (z < -10)
    air = (abs(x) < 30) & (y > 118) & (z > -60) & (z < -10)
    assert face.sum() > 5000 and air.sum() > 1000
    threshold = 0.25 * np.percentile(volume, 99)
    assert (volume[face] > threshold).mean() > 0.3
    assert (volume[air] > threshold).mean() < 0.02


def _volume_and_affine(series: DemoSeries) -> tuple[np.ndarray, np.ndarray]:
    """Pixel data as (column, row, slice) and the matrix from those indices to LPS millimetres."""
    datasets = _read(series)
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: np.dot([float(v) for v in d.ImagePositionPatient], normal))
    first = np.array([float(v) for v in datasets[0].ImagePositionPatient])
    last = np.array([float(v) for v in datasets[-1].ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = (last - first) / (len(datasets) - 1)
    affine[:3, 3] = first
    volume = np.stack([d.pixel_array.T for d in datasets], axis=-1).astype(float)
    return volume, affine


@pytest.mark.slow
def test_t2_contrast_is_inverted_against_the_t1_in_the_brain(two_session_demo):
    """Sampled at the same points, T1w and T2w intensities anti-correlate inside the brain (CSF dark in one,
    bright in the other), so the T2w is a real second contrast of the same head."""
    _, sessions = two_session_demo
    t1, t1_affine = _volume_and_affine(_by_description(sessions[0], "mprage"))
    t2, t2_affine = _volume_and_affine(_by_description(sessions[0], "t2_tse"))
    c, r, k = np.meshgrid(*(np.arange(n) for n in t2.shape), indexing="ij")
    index = np.stack([c, r, k, np.ones_like(c)], axis=-1).reshape(-1, 4).T
    lps = t2_affine @ index
    in_t1 = np.rint(np.linalg.inv(t1_affine) @ lps).astype(int)[:3]
    centre = np.array([7.0, -5.0, 15.0])  # cerebrum (LPS), away from scalp fat
    near = np.linalg.norm(lps[:3].T - centre, axis=1) < 35
    inside = np.all((in_t1 >= 0) & (in_t1 < np.array(t1.shape)[:, None]), axis=0) & near
    a = t1[tuple(in_t1[:, inside])]
    b = t2.reshape(-1)[inside]
    assert inside.sum() > 10000
    assert np.corrcoef(a, b)[0, 1] < -0.3


@pytest.mark.slow
def test_bold_slice_timing_is_in_the_standard_times(two_session_demo):
    _, sessions = two_session_demo
    datasets = _read(_by_description(sessions[0], "bold"))
    tr = float(datasets[0].RepetitionTime) / 1000
    volumes: dict[int, list[Dataset]] = defaultdict(list)
    for d in datasets:
        volumes[int(d.TemporalPositionIdentifier)].append(d)
    assert len(volumes) >= 10 and all(int(d.NumberOfTemporalPositions) == len(volumes) for d in datasets)
    normal = np.cross(*np.array([float(v) for v in datasets[0].ImageOrientationPatient]).reshape(2, 3))
    first_volume_times = None
    for v, members in sorted(volumes.items()):
        members.sort(key=lambda d: np.dot([float(x) for x in d.ImagePositionPatient], normal))
        times = np.array([_seconds(d.AcquisitionTime) for d in members])
        relative = times - times.min()
        assert relative.max() < tr
        assert np.allclose(relative, [float(d.TriggerTime) / 1000 for d in members], atol=1e-3)
        assert np.allclose([_seconds(d.ContentTime) for d in members], times)
        if first_volume_times is None:
            first_volume_times = times
        else:
            assert np.allclose(times - first_volume_times, (v - 1) * tr, atol=1e-4)
    n = len(first_volume_times)
    step = tr / n
    expected_order = list(range(0, n, 2)) + list(range(1, n, 2))  # interleaved ascending
    assert np.allclose((first_volume_times - first_volume_times.min())[expected_order],
                       np.arange(n) * step, atol=1e-3)


@pytest.mark.slow
def test_dwi_carries_standard_diffusion_attributes(two_session_demo):
    _, sessions = two_session_demo
    datasets = _read(_by_description(sessions[0], "diff"))
    per_volume = {}
    for d in datasets:
        direction = tuple(d.DiffusionGradientOrientation) if "DiffusionGradientOrientation" in d else None
        per_volume.setdefault(int(d.TemporalPositionIdentifier), (float(d.DiffusionBValue), direction))
        assert d.DiffusionDirectionality == ("NONE" if direction is None else "DIRECTIONAL")
    values = [per_volume[v] for v in sorted(per_volume)]
    assert values[0] == (0.0, None)
    assert [b for b, _ in values[1:]] == [DWI_BVALUE] * 6
    assert [d for _, d in values[1:]] == [pytest.approx(d) for d in DWI_DIRECTIONS]
    # Diffusion weighting lowers the signal.
    b0 = np.mean([d.pixel_array.mean() for d in datasets if float(d.DiffusionBValue) == 0])
    dw = np.mean([d.pixel_array.mean() for d in datasets if float(d.DiffusionBValue) > 0])
    assert dw < 0.8 * b0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_fieldmap_pair_has_opposite_polarity_in_the_csa_header(two_session_demo):
    from nibabel.nicom import csareader

    _, sessions = two_session_demo
    polarity = {}
    for label in ("AP", "PA"):
        ds = pydicom.dcmread(_by_description(sessions[0], f"FieldMap_{label}").files[0])
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
        header = csareader.read(block[0x10].value)
        polarity[label] = csareader.get_scalar(header, "PhaseEncodingDirectionPositive")
        assert csareader.get_scalar(header, "BandwidthPerPixelPhaseEncode") > 0
        assert ds.InPlanePhaseEncodingDirection == "COL"
    assert polarity == {"AP": 1, "PA": 0}


@pytest.mark.slow
def test_screenshot_is_a_burned_in_secondary_capture(two_session_demo):
    _, sessions = two_session_demo
    ds = pydicom.dcmread(_by_description(sessions[0], "Screen Save").files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "OT"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    assert ds.BurnedInAnnotation == "YES"
    pixels = ds.pixel_array
    assert pixels.shape == (ds.Rows, ds.Columns, 3) and (pixels > 128).mean() > 0.001  # text is drawn


@pytest.mark.slow
def test_only_the_screenshot_is_a_burned_in_class(two_session_demo):
    """The screenshot is withheld by de-identification; every scan series, the localizer included, is not."""
    from bidsafe.deid.engine import burned_in_findings

    _, sessions = two_session_demo
    for series in sessions[0].series:
        classes = {name for f in series.files for name, _ in burned_in_findings(pydicom.dcmread(f))}
        if series.description == "Screen Save":
            assert {"burned_in_annotation", "secondary_capture", "screen_save", "colour", "no_geometry"} == classes
        else:
            assert classes == set(), series.description


@pytest.mark.slow
def test_junk_files_are_next_to_the_images(two_session_demo):
    _, sessions = two_session_demo
    junk = {p.name: p for p in sessions[0].junk}
    assert set(junk) == {"DICOMDIR", "export_note.txt", "LOCKFILE", "IM_TRUNCATED"}
    directory = pydicom.dcmread(junk["DICOMDIR"])
    assert directory.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    types = [r.DirectoryRecordType for r in directory.DirectoryRecordSequence]
    assert types.count("PATIENT") == 1 and types.count("SERIES") == len(sessions[0].series)
    assert junk["LOCKFILE"].stat().st_size == 0
    assert sessions[0].patient_id in junk["export_note.txt"].read_text()
    truncated = junk["IM_TRUNCATED"].read_bytes()
    assert len(truncated) == 300 and truncated[128:132] == b"DICM"
    # Cut inside the file meta: a reader gets no dataset body at all.
    cut = pydicom.dcmread(junk["IM_TRUNCATED"])
    assert "SOPInstanceUID" not in cut and "PixelData" not in cut


@pytest.mark.slow
def test_expected_mapping_is_declared_for_every_series(two_session_demo):
    _, sessions = two_session_demo
    mapping = {s.description: (s.expected_datatype, s.expected_suffix) for s in sessions[0].series}
    assert sorted(v for v in mapping.values() if v[0]) == [
        ("anat", "T1w"), ("anat", "T2w"), ("dwi", "dwi"), ("fmap", "epi"), ("fmap", "epi"), ("func", "bold")]
    assert sum(1 for v in mapping.values() if v[0] is None) == 2  # localizer, screenshot


# ------------------------------------------------------------------------------------------- registries


@pytest.mark.parametrize("subjects", [2, 4])
def test_consent_registry_levels(tmp_path, subjects):
    sessions = plan_sessions(tmp_path / "inbox", subjects=subjects, sessions=2, seed=7)
    path = write_consent_registry(sessions, tmp_path / "consent.tsv")
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert list(rows[0]) == ["patient_id", "study_id", "consent", "consent_form_id", "withdrawn"]
    assert len(rows) == subjects  # one row per participant, as a research team keeps it
    by_patient = {s.patient_id: s.subject_index for s in sessions}
    levels = {by_patient[r["patient_id"]]: r["consent"] for r in rows}
    expected = {1: "none", 2: "members", 3: "public", 4: "public"}
    assert levels == {i: expected[i] for i in range(1, subjects + 1)}
    assert [r["study_id"] for r in rows] == [f"BSF-{i:04d}" for i in range(1, subjects + 1)]
    assert not {r["study_id"] for r in rows} & {s.study_id for s in sessions}  # not the DICOM StudyID
    assert all(r["withdrawn"] == "" for r in rows)


def test_consenting_pair_shares_sex(tmp_path):
    sessions = plan_sessions(tmp_path / "inbox", subjects=4, sessions=1, seed=1)
    assert [s.sex for s in sorted(sessions, key=lambda s: s.subject_index)] == ["M", "M", "F", "F"]
    assert consent_level(7, 9) == "public"


def test_demographics_are_plausible(tmp_path):
    sessions = plan_sessions(tmp_path / "inbox", subjects=5, sessions=2, seed=7)
    path = write_demographics(sessions, tmp_path / "demographics.tsv", seed=7)
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert [r["patient_id"] for r in rows] == [s.patient_id for s in sessions if s.session_index == 1]
    for r in rows:
        assert 32 <= float(r["gestational_age_weeks"]) <= 42
        assert 1.5 <= float(r["birth_weight_kg"]) <= 5
        assert 50 <= float(r["head_circumference_cm"]) <= 62
        assert r["radiology_score"] in {"0", "1", "2", "3"}
