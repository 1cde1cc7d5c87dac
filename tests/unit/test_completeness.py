"""Incomplete series (issue 10, defect 5): a series missing images is withheld with a reason naming what is
missing; complete series of every shape (multi-echo, multi-volume, DWI, mosaic, localiser planes, enhanced
multi-frame, real scanner exports of four vendors) are never flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bidsafe.completeness import (
    SeriesHeaders,
    add_file,
    check_dicom_dir,
    check_series,
    lost_data_warnings,
)
from bidsafe.convert import convert_session

from helpers.deid_testing import mr_dataset, write

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def _header(instance: int, position: float, *, orientation: list[float] | None = None, rows: int = 8,
            echo: int | None = None) -> Dataset:
    """Header of one slice: an oblique-free plane at `position` mm along its normal."""
    ds = Dataset()
    ds.SeriesNumber = 5
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.InstanceNumber = instance
    iop = orientation or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    normal = np.cross(iop[:3], iop[3:])
    ds.ImageOrientationPatient = iop
    ds.ImagePositionPatient = [float(v) for v in np.array([-90.0, -100.0, 0.0]) + position * normal]
    ds.Rows = ds.Columns = rows
    if echo is not None:
        ds.EchoNumbers = echo
    return ds


def _series(headers: list[Dataset]) -> SeriesHeaders:
    series = SeriesHeaders("5")
    for ds in headers:
        add_file(series, ds)
    return series


def _volumes(volumes: int, slices: int, spacing: float = 1.0, orientation: list[float] | None = None
             ) -> list[Dataset]:
    """`volumes` stacks of `slices` slices at the same positions, numbered 1..N volume after volume (fMRI,
    DWI and multi-echo series look like this)."""
    return [_header(v * slices + k + 1, k * spacing, orientation=orientation, echo=v + 1)
            for v in range(volumes) for k in range(slices)]


def test_a_slice_missing_from_the_middle_is_named_by_its_instance():
    headers = _volumes(1, 176, orientation=SAGITTAL)
    del headers[87]  # instance 88
    finding = check_series(_series(headers))
    assert finding is not None
    assert finding.reason == "incomplete series: 1 of 176 slices missing (instance 88)"


def test_a_middle_gap_without_instance_numbers_is_found_by_position():
    headers = _volumes(1, 40, spacing=1.2)
    del headers[20]
    for ds in headers:
        del ds.InstanceNumber
    finding = check_series(_series(headers))
    assert finding is not None
    assert finding.reason == "incomplete series: 1 of 40 slices missing (1 slice position missing)"


def test_a_gap_under_renumbered_instances_is_found_by_position():
    """Instance numbers 1..N without a hole (an exporter renumbered): the positions still show the gap."""
    headers = _volumes(1, 30, spacing=2.5)
    del headers[10:12]
    for i, ds in enumerate(headers):
        ds.InstanceNumber = i + 1
    finding = check_series(_series(headers))
    assert finding is not None and (finding.missing, finding.expected) == (2, 30)


def test_the_last_slice_of_a_volume_is_found_by_instance_numbers():
    """Multi-volume: instance 20 of 40 (the top slice of volume 1) is missing; 40 is still there."""
    headers = _volumes(2, 20)
    del headers[19]
    finding = check_series(_series(headers))
    assert finding is not None
    assert finding.reason == "incomplete series: 1 of 40 images missing (instance 20)"


def test_the_last_slice_of_the_last_volume_is_found_by_the_count_per_position():
    headers = _volumes(3, 20)
    del headers[-1]  # instance 60: no hole in 1..59, but one position has 2 images where the others have 3
    finding = check_series(_series(headers))
    assert finding is not None
    assert finding.reason == ("incomplete series: 1 of 60 images missing "
                              "(1 slice position with fewer images than the others)")


def test_the_last_slice_of_a_single_volume_is_found_by_images_in_acquisition():
    headers = _volumes(1, 176, orientation=SAGITTAL)
    for ds in headers:
        ds.ImagesInAcquisition = 176
    del headers[-1]
    finding = check_series(_series(headers))
    assert finding is not None
    assert finding.reason == ("incomplete series: 1 of 176 slices missing "
                              "(fewer than ImagesInAcquisition declares)")


@pytest.mark.parametrize(("volumes", "slices"), [(1, 176), (3, 30), (7, 30), (12, 30), (2, 1)],
                         ids=["single-volume", "multi-echo", "dwi", "fmri", "two-echo-single-slice"])
def test_complete_series_of_every_shape_are_not_flagged(volumes, slices):
    assert check_series(_series(_volumes(volumes, slices))) is None


def test_interleaved_acquisition_order_is_not_a_gap():
    """Instance numbers in acquisition order (odd slices first), not spatial order."""
    order = list(range(0, 30, 2)) + list(range(1, 30, 2))
    headers = [_header(i + 1, 3.5 * k) for i, k in enumerate(order)]
    assert check_series(_series(headers)) is None


def test_localiser_planes_are_separate_geometries():
    planes = ([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])
    headers = [_header(3 * p + k + 1, 10.0 * k, orientation=[float(v) for v in iop])
               for p, iop in enumerate(planes) for k in range(3)]
    assert check_series(_series(headers)) is None


def test_mosaics_one_file_per_volume_are_not_flagged():
    headers = [_header(v + 1, 0.0) for v in range(10)]  # every mosaic file carries the same position
    assert check_series(_series(headers)) is None


def test_uneven_positions_are_not_judged():
    """Slices moved between volumes (prospective motion correction) form no regular grid: not flagged."""
    rng = np.random.default_rng(3)
    headers = [_header(v * 20 + k + 1, 3.0 * k + float(rng.normal(0, 0.4))) for v in range(3) for k in range(20)]
    assert check_series(_series(headers)) is None


def _enhanced(frames: list[float], instance: int = 1) -> Dataset:
    ds = Dataset()
    ds.SeriesNumber = 5
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.InstanceNumber = instance
    ds.Rows = ds.Columns = 8
    ds.NumberOfFrames = len(frames)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    groups = []
    for z in frames:
        position = Dataset()
        position.ImagePositionPatient = [-90.0, -100.0, z]
        group = Dataset()
        group.PlanePositionSequence = Sequence([position])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    return ds


def test_enhanced_multi_frame_files_are_read_frame_by_frame():
    complete = [2.0 * k for k in range(24)]
    assert check_series(_series([_enhanced(complete, i + 1) for i in range(4)])) is None  # 4 volumes
    gapped = complete[:10] + complete[11:]
    finding = check_series(_series([_enhanced(gapped)]))
    assert finding is not None
    assert finding.reason == "incomplete series: 1 of 24 images missing (1 slice position missing)"


def test_lost_data_messages_become_fixed_phrases():
    console = ("Warning: Instance Number (0020,0013) order is not spatial.\n"
               "Warning: Interslice distance varies in this volume (incompatible with NIfTI format).\n"
               "Warning: Missing images? Expected 175 images, but instance number (0020,0013) ranges from 1 to 176\n"
               "Convert 175 DICOM as /inbox/Doe_Jane/2_t1 (224x224x175x1)\n"
               "Warning: Unable to rotate 3D volume: slices not equidistant: 1 != 2\n")
    assert lost_data_warnings(console) == {"dcm2niix: missing images": 1, "dcm2niix: slice spacing varies": 2}


# ------------------------------------------------------------------------------------ through dcm2niix


def _write_series(root: Path, number: int, description: str, slices: int, drop: int | None = None) -> None:
    for k in range(slices):
        if k + 1 == drop:
            continue
        ds = mr_dataset(series_uid=f"1.2.826.0.1.3680043.9.7777.4.{number}",
                        sop_uid=f"1.2.826.0.1.3680043.9.7777.4.{number}.{k + 1}", instance_number=k + 1,
                        series_number=number, rows=8, columns=8)
        ds.SeriesDescription = ds.ProtocolName = description
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.SliceThickness = 2
        ds.PixelData = (np.arange(64, dtype="<u2") * (k + 1)).tobytes()
        write(ds, root / f"series{number}" / f"{k:03d}.dcm")


@pytest.mark.slow
def test_an_incomplete_series_is_withheld_and_the_rest_converts(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom, 2, "t1_mprage", 12, drop=6)
    _write_series(dicom, 3, "t2_tse_tra", 12)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dcm2niixOptions": "-b y -ba y -z y -f %3s_%p", "descriptions": [
        {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesNumber": "2"}},
        {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesNumber": "3"}},
    ]}))
    summary_json = tmp_path / "series.json"
    files = convert_session(dicom, tmp_path / "bids", "01", "01", config=config, summary_json=summary_json)
    # without the check dcm2niix writes an 11-slice T1 (the gap closed) and dcm2bids publishes it
    assert [p.name for p in files] == ["sub-01_ses-01_T2w.nii.gz"]
    summary = json.loads(summary_json.read_text())
    t1, t2 = summary["series"]
    assert (t1["series"], t1["status"], t1["images"]) == ("2", "left out", [])
    assert t1["left_out"] == [{"reason": "incomplete series: 1 of 12 slices missing (instance 6)", "count": 11,
                               "unit": "files"}]
    assert t2["status"] == "converted" and t2["left_out"] == []
    assert (summary["incomplete"], summary["converted"]) == (1, 1)
    assert summary["converter_warnings"].get("dcm2niix: missing images", 0) >= 1


# ------------------------------------------------------------------------------------------------ corpus


def _series_folders(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*") if p.is_file() and p.name not in ("README.md", "LICENSE")})


@pytest.mark.corpus
@pytest.mark.parametrize("folder", _series_folders(CORPUS) if CORPUS.is_dir() else [None],
                         ids=lambda p: p.relative_to(CORPUS).as_posix() if p else "-")
def test_no_real_scanner_series_is_flagged(folder):
    """GE, Siemens VB/VE mosaics, XA30 enhanced and interoperability, Philips: all complete as exported."""
    if folder is None:
        pytest.skip(f"real scanner corpus not present at {CORPUS}")
    assert check_dicom_dir(folder) == {}


@pytest.mark.slow
def test_no_demo_series_is_flagged(tmp_path):
    from bidsafe.demo import generate

    (session,) = generate(tmp_path / "demo", subjects=1, sessions=1, seed=4)
    assert check_dicom_dir(session.folder) == {}


def test_withholding_removes_every_output_of_the_series_and_nothing_else(tmp_path):
    from bidsafe.convert_series import withhold_outputs

    names = {"002.json": 2, "002.nii.gz": None, "002_Eq_1.nii.gz": None, "002_e2.json": 2, "002_e2.nii.gz": None,
             "020.json": 20, "020.nii.gz": None, "020.bval": None, "020.bvec": None}
    for name, number in names.items():
        (tmp_path / name).write_text(json.dumps({"SeriesNumber": number}) if number else "x")
    removed = withhold_outputs(tmp_path, {"2"})
    assert removed == ["002.json", "002.nii.gz", "002_Eq_1.nii.gz", "002_e2.json", "002_e2.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["020.bval", "020.bvec", "020.json", "020.nii.gz"]
