"""Leak scan: every planted personal value is found wherever it hides; a clean dataset has no hit."""

from __future__ import annotations

import ast
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from bidsafe import cli
from bidsafe.phi import MIN_NEEDLE_LENGTH, PersonalValue, PersonalValues, harvest_dataset
from bidsafe.release import leakread, leakscan, leakvocab
from bidsafe.release.gates import gate_leak_scan
from bidsafe.release.leakforms import fold, searchable
from bidsafe.release.leakscan import (
    BINARY_NEEDLE_MIN,
    VOXEL_NEEDLE_MIN,
    Scanner,
    harvest_source,
    leak_scan,
)

FAMILY, GIVEN = "Quillfeather", "Marisol"


def _identity() -> Dataset:
    ds = Dataset()
    ds.PatientName = f"{FAMILY}^{GIVEN}^Anne"
    ds.PatientID = "QX-778812"
    ds.PatientBirthDate = "19800417"
    ds.PatientAddress = "17 Wrenfield Lane, Oakhurst, OX9 4TT"
    ds.PatientTelephoneNumbers = "+44 (0)20 7946 0321"
    ds.InstitutionName = "Harrowgate Imaging Centre"
    ds.StationName = "HARROWMR01"
    ds.DeviceSerialNumber = "5512399"
    ds.AccessionNumber = "ACC99123"
    ds.StudyDate = "20240315"
    ds.ReferringPhysicianName = "Voskuijlen^Tamsin"
    ds.StudyInstanceUID = "1.3.6.1.4.1.99999.20240315.778812"
    ds.SeriesInstanceUID = "1.3.6.1.4.1.99999.20240315.778812.7"
    request = Dataset()
    request.PatientName = f"{FAMILY}^{GIVEN}"
    request.RequestingPhysician = "Ostrowiczka^Ludmila"
    ds.RequestAttributesSequence = [request]
    return ds


VALUES = PersonalValues(harvest_dataset(_identity()))


# ------------------------------------------------------------------------------------------- clean dataset


def _nifti_bytes(shape: tuple[int, ...], seed: int, descrip: bytes = b"bidsafe") -> bytes:
    rng = np.random.default_rng(seed)
    image = nib.Nifti1Image(rng.integers(0, 1200, size=shape).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header["descrip"] = descrip
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer), "header": nib.FileHolder(fileobj=buffer)})
    return buffer.getvalue()


