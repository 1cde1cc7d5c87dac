"""Deface structural images: carry pydeface's face mask onto the image and zero the face, or fail closed.

Engines: `fsl` runs pydeface itself (FSL FLIRT), `builtin` registers pydeface's template with SimpleITK
(bidsafe.deface.register), `auto` picks FSL when it is usable. Either way the same guards judge the transform
(bidsafe.deface.guards) and the same writer produces the output: the input's header bytes unchanged, its data
type and scaling kept, voxels outside the face untouched, face voxels set to zero. When a guard trips nothing
is written and GuardError (exit 3) is raised.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage  # type: ignore[import-untyped]  # no scipy stubs installed

from bidsafe.deface import guards, register
from bidsafe.deface import template as tpl
from bidsafe.errors import BidsafeError, ConfigError, GuardError
from bidsafe.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json
from bidsafe.progress import Progress

ENGINES = ("auto", "builtin", "fsl")
THREADS_ENV = "BIDSAFE_DEFACE_THREADS"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class DefaceRecord:
    """What was done to one image and the guard values that allowed it (JSON-ready via as_dict)."""

    input: str
    output_sha256: str
    engine: str
    singular_values: list[float]
    shear: float
    agreement_dice: float | None
    brain_voxels_removed: int
    brain_cm3_removed: float
    metric: float | None
    removed_voxels: int
    removed_cm3: float
    volumes: int
    seconds: float
    matrix: list[list[float]] = field(default_factory=list)  # subject world -> template world (RAS mm)
    template_sha256: str = tpl.EXPECTED_TEMPLATE_SHA256
    notes: list[str] = field(default_factory=list)
    guards: dict[str, Any] = field(default_factory=dict)  # every guard's value, limit, failures (GuardReport.as_dict)
    refused: bool = False
    template: str = tpl.SHIPPED_NAME  # the template pair's name (config `deface.templates`)
    applied_from: str | None = None  # the image whose transform placed this face mask (`--applyto`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DefaceRefused(GuardError):
    """A guard tripped: nothing was written. `records` holds, for each image concerned, what the guards measured
    (for the pipeline's records.json); the message names the guard values too (exit 3 output)."""

    def __init__(self, message: str, path: str | Path | None, records: list[dict[str, Any]]) -> None:
        super().__init__(message, path)
        self.records = records


def guard_values_text(values: dict[str, Any]) -> str:
    """One line with every guard's value and its threshold, from GuardReport.as_dict()."""
    limits = values.get("limits") or {}

    def num(value: object, digits: int = 3) -> str:
        return "n/a" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]

    svs = ", ".join(num(v) for v in values.get("singular_values") or [])
    low, high = limits.get("singular_range") or (None, None)
    return (
        f"guard values: singular values {svs} (overall scale {num(values.get('scale'))} allowed [{low}, {high}], "
        f"ratio {num(values.get('anisotropy'))} max {limits.get('max_anisotropy')}); shear {num(values.get('shear'))} "
        f"(max {limits.get('max_shear')}); two-initialisation face-mask Dice {num(values.get('agreement_dice'))} "
        f"(min {limits.get('min_agreement_dice')}); eroded template brain removed "
        f"{values.get('brain_voxels_removed')} voxels (max {limits.get('max_brain_voxels_removed')}); "
        f"metric {num(values.get('metric'), 4)} (max {limits.get('max_metric')})"
    )


def refused_record(label: str, estimate: RemovalEstimate) -> dict[str, Any]:
    """The record of an image a guard refused: the same guard fields as a DefaceRecord, no output."""
    values = estimate.guard_values
    return {
        "path": label, "input": label, "refused": True, "engine": estimate.engine,
        "singular_values": values["singular_values"], "shear": values["shear"],
        "agreement_dice": values["agreement_dice"], "brain_voxels_removed": values["brain_voxels_removed"],
        "brain_cm3_removed": values["brain_cm3_removed"], "metric": values["metric"],
        "volumes": estimate.volumes, "seconds": round(estimate.seconds, 2),
        "matrix": [[round(float(v), 6) for v in row] for row in estimate.matrix],
        "notes": list(estimate.notes), "guards": values,
    }


