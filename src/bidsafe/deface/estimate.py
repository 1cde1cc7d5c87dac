"""Where the face is on an image: register (or run FSL), carry the face mask, run every guard; and `--applyto`,
one image's transform carried onto another of the same session. Nothing is written here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsafe.deface import register
from bidsafe.deface import template as tpl
from bidsafe.deface.facemask import apply_guards
from bidsafe.deface.nifti import load_nifti, registration_volume
from bidsafe.deface.records import RemovalEstimate
from bidsafe.errors import ConfigError, GuardError

ENGINES = ("auto", "builtin", "fsl")
THREADS_ENV = "BIDSAFE_DEFACE_THREADS"


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
