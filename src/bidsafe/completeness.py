"""Incomplete series: images missing from a series, found from its own (de-identified) DICOM headers.

dcm2niix converts a series with a missing slice anyway: it closes the gap (one slice fewer, the wrong geometry)
and only warns. So before a series is converted its headers are checked here, with nothing but the series' own
numbers:

- instance numbers: a series that numbers its files 1..N (each number once) and lacks some of them;
- slice positions: ImagePositionPatient projected on the slice normal (from ImageOrientationPatient), per
  geometry (orientation and matrix; a localiser's planes are separate geometries): on a regular grid of slice
  positions, a step of about twice (or k times) the grid's median step is a missing slice position;
- images per position: a series holding several stacks at the same positions (echoes, b-values and diffusion
  directions, fMRI volumes, a mosaic per volume, the frames of enhanced multi-frame files) has the same number of
  images at every position; a position with fewer lost images;
- a declared count: ImagesInAcquisition (0020,1002) above the images of a single-stack series.

Enhanced multi-frame files are read frame by frame from their per-frame functional groups (plane position and
orientation). Checks that cannot apply are skipped rather than guessed: fewer than three slice positions, a
spacing that is no regular grid (prospective motion correction moves slices between volumes), instance numbers
that repeat or do not start at 1. A series missing only its first or last slice, with no count declared and no
other stack to compare with and no ImagesInAcquisition, cannot be told from a shorter acquisition. Nor can a
missing last volume: NumberOfTemporalPositions counts the acquisition's volumes, not the series' (Siemens XA
interoperability exports write one series per volume, each declaring all of them).

Findings carry numbers only (series, instance and slice counts), never a header value that could identify.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INCOMPLETE = "incomplete series"
# a step this close to a whole multiple of the grid step counts as that multiple; further off, no regular grid
_GRID_TOLERANCE = 0.15
# slices closer than this (mm) along the normal are the same position (headers print ~6 significant digits)
_SAME_POSITION_MM = 0.02
# orientations whose normals differ by less than ~0.8 degrees are one geometry
_SAME_NORMAL = 0.9999
_LISTED = 5  # instance numbers named in a reason (then "..." and the count)


@dataclass(frozen=True)
class Frame:
    """One image: a single-frame file, or one frame of an enhanced multi-frame file."""

    normal: tuple[float, float, float]
    position: float  # along the normal, mm
    rows: int
    columns: int


@dataclass
class SeriesHeaders:
    """What the check needs from one series (by series number and SeriesInstanceUID)."""

    number: str
    files: int = 0
    instances: list[int] = field(default_factory=list)  # one per file that has one
    frames: list[Frame] = field(default_factory=list)
    images_in_acquisition: set[int] = field(default_factory=set)
    multiframe: bool = False


@dataclass(frozen=True)
class Incomplete:
    """A series with images missing: how many of how many, and where (numbers only)."""

    series: str
    missing: int
    expected: int
    noun: str  # "slices" (one stack of single-frame files) or "images"
    where: str  # "instance 88", "instances 3, 4", "1 slice position", ...

    @property
    def reason(self) -> str:
        """The reason the series is withheld, as series.json and the report show it."""
        return f"{INCOMPLETE}: {self.missing} of {self.expected} {self.noun} missing ({self.where})"


# --- reading ----------------------------------------------------------------------------------------------

_TAGS = ["SeriesNumber", "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
         "Rows", "Columns", "NumberOfFrames", "ImagesInAcquisition"]


def read_series_headers(dicom_dir: Path) -> dict[tuple[str, str], SeriesHeaders]:
    """Every DICOM file under `dicom_dir`, header only, grouped by (series number, SeriesInstanceUID)."""
    import pydicom

    from bidsafe.convert_series import series_key
    from bidsafe.phi import quiet_pydicom

    found: dict[tuple[str, str], SeriesHeaders] = {}
    for root, dirs, names in os.walk(dicom_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            try:
                with quiet_pydicom():
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_TAGS)
                    if (_int(ds.get("NumberOfFrames")) or 0) > 1:
                        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)  # per-frame groups
            except Exception:  # noqa: BLE001 - not DICOM: no image of any series
                continue
            if "SeriesNumber" not in ds and "SeriesInstanceUID" not in ds:
                continue
            number = series_key(ds.get("SeriesNumber", ""))
            series = found.setdefault((number, str(ds.get("SeriesInstanceUID", ""))), SeriesHeaders(number))
            with quiet_pydicom():
                add_file(series, ds)
    return found


def add_file(series: SeriesHeaders, ds: Any) -> None:
    """Add one file's numbers to its series (a pydicom Dataset, header only)."""
    series.files += 1
    instance = _int(ds.get("InstanceNumber"))
    if instance is not None:
        series.instances.append(instance)
    declared = _int(ds.get("ImagesInAcquisition"))
    if declared:
        series.images_in_acquisition.add(declared)
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    if (_int(ds.get("NumberOfFrames")) or 0) > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        series.multiframe = True
        series.frames.extend(_enhanced_frames(ds, rows, columns))
        return
    frame = _frame(ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), rows, columns)
    if frame is not None:
        series.frames.append(frame)