@dataclass
class RemovalEstimate:
    """The removal mask on the input's grid and everything the guards found (nothing written yet)."""

    removal: np.ndarray  # bool, the input's first three dimensions; True = face, to be zeroed
    affine: np.ndarray
    matrix: np.ndarray  # subject world -> template world (RAS mm)
    engine: str
    report: guards.GuardReport
    volumes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    alternative: np.ndarray | None = None  # the transform from the other initialisation (builtin engine)
    pair: tpl.TemplatePair | None = None  # the template pair it was found with
    applied_from: str | None = None  # set when the transform was found on another image of the session

    @property
    def failures(self) -> list[str]:
        return self.report.failures

    @property
    def guard_values(self) -> dict[str, Any]:
        return self.report.as_dict()


# --- reading --------------------------------------------------------------------------------------------------


def load_nifti(path: Path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("input image not found", path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ConfigError("input must be a single-file NIfTI (.nii or .nii.gz)", path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise BidsafeError(f"cannot read NIfTI ({type(exc).__name__})", path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise BidsafeError("not a NIfTI-1/2 image", path)
    shape = img.shape
    if len(shape) < 3 or len(shape) > 4 or min(shape[:3]) < 2:
        raise BidsafeError(f"expected a 3D or 4D image, got shape {shape}", path)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise BidsafeError("image has no usable orientation (affine)", path)
    return img


def registration_volume(img: nib.Nifti1Image) -> np.ndarray:
    """The 3D volume to register: the image itself, or the mean of a 4D image's volumes (one at a time)."""
    proxy: Any = img.dataobj  # nibabel's ArrayProxy (typed as ArrayLike)
    volume: np.ndarray
    if img.ndim == 3:
        volume = np.asarray(proxy, dtype=np.float32)
    else:
        # read once (slicing a .gz proxy per volume decompresses from the start each time), average in float32
        raw = np.asanyarray(proxy.get_unscaled())
        volume = np.zeros(img.shape[:3], dtype=np.float32)
        for index in range(img.shape[3]):
            volume += raw[..., index]
        del raw
        volume = volume / img.shape[3] * np.float32(proxy.slope) + np.float32(proxy.inter)
    if img.get_data_dtype().kind == "f" or proxy.slope != 1 or proxy.inter != 0:  # type: ignore[no-untyped-call]
        volume = np.nan_to_num(volume, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return volume


# --- the mask and the guards ----------------------------------------------------------------------------------

# The face mask is grown by this much (template mm, ~1.7 mm on an adult head) before it is applied. The
# registration's optimum and the benchmark's Colin27 reference differ by ~2 mm even with no pose change (the
# reference is itself a consensus of registrations that agreed within 2.9 mm); an edge 2 mm short leaves 2-5 %
# of the face (T1) and 5-8 % (T2-like), 1.5 mm of margin leaves 0-2 %. The template brain is >= 10 mm from the
# face mask, and the brain guard judges the grown mask.
FACE_MARGIN_MM = 1.5


def face_in_grid(matrix: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
                 margin_mm: float = FACE_MARGIN_MM) -> np.ndarray:
    """pydeface's face mask, grown by `margin_mm` (template mm), carried onto a grid: True where the face is.

    Sampled at voxel centres (trilinear, 0.5 level). Beyond the template's field of view the nearest mask value
    is used, so the face region continues forward and downward instead of stopping at the template's edge.
    A first pass on every 4th voxel or so finds the face's bounding box (grown by two coarse steps, far more
    than the mask's smallest feature), and only that box is sampled finely.
    """
    shape = tuple(int(n) for n in shape[:3])
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    step = np.maximum(1, np.floor(COARSE_FACE_STEP_MM / zooms)).astype(int)
    coarse_shape = tuple(int(np.ceil((n - 1) / s)) + 1 for n, s in zip(shape, step, strict=True))
    coarse = _sample_face(matrix, affine @ np.diag([*step, 1.0]), coarse_shape, margin_mm)
    face = np.zeros(shape, dtype=bool)
    if not coarse.any():
        return face
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(coarse.any(axis=other))
        start = max(0, int(hits[0] - 2) * int(step[axis]))
        stop = min(shape[axis], int(hits[-1] + 2) * int(step[axis]) + 1)
        box.append(slice(start, stop))
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ np.array([b.start for b in box]) + affine[:3, 3]
    face[tuple(box)] = _sample_face(matrix, box_affine, tuple(b.stop - b.start for b in box), margin_mm)
    return face


COARSE_FACE_STEP_MM = 4.0


def _sample_face(matrix: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], margin_mm: float) -> np.ndarray:
    assets = tpl.load_assets()
    vox = np.linalg.solve(assets.affine, matrix @ affine)
    sampled: np.ndarray = ndimage.affine_transform(
        _keep_mask_float(tpl.active_pair(), margin_mm), vox[:3, :3], vox[:3, 3], output_shape=shape, order=1,
        mode="nearest", prefilter=False,
    )
    return sampled < 0.5


@functools.lru_cache(maxsize=4)
def _keep_mask_float(pair: tpl.TemplatePair, margin_mm: float) -> np.ndarray:
    """1 outside the face mask grown by `margin_mm` (template mm), 0 inside."""
    assets = tpl.pair_assets(pair)
    keep = (~assets.face).astype(np.float32)
    if margin_mm <= 0 or not assets.face.any():
        return keep
    # dilation by every voxel offset within the margin (the same voxels as a distance map, a fraction of its
    # cost), on the face's bounding box plus the margin only
    zooms = np.sqrt((assets.affine[:3, :3] ** 2).sum(axis=0))
    reach = np.floor(margin_mm / zooms).astype(int)
    offsets = np.meshgrid(*(np.arange(-r, r + 1) * z for r, z in zip(reach, zooms, strict=True)), indexing="ij")
    ball = np.sqrt(sum(o**2 for o in offsets)) <= margin_mm
    slices: list[slice] = []
    for axis in range(3):
        hits = np.flatnonzero(assets.face.any(axis=tuple(a for a in range(3) if a != axis)))
        slices.append(slice(max(int(hits[0] - reach[axis]) - 1, 0), int(hits[-1] + reach[axis]) + 2))
    box = tuple(slices)
    keep[box][ndimage.binary_dilation(assets.face[box], ball)] = 0.0
    return keep


def apply_guards(
    matrix: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    alternative: np.ndarray | None = None,
    metric: float | None = None,
    removal: np.ndarray | None = None,
    agreement_region: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, guards.GuardReport]:
    """Judge a transform (subject world -> template world) for an image grid; returns (removal, report).

    `alternative` is the transform reached from another initialisation; `agreement_region` = (mask, affine)
    of the head on a working grid where the two face masks are compared (the input grid when omitted).
    """
    report = guards.GuardReport()
    guards.check_linear(matrix, report)
    if removal is None:
        removal = face_in_grid(matrix, affine, shape)
    matrices = [matrix]
    if alternative is not None:
        matrices.append(alternative)
        if agreement_region is not None:
            region, region_affine = agreement_region
            # the face masks themselves (no margin): the margin would make any two placements agree more
            a = face_in_grid(matrix, region_affine, region.shape, 0.0) & region
            b = face_in_grid(alternative, region_affine, region.shape, 0.0) & region
        else:
            a, b = face_in_grid(matrix, affine, shape, 0.0), face_in_grid(alternative, affine, shape, 0.0)
        total = int(a.sum() + b.sum())
        guards.check_agreement(2.0 * float((a & b).sum()) / total if total else 0.0, report)
    guards.check_brain(removal, affine, matrices, report)
    guards.check_metric(metric, report)
    return removal, report


def estimate_removal(
    in_path: Path, engine: str = "builtin", threads: int | None = None, work_dir: Path | None = None,
    template: tpl.TemplatePair | None = None,
) -> RemovalEstimate:
    """Register, build the removal mask and run every guard; raises only for unusable input, never for a guard.

    `template`: the pair to register (default: the one in use, normally pydeface's adult pair)."""
    with tpl.using(template) as pair:
        estimate = _estimate_removal(in_path, engine, threads, work_dir)
    estimate.pair = pair
    return estimate


def _estimate_removal(
    in_path: Path, engine: str, threads: int | None, work_dir: Path | None
) -> RemovalEstimate:
    started = time.monotonic()
    img = load_nifti(Path(in_path))
    chosen = choose_engine(engine)
    volume = registration_volume(img)
    if not np.any(volume > 0):
        raise GuardError("image is empty (no positive voxel): cannot place the face mask", Path(in_path).name)
    shape = img.shape[:3]
    notes: list[str] = []
    if chosen == "fsl":
        from bidsafe.deface import fsl

        result = fsl.run_pydeface(volume, img, work_dir=work_dir)
        removal, report = apply_guards(result.matrix, img.affine, shape, removal=result.removal,
                                       metric=evaluate_metric(volume, img.affine, result.matrix))
        notes.append("agreement guard not applicable: FSL FLIRT ran once")
        matrix = result.matrix
    else:
        reg = register.register(volume, img.affine, threads=resolve_threads(threads))
        head = reg.levels[min(reg.levels)]
        removal, report = apply_guards(
            reg.primary.matrix, img.affine, shape, alternative=reg.alternative.matrix, metric=reg.final_metric,
            agreement_region=(head.head, head.grid.affine),
        )
        matrix = reg.primary.matrix
    estimate = RemovalEstimate(
        removal=removal, affine=img.affine.copy(), matrix=matrix, engine=chosen, report=report,
        volumes=1 if img.ndim == 3 else img.shape[3], seconds=time.monotonic() - started, notes=notes,
    )
    if chosen != "fsl":
        estimate.alternative = reg.alternative.matrix
    return estimate


# --- applying one image's transform to another (--applyto) ---------------------------------------------------

SCANNER_CODE = 1  # NIfTI xform code "scanner anatomical": the coordinates dcm2niix writes
# Largest distance (template mm) over the face mask's extent between the reference's transform and the one the
# template settles on when refitted on the other image from it. Registration noise at 4 mm is ~1-2 mm; a head
# that moved between the scans shows more, and the metric guard alone only notices about 10 mm.
MAX_APPLY_DRIFT_MM = 3.0


def scanner_frame(img: nib.Nifti1Image) -> bool:
    """The affine nibabel uses (sform when coded, else qform) maps voxels to the scanner's coordinates.

    Images of one session in scanner coordinates share a frame (DICOM's FrameOfReferenceUID is gone after
    conversion): the same world point is the same place in the bore, whatever the grids."""
    sform_code = int(img.header["sform_code"])
    code = sform_code if sform_code > 0 else int(img.header["qform_code"])
    return code == SCANNER_CODE


def estimate_applied(reference: RemovalEstimate, reference_img: nib.Nifti1Image, in_path: Path,
                     reference_label: str) -> RemovalEstimate | None:
    """The reference image's transform carried onto another image of the session, every guard run again.

    The face mask is carried from the template through the reference's transform straight onto this image's
    grid (no second interpolation of the reference's mask), whatever its grid. The guards judge it on this
    image: the brain guard on its grid, the metric on its intensities (a head that moved between the two
    scans no longer matches the template there). None when the two are not both in scanner coordinates.
    """
    started = time.monotonic()
    img = load_nifti(Path(in_path))
    if not (scanner_frame(reference_img) and scanner_frame(img)):
        return None
    volume = registration_volume(img)
    if not np.any(volume > 0):
        raise GuardError("image is empty (no positive voxel): cannot place the face mask", Path(in_path).name)
    with tpl.using(reference.pair):
        levels = register.prepare_subject(volume, img.affine, (register.CHECK_SPACING_MM,))
        metric = register.check_metric(levels, reference.matrix)
        removal, report = apply_guards(reference.matrix, img.affine, img.shape[:3],
                                       alternative=reference.alternative, metric=metric)
        drift = face_drift_mm(reference.matrix, register.refit(levels, reference.matrix), removal, img.affine)
    if drift > MAX_APPLY_DRIFT_MM:
        report.failures.append(f"the head moved between the scans (the template refits {drift:.1f} mm away "
                               f"> {MAX_APPLY_DRIFT_MM})")
    return RemovalEstimate(
        removal=removal, affine=img.affine.copy(), matrix=reference.matrix, engine=reference.engine,
        report=report, volumes=1 if img.ndim == 3 else img.shape[3], seconds=time.monotonic() - started,
        notes=[f"face mask of {reference_label} applied (same scanner frame)"], alternative=reference.alternative,
        pair=reference.pair, applied_from=reference_label,
    )


def face_drift_mm(matrix: np.ndarray, other: np.ndarray, removal: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (template mm) between where two transforms send the corners of the removal mask's
    bounding box (the whole grid when nothing is removed)."""
    hits = np.argwhere(removal) if removal.any() else np.array([[0, 0, 0], np.array(removal.shape) - 1])
    low, high = hits.min(axis=0), hits.max(axis=0)
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])
    world = affine @ corners.T
    return float(np.max(np.linalg.norm((matrix @ world - other @ world)[:3], axis=0)))


def applied_or_registered(reference: RemovalEstimate, reference_path: Path, reference_label: str, in_path: Path,
                          engine: str = "builtin", threads: int | None = None) -> RemovalEstimate:
    """The reference's face mask on `in_path` when it fits there (every guard passes), else the image
    registered on its own (with the same template pair) and a note saying why."""
    applied = estimate_applied(reference, load_nifti(reference_path), in_path, reference_label)
    if applied is not None and not applied.failures:
        return applied
    why = ("not in scanner coordinates with " + reference_label if applied is None else
           f"the face mask of {reference_label} does not fit ({'; '.join(applied.failures)})")
    own = estimate_removal(in_path, engine=engine, threads=threads, template=reference.pair)
    own.notes.append(f"{why}: registered on its own")
    return own


def evaluate_metric(volume: np.ndarray, affine: np.ndarray, matrix: np.ndarray) -> float:
    """The guard's image-match metric for a transform found elsewhere (the FSL engine)."""
    levels = register.prepare_subject(volume, affine, (register.CHECK_SPACING_MM,))
    return register.check_metric(levels, matrix)


def resolve_threads(threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    value = os.environ.get(THREADS_ENV, "1")
    try:
        return max(1, int(value))
    except ValueError as exc:
        raise ConfigError(f"{THREADS_ENV} must be a whole number, got {value!r}") from exc


def choose_engine(engine: str) -> str:
    from bidsafe.deface import fsl

    if engine not in ENGINES:
        raise ConfigError(f"unknown deface engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine == "auto":
        return "fsl" if fsl.fsl_available() else "builtin"
    if engine == "fsl" and not fsl.fsl_available():
        raise ConfigError("engine 'fsl' requested but FSL is not usable (FSLDIR, fsl and flirt on PATH)")
    return engine


# --- writing --------------------------------------------------------------------------------------------------


def _raw_zero(img: nib.Nifti1Image) -> np.generic:
    """The stored value that reads back as 0 under the image's scaling (or the closest one)."""
    dtype: np.dtype[Any] = img.get_data_dtype()  # type: ignore[no-untyped-call]
    proxy: Any = img.dataobj
    slope = float(proxy.slope)
    inter = float(proxy.inter)
    if dtype.kind == "f":
        zero: np.generic = dtype.type(0.0 if inter == 0 else -inter / slope)
        return zero
    value = 0.0 if inter == 0 else round(-inter / slope)
    info = np.iinfo(dtype)
    closest: np.generic = dtype.type(min(max(value, info.min), info.max))
    return closest


def defaced_bytes(in_path: Path, img: nib.Nifti1Image, removal: np.ndarray, gzipped: bool) -> bytes:
    """The input file with face voxels zeroed: header and extensions byte for byte, data in the same type."""
    proxy: Any = img.dataobj
    offset = int(proxy.offset)  # the loaded header's vox_offset reads 0; the proxy keeps the real one
    opener = gzip.open if str(in_path).endswith(".gz") else open
    with opener(in_path, "rb") as handle:
        prefix = handle.read(offset)
    raw = np.asanyarray(proxy.get_unscaled())
    if raw.dtype != img.get_data_dtype():  # type: ignore[no-untyped-call]
        raw = raw.astype(img.get_data_dtype())  # type: ignore[no-untyped-call]
    raw = np.array(raw, copy=True, order="F")
    raw[removal] = _raw_zero(img)
    payload = prefix + raw.tobytes(order="F")
    return _gzip(payload) if gzipped else payload


def _gzip(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    # mtime=0 and no file name: the same input gives the same bytes (and the same SHA-256) on every run.
    # Level 1: on a noisy 1 mm T1 (24 MB) 0.4 s of CPU for 14.5 MB; level 6 took 1.8 s for 14.4 MB.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=1, mtime=0) as handle:
        handle.write(payload)
    return buffer.getvalue()


def mask_bytes(removal: np.ndarray, img: nib.Nifti1Image, gzipped: bool) -> bytes:
    # nibabel's header and image methods carry no annotations (mypy --strict: no-untyped-call)
    header: Any = nib.Nifti1Header()  # type: ignore[no-untyped-call]
    header.set_data_shape(removal.shape)
    header.set_data_dtype(np.uint8)
    mask: Any = nib.Nifti1Image(removal.astype(np.uint8), None, header)  # type: ignore[no-untyped-call]
    source: Any = img.header
    sform, sform_code = source.get_sform(coded=True)
    qform, qform_code = source.get_qform(coded=True)
    mask.set_sform(img.affine if sform is None else sform, code=int(sform_code or 1))
    mask.set_qform(img.affine if qform is None else qform, code=int(qform_code or 1))
    mask.header.set_xyzt_units(*source.get_xyzt_units())
    payload = mask.to_bytes()
    return _gzip(payload) if gzipped else payload


def _check_output(in_path: Path, out_path: Path) -> None:
    if not out_path.name.endswith(NIFTI_SUFFIXES):
        raise ConfigError("output must end in .nii or .nii.gz", out_path)
    if out_path.exists() and in_path.exists() and out_path.resolve() == in_path.resolve():
        raise ConfigError("output would overwrite the input", out_path)


def deface_image(
    in_path: Path,
    out_path: Path,
    engine: str = "auto",
    qc_png: Path | None = None,
    mask_path: Path | None = None,
    threads: int | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    template: tpl.TemplatePair | None = None,
    estimate: RemovalEstimate | None = None,
) -> DefaceRecord:
    """Deface one image. Raises GuardError (and writes nothing) when a guard trips.

    `name` is how the record and messages call the image (default: the file name). `progress` counts the
    steps done (registration and guards, then writing). `template`: the pair to register (default: the shipped
    adult pair). `estimate`: one already made for this image (e.g. `applied_or_registered`), used as is.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    label = name or in_path.name
    _check_output(in_path, out_path)
    for extra in (mask_path, qc_png):
        if extra is not None and Path(extra).resolve() in {in_path.resolve(), out_path.resolve()}:
            raise ConfigError("mask/QC path collides with the input or output", extra)
    if mask_path is not None and not Path(mask_path).name.endswith(NIFTI_SUFFIXES):
        raise ConfigError("mask must end in .nii or .nii.gz", mask_path)
    started = time.monotonic()
    if estimate is None:
        estimate = estimate_removal(in_path, engine=engine, threads=threads, template=template)
    if progress is not None:
        progress.advance()
    if estimate.failures:
        raise DefaceRefused(
            f"deface refused ({estimate.engine}): " + "; ".join(estimate.failures) + " | "
            + guard_values_text(estimate.guard_values), label, [refused_record(label, estimate)],
        )
    img = load_nifti(in_path)
    data = defaced_bytes(in_path, img, estimate.removal, gzipped=out_path.name.endswith(".gz"))
    if qc_png is not None:
        from bidsafe.deface import qc

        qc.write_qc_png(img, estimate.removal, Path(qc_png), title=label)
    if mask_path is not None:
        atomic_write_bytes(mask_path, mask_bytes(estimate.removal, img, Path(mask_path).name.endswith(".gz")))
    atomic_write_bytes(out_path, data)
    if progress is not None:
        progress.advance()
    report = estimate.report
    removed = int(estimate.removal.sum())
    return DefaceRecord(
        input=label,
        output_sha256=hashlib.sha256(data).hexdigest(),
        engine=estimate.engine,
        singular_values=[round(v, 4) for v in report.singular_values],
        shear=round(report.shear, 4),
        agreement_dice=None if report.agreement_dice is None else round(report.agreement_dice, 4),
        brain_voxels_removed=report.brain_voxels_removed,
        brain_cm3_removed=round(report.brain_cm3_removed, 3),
        metric=None if report.metric is None else round(report.metric, 4),
        removed_voxels=removed,
        removed_cm3=round(removed * float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0, 2),
        volumes=estimate.volumes,
        seconds=round(time.monotonic() - started, 2),
        matrix=[[round(float(v), 6) for v in row] for row in estimate.matrix],
        notes=estimate.notes,
        guards=estimate.guard_values,
        template_sha256=tpl.pair_assets(estimate.pair or tpl.active_pair()).sha256,
        template=(estimate.pair or tpl.active_pair()).name,
        applied_from=estimate.applied_from,
    )


# --- sessions -------------------------------------------------------------------------------------------------


def image_suffix(path: Path) -> str | None:
    """BIDS suffix of a NIfTI file name (`sub-01_ses-1_run-1_T1w.nii.gz` -> `T1w`)."""
    for ext in NIFTI_SUFFIXES:
        if path.name.endswith(ext):
            return path.name[: -len(ext)].rsplit("_", 1)[-1]
    return None


def deface_targets(
    in_dir: Path, exempt: Iterable[str] = (), also: Iterable[str] = ()
) -> list[Path]:
    """Relative paths of the NIfTI images to deface: every image in an `anat` folder whatever its suffix, and
    every image elsewhere whose suffix is in `also`; suffixes in `exempt` are left alone (the site's documented
    choice, config `deface.exempt`) unless `also` names them too. The release's deface gate makes its own,
    independent choice of what needs a face removed."""
    exempt, also = set(exempt), set(also)
    found = []
    for path in sorted(Path(in_dir).rglob("*")):
        suffix = image_suffix(path)
        if suffix is None or not path.is_file():
            continue
        in_anat = "anat" in path.relative_to(in_dir).parts[:-1]
        if suffix in also or (in_anat and suffix not in exempt):
            found.append(path.relative_to(in_dir))
    return found


def deface_session(
    in_dir: Path,
    out_dir: Path,
    records_json: Path,
    qc_dir: Path | None,
    engine: str = "auto",
    threads: int | None = None,
    *,
    exempt: Iterable[str] = (),
    also: Iterable[str] = (),
    template: tpl.TemplatePair | None = None,
    applyto: bool = True,
) -> list[DefaceRecord]:
    """Copy a session's BIDS tree to `out_dir` with every target image (`deface_targets`) defaced, atomically.

    With `applyto`, the session's T1w (`reference_image`) is registered and its face mask carried onto every
    other target in the same scanner frame (`applied_or_registered`: each judged by every guard on its own
    grid, registered on its own when the mask does not fit); without a T1w each image is registered.
    Every image is tried so the error names all that failed; if any guard trips nothing is written
    (`out_dir` and `records_json` stay as they were) and DefaceRefused names the images and carries every
    image's record (the refused ones with `refused: true`) for the caller to keep.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise ConfigError("session folder not found", in_dir)
    targets = set(deface_targets(in_dir, exempt, also))
    reference = reference_image(targets) if applyto else None
    reference_estimate = None
    if reference is not None:
        try:
            reference_estimate = estimate_removal(in_dir / reference, engine=engine, threads=threads,
                                                  template=template)
        except GuardError:
            reference = None  # an empty T1w: refused below with its reason, the others registered on their own
    records: list[DefaceRecord] = []
    refused: list[str] = []
    refused_records: list[dict[str, Any]] = []
    with atomic_dir(out_dir) as staging:
        for path in sorted(in_dir.rglob("*")):
            relative = path.relative_to(in_dir)
            destination = staging / relative
            if path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            if relative not in targets:
                shutil.copyfile(path, destination)
                continue
            qc_png = None if qc_dir is None else Path(qc_dir) / (_stem(relative) + "_deface.png")
            try:
                estimate = None
                if relative == reference:
                    estimate = reference_estimate
                elif reference_estimate is not None and not reference_estimate.failures:
                    known = cast(Path, reference)  # reference_estimate is only set with a reference
                    estimate = applied_or_registered(reference_estimate, in_dir / known,
                                                     known.as_posix(), path, engine=engine, threads=threads)
                record = deface_image(path, destination, engine=engine, qc_png=qc_png, threads=threads,
                                      name=relative.as_posix(), template=template, estimate=estimate)
            except GuardError as exc:
                refused.append(f"{relative.as_posix()}: {exc.message}")  # its path once, not twice
                refused_records.extend(getattr(exc, "records", []))
                continue
            records.append(record)
        if refused:
            raise DefaceRefused("session withheld, defacing refused for " + " || ".join(refused), in_dir.name,
                                [*session_records(records), *refused_records])
    atomic_write_json(records_json, session_records(records))
    return records


def session_records(records: list[DefaceRecord]) -> list[dict[str, Any]]:
    """records.json entries: each record with its released path and the output's SHA-256 up front."""
    return [{"path": r.input, "sha256": r.output_sha256, **r.as_dict()} for r in records]


REFERENCE_SUFFIX = "T1w"


def reference_image(targets: Iterable[Path]) -> Path | None:
    """The image whose face mask the session's other images get: its first T1w (the first run in name
    order) in an `anat` folder; None without one."""
    found = sorted(p for p in targets if image_suffix(p) == REFERENCE_SUFFIX and "anat" in p.parts[:-1])
    return found[0] if found else None


def _stem(relative: Path) -> str:
    name = relative.name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


# --- command line ---------------------------------------------------------------------------------------------


def applyto_output(out_path: Path, other: Path) -> Path:
    """Where `--applyto` writes OTHER's defaced copy: next to OUT, OTHER's name with `_defaced` before .nii."""
    name = Path(other).name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return Path(out_path).parent / f"{name[: -len(ext)]}_defaced{ext}"
    raise ConfigError("--applyto images must be single-file NIfTI (.nii or .nii.gz)", other)


def cli_template(args: argparse.Namespace) -> tpl.TemplatePair | None:
    given = {k: getattr(args, k, None) for k in ("template", "facemask", "brainmask")}
    if not any(given.values()):
        if getattr(args, "scale_range", None):
            raise ConfigError("--scale-range applies to a --template of your own")
        return None
    missing = [f"--{k}" for k, v in given.items() if not v]
    if missing:
        raise ConfigError(f"--template, --facemask and --brainmask go together: {', '.join(missing)} missing")
    paths = cast(dict[str, str], given)  # each one given (checked above)
    return tpl.site_pair(Path(paths["template"]).name, paths["template"], paths["facemask"], paths["brainmask"],
                         getattr(args, "scale_range", None))


def cli_main(args: argparse.Namespace) -> int:
    in_path, out_path = Path(args.input), Path(args.output)
    others = [Path(o) for o in (getattr(args, "applyto", None) or [])]
    outputs = {other: applyto_output(out_path, other) for other in others}
    written = [out_path, *outputs.values()]
    if len({p.resolve() for p in written}) != len(written):
        raise ConfigError("--applyto: two images would be written to the same file (same names?)", out_path.parent)
    sources = {p.resolve() for p in (in_path, *others)}
    for target in outputs.values():
        if target.resolve() in sources:
            raise ConfigError("--applyto: an output would overwrite an input", target)
    for option, target in (("OUT", args.output), ("--qc", args.qc), ("--mask", args.mask),
                           *(("--applyto", str(t)) for t in outputs.values())):
        if target and Path(target).exists() and not getattr(args, "force", False):
            raise ConfigError(f"{option}: the file exists; give --force to replace it", target)
    template = cli_template(args)
    threads = getattr(args, "threads", None)
    with Progress("bidsafe deface", 2 * (1 + len(others)), "steps", every_s=0) as meter:
        estimates: dict[Path, RemovalEstimate | None] = {in_path: None}
        if others:
            # every estimate before any write: a refused OTHER leaves OUT unwritten too
            _check_output(in_path, out_path)
            reference = estimate_removal(in_path, engine=args.engine, threads=threads, template=template)
            if reference.failures:
                raise GuardError(f"deface refused ({reference.engine}): " + "; ".join(reference.failures), in_path.name)
            estimates[in_path] = reference
            refused = []
            for other in others:
                _check_output(other, outputs[other])
                estimate = applied_or_registered(reference, in_path, in_path.name, other,
                                                 engine=args.engine, threads=threads)
                estimates[other] = estimate
                if estimate.failures:
                    refused.append(f"{other.name}: " + "; ".join(estimate.failures))
            if refused:
                raise GuardError("deface refused for " + " | ".join(refused), in_path.name)
        records = [deface_image(
            in_path, out_path, engine=args.engine, qc_png=Path(args.qc) if args.qc else None,
            mask_path=Path(args.mask) if args.mask else None, threads=threads, progress=meter,
            template=template, estimate=estimates[in_path],
        )]
        for other in others:
            records.append(deface_image(other, outputs[other], engine=args.engine, threads=threads, progress=meter,
                                        template=template, estimate=estimates[other]))
    for record in records:
        how = f"mask of {record.applied_from}" if record.applied_from else record.engine
        print(
            f"{record.input}: defaced with {how} in {record.seconds:.1f} s, "
            f"{record.removed_cm3:.0f} cm3 of the field of view zeroed, agreement Dice "
            f"{'n/a' if record.agreement_dice is None else f'{record.agreement_dice:.3f}'}, "
            f"metric {record.metric if record.metric is not None else 'n/a'}"
        )
    return 0
