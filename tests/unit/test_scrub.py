"""Scrub: sidecar allow-list, NIfTI header text, BIDS names, scans.tsv from de-identified DICOM.

The session is made the way the pipeline makes it: DICOM written with pydicom, converted by the real
dcm2niix (`-ba y`, which still copies site, device, description and comment fields), arranged like dcm2bids.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bidsafe.errors import ConfigError, GuardError
from bidsafe.phi import PersonalValues, harvest_dataset
from bidsafe.scrub import (
    DEFAULT_ALLOWLIST,
    _Series,
    load_allowlist,
    match_series,
    rewrite_nifti_header,
    scrub_session,
)

DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
FAMILY, GIVEN, PATIENT_ID = "Quillfeather", "Marisol", "QX778812"
INSTITUTION = "Harrowgate Imaging Centre"


def _raw_identity(ds: Dataset) -> None:
    """What a raw export carries (and what dcm2niix would copy if de-identification missed it)."""
    ds.PatientName = f"{FAMILY}^{GIVEN}"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19800417"
    ds.InstitutionName = INSTITUTION
    ds.StationName = "HARROW01MR"
    ds.DeviceSerialNumber = "5512399"


def _write_series(folder: Path, number: int, description: str, date: str, time: str, slices: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
        _raw_identity(ds)
        # de-identification "C"-cleaning missed these on purpose: scrub is the second line of defence
        ds.SeriesDescription = ds.ProtocolName = description
        ds.ImageComments = f"for {GIVEN} {FAMILY}"
        ds.SeriesNumber, ds.InstanceNumber = number, i + 1
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = "080000"
        ds.AcquisitionTime = time
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = 2000, 30, 9, 3
        ds.ImagePositionPatient = [-4.0, -4.0, float(2 * i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = (np.arange(64, dtype=np.int16).reshape(8, 8) * (i + 1) + number).tobytes()
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)


def _dcm2niix(series_dir: Path, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(DCM2NIIX), "-ba", "y", "-z", "y", "-f", name, "-o", str(out_dir), str(series_dir)],
        check=True, capture_output=True,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not DCM2NIIX.exists():
        pytest.skip("the venv's dcm2niix is not installed")
    root = tmp_path_factory.mktemp("scrub")
    deid = root / "deid"  # de-identified DICOM: dates shifted (2023-11-10 instead of 2024-03-15)
    _write_series(deid / "series-2", 2, f"T1 MPRAGE {FAMILY}", "20231110", "101500")
    _write_series(deid / "series-5", 5, "fMRI rest", "20231110", "103012.5")
    _write_series(deid / "series-7", 7, "DTI 6dir", "20231110", "104500")
    raw = Dataset()
    _raw_identity(raw)
    raw.StudyDate = "20240315"
    raw.AccessionNumber = "ACC99123"
    values = PersonalValues(harvest_dataset(raw))

    conv = root / "convert"
    session = conv / "sub-01" / "ses-1"
    _dcm2niix(deid / "series-2", session / "anat", "sub-01_ses-1_T1w")
    _dcm2niix(deid / "series-5", session / "func", "sub-01_ses-1_task-rest_bold")
    _dcm2niix(deid / "series-7", session / "dwi", "sub-01_ses-1_dwi")
    (session / "dwi" / "sub-01_ses-1_dwi.bval").write_text("0 1000 1000 1000\n")
    (session / "dwi" / "sub-01_ses-1_dwi.bvec").write_text("0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    for sidecar in session.rglob("*.json"):  # what dcm2bids adds
        data = json.loads(sidecar.read_text())
        data["Dcm2bidsVersion"] = "3.3.1"
        if "task-rest" in sidecar.name:
            data["TaskName"] = "rest"
        sidecar.write_text(json.dumps(data, indent=2))
    (session / "sub-01_ses-1_scans.tsv").write_text("filename\tacq_time\nanat/x.nii.gz\t2024-03-15T10:15:00\n")
    (conv / "tmp_dcm2bids").mkdir()
    (conv / "tmp_dcm2bids" / "log.txt").write_text(f"/inbox/{FAMILY}_{GIVEN}/\n")  # must never be copied
    return {"root": root, "convert": conv, "deid": deid, "values_json": _save(root, values)}


def _save(root: Path, values: PersonalValues) -> Path:
    path = root / "values.json"
    path.write_text(values.to_json())
    return path


def _values(converted: dict[str, Path]) -> PersonalValues:
    return PersonalValues.from_json(converted["values_json"].read_text())


def test_scrub_session_end_to_end(converted: dict[str, Path], tmp_path: Path) -> None:
    values = _values(converted)
    out = tmp_path / "scrub"
    report = scrub_session(converted["convert"], out, values=values, deid_dir=converted["deid"])
    session = out / "sub-01" / "ses-1"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.json",
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.json",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz",
        "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.json",
        "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz",
        "sub-01/ses-1/sub-01_ses-1_scans.tsv",
    ]
    assert report.ignored_outside_session == 2  # dcm2bids' leftovers and its scans.tsv

    allowed = load_allowlist()
    t1 = json.loads((session / "anat" / "sub-01_ses-1_T1w.json").read_text())
    assert set(t1) <= set(allowed)
    # the surname is not a vocabulary token: the placeholder stands where it was
    assert t1["SeriesDescription"] == "T1 MPRAGE ANON" and t1["ProtocolName"] == "T1 MPRAGE ANON"
    assert t1["RepetitionTime"] == 2 and t1["EchoTime"] == 0.03 and t1["SeriesNumber"] == 2
    for gone in ("InstitutionName", "StationName", "DeviceSerialNumber", "ImageComments", "AcquisitionTime",
                 "Dcm2bidsVersion", "ConversionSoftware"):
        assert gone not in t1
    bold = json.loads((session / "func" / "sub-01_ses-1_task-rest_bold.json").read_text())
    assert bold["TaskName"] == "rest" and bold["RepetitionTime"] == 2

    by_path = {f.path: f for f in report.files}
    t1_report = by_path["sub-01/ses-1/anat/sub-01_ses-1_T1w.json"]
    assert {"InstitutionName", "StationName", "DeviceSerialNumber", "ImageComments", "AcquisitionTime",
            "Dcm2bidsVersion"} <= set(t1_report.dropped_keys)
    assert t1_report.cleaned_fields == ["SeriesDescription", "ProtocolName"]
    nii_report = by_path["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]
    assert {"descrip", "aux_file"} <= set(nii_report.header_fields_rewritten)

    # NIfTI header text rewritten, image unchanged
    for before in converted["convert"].rglob("*.nii.gz"):
        after = out / before.relative_to(converted["convert"])
        a, b = nib.load(before), nib.load(after)
        assert bytes(b.header["descrip"]).rstrip(b"\0") == b"bidsafe"
        assert bytes(b.header["aux_file"]).rstrip(b"\0") == b""
        assert bytes(a.header["aux_file"]).rstrip(b"\0") != b""  # dcm2niix put ImageComments there
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        assert np.array_equal(a.affine, b.affine)

    # scans.tsv: shifted date and acquisition time of each series, from the de-identified DICOM
    scans = (session / "sub-01_ses-1_scans.tsv").read_text().splitlines()
    assert scans == [
        "filename\tacq_time",
        "anat/sub-01_ses-1_T1w.nii.gz\t2023-11-10T10:15:00",
        "dwi/sub-01_ses-1_dwi.nii.gz\t2023-11-10T10:45:00",
        "func/sub-01_ses-1_task-rest_bold.nii.gz\t2023-11-10T10:30:12",
    ]
    assert report.acq_time_missing == []

    # nothing personal anywhere in the output: decompressed bytes, text, paths; nor in the report
    for path in out.rglob("*"):
        assert not values.find(path.relative_to(out).as_posix())
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            assert not values.find(data.decode("latin-1")), path.name
    assert not values.find(json.dumps(report.to_dict()))
    assert not values.find(str(report))


def test_output_bytes_for_bval_bvec_are_copied_exactly(converted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "scrub"
    scrub_session(converted["convert"], out, values=_values(converted), deid_dir=converted["deid"])
    for ext in ("bval", "bvec"):
        name = f"sub-01/ses-1/dwi/sub-01_ses-1_dwi.{ext}"
        assert (out / name).read_bytes() == (converted["convert"] / name).read_bytes()


def test_without_deid_dicom_acq_time_is_na(converted: dict[str, Path], tmp_path: Path) -> None:
    report = scrub_session(converted["convert"], tmp_path / "o", values=_values(converted))
    rows = (tmp_path / "o" / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[1] for r in rows] == ["n/a", "n/a", "n/a"]
    assert len(report.acq_time_missing) == 3


@pytest.mark.parametrize(
    "bad_name",
    [
        f"sub-01_ses-1_acq-{FAMILY}_T1w.nii.gz",  # personal value in a valid-looking entity
        "20240315_T1_MPRAGE_2.nii.gz",  # dcm2niix default name: protocol and study date
        "sub-01_ses-1_T1w.png",  # unexpected file type
        "sub-02_ses-1_T1w.json",  # another subject's label
    ],
)
def test_non_bids_or_personal_names_stop_the_stage(
    converted: dict[str, Path], tmp_path: Path, bad_name: str
) -> None:
    conv = tmp_path / "convert"
    shutil.copytree(converted["convert"], conv)
    source = conv / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
    shutil.copyfile(source, source.with_name(bad_name))
    out = tmp_path / "scrub"
    with pytest.raises(GuardError) as caught:
        scrub_session(conv, out, values=_values(converted), deid_dir=converted["deid"])
    message = str(caught.value)
    assert FAMILY.lower() not in message.lower() and "20240315" not in message
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scrub")]


def test_failed_rerun_keeps_previous_output(converted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "scrub"
    scrub_session(converted["convert"], out, values=_values(converted), deid_dir=converted["deid"])
    before = sorted(p.name for p in out.rglob("*"))
    conv = tmp_path / "convert"
    shutil.copytree(converted["convert"], conv)
    (conv / "sub-01" / "ses-1" / "anat" / "notes.txt").write_text("x")
    with pytest.raises(GuardError):
        scrub_session(conv, out, values=_values(converted), deid_dir=converted["deid"])
    assert sorted(p.name for p in out.rglob("*")) == before


def test_personal_key_names_are_withheld_in_the_report(converted: dict[str, Path], tmp_path: Path) -> None:
    conv = tmp_path / "convert"
    shutil.copytree(converted["convert"], conv)
    sidecar = conv / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.json"
    data = json.loads(sidecar.read_text())
    data[f"Note{FAMILY}"] = "x"
    data["SeriesDescription"] = [f"{GIVEN} {FAMILY} T1", {"inner": PATIENT_ID}]
    sidecar.write_text(json.dumps(data))
    out = tmp_path / "scrub"
    report = scrub_session(conv, out, values=_values(converted), deid_dir=converted["deid"])
    entry = next(f for f in report.files if f.path.endswith("T1w.json"))
    assert "<withheld key name>" in entry.dropped_keys
    assert not any(FAMILY.lower() in k.lower() for k in entry.dropped_keys)
    kept = json.loads((out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.json").read_text())
    # vocabulary first (nested keys too): placeholders where the name and the ID were
    assert kept["SeriesDescription"] == ["ANON ANON T1", {"ANON": "ANON"}]


def _with_scaling(path: Path, slope: float, inter: float) -> None:
    """Patch scl_slope/scl_inter in a written .nii (nibabel recomputes them on save)."""
    raw = bytearray(path.read_bytes())
    raw[112:120] = np.array([slope, inter], dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))


def test_rewrite_nifti_header_drops_extensions_and_keeps_voxels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(-2000, 2000, size=(5, 6, 7, 3)).astype(np.int16)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-5, 7, 11]
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"Quillfeather 1980-04-17"
    image.header["intent_name"] = b"QX778812"
    image.header["db_name"] = b"harrow"
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Quillfeather^Marisol"))
    plain = tmp_path / "in.nii"
    nib.save(image, plain)
    _with_scaling(plain, 1.5, -3.0)
    src = tmp_path / "in.nii.gz"
    src.write_bytes(gzip.compress(plain.read_bytes()))
    in_offset = int(nib.Nifti1Header.from_fileobj(io.BytesIO(plain.read_bytes()))["vox_offset"])
    assert in_offset > 352  # the extension sits before the voxels

    dst = tmp_path / "out.nii.gz"
    changed = rewrite_nifti_header(src, dst)
    assert set(changed) == {"descrip", "intent_name", "db_name", "extensions"}
    out = nib.load(dst)
    assert len(out.header.extensions) == 0
    assert bytes(out.header["descrip"]).rstrip(b"\0") == b"bidsafe"
    assert bytes(out.header["intent_name"]).rstrip(b"\0") == b""
    assert np.array_equal(out.dataobj.get_unscaled(), data)
    assert np.array_equal(out.get_fdata(), data * 1.5 - 3.0)
    assert (out.dataobj.slope, out.dataobj.inter) == (1.5, -3.0)
    assert np.array_equal(out.affine, affine)
    written = gzip.decompress(dst.read_bytes())
    assert b"quillfeather" not in written.lower() and b"qx778812" not in written.lower()
    assert written[352:] == plain.read_bytes()[in_offset:]  # voxel bytes copied as they were
    # uncompressed .nii too
    rewrite_nifti_header(plain, tmp_path / "out.nii")
    assert (tmp_path / "out.nii").read_bytes()[352:] == plain.read_bytes()[in_offset:]


def test_shipped_allowlist_covers_validator_fields_and_drops_identity() -> None:
    allowed = load_allowlist(DEFAULT_ALLOWLIST)
    required = {"RepetitionTime", "EchoTime", "EchoTime1", "EchoTime2", "SliceTiming", "PhaseEncodingDirection",
                "TotalReadoutTime", "EffectiveEchoSpacing", "TaskName", "IntendedFor", "FlipAngle",
                "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName", "ImageType", "Units"}
    assert required <= set(allowed)
    identity = {"InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
                "DeviceSerialNumber", "ImageComments", "AcquisitionTime", "AcquisitionDateTime", "StudyDescription",
                "ProcedureStepDescription", "PatientName", "PatientID", "BidsGuess", "StudyInstanceUID"}
    assert not identity & set(allowed)
    assert {k for k, v in allowed.items() if v.free_text} >= {"SeriesDescription", "ProtocolName"}
    assert all(v.why for v in allowed.values())


@pytest.mark.parametrize(
    "text, problem",
    [
        ("- {key: EchoTime}\n", "why"),
        ("- {key: EchoTime, why: te}\n- {key: EchoTime, why: again}\n", "twice"),
        ("- {key: Echo Time, why: te}\n", "key"),
        ("EchoTime: te\n", "list"),
        ("- {key: EchoTime, why: te, free_text: maybe}\n", "free_text"),
    ],
)
def test_allowlist_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "allow.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_allowlist(path)


def test_match_series_breaks_ties_by_description_then_time() -> None:
    from datetime import datetime

    a = _Series("1.2.3", 5, "fMRI rest", datetime(2023, 1, 1, 10, 0, 0))
    b = _Series("1.2.4", 5, "fMRI rest_SBRef", datetime(2023, 1, 1, 9, 59, 0))
    c = _Series("1.2.5", 5, "fMRI rest", datetime(2023, 1, 1, 11, 0, 0))
    series = [a, b, c]
    assert match_series({"SeriesNumber": 5, "SeriesDescription": "fMRI rest_SBRef"}, series) is b
    assert match_series({"SeriesNumber": 5, "SeriesDescription": "fMRI rest", "AcquisitionTime": "10:59:58.5"},
                        series) is c
    assert match_series({"SeriesNumber": 5, "SeriesDescription": "fMRI rest"}, series) is None  # ambiguous
    assert match_series({"SeriesNumber": 9}, series) is None
    assert match_series({}, series) is None


def test_scrub_does_not_modify_its_input(converted: dict[str, Path], tmp_path: Path) -> None:
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in converted["convert"].rglob("*") if p.is_file()}
    scrub_session(converted["convert"], tmp_path / "o", values=_values(converted), deid_dir=converted["deid"])
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in converted["convert"].rglob("*") if p.is_file()}
    assert before == after
    assert os.access(tmp_path / "o", os.R_OK)
