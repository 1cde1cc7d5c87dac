"""pydeface's face mask carried onto an image grid (with its margin), and the guards that judge a transform."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from bidsafe.deface import guards
from bidsafe.deface import template as tpl

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
