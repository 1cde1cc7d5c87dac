"""Physics preserved: dcm2niix on raw and on de-identified DICOM gives the same images and acquisition fields.

For every series folder of the demo session and of `../shared/corpus` (GE, Siemens VB/VE mosaic with CSA
headers, Siemens XA30 enhanced multi-frame and interoperability single-frame, Philips), both conversions
must give the same files, identical voxel arrays, affines and scaling, identical bvals/bvecs, and identical
sidecar values for every field except the ones listed below as personal, date or UID fields (and the
attributes de-identification adds). Text fields may differ only by the descriptor vocabulary (tokens outside
it become the placeholder, or same-length filler in kept private text) and the removal of the study's
personal values.
This is the proof that the rule set's keep-list and safe-private list cover what the converter needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe.deid.engine import PROCESSED, deidentify_tree
from bidsafe.deid.rules import load_rules
from bidsafe.deid.textclean import TextCleaner
from bidsafe.deid.vocabulary import vocabulary_for
from bidsafe.phi import harvest_files

from helpers.deid_testing import KEY

pytestmark = pytest.mark.slow

DCM2NIIX = Path(sys.executable).with_name("dcm2niix")
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

# Sidecar fields that may differ, and why. Everything else must be identical.
PERSONAL_FIELDS = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
        "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StudyID", "AccessionNumber",
        "RequestingPhysician",
    }
)  # fmt: skip
DATE_FIELDS = frozenset({"AcquisitionDateTime", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"})
UID_FIELDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"})
ADDED_BY_DEID = frozenset({"DeidentificationMethod", "DeidentificationMethodCodeSequence", "PatientIdentityRemoved"})
EXCLUDED_FIELDS = PERSONAL_FIELDS | DATE_FIELDS | UID_FIELDS | ADDED_BY_DEID


# Documentation files of the corpus, not DICOM: a folder holding only these is no series (a repository's root
# folder with its LICENSE would otherwise be converted as one series made of all of its sub-folders).
_NOT_SERIES_FILES = frozenset({"README.md", "LICENSE"})


def _series_folders(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*") if p.is_file() and p.name not in _NOT_SERIES_FILES})


def _corpus_series() -> list[Path]:
    return _series_folders(CORPUS) if CORPUS.is_dir() else []


def _convert(folder: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True)
    subprocess.run(
        [str(DCM2NIIX), "-ba", "n", "-z", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return {p.name: p for p in sorted(out.iterdir())}


def _text_differences(raw: object, deid: object, cleaner: TextCleaner) -> bool:
    """True when `deid` differs from `raw` by more than the vocabulary and removing/masking personal values."""
    if raw == deid:
        return False
    if isinstance(raw, str) and isinstance(deid, str):
        vocabulary = vocabulary_for()
        as_text = vocabulary.clean(raw)[0]
        as_bytes = vocabulary.clean_bytes(raw.encode("utf-8"))[0]
        allowed = {
            cleaner.clean_text(as_text),
            cleaner.clean_bytes(as_bytes).decode("utf-8", "replace"),
            cleaner.clean_bytes(raw.encode("utf-8")).decode("utf-8", "replace"),
        }
        return deid not in allowed
    if isinstance(raw, list) and isinstance(deid, list) and len(raw) == len(deid):
        return any(_text_differences(a, b, cleaner) for a, b in zip(raw, deid, strict=True))
    return True


def _cleaned_to_nothing(raw: object, cleaner: TextCleaner) -> bool:
    """A text made only of personal values: cleaned to nothing, so the converter leaves the field out."""
    return isinstance(raw, str) and raw.strip() != "" and cleaner.clean_text(vocabulary_for().clean(raw)[0]) == ""


def _compare(raw_files: dict[str, Path], deid_files: dict[str, Path], cleaner: TextCleaner) -> list[str]:
    problems = []
    if sorted(raw_files) != sorted(deid_files):
        problems.append(f"different outputs: raw {sorted(raw_files)} vs de-identified {sorted(deid_files)}")
    for name in sorted(set(raw_files) & set(deid_files)):
        raw, deid = raw_files[name], deid_files[name]
        if name.endswith(".nii"):
            a, b = nib.load(raw), nib.load(deid)
            if a.shape != b.shape or not np.array_equal(a.affine, b.affine):
                problems.append(f"{name}: shape/affine {a.shape} vs {b.shape}")
            elif a.header.get_zooms() != b.header.get_zooms():
                problems.append(f"{name}: voxel sizes differ")
            elif not np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)):
                problems.append(f"{name}: voxel values differ")
            for field in ("scl_slope", "scl_inter", "slice_code", "slice_duration", "xyzt_units", "dim_info"):
                if not np.array_equal(a.header[field], b.header[field], equal_nan=True):
                    problems.append(f"{name}: NIfTI {field} differs")
        elif name.endswith((".bval", ".bvec")):
            if raw.read_text() != deid.read_text():
                problems.append(f"{name}: differs")
        elif name.endswith(".json"):
            a, b = json.loads(raw.read_text()), json.loads(deid.read_text())
            for field in sorted((set(a) | set(b)) - EXCLUDED_FIELDS):
                if field not in b:
                    if not _cleaned_to_nothing(a[field], cleaner):
                        problems.append(f"{name}: {field} lost")
                elif field not in a:
                    problems.append(f"{name}: {field} appeared")
                elif _text_differences(a[field], b[field], cleaner):
                    problems.append(f"{name}: {field} differs: {a[field]!r} vs {b[field]!r}")
    return problems


def _check_series(folder: Path, work: Path) -> None:
    report = deidentify_tree(folder, work / "deid", rules=load_rules(), key=KEY)
    if not any(e.status == PROCESSED for e in report.entries):
        pytest.skip(f"{folder.name}: nothing to convert (every file withheld or not DICOM)")
    cleaner = TextCleaner(harvest_files(p for p in folder.iterdir() if p.is_file()), vocabulary_for())
    raw_files = _convert(folder, work / "raw_nii")
    deid_files = _convert(work / "deid", work / "deid_nii")
    assert any(n.endswith(".nii") for n in raw_files), f"{folder.name}: dcm2niix made no image from the raw files"
    problems = _compare(raw_files, deid_files, cleaner)
    assert not problems, f"{folder.name}:\n" + "\n".join(problems)


@pytest.mark.corpus
@pytest.mark.parametrize("folder", _corpus_series() or [None], ids=lambda p: str(p.relative_to(CORPUS)) if p else "-")
def test_corpus_series_convert_identically(folder, tmp_path):
    if folder is None:
        pytest.skip(f"corpus not found at {CORPUS}")
    _check_series(folder, tmp_path)


@pytest.fixture(scope="module")
def demo_session(tmp_path_factory):
    from bidsafe.demo import generate

    root = tmp_path_factory.mktemp("demo")
    (session,) = generate(root, subjects=1, sessions=1, seed=3)
    return session


def test_demo_series_convert_identically(demo_session, tmp_path):
    checked = 0
    for series in demo_session.series:
        report = deidentify_tree(series.folder, tmp_path / f"deid{series.number}", rules=load_rules(), key=KEY)
        if not any(e.status == PROCESSED for e in report.entries):
            continue  # the burned-in screenshot: withheld, nothing to compare
        work = tmp_path / f"series{series.number}"
        cleaner = TextCleaner(harvest_files(series.files), vocabulary_for())
        raw_files = _convert(series.folder, work / "raw_nii")
        deid_files = _convert(tmp_path / f"deid{series.number}", work / "deid_nii")
        problems = _compare(raw_files, deid_files, cleaner)
        assert not problems, f"demo {series.description}:\n" + "\n".join(problems)
        checked += 1
    assert checked >= 5