def _enhanced_frames(ds: Any, rows: int, columns: int) -> Iterable[Frame]:
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    shared_orientation = _first(shared.get("PlaneOrientationSequence")) if shared is not None else None
    for group in ds.PerFrameFunctionalGroupsSequence:
        orientation = _first(group.get("PlaneOrientationSequence")) or shared_orientation
        position = _first(group.get("PlanePositionSequence"))
        frame = _frame(orientation.get("ImageOrientationPatient") if orientation is not None else None,
                       position.get("ImagePositionPatient") if position is not None else None, rows, columns)
        if frame is not None:
            yield frame


def _first(sequence: Any) -> Any:
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(float(str(value).split("\\")[0]))
    except (TypeError, ValueError, OverflowError):
        return None


def _frame(orientation: Any, position: Any, rows: int, columns: int) -> Frame | None:
    try:
        iop = np.array([float(v) for v in orientation], dtype=float)
        ipp = np.array([float(v) for v in position], dtype=float)
    except (TypeError, ValueError):
        return None
    if iop.shape != (6,) or ipp.shape != (3,) or not np.all(np.isfinite(iop)) or not np.all(np.isfinite(ipp)):
        return None
    normal = np.cross(iop[:3], iop[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    normal /= length
    return Frame((float(normal[0]), float(normal[1]), float(normal[2])), float(np.dot(ipp, normal)), rows, columns)


# --- checking ---------------------------------------------------------------------------------------------


def find_incomplete(series: Mapping[Any, SeriesHeaders]) -> dict[str, Incomplete]:
    """The incomplete series by series number (series sharing a number: the first finding)."""
    found: dict[str, Incomplete] = {}
    for headers in series.values():
        finding = check_series(headers)
        if finding is not None:
            found.setdefault(headers.number, finding)
    return found


def check_series(series: SeriesHeaders) -> Incomplete | None:
    """The images missing from one series, or None when nothing shows one missing."""
    grids = [_grid(frames) for frames in _geometries(series.frames)]
    single_stack = not series.multiframe and all(g is None or g.per_position == 1 for g in grids) \
        and len(series.frames) == series.files
    noun = "slices" if single_stack else "images"
    missing_instances = _missing_instances(series.instances)
    if missing_instances:
        return Incomplete(series.number, len(missing_instances), series.files + len(missing_instances), noun,
                          _instances_text(missing_instances))
    images = len(series.frames)
    missing_positions = sum(g.missing_positions for g in grids if g is not None)
    missing_images = sum(g.missing_images for g in grids if g is not None)
    if missing_images:
        where = []
        if missing_positions:
            where.append(f"{missing_positions} slice position{'s' if missing_positions > 1 else ''} missing")
        short = sum(g.short_positions for g in grids if g is not None)
        if short:
            where.append(f"{short} slice position{'s' if short > 1 else ''} with fewer images than the others")
        return Incomplete(series.number, missing_images, images + missing_images, noun, "; ".join(where))
    if len(series.images_in_acquisition) == 1 and single_stack and images:
        (declared,) = series.images_in_acquisition
        if images < declared:
            return Incomplete(series.number, declared - images, declared, noun,
                              "fewer than ImagesInAcquisition declares")
    return None


def _missing_instances(instances: Sequence[int]) -> list[int]:
    """Instance numbers missing from 1..max, when the series numbers its files that way: each number once,
    the first 1, and most numbers present (a series numbered otherwise is not judged by its numbers)."""
    if len(instances) < 2 or len(set(instances)) != len(instances) or min(instances) != 1:
        return []
    missing = sorted(set(range(1, max(instances) + 1)) - set(instances))
    return missing if len(missing) <= max(1, len(instances) // 4) else []


def _instances_text(missing: Sequence[int]) -> str:
    listed = ", ".join(str(n) for n in missing[:_LISTED])
    more = f", ... ({len(missing)} in all)" if len(missing) > _LISTED else ""
    return f"instance{'s' if len(missing) > 1 else ''} {listed}{more}"


def _geometries(frames: Sequence[Frame]) -> list[list[Frame]]:
    """Frames grouped by matrix and orientation (normals within ~0.8 degrees, either sign)."""
    groups: list[tuple[Frame, list[Frame]]] = []
    for frame in frames:
        for first, members in groups:
            if (first.rows, first.columns) == (frame.rows, frame.columns) and \
                    abs(float(np.dot(first.normal, frame.normal))) > _SAME_NORMAL:
                members.append(frame)
                break
        else:
            groups.append((frame, [frame]))
    return [members for _, members in groups]


@dataclass(frozen=True)
class _Grid:
    positions: int  # distinct slice positions found
    per_position: int  # images at the fullest position
    missing_positions: int  # grid positions with no image
    short_positions: int  # positions with fewer images than the fullest
    missing_images: int


def _grid(frames: Sequence[Frame]) -> _Grid | None:
    """One geometry's slice positions on a regular grid, or None when they form no regular grid."""
    first = frames[0].normal
    # one sign for the normal of the whole group (an orientation written flipped is the same plane)
    along = sorted(f.position * (1.0 if float(np.dot(f.normal, first)) > 0 else -1.0) for f in frames)
    centres: list[float] = []
    counts: list[int] = []
    for value in along:
        if centres and value - centres[-1] <= _SAME_POSITION_MM:
            counts[-1] += 1
        else:
            centres.append(value)
            counts.append(1)
    per_position = max(counts)
    short = sum(1 for c in counts if c < per_position)
    missing_images = sum(per_position - c for c in counts)
    missing_positions = 0
    steps = np.diff(centres)
    if len(steps) >= 2:
        step = float(np.median(steps))
        ratios = steps / step if step > 0 else np.zeros(0)
        if step <= 0 or np.any(np.abs(ratios - np.round(ratios)) > _GRID_TOLERANCE) or np.any(np.round(ratios) < 1):
            return None  # no regular grid (motion-corrected positions, uneven slabs): nothing to judge by
        missing_positions = int(np.sum(np.round(ratios) - 1))
    return _Grid(len(centres), per_position, missing_positions, short,
                 missing_images + missing_positions * per_position)


def check_dicom_dir(dicom_dir: Path) -> dict[str, Incomplete]:
    """The incomplete series under `dicom_dir` by series number."""
    return find_incomplete(read_series_headers(dicom_dir))


# --- dcm2niix's console: warnings that mean lost data -------------------------------------------------------

# fixed phrases (what the report may show) for the dcm2niix messages that mean images were lost or misplaced;
# the messages themselves quote numbers, names and paths, so they are never copied
LOST_DATA_WARNINGS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("dcm2niix: missing images", re.compile(r"missing images", re.I)),
    ("dcm2niix: slice spacing varies",
     re.compile(r"interslice distance varies|slices not equidistant|unable to equalize slice distances", re.I)),
    ("dcm2niix: volumes do not sort", re.compile(r"check sorted order|not divisible by number of repeats", re.I)),
    ("dcm2niix: slice direction unknown", re.compile(r"unable to determine slice direction", re.I)),
)


def lost_data_warnings(console: str) -> dict[str, int]:
    """dcm2niix's console output → {fixed phrase: lines}, for the messages that mean lost data."""
    found: dict[str, int] = {}
    for line in console.splitlines():
        for phrase, pattern in LOST_DATA_WARNINGS:
            if pattern.search(line):
                found[phrase] = found.get(phrase, 0) + 1
                break
    return found