def _build_clean(root: Path) -> None:
    """A tiny released-looking BIDS tree with logs: shifted dates, new UIDs, ordinary words and numbers."""
    session = root / "release" / "sub-01" / "ses-1"
    (session / "anat").mkdir(parents=True)
    (session / "func").mkdir()
    (session / "dwi").mkdir()
    release = root / "release"
    (release / "dataset_description.json").write_text(json.dumps({
        "Name": "bidsafe demo release", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
        "Authors": ["bidsafe demo team"], "GeneratedBy": [{"Name": "bidsafe", "Version": "0.1.0"}],
    }, indent=2))
    (release / "README").write_text("Recipients agree not to attempt re-identification and not to pass data on.\n"
                                    "Participants were asleep or resting; see CHANGES.\n")
    (release / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t43\n")
    anat = {"Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "GE", "SeriesDescription": "T1 MPRAGE",
            "RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9, "SeriesNumber": 2,
            "SliceTiming": [0.0, 0.0778812, 0.19800417], "ImageType": ["ORIGINAL", "PRIMARY", "M"]}
    (session / "anat" / "sub-01_ses-1_T1w.json").write_text(json.dumps(anat, indent=2))
    (session / "anat" / "sub-01_ses-1_T1w.nii.gz").write_bytes(gzip.compress(_nifti_bytes((12, 12, 10), 1), mtime=0))
    bold = {"TaskName": "rest", "RepetitionTime": 2.0, "PhaseEncodingDirection": "j-",
            "IntendedFor": ["bids::sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz"]}
    (session / "func" / "sub-01_ses-1_task-rest_bold.json").write_text(json.dumps(bold))
    (session / "func" / "sub-01_ses-1_task-rest_bold.nii.gz").write_bytes(
        gzip.compress(_nifti_bytes((8, 8, 6, 5), 2), mtime=0)
    )
    (session / "dwi" / "sub-01_ses-1_dwi.bval").write_text("0 1000 1000\n")
    (session / "dwi" / "sub-01_ses-1_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    (session / "sub-01_ses-1_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_ses-1_T1w.nii.gz\t2023-11-10T10:15:00\n"
    )
    (release / "derivatives").mkdir()
    (release / "derivatives" / "uids.txt").write_text("2.25.1234567890123456789 2.25.98765432109876\n")
    logs = root / "logs" / "scrub"
    logs.mkdir(parents=True)
    (logs / "sub-01_ses-1.log").write_text("2025-01-02 10:00:00 INFO bidsafe: scrub: sub-01 ses-1: 8 files\n")


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leak")
    _build_clean(root)
    return root


def test_clean_dataset_has_no_hit(clean_tree: Path) -> None:
    report = leak_scan(clean_tree / "release", VALUES, also=[clean_tree / "logs"])
    assert report.hits == []
    assert report.clean and report.files == 12 and report.bytes > 0
    assert report.needles > 50


# ------------------------------------------------------------------------------------------- planting


def _eligible(form: str, minimum: int) -> bool:
    return len(form) >= max(minimum, MIN_NEEDLE_LENGTH) and searchable(fold(form))


def _owners(form: str) -> set[str]:
    return {v.field for v in VALUES if form in v.renderings()}


def _plant(root: Path, place: str, form: str) -> str:
    """Put `form` somewhere in the tree; returns the `where` prefix a hit must carry."""
    release = root / "release"
    anat = release / "sub-01" / "ses-1" / "anat"
    if place == "json-value":
        path = anat / "sub-01_ses-1_T1w.json"
        data = json.loads(path.read_text())
        data["SeriesDescription"] = f"T1 {form} MPRAGE"
        path.write_text(json.dumps(data))  # ensure_ascii: non-ASCII is escaped, only a decoding scan sees it
        return "json:SeriesDescription"
    if place == "json-key":
        path = release / "dataset_description.json"
        data = json.loads(path.read_text())
        data["GeneratedBy"][0][f"Note {form}"] = "x"
        path.write_text(json.dumps(data, ensure_ascii=False))
        return "json:GeneratedBy[0].Note <withheld>"
    if place == "tsv-cell":
        path = release / "participants.tsv"
        path.write_text(path.read_text() + f"sub-02\t{form}\t51\n")
        return "tsv:sex"
    if place == "nifti-descrip":
        path = anat / "sub-01_ses-1_T1w.nii.gz"
        path.write_bytes(gzip.compress(_nifti_bytes((12, 12, 10), 1, descrip=form.encode("utf-8")[:79])))
        return "nifti-header:descrip"
    if place == "path-dir":
        (release / "sub-01" / f"ses-{form}").mkdir()
        return "path"
    if place == "path-file":
        (anat / f"sub-01_{form}_T1w.json").write_text("{}")
        return "path"
    if place == "gzip-member":
        (release / "sub-01" / "ses-1" / "sub-01_ses-1_physio.tsv.gz").write_bytes(
            gzip.compress(f"onset\tnote\n0.1\t{form}\n".encode())
        )
        return "tsv:note"
    if place == "gzip-fname":
        buffer = io.BytesIO()
        with gzip.GzipFile(filename=f"{form}.nii", mode="wb", fileobj=buffer) as handle:
            handle.write(_nifti_bytes((4, 4, 4), 5))
        (release / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz").write_bytes(buffer.getvalue())
        return "gzip-header"
    if place == "raw-bytes":
        rng = np.random.default_rng(len(form))
        blob = rng.integers(0, 256, size=20000, dtype=np.uint8).tobytes()
        (release / "derivatives" / "blob.bin").write_bytes(blob[:7000] + b"\x00" + form.encode() + b"\x00" + blob)
        return "bytes"
    if place == "nifti-voxels":
        raw = bytearray(_nifti_bytes((16, 16, 8), 3))
        needle = b"\x00" + form.encode() + b"\x00"
        raw[1000 : 1000 + len(needle)] = needle
        (release / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.nii.gz").write_bytes(
            gzip.compress(bytes(raw))
        )
        return "nifti-data"
    if place == "log-text":
        (root / "logs" / "scrub" / "sub-01_ses-1.log").write_text(f"INFO converting {form} series\n")
        return "text"
    raise AssertionError(place)


PLACES = {
    "json-value": MIN_NEEDLE_LENGTH,
    "json-key": MIN_NEEDLE_LENGTH,
    "tsv-cell": MIN_NEEDLE_LENGTH,
    "nifti-descrip": MIN_NEEDLE_LENGTH,
    "path-dir": MIN_NEEDLE_LENGTH,
    "path-file": MIN_NEEDLE_LENGTH,
    "gzip-member": MIN_NEEDLE_LENGTH,
    "gzip-fname": MIN_NEEDLE_LENGTH,
    "log-text": MIN_NEEDLE_LENGTH,
    "raw-bytes": BINARY_NEEDLE_MIN,
    "nifti-voxels": VOXEL_NEEDLE_MIN,
}
FORMS = sorted({form for value in VALUES for form in value.renderings()})


def _plantable(place: str, form: str) -> bool:
    if not _eligible(form, PLACES[place]):
        return False  # too short to be looked for in this place (documented thresholds)
    if place in ("path-dir", "path-file", "gzip-fname") and "/" in form:
        return False  # a file name cannot hold a slash
    # UIDs are looked for in text and headers, not in voxel data (documented)
    return not (place == "nifti-voxels" and {v.category for v in VALUES if form in v.renderings()} == {"uid"})


PLANTINGS = [(place, form) for place in sorted(PLACES) for form in FORMS if _plantable(place, form)]


def test_plantings_cover_every_place_and_value() -> None:
    assert {place for place, _ in PLANTINGS} == set(PLACES)
    planted_fields = {field for _, form in PLANTINGS for field in _owners(form)}
    assert planted_fields == {v.field for v in VALUES}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(planting=st.sampled_from(PLANTINGS), upper=st.booleans())
def test_every_planted_value_is_found(clean_tree: Path, planting: tuple[str, str], upper: bool) -> None:
    place, form = planting
    planted = form.upper() if upper else form
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(clean_tree, root, dirs_exist_ok=True)
        where = _plant(root, place, planted)
        report = leak_scan(root / "release", VALUES, also=[root / "logs"])
    owners = _owners(form)
    matching = [h for h in report.hits if h.where.startswith(where)]
    assert matching, f"{place}: planted value of {sorted(owners)} not found; hits: {report.hits}"
    # The clean tree has no hit, so every hit comes from the planted value; none may carry it.
    everything = json.dumps(report.to_dict()).lower()
    for token in {form.lower(), json.dumps(form)[1:-1].lower()}:
        assert token not in everything


def test_hits_name_fields_and_withhold_values_in_paths(clean_tree: Path, tmp_path: Path) -> None:
    shutil.copytree(clean_tree, tmp_path, dirs_exist_ok=True)
    anat = tmp_path / "release" / "sub-01" / "ses-1" / "anat"
    target = anat / f"{FAMILY}_{GIVEN}_19800417"
    target.mkdir()
    (target / "note.json").write_text(json.dumps({"Comment": "ACC99123", "Accession": "ACC99123"}))
    report = leak_scan(tmp_path / "release", VALUES)
    lines = {h.line() for h in report.hits}
    folder = "sub-01/ses-1/anat/<withheld>_<withheld>"  # the name pair, then the birth date
    assert f"{folder}: path: PatientName (name)" in lines
    assert f"{folder}: path: PatientBirthDate (date)" in lines
    assert f"{folder}/note.json: json:Comment: AccessionNumber (id)" in lines
    assert f"{folder}/note.json: json:Accession: AccessionNumber (id)" in lines
    assert not any(FAMILY.lower() in line.lower() or "19800417" in line for line in lines)


def test_boundaries_numbers_and_words() -> None:
    scanner = Scanner(PersonalValues(harvest_dataset(_identity())))
    fields = lambda text: {v.field for v in scanner.in_text(text)}  # noqa: E731
    assert fields("EchoTime 0.19800417") == set()  # a decimal, not a birth date
    assert fields("born 1980-04-17.") == {"PatientBirthDate"}
    assert fields("17.04.1980") == {"PatientBirthDate"}
    assert fields("id 5512399x") == {"DeviceSerialNumber"}  # a letter does not shield digits
    assert fields("serial 155123990") == set()  # digits continue the number: another number
    assert fields("xQUILLFEATHERx") == {"PatientName"}  # long names count inside words
    assert fields("anneal annex") == set()  # "Anne" (short) only as a word
    assert fields("Dr anne.") == {"PatientName"}
    assert fields("ref 2.25.1.3.6.1.4.1.99999.20240315.778812.7.1") >= {"SeriesInstanceUID"}  # UID inside a UID
    assert fields("call 4402079460321 now") == {"PatientTelephoneNumbers"}
    assert fields("T1_20240315101500_2.nii") == {"StudyDate"}  # a date running on into a time (dcm2niix %t)
    assert fields("x_120240315_2") == set()


def test_chunk_seams_lose_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(leakread, "CHUNK_BYTES", 64)
    values = PersonalValues(harvest_dataset(_identity()))
    needle = b"harrowgate imaging centre"
    for offset in range(0, 140, 7):
        blob = bytearray(b"\x01" * 400)
        blob[offset : offset + len(needle)] = needle
        path = tmp_path / f"blob{offset}.bin"
        path.write_bytes(bytes(blob))
        hits, _, _ = leakscan.scan_tree(tmp_path, Scanner(values))
        assert {h.field for h in hits if h.file == path.name} == {"InstitutionName"}, offset
        path.unlink()


def test_voxel_scan_can_be_skipped(tmp_path: Path) -> None:
    raw = bytearray(_nifti_bytes((16, 16, 8), 3))
    raw[2000:2027] = b"\x00harrowgate imaging centre\x00"
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    assert [h.where for h in leak_scan(tmp_path, VALUES).hits] == ["nifti-data"]
    assert leak_scan(tmp_path, VALUES, scan_voxels=False).hits == []


def test_empty_values_never_pass_as_clean(tmp_path: Path) -> None:
    with pytest.raises(leakscan.ConfigError):
        leak_scan(tmp_path, PersonalValues())


# ------------------------------------------------------------------------------------------- harvest + CLI


def _write_dicom(path: Path, ds: Dataset, instance_uid: str = "1.3.6.1.4.1.99999.1.1.1") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _raw_source(root: Path) -> Path:
    raw = root / "inbox" / "export" / "series1"
    ds = _identity()
    other = Dataset()
    other.PatientID = "NHS4455667"
    ds.OtherPatientIDsSequence = [other]
    pacs = ds.private_block(0x0033, "MITRA OBJECT UTF8 ATTRIBUTES 1.0", create=True)
    pacs.add_new(0x13, "OB", "Quillfeather^Marisolé".encode())
    pacs.add_new(0x17, "OB", b"19800417")
    patient_group = ds.private_block(0x0011, "ACME PATIENT INFO", create=True)
    patient_group.add_new(0x01, "LO", "Kestrelmoor Ward")
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x08, "CS", "IMAGE NUM 4")  # physics block: not harvested
    _write_dicom(raw / "IM0001.dcm", ds)
    (raw / "notes.txt").write_text("not dicom")
    (raw / "empty").write_bytes(b"")
    (raw / "truncated.dcm").write_bytes((raw / "IM0001.dcm").read_bytes()[:200])
    return root / "inbox"


def test_harvest_source_finds_nested_and_private_block_values(tmp_path: Path) -> None:
    values = harvest_source(_raw_source(tmp_path))
    found = {(v.field, v.value) for v in values}
    assert ("RequestAttributesSequence>PatientName", f"{FAMILY}^{GIVEN}") in found
    assert ("RequestAttributesSequence>RequestingPhysician", "Ostrowiczka^Ludmila") in found
    assert ("OtherPatientIDsSequence>PatientID", "NHS4455667") in found
    assert ("(0033,1013)", "Quillfeather^Marisolé") in found
    assert ("(0033,1017)", "19800417") in found
    assert ("(0011,1001)", "Kestrelmoor Ward") in found
    assert not any(v.value == "IMAGE NUM 4" for v in values)
    categories = {v.field: v.category for v in values}
    assert categories["(0033,1013)"] == "name" and categories["(0033,1017)"] == "date"


def test_cli_exit_codes_and_output_hold_no_values(
    clean_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _raw_source(tmp_path)
    release = tmp_path / "release"
    shutil.copytree(clean_tree / "release", release)
    report_path = tmp_path / "leak.json"
    assert cli.main(["leak-scan", str(release), "--source", str(source), "--report", str(report_path),
                     "--also", str(clean_tree / "logs")]) == 0
    assert json.loads(report_path.read_text())["clean"] is True

    (release / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.json").write_text(
        json.dumps({"SeriesDescription": "T1 Kestrelmoor Ward", "ImageComments": "Marisolé"})
    )
    capsys.readouterr()
    assert cli.main(["leak-scan", str(release), "--source", str(source), "--report", str(report_path)]) == 1
    out = capsys.readouterr()
    assert "sub-01/ses-1/anat/sub-01_ses-1_T1w.json: json:SeriesDescription: (0011,1001) (private)" in out.out
    assert "json:ImageComments: (0033,1013) (name)" in out.out
    report = json.loads(report_path.read_text())
    # "Marisol" (7 letters) also inside "Marisolé"; and "é" in released metadata is non-ASCII (a rule of its own)
    assert report["clean"] is False and len(report["hits"]) == 4
    assert "json:ImageComments: - (non-ascii)" in out.out
    assert "json:ImageComments: PatientName (name)" in out.out
    for text in (out.out, out.err, report_path.read_text()):
        assert "kestrelmoor" not in text.lower() and "marisol" not in text.lower()

    assert cli.main(["leak-scan", str(tmp_path / "missing"), "--source", str(source)]) == 2
    assert cli.main(["leak-scan", str(release), "--source", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty_source"
    empty.mkdir()
    assert cli.main(["leak-scan", str(release), "--source", str(empty)]) == 2


def test_dcm2niix_output_of_raw_dicom_is_caught(tmp_path: Path) -> None:
    """The known trap end to end: dcm2niix on raw DICOM puts names, dates, site and comments into file
    names, sidecars and the NIfTI header; the scan names each place."""
    dcm2niix = Path(sys.executable).parent / "dcm2niix"
    if not dcm2niix.exists():
        pytest.skip("the venv's dcm2niix is not installed")
    raw = tmp_path / "inbox"
    for index in range(3):
        ds = _identity()
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, index + 1
        ds.SeriesDescription = ds.ProtocolName = "t1 mprage"
        ds.ImageComments = f"{GIVEN} {FAMILY}"
        ds.AcquisitionDate, ds.AcquisitionTime, ds.StudyTime = "20240315", "101500", "101500"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(index)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = (np.arange(64, dtype=np.uint16) * (index + 1)).tobytes()
        _write_dicom(raw / f"IM{index}.dcm", ds, instance_uid=f"1.3.6.1.4.1.99999.1.1.{index + 1}")
    out = tmp_path / "converted"
    out.mkdir()
    subprocess.run([str(dcm2niix), "-ba", "y", "-z", "y", "-f", "%n_%p_%t", "-o", str(out), str(raw)],
                   check=True, capture_output=True)
    report = leak_scan(out, harvest_source(raw))
    places = {(h.where, h.field) for h in report.hits}
    assert ("path", "PatientName") in places  # %n
    assert ("path", "AcquisitionDate") in places  # %t: the date runs on into the time
    assert ("json:InstitutionName", "InstitutionName") in places
    assert ("json:ImageComments", "PatientName") in places
    assert ("nifti-header:aux_file", "PatientName") in places  # dcm2niix copies ImageComments there
    assert all("<withheld>" in h.file for h in report.hits)
    assert not any(FAMILY.lower() in h.line().lower() for h in report.hits)


# ------------------------------------------------------------------------------------------- independence

GATE_MODULES = ("leakscan.py", "leaktree.py", "leakfile.py", "leakread.py", "leakmatch.py", "leakhits.py",
                "leakharvest.py", "leakcli.py", "leakforms.py", "leakvocab.py", "leakallow.py", "leakcache.py",
                "gates.py")
RELEASE_SRC = Path(leakscan.__file__).resolve().parent
# Collection, not matching: the only names the gate may take from the cleaner's packages.
ALLOWED_CLEANER_IMPORTS = {"bidsafe.phi": {"harvest_files"}}


def _cleaner_imports(path: Path) -> list[str]:
    """Names the module imports from bidsafe.phi / bidsafe.deid / bidsafe.scrub beyond the allowed ones."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad: list[str] = []
    cleaners = ("bidsafe.phi", "bidsafe.deid", "bidsafe.scrub")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith(cleaners)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if module == "bidsafe":
                bad += [f"bidsafe.{a.name}" for a in node.names if a.name in ("phi", "deid", "scrub")]
            elif module.startswith(cleaners):
                allowed = ALLOWED_CLEANER_IMPORTS.get(module, set())
                bad += [f"{module}.{a.name}" for a in node.names if a.name not in allowed]
    return bad


def test_gate_modules_import_no_matching_code_of_the_cleaner(tmp_path: Path) -> None:
    for name in GATE_MODULES:
        assert _cleaner_imports(RELEASE_SRC / name) == [], name
    # the check itself can fail: a module importing the cleaner's renderings is caught
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from bidsafe.phi import PersonalValues, harvest_files\nimport bidsafe.deid.text\n"
                      "from bidsafe import scrub\n")
    assert _cleaner_imports(sneaky) == ["bidsafe.phi.PersonalValues", "bidsafe.deid.text", "bidsafe.scrub"]


# ------------------------------------------------------------------------------------------- issue 9 classes

VOCABULARY_YAML = """\
kind: vocabulary
placeholder: "<token>"
groups:
  sequences: {reason: "MR sequence words", tokens: [ep2d, epi, asc, ax, dwi, t1, t2, mprage, bold, field,
                                                     mapping, gre, swan, rest, flair]}
  directions: {reason: "phase encoding", tokens: [pe, ap, pa, j, i, k]}
  dicom: {reason: "DICOM codes", tokens: [original, primary, m, p, nd, mr, ge, siemens, norm]}
patterns:
  small_numbers: {reason: "counts and sizes", regex: "[0-9]{1,3}"}
"""

# One fake identity per issue-9 class: the raw harvested rows (what the gate reads), no bidsafe.phi needed.
ROWS = [
    {"category": "name", "field": "PatientName", "value": "Müller^Jürgen"},
    {"category": "id", "field": "PatientID", "value": "0012345678"},
    {"category": "id", "field": "OtherPatientIDsSequence>PatientID", "value": "8842QX"},
    {"category": "date", "field": "PatientBirthDate", "value": "19650704"},
    {"category": "date", "field": "RequestAttributesSequence>PatientBirthDate", "value": "19710317"},
    {"category": "date", "field": "StudyDate", "value": "20230501"},
    {"category": "name", "field": "PatientMotherBirthName", "value": "Ørsted^Johanna"},
    {"category": "name", "field": "ReferringPhysicianName", "value": "山田^太郎"},
    {"category": "name", "field": "OperatorsName", "value": "Zqxwv^Lee"},
]

# (released text, the fields the gate must name): the table of issue 9 and its bullets.
CLASSES = {
    "transliterated surname, ID without leading zeros": ("Ax DWI Mueller 12345678", {"PatientName", "PatientID"}),
    "transliterated given name, birth date with month name": ("Juergen 04-Jul-1965",
                                                              {"PatientName", "PatientBirthDate"}),
    "birth date without zero padding": ("EPI PE=AP 17.3.1971", {"RequestAttributesSequence>PatientBirthDate"}),
    "ID written with spaces": ("EPI PE=AP PID 8842 QX", {"OtherPatientIDsSequence>PatientID"}),
    "UTF-8 read as Latin-1 (Latin)": ("EPI_asc \u00c3\x98rsted2", {"PatientMotherBirthName"}),
    "UTF-8 read as Latin-1 (CJK)": ("EPI_asc \u00e5\u00b1\u00b1\u00e7\x94\u00b0", {"ReferringPhysicianName"}),
    "UTF-8 read as cp1252": ("EPI_asc \u00c3\u02dcrsted2", {"PatientMotherBirthName"}),
    "scan date with underscores": ("rest 2023_05_01", {"StudyDate"}),
    "scan date with month name, no padding": ("rest 1-May-2023", {"StudyDate"}),
    "name + digit": ("ep2d Johanna1", {"PatientMotherBirthName"}),
    "fresh-looking name + digit": ("Zqxwv2 bold", {"OperatorsName"}),
    "diacritics removed": ("t1 Orsted", {"PatientMotherBirthName"}),
    "Nordic ASCII spelling": ("t1 Oersted", {"PatientMotherBirthName"}),
    "CJK as written": ("t1 山田", {"ReferringPhysicianName"}),
    "CJK transliterated": ("t1 ShanTian", {"ReferringPhysicianName"}),
    "two-digit year, month first": ("dwi 07/04/65", {"PatientBirthDate"}),
    "case and compact date": ("MUELLER_19650704", {"PatientName", "PatientBirthDate"}),
}


def _vocabulary(root: Path) -> Path:
    path = root / "vocabulary.yaml"
    path.write_text(VOCABULARY_YAML)
    return path


def _plain_nifti(descrip: bytes = b"", extension: bytes | None = None) -> bytes:
    image = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    image.header["descrip"] = descrip
    if extension is not None:
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, extension))
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer), "header": nib.FileHolder(fileobj=buffer)})
    return gzip.compress(buffer.getvalue(), mtime=0)


def _small_release(root: Path) -> Path:
    """A clean release: every sidecar string under sub-*/ is vocabulary text, everything ASCII."""
    release = root / "release"
    func = release / "sub-01" / "ses-1" / "func"
    fmap = release / "sub-01" / "ses-1" / "fmap"
    func.mkdir(parents=True)
    fmap.mkdir()
    (release / "dataset_description.json").write_text(json.dumps({"Name": "demo", "BIDSVersion": "1.10.0"}))
    (release / "participants.tsv").write_text("participant_id\tage\nsub-01\t43\n")
    bold = "sub-01_ses-1_task-rest_bold"
    (func / f"{bold}.json").write_text(json.dumps({
        "SeriesDescription": "ep2d_bold", "TaskName": "rest", "Modality": "MR", "Manufacturer": "GE",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "PhaseEncodingDirection": "j-", "EchoTime": 0.03,
        "SliceTiming": [0.0, 0.19650704, 0.12345678],
    }))
    (func / f"{bold}.nii.gz").write_bytes(_plain_nifti(b"TE=30"))
    (fmap / "sub-01_ses-1_epi.json").write_text(json.dumps({
        "SeriesDescription": "gre_field_mapping", "IntendedFor": [f"bids::sub-01/ses-1/func/{bold}.nii.gz"],
    }))
    (func.parent / "sub-01_ses-1_scans.tsv").write_text(
        f"filename\tacq_time\nfunc/{bold}.nii.gz\t1900-01-01T10:00:00\n"
    )
    return release


@pytest.fixture(scope="module")
def small_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    _small_release(root)
    _vocabulary(root)
    return root


def test_small_release_is_clean_with_the_vocabulary(small_release: Path) -> None:
    report = leak_scan(small_release / "release", ROWS, vocabulary=[small_release / "vocabulary.yaml"])
    assert report.hits == []
    assert report.rules == ["personal values", "non-ascii", "non-vocabulary token"]


def _plant_class(release: Path, place: str, text: str) -> str:
    func = release / "sub-01" / "ses-1" / "func"
    sidecar = func / "sub-01_ses-1_task-rest_bold.json"
    if place in ("json-value", "json-value-escaped"):
        data = json.loads(sidecar.read_text())
        data["SeriesDescription"] = text
        sidecar.write_text(json.dumps(data, ensure_ascii=place == "json-value-escaped"))
        return "json:SeriesDescription"
    if place == "tsv-cell":
        path = release / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv"
        path.write_text(path.read_text() + f"{text}\t1900-01-01T10:00:00\n")
        return "tsv:filename"
    if place == "nifti-descrip":
        (func / "sub-01_ses-1_task-rest_bold.nii.gz").write_bytes(_plain_nifti(text.encode("utf-8")[:79]))
        return "nifti-header:descrip"
    if place == "nifti-extension":
        (func / "sub-01_ses-1_task-rest_bold.nii.gz").write_bytes(_plain_nifti(b"", text.encode("utf-8")))
        return "nifti-extension"
    if place == "file-name":
        (func / f"sub-01_ses-1_acq-{text.replace('/', '-')}_bold.json").write_text("{}")
        return "path"
    if place == "folder-name":
        (release / "sub-01" / f"ses-{text.replace('/', '-')}").mkdir()
        return "path"
    raise AssertionError(place)


CLASS_PLACES = ("json-value", "json-value-escaped", "tsv-cell", "nifti-descrip", "nifti-extension", "file-name",
                "folder-name")


@pytest.mark.parametrize("place", CLASS_PLACES)
@pytest.mark.parametrize("label", sorted(CLASSES))
def test_every_issue9_class_is_found_in_every_place(small_release: Path, tmp_path: Path, label: str,
                                                   place: str) -> None:
    text, fields = CLASSES[label]
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    where = _plant_class(tmp_path / "release", place, text)
    report = leak_scan(tmp_path / "release", ROWS, vocabulary=[tmp_path / "vocabulary.yaml"])
    named = {h.field for h in report.hits if h.where.startswith(where) and h.field != leakscan.STRUCTURE}
    assert fields <= named, f"{label} in {place}: {report.hits}"
    if not text.isascii():
        assert any(h.category == leakscan.NON_ASCII and h.where.startswith(where) for h in report.hits)
    everything = json.dumps(report.to_dict(), ensure_ascii=False).lower()
    vocabulary = leakvocab.load_vocabulary([tmp_path / "vocabulary.yaml"])
    for part in [text, *re.split(r"[\s_]+", text)]:
        if vocabulary.outside(part):  # vocabulary words (`epi_asc`, `bold`) may show in a file name
            assert part.lower() not in everything, "a finding carried the value"


def test_cleaner_matching_is_never_called(monkeypatch: pytest.MonkeyPatch, small_release: Path,
                                          tmp_path: Path) -> None:
    """The gate's verdict does not depend on bidsafe.phi's matcher: with it broken, the same hits."""
    import bidsafe.phi as phi

    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    _plant_class(tmp_path / "release", "json-value", CLASSES["ID written with spaces"][0])
    before = leak_scan(tmp_path / "release", ROWS).hits

    def broken(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gate called the cleaner's matching code")

    for name in ("renderings",):
        monkeypatch.setattr(phi.PersonalValue, name, broken)
    for name in ("needles", "find", "redact", "spans", "specs", "id_patterns"):
        monkeypatch.setattr(phi.PersonalValues, name, broken)
    monkeypatch.setattr(phi.SearchIndex, "__init__", broken)
    monkeypatch.setattr(phi, "PLACEHOLDERS", frozenset({"8842qx", "pid"}))
    assert leak_scan(tmp_path / "release", ROWS).hits == before != []


def test_gate_finds_what_todays_cleaner_misses() -> None:
    """Independence in numbers: every class is found by the gate; each the cleaner's matcher misses is
    listed (issue 9: transliterated names, IDs with spaces, unpadded dates, name + digit, mojibake)."""
    cleaner = PersonalValues(PersonalValue(r["category"], r["field"], r["value"]) for r in ROWS)
    scanner = Scanner(ROWS)
    missed_by_cleaner = []
    for label, (text, fields) in sorted(CLASSES.items()):
        gate = {v.field for v in scanner.in_text(text)}
        found_by_cleaner = {v.field for v in cleaner.find(text)}
        assert fields <= gate, label
        assert found_by_cleaner <= gate, f"{label}: the cleaner sees what the gate does not"  # strictly broader
        if not fields <= found_by_cleaner:
            missed_by_cleaner.append(label)
    # Today's cleaner (bidsafe.phi before issue 9 item 2) misses at least one field of every class; when it
    # learns some, this count shrinks while the gate's findings stay (asserted above).
    print(f"\nclasses: {len(CLASSES)}; the gate finds every field of all {len(CLASSES)}; the cleaner's matcher "
          f"misses a field in {len(missed_by_cleaner)}: {missed_by_cleaner}")


# ------------------------------------------------------------------------------------------- false alarms


def test_words_decimals_and_vocabulary_names_are_not_hits(small_release: Path, tmp_path: Path) -> None:
    scanner = Scanner(ROWS)
    assert {v.field for v in scanner.in_text("participants were asleep")} == set()  # Lee
    assert {v.field for v in scanner.in_text("Dr Lee.")} == {"OperatorsName"}
    assert {v.field for v in scanner.in_text("SliceTiming 0.19650704")} == set()  # a decimal, not a birth date
    assert {v.field for v in scanner.in_text("19650704")} == {"PatientBirthDate"}
    assert {v.field for v in scanner.in_text("id 912345678")} == set()  # another number
    assert {v.field for v in scanner.in_text("id 000012345678")} == {"PatientID"}  # more leading zeros
    assert {v.field for v in scanner.in_text("1234.5678")} == set()

    # Patients named Bold, Field and Swan: their names are vocabulary words, allowed text, not searched.
    rows = [*ROWS, {"category": "name", "field": "PatientName", "value": "Bold^Field^Swan"},
            {"category": "id", "field": "StudyID", "value": "BOLD"}]
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    vocabulary = [tmp_path / "vocabulary.yaml"]
    report = leak_scan(tmp_path / "release", rows, vocabulary=vocabulary)
    assert report.hits == [] and report.vocabulary_words_not_searched == 3
    # without the vocabulary they are searched, and `_bold`, `field_mapping` trip the gate
    searched = leak_scan(tmp_path / "release", rows)
    assert {h.field for h in searched.hits} == {"PatientName", "StudyID"}
    # a two-token form is still searched: the name "Field Bold" is more than a vocabulary word
    _plant_class(tmp_path / "release", "json-value", "ep2d Field Bold")
    assert {h.field for h in leak_scan(tmp_path / "release", rows, vocabulary=vocabulary).hits} >= {"PatientName"}


# ------------------------------------------------------------------------------------------- structure


def test_structural_rules_catch_what_no_harvest_holds(small_release: Path, tmp_path: Path) -> None:
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    release = tmp_path / "release"
    vocabulary = [tmp_path / "vocabulary.yaml"]
    # a name in no header (a relative typed into the protocol name): not harvested, not vocabulary
    _plant_class(release, "json-value", "ep2d_bold Brannigan")
    hits = leak_scan(release, ROWS, vocabulary=vocabulary).hits
    assert [(h.where, h.field, h.category) for h in hits] == [("json:SeriesDescription", "-", "non-vocabulary token")]
    assert "brannigan" not in json.dumps([vars(h) for h in hits]).lower()
    # Korean, never harvested: non-ASCII in a NIfTI header, a TSV cell, a file name and a JSON key
    _plant_class(release, "nifti-descrip", "김민준")
    _plant_class(release, "tsv-cell", "김민준")
    _plant_class(release, "file-name", "김민준")
    description = release / "dataset_description.json"
    description.write_text(json.dumps({"Name": "demo", "BIDSVersion": "1.10.0", "김민준": 1}))
    hits = leak_scan(release, ROWS, vocabulary=vocabulary).hits
    flagged = {(h.file, h.where) for h in hits if h.category == leakscan.NON_ASCII}
    bold = "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold"
    assert flagged == {
        (f"{bold}.nii.gz", "nifti-header:descrip"),
        ("sub-01/ses-1/sub-01_ses-1_scans.tsv", "tsv:filename"),
        ("sub-01/ses-1/func/sub-01_ses-1_acq-<withheld>_bold.json", "path"),
        ("dataset_description.json", "json:<withheld>"),
    }
    assert "김" not in json.dumps([vars(h) for h in hits], ensure_ascii=False)
    # logs are scanned for values, not held to the metadata rules
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run.log").write_text("converted 김민준 series\n")
    assert not [h for h in leak_scan(release, ROWS, also=[logs]).hits if h.file.startswith("logs/")]


def test_vocabulary_files_merge_and_are_checked(tmp_path: Path) -> None:
    base = _vocabulary(tmp_path)
    site = tmp_path / "site.yaml"
    site.write_text("kind: vocabulary\ngroups:\n  local: {reason: site protocol names, tokens: [Brannigan]}\n")
    vocabulary = leakvocab.load_vocabulary([base, site])
    assert vocabulary.outside("ep2d_bold BRANNIGAN 12 ep2d-7 <token>") == []
    assert vocabulary.outside("ep2d 1234 Zqxwv2 Müller") == ["1234", "Zqxwv2", "Müller"]
    assert leakvocab.tokens("a\tb,c\x01d é-f") == ["a", "b", "c", "d", "é", "f"]
    for bad in ("kind: rules\n", "kind: vocabulary\ngroups:\n  g: {reason: x, tokens: [on, off]}\n",
                "kind: vocabulary\npatterns:\n  p: {reason: x, regex: '[0-9'}\n"):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(leakscan.ConfigError):
            leakvocab.load_vocabulary([tmp_path / "bad.yaml"])
    with pytest.raises(leakscan.ConfigError):
        leak_scan(tmp_path, ROWS, vocabulary=[tmp_path / "missing.yaml"])


def test_gate_reads_a_saved_harvest_and_reports_the_rules(small_release: Path, tmp_path: Path) -> None:
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    saved = tmp_path / "values.json"
    saved.write_text(json.dumps(ROWS))
    _plant_class(tmp_path / "release", "json-value", CLASSES["ID written with spaces"][0])
    result = gate_leak_scan(tmp_path / "release", saved, vocabulary=[tmp_path / "vocabulary.yaml"])
    assert not result.passed
    assert {h["field"] for h in result.details["hits"]} == {"OtherPatientIDsSequence>PatientID", "-"}
    assert result.details["rules"] == ["personal values", "non-ascii", "non-vocabulary token"]
    assert "8842" not in json.dumps(result.to_dict())
    without = gate_leak_scan(tmp_path / "release", saved)
    assert "non-vocabulary rule not applied" in without.summary


def test_cli_reads_a_saved_harvest_and_vocabularies(small_release: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    saved = tmp_path / "values.json"
    saved.write_text(json.dumps([*ROWS, {"category": "name", "field": "PatientName", "value": "Bold^Swan"}]))
    release, vocabulary = str(tmp_path / "release"), str(tmp_path / "vocabulary.yaml")
    assert cli.main(["leak-scan", release, "--values", str(saved), "--vocabulary", vocabulary]) == 0
    assert "2 vocabulary words not searched" in capsys.readouterr().err
    _plant_class(tmp_path / "release", "json-value", "ep2d Brannigan")
    assert cli.main(["leak-scan", release, "--values", str(saved), "--vocabulary", vocabulary]) == 1
    out = capsys.readouterr()
    assert "json:SeriesDescription: - (non-vocabulary token)" in out.out
    assert "brannigan" not in (out.out + out.err).lower()
    # without the vocabulary that rule is off, and the patient Bold is searched: every `_bold` file is a hit
    assert cli.main(["leak-scan", release, "--values", str(saved)]) == 1
    out = capsys.readouterr()
    assert "non-vocabulary" not in out.out and "_<withheld>.json: path: PatientName (name)" in out.out
    assert cli.main(["leak-scan", release]) == 2  # neither --source nor --values


def test_vocabulary_rule_reads_image_sidecars_not_bidsafe_data_dictionaries(tmp_path: Path) -> None:
    """sessions.json / scans.json beside sub-/ses- folders describe columns in bidsafe's own words (from its
    configuration); image sidecars inside a datatype folder carry scanner text and may hold vocabulary only."""
    _small_release(tmp_path)
    release = tmp_path / "release"
    dictionary = {"age": {"Description": "age at the session, in whole years", "Units": "year"}}
    (release / "sub-01" / "sub-01_sessions.json").write_text(json.dumps(dictionary))
    (release / "sub-01" / "ses-1" / "sub-01_ses-1_scans.json").write_text(json.dumps(dictionary))
    vocabulary = [_vocabulary(tmp_path)]
    assert leak_scan(release, ROWS, vocabulary=vocabulary).hits == []
    sidecar = release / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.json"
    sidecar.write_text(json.dumps({"SeriesDescription": "ep2d_bold in whole years"}))
    hits = leak_scan(release, ROWS, vocabulary=vocabulary).hits
    assert {(h.file, h.where, h.category) for h in hits} == {
        ("sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.json", "json:SeriesDescription", "non-vocabulary token")
    }


def test_sessions_column_descriptions_are_not_descriptor_text(small_release: Path, tmp_path: Path) -> None:
    """`sub-S/sub-S_sessions.json` holds bidsafe's own column descriptions (sentences): the vocabulary rule is
    for image sidecars; the file is still searched for personal values."""
    shutil.copytree(small_release, tmp_path, dirs_exist_ok=True)
    release = tmp_path / "release"
    vocabulary = [tmp_path / "vocabulary.yaml"]
    (subject,) = sorted(p for p in release.glob("sub-*") if p.is_dir())[:1]
    sessions = subject / f"{subject.name}_sessions.json"
    sessions.write_text(json.dumps({"age": {"Description": "Age at scan; in whole years, rounded down"}}))
    assert leak_scan(release, ROWS, vocabulary=vocabulary).hits == []
    sessions.write_text(json.dumps({"age": {"Description": f"age of {ROWS[0]['value']}"}}))
    hits = leak_scan(release, ROWS, vocabulary=vocabulary).hits
    assert {(h.where, h.field) for h in hits if h.category == "name"} == {("json:age.Description", "PatientName")}
