"""Convert stage: dcm2bids + dcm2niix on a demo session and on real vendor exports.

dcm2niix exits 0 on wrong geometry, so the NIfTI grids are checked against an affine computed here from
ImagePositionPatient / ImageOrientationPatient / PixelSpacing, voxel by voxel; bvals/bvecs against the
planted DICOM diffusion attributes; timing fields against the DICOM times.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from bidsafe.convert import convert_session, default_config, load_config, unmatched_series
from bidsafe.demo import DemoSeries, DemoSession, generate
from bidsafe.errors import BidsafeError, ConfigError

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

EXPECTED_FILES = {
    "anat/sub-01_ses-01_T1w.nii.gz", "anat/sub-01_ses-01_T1w.json",
    "anat/sub-01_ses-01_T2w.nii.gz", "anat/sub-01_ses-01_T2w.json",
    "func/sub-01_ses-01_task-rest_bold.nii.gz", "func/sub-01_ses-01_task-rest_bold.json",
    "dwi/sub-01_ses-01_dwi.nii.gz", "dwi/sub-01_ses-01_dwi.json",
    "dwi/sub-01_ses-01_dwi.bval", "dwi/sub-01_ses-01_dwi.bvec",
    "fmap/sub-01_ses-01_dir-AP_epi.nii.gz", "fmap/sub-01_ses-01_dir-AP_epi.json",
    "fmap/sub-01_ses-01_dir-PA_epi.nii.gz", "fmap/sub-01_ses-01_dir-PA_epi.json",
}
# NIfTI (relative to the session folder) <- demo series description
SERIES_OF = {
    "anat/sub-01_ses-01_T1w.nii.gz": "t1_mprage_sag_p2_iso",
    "anat/sub-01_ses-01_T2w.nii.gz": "t2_tse_tra",
    "func/sub-01_ses-01_task-rest_bold.nii.gz": "ep2d_bold_rest",
    "dwi/sub-01_ses-01_dwi.nii.gz": "ep2d_diff_6dir",
    "fmap/sub-01_ses-01_dir-AP_epi.nii.gz": "SpinEchoFieldMap_AP",
    "fmap/sub-01_ses-01_dir-PA_epi.nii.gz": "SpinEchoFieldMap_PA",
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSession, Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("convert")
    session = generate(root / "inbox", subjects=1, sessions=1, seed=11)[0]
    out = root / "work" / "bids"
    logs = root / "private" / "logs"
    files = convert_session(session.folder, out, "01", "01", log_dir=logs)
    return session, out, logs, files


def _session_dir(out: Path) -> Path:
    return out / "sub-01" / "ses-01"


def _series(session: DemoSession, description: str) -> DemoSeries:
    return next(s for s in session.series if s.description == description)


def _seconds(tm: str) -> float:
    return (datetime.strptime(tm, "%H%M%S.%f") - datetime(1900, 1, 1)).total_seconds()


def _first_volume(series: DemoSeries) -> list[Dataset]:
    """The first volume's slices sorted along the slice normal."""
    datasets = [pydicom.dcmread(f) for f in series.files]
    first = [d for d in datasets if int(d.get("TemporalPositionIdentifier", 1)) == 1]
    iop = np.array([float(v) for v in first[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    first.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    return first


def _dicom_grid(slices: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel data as (column, row, slice) and the RAS affine of those indices, computed from the DICOM."""
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    first = np.array([float(v) for v in slices[0].ImagePositionPatient])
    last = np.array([float(v) for v in slices[-1].ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = (last - first) / (len(slices) - 1)
    lps[:3, 3] = first
    volume = np.stack([d.pixel_array.T for d in slices], axis=-1)
    return volume, LPS_TO_RAS @ lps


def _index_map(dicom_affine: np.ndarray, nifti_affine: np.ndarray) -> np.ndarray:
    """Matrix taking NIfTI voxel indices to DICOM (column, row, slice) indices; must be a signed permutation."""
    mapping = np.linalg.inv(dicom_affine) @ nifti_affine
    assert np.allclose(np.abs(mapping[:3, :3]).sum(axis=0), 1, atol=1e-3), mapping
    assert np.allclose(mapping[:3, :3], np.rint(mapping[:3, :3]), atol=1e-3), mapping
    assert np.allclose(mapping[:3, 3], np.rint(mapping[:3, 3]), atol=1e-2), mapping
    return np.rint(mapping)


# ----------------------------------------------------------------------------------------------- layout


@pytest.mark.slow
def test_expected_files_and_nothing_else(converted):
    session, out, logs, files = converted
    produced = {str(p.relative_to(_session_dir(out))) for p in _session_dir(out).rglob("*") if p.is_file()}
    assert produced == EXPECTED_FILES
    # No scaffold, no tmp_dcm2bids, no participants.tsv, no log: only the subject tree.
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]
    assert sorted(p.name for p in (out / "sub-01").iterdir()) == ["ses-01"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # scratch removed
    assert files == sorted(_session_dir(out) / f for f in EXPECTED_FILES if f.endswith(".nii.gz"))
    # The log is private and names what was converted and what was left out.
    log = logs / "convert_sub-01_ses-01.log"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "SIDECAR PAIRING" in text
    assert len(unmatched_series(text)) == 4  # three localizer planes and the screenshot


@pytest.mark.slow
@pytest.mark.parametrize("nifti", sorted(SERIES_OF))
def test_geometry_matches_the_dicom_voxel_by_voxel(converted, nifti):
    session, out, _, _ = converted
    series = _series(session, SERIES_OF[nifti])
    slices = _first_volume(series)
    volume, dicom_affine = _dicom_grid(slices)
    image = nib.load(_session_dir(out) / nifti)
    mapping = _index_map(dicom_affine, image.affine)
    permutation = np.abs(mapping[:3, :3]).argmax(axis=0)  # NIfTI axis a runs along DICOM axis permutation[a]
    assert image.shape[:3] == tuple(volume.shape[p] for p in permutation)
    dicom_zooms = np.linalg.norm(dicom_affine[:3, :3], axis=0)
    assert np.allclose(image.header.get_zooms()[:3], dicom_zooms[permutation], atol=1e-4)
    spacing = float(slices[0].SpacingBetweenSlices)
    assert np.isclose(dicom_zooms[2], spacing, atol=1e-3)  # positions agree with the declared spacing
    volumes = len(series.files) // len(slices)
    assert (image.shape[3] if image.ndim == 4 else 1) == volumes
    # Voxel by voxel: sample the DICOM grid and look the same points up in the NIfTI.
    rng = np.random.default_rng(0)
    dicom_index = np.stack([rng.integers(0, n, 400) for n in volume.shape])
    nifti_index = np.rint(np.linalg.inv(mapping) @ np.vstack([dicom_index, np.ones(400)]))[:3].astype(int)
    data = np.asarray(image.dataobj)
    first = data[..., 0] if data.ndim == 4 else data
    assert np.array_equal(first[tuple(nifti_index)], volume[tuple(dicom_index)])


@pytest.mark.slow
def test_bvals_and_bvecs_equal_the_planted_dicom_values(converted):
    session, out, _, _ = converted
    dwi = _session_dir(out) / "dwi"
    bvals = np.loadtxt(dwi / "sub-01_ses-01_dwi.bval")
    bvecs = np.loadtxt(dwi / "sub-01_ses-01_dwi.bvec")
    datasets = [pydicom.dcmread(f) for f in _series(session, "ep2d_diff_6dir").files]
    planted: dict[int, tuple[float, np.ndarray]] = {}
    for d in datasets:
        direction = (np.array(d.DiffusionGradientOrientation, dtype=float)
                     if "DiffusionGradientOrientation" in d else np.zeros(3))
        planted[int(d.TemporalPositionIdentifier)] = (float(d.DiffusionBValue), direction)
    order = sorted(planted)
    assert np.allclose(bvals, [planted[v][0] for v in order])
    # bvecs are in image space (FSL): patient LPS -> RAS -> voxel axes, x flipped for a positive determinant.
    affine = nib.load(dwi / "sub-01_ses-01_dwi.nii.gz").affine
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    expected = []
    for v in order:
        g = planted[v][1] * np.array([-1.0, -1.0, 1.0])
        vec = axes.T @ g
        if np.linalg.det(axes) > 0:
            vec[0] = -vec[0]
        expected.append(vec)
    assert bvecs.shape == (3, len(order))
    assert np.allclose(bvecs, np.array(expected).T, atol=1e-4)
    assert not np.allclose(bvecs[:, 2], planted[order[2]][1])  # the oblique slab really rotates them


@pytest.mark.slow
def test_sidecars_carry_timing_from_the_dicom(converted):
    session, out, _, _ = converted
    for nifti, description in SERIES_OF.items():
        sidecar = json.loads((_session_dir(out) / nifti.replace(".nii.gz", ".json")).read_text())
        ds = pydicom.dcmread(_series(session, description).files[0])
        assert sidecar["RepetitionTime"] == pytest.approx(float(ds.RepetitionTime) / 1000)
        assert sidecar["EchoTime"] == pytest.approx(float(ds.EchoTime) / 1000)
        assert sidecar["FlipAngle"] == pytest.approx(float(ds.FlipAngle))

    bold = json.loads((_session_dir(out) / "func/sub-01_ses-01_task-rest_bold.json").read_text())
    assert bold["TaskName"] == "rest"
    slices = _first_volume(_series(session, "ep2d_bold_rest"))
    times = np.array([_seconds(d.AcquisitionTime) for d in slices])
    expected = times - times.min()
    _, dicom_affine = _dicom_grid(slices)
    image = nib.load(_session_dir(out) / "func/sub-01_ses-01_task-rest_bold.nii.gz")
    mapping = _index_map(dicom_affine, image.affine)
    dicom_slice_of = [int((mapping @ [0, 0, k, 1])[2]) for k in range(image.shape[2])]
    # dcm2niix holds times of day as 32-bit floats (~4 ms steps): compare within 10 ms, well below a slice.
    assert np.allclose(bold["SliceTiming"], expected[dicom_slice_of], atol=0.01)
    assert len(set(np.round(bold["SliceTiming"], 3))) == len(slices)


@pytest.mark.slow
def test_field_maps_have_polarity_readout_time_and_intended_for(converted):
    session, out, _, _ = converted
    fmap = _session_dir(out) / "fmap"
    for direction, expected in (("AP", "j-"), ("PA", "j")):
        sidecar = json.loads((fmap / f"sub-01_ses-01_dir-{direction}_epi.json").read_text())
        assert sidecar["PhaseEncodingDirection"] == expected
        # 1 / (BandwidthPerPixelPhaseEncode * matrix) per line, (matrix - 1) lines: 63 / (31.25 * 64) s.
        assert sidecar["TotalReadoutTime"] == pytest.approx(63 / (31.25 * 64), rel=1e-3)
        intended = sidecar["IntendedFor"]
        assert sorted(intended) == [
            "bids::sub-01/ses-01/dwi/sub-01_ses-01_dwi.nii.gz",
            "bids::sub-01/ses-01/func/sub-01_ses-01_task-rest_bold.nii.gz",
        ]
        assert all((out / uri.removeprefix("bids::")).is_file() for uri in intended)
    # "j-" must mean anterior to posterior: the NIfTI j axis has to point to the front (RAS +y).
    affine = nib.load(fmap / "sub-01_ses-01_dir-AP_epi.nii.gz").affine
    assert affine[1, 1] > 0


@pytest.mark.slow
def test_result_passes_the_bids_validator(converted, tmp_path):
    from bidsafe.validate import run_validator

    _, out, _, _ = converted
    dataset = tmp_path / "dataset"
    shutil.copytree(out, dataset)
    (dataset / "dataset_description.json").write_text(json.dumps(
        {"Name": "bidsafe convert test", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "Authors": ["bidsafe tests"]}))
    (dataset / "README").write_text("Demo session converted by the bidsafe convert tests.\n"
                                    "It holds one synthetic subject with one session.\n")
    result = run_validator(dataset)
    assert result.errors == [] and result.valid, result.errors


@pytest.mark.slow
def test_rerun_replaces_the_session_whole(converted, tmp_path):
    session, _, _, _ = converted
    out = tmp_path / "bids"
    convert_session(session.folder, out, "01", "01")
    stale = _session_dir(out) / "anat" / "stale.txt"
    stale.write_text("from an earlier run")
    files = convert_session(session.folder, out, "01", "01")
    assert not stale.exists()
    assert {str(p.relative_to(_session_dir(out))) for p in files} == {
        f for f in EXPECTED_FILES if f.endswith(".nii.gz")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]


def test_relative_paths_work_as_snakemake_passes_them(converted, tmp_path, monkeypatch):
    session, _, _, _ = converted
    monkeypatch.chdir(tmp_path)
    files = convert_session(Path(os.path.relpath(session.folder, tmp_path)), Path("work/convert"), "01", "01")
    assert {str(p.relative_to(_session_dir(Path("work/convert")))) for p in files} == {
        f for f in EXPECTED_FILES if f.endswith(".nii.gz")}


# Standard attributes plus the Siemens CSA image header: what conversion needs once de-identification
# has removed everything else (names, IDs, dates, descriptions of the visit, nested sequences, other
# private blocks). The report to the de-identification helper lists these.
CONVERSION_KEYWORDS = {
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "SeriesNumber",
    "InstanceNumber", "AcquisitionNumber", "ImageType", "ScanningSequence", "SequenceVariant",
    "SequenceName", "MRAcquisitionType", "MagneticFieldStrength", "RepetitionTime", "EchoTime",
    "InversionTime", "FlipAngle", "AcquisitionTime", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InPlanePhaseEncodingDirection",
    "AcquisitionMatrix", "PixelBandwidth", "TemporalPositionIdentifier", "NumberOfTemporalPositions",
    "DiffusionBValue", "DiffusionGradientOrientation", "DiffusionDirectionality", "SamplesPerPixel",
    "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PixelData",
}


@pytest.mark.slow
def test_converts_from_only_the_attributes_it_depends_on(converted, tmp_path):
    """Strip every other attribute (no patient name, ID, dates, nested sequences, other private data):
    the same files come out with the same polarity, readout time, slice timing and b-values."""
    session, out, _, _ = converted
    stripped = tmp_path / "stripped"
    for series in session.series:
        if series.expected_datatype is None:
            continue
        for i, path in enumerate(series.files):
            ds = pydicom.dcmread(path)
            keep = Dataset()
            for element in ds:
                if element.keyword in CONVERSION_KEYWORDS:
                    keep.add(element)
            block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
            keep.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", block[0x10].value)
            keep.file_meta = ds.file_meta
            target = stripped / f"s{series.number}" / f"{i:05d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            keep.save_as(target, enforce_file_format=True)
    result = tmp_path / "bids"
    files = convert_session(stripped, result, "01", "01")
    assert {str(p.relative_to(_session_dir(result))) for p in files} == {
        f for f in EXPECTED_FILES if f.endswith(".nii.gz")}
    for name in EXPECTED_FILES:
        if name.endswith(".json"):
            a = json.loads((_session_dir(out) / name).read_text())
            b = json.loads((_session_dir(result) / name).read_text())
            for key in ("PhaseEncodingDirection", "TotalReadoutTime", "SliceTiming", "RepetitionTime"):
                assert a.get(key) == b.get(key), (name, key)
        elif name.endswith((".bval", ".bvec")):
            assert (_session_dir(out) / name).read_text() == (_session_dir(result) / name).read_text()
        else:
            assert np.array_equal(np.asarray(nib.load(_session_dir(out) / name).dataobj),
                                  np.asarray(nib.load(_session_dir(result) / name).dataobj))


# ------------------------------------------------------------------------------------------------ errors


def test_folder_without_images_fails_naming_it_and_leaves_nothing(tmp_path):
    dicom = tmp_path / "session-x"
    dicom.mkdir()
    (dicom / "note.txt").write_text("not an image")
    out = tmp_path / "bids"
    with pytest.raises(BidsafeError) as caught:
        convert_session(dicom, out, "02", "01", log_dir=tmp_path / "private")
    assert caught.value.code == "convert:no-series"  # the session is withheld with this code, not the run
    assert "no DICOM series to convert" in str(caught.value) and str(dicom) in str(caught.value)
    assert not (out / "sub-02").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (tmp_path / "private" / "convert_sub-02_ses-01.log").is_file()


def test_bad_labels_and_configs_are_rejected_before_running(tmp_path):
    with pytest.raises(ConfigError):
        convert_session(tmp_path, tmp_path / "out", "sub-01", "01")
    with pytest.raises(ConfigError):
        convert_session(tmp_path, tmp_path / "out", "01", "ses_1")
    broken = tmp_path / "broken.json"
    broken.write_text('{"descriptions": [{"datatype": "anat"}]}')
    with pytest.raises(ConfigError):
        convert_session(tmp_path, tmp_path / "out", "01", "01", config=broken)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.json")
    with pytest.raises(BidsafeError):
        convert_session(tmp_path / "absent", tmp_path / "out", "01", "01")


def test_default_config_is_shipped_and_never_names_files_after_descriptions():
    config = load_config(default_config())
    options = config["dcm2niixOptions"].split()
    assert "-ba" in options and options[options.index("-ba") + 1] == "y"
    name_format = options[options.index("-f") + 1]
    assert all(token not in name_format for token in ("%p", "%d", "%t", "%n", "%i", "%f"))
    ids = [d.get("id") for d in config["descriptions"]]
    for description in config["descriptions"]:
        for target in description.get("sidecar_changes", {}).get("IntendedFor", []):
            assert target in ids


# ------------------------------------------------------------------------------------------------ corpus

CORPUS_SERIES = [
    # folder under ../shared/corpus, expected datatype, suffix, number of runs
    ("dcm_qa_ge/05_3D_Ax_T1_MP_RAGE_R22", "anat", "T1w", 1),  # GE 3D T1 MP-RAGE
    ("dcm_qa_ge/01_Ax_DWI_TENSOR_R2", "dwi", "dwi", 1),  # GE diffusion tensor
    ("dcm_qa_ge/SliceTiming/14_Ax_fMRI_HB3_48sl_int_asc", "func", "bold", 1),  # GE multiband fMRI
    ("dcm_qa_nih/20180918GE", "func", "bold", 4),  # GE "Axial EPI-FMRI (...)" x4
    ("dcm_qa_nih/20180918Si", "func", "bold", 4),  # Siemens mosaic "EPI PE=AP/PA/LR/RL"
    ("dcm_qa_philips/Vanderbilt_2018/601_WIP_dti_ax", "dwi", "dwi", 1),  # Philips DTI
    ("dcm_qa_philips/Magdeburg_2014/fmri", "func", "bold", 1),  # Philips fMRI "EPI_asc"
]


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize(("folder", "datatype", "suffix", "runs"), CORPUS_SERIES,
                         ids=[c[0] for c in CORPUS_SERIES])
def test_real_vendor_exports_land_in_the_expected_datatype(tmp_path, folder, datatype, suffix, runs):
    source = CORPUS / folder
    if not source.is_dir():
        pytest.skip(f"real scanner corpus not present at {source}")
    files = convert_session(source, tmp_path / "bids", "corpus", "01")
    rel = [p.relative_to(tmp_path / "bids" / "sub-corpus" / "ses-01") for p in files]
    assert {p.parts[0] for p in rel} == {datatype}
    assert all(p.name.endswith(f"_{suffix}.nii.gz") for p in rel)
    assert len(rel) == runs
    by_run: dict[str, int] = defaultdict(int)
    for p in rel:
        by_run[p.name] += 1
    assert all(n == 1 for n in by_run.values())


# ------------------------------------------------------------------------------------- through the vocabulary


def _dicom_folders(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*") if p.is_file() and p.name not in ("README.md", "LICENSE")})


def _landed(dicom_dir: Path, out: Path) -> list[str]:
    """Every file the default dcm2bids config writes for these DICOM files (datatype/BIDS name), or the error."""
    try:
        convert_session(dicom_dir, out, "corpus", "01")
    except BidsafeError:
        return ["<no series matched>"]
    session = out / "sub-corpus" / "ses-01"
    return sorted(p.relative_to(session).as_posix() for p in session.rglob("*.nii.gz"))


def _same_landing_after_deid(folder: Path, work: Path) -> None:
    from bidsafe.deid.engine import deidentify_tree

    from helpers.deid_testing import KEY

    raw = _landed(folder, work / "raw")  # derived series (ADC, ASL) may match no rule: then neither may de-identified
    report = deidentify_tree(folder, work / "deid", key=KEY)  # the shipped rules and vocabulary
    assert sum(e.status == "processed" for e in report.entries), "nothing de-identified"
    assert _landed(work / "deid", work / "deid_bids") == raw


CORPUS_FOLDERS = _dicom_folders(CORPUS) if CORPUS.is_dir() else []


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize(
    "folder", CORPUS_FOLDERS or [None], ids=lambda p: p.relative_to(CORPUS).as_posix() if p else "-"
)
def test_every_corpus_series_lands_in_the_same_datatype_and_suffix_after_deid(tmp_path, folder):
    """Series descriptions keep only vocabulary tokens after de-identification: the default dcm2bids config must
    still map every real series exactly as it maps the raw one (datatype, suffix, entities, number of runs)."""
    if folder is None:
        pytest.skip(f"real scanner corpus not present at {CORPUS}")
    _same_landing_after_deid(folder, tmp_path)


@pytest.mark.slow
def test_every_demo_series_lands_in_the_same_datatype_and_suffix_after_deid(tmp_path):
    (session,) = generate(tmp_path / "demo", subjects=1, sessions=1, seed=5)
    _same_landing_after_deid(session.folder, tmp_path / "work")
