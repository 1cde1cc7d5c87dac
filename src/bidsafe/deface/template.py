"""pydeface's head template and face mask, the masks bidsafe derives from them, and working grids.

Everything here lives in world space (RAS millimetres, as nibabel reports it). Working images are resampled
onto axis-aligned grids so that SimpleITK can take RAS millimetres as its physical space: the registration
never mixes ITK's LPS convention with NIfTI's RAS one.

pydeface ships no brain mask, so the template's brain is derived from the template itself: brain-tissue
intensities at least 12 mm inside the head, restricted to an envelope read off the template (nothing of the
brain lies below the foramen magnum or in front of a z-dependent coronal limit that keeps the orbits and the
nasal cavity out), opened with a 6 mm ball to cut the bridges to the temporal muscles and reconstructed from a
seed in the corpus callosum. Against Colin27's own brain (ch2bet) carried into the template through the
reference registration it has Dice 0.92, covers all but 17 cm3 of it, and stays >= 10 mm from the face mask.
The envelope was placed on this exact template, so its SHA-256 is pinned.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsafe.errors import BidsafeError

EXPECTED_TEMPLATE_SHA256 = "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6"

# Template world z (RAS mm) of landmarks read off the template's midline: the lowest point of the chin and
# the skull base (floor of the anterior cranial fossa / top of the nose).
CHIN_Z_MM = -95.0
SKULL_BASE_Z_MM = -42.0
# Brain envelope (template world, mm): lowest z, and the anterior limit y_max(z) as a piecewise-linear curve.
BRAIN_MIN_Z_MM = -62.0
BRAIN_ENVELOPE_Z_MM = (-62.0, -46.0, -40.0, -30.0, -18.0, -8.0)
BRAIN_ENVELOPE_Y_MM = (10.0, 10.0, 42.0, 56.0, 82.0, 92.0)
BRAIN_SEED_MM = (0.0, 10.0, 30.0)  # body of the corpus callosum
HEAD_MARGIN_MM = 10.0  # air kept around the head in the metric regions: the outline is what aligns best


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS grid: voxel (i, j, k) sits at origin + spacing * (i, j, k)."""

    origin: tuple[float, float, float]
    spacing: float
    shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine


@dataclass(frozen=True)
class TemplateAssets:
    """The full-resolution template, its face mask (True = face, to remove) and the derived brain mask."""

    affine: np.ndarray
    image: np.ndarray
    face: np.ndarray
    brain: np.ndarray
    brain_eroded: np.ndarray  # the brain less one 2 mm voxel: the guard's margin for partial volumes


@dataclass(frozen=True)
class TemplateLevel:
    """The template and its metric regions on one working grid."""

    grid: Grid
    image: np.ndarray  # float32, scaled so its 99th head percentile is 1
    cranium_region: np.ndarray  # bool: head (plus margin) above the skull base: the global stage's region
    face_region: np.ndarray  # bool: head (plus margin) above the chin: the refinement's region


def data_path(name: str) -> Path:
    path = Path(str(files("pydeface").joinpath("data", name)))
    if not path.is_file():
        raise BidsafeError(f"pydeface data file missing ({name}); reinstall pydeface", path)
    return path


@functools.lru_cache(maxsize=1)
def load_assets() -> TemplateAssets:
    template_path = data_path("mean_reg2mean.nii.gz")
    mask_path = data_path("facemask.nii.gz")
    digest = hashlib.sha256(template_path.read_bytes()).hexdigest()
    if digest != EXPECTED_TEMPLATE_SHA256:
        raise BidsafeError(
            "pydeface's head template is not the one bidsafe's brain envelope was placed on "
            f"(sha256 {digest[:12]}...); install a pydeface 2.x whose template matches",
            template_path,
        )
    template = nib.load(template_path)
    mask = nib.load(mask_path)
    if not np.allclose(template.affine, mask.affine, atol=1e-3) or template.shape != mask.shape:
        raise BidsafeError("pydeface's face mask and template do not share a grid", mask_path)
    image = np.asarray(template.dataobj, dtype=np.float32)
    face = np.asarray(mask.dataobj) < 0.5
    brain, brain_eroded = derive_brain_mask(image, template.affine)
    return TemplateAssets(
        affine=template.affine.copy(), image=image, face=face, brain=brain, brain_eroded=brain_eroded
    )


def ball(radius_vox: int) -> np.ndarray:
    grid = np.mgrid[tuple(slice(-radius_vox, radius_vox + 1) for _ in range(3))]
    return (grid**2).sum(axis=0) <= radius_vox**2 + 0.5


def world_yz(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """World y and z of every voxel of a grid, as broadcastable arrays."""
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape[:3]), indexing="ij", sparse=True)
    y = affine[1, 0] * ii + affine[1, 1] * jj + affine[1, 2] * kk + affine[1, 3]
    z = affine[2, 0] * ii + affine[2, 1] * jj + affine[2, 2] * kk + affine[2, 3]
    return y, z


def derive_brain_mask(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain of the template (see the module note) and the brain eroded by 2 mm, on the template grid.

    Computed on a 2 mm copy for speed.
    """
    factor = 2
    small = image[::factor, ::factor, ::factor]
    small_affine = affine.copy()
    small_affine[:3, :3] *= factor
    spacing = np.sqrt((small_affine[:3, :3] ** 2).sum(axis=0))
    head = ndimage.binary_fill_holes(ndimage.binary_closing(small > 60, iterations=2))
    depth = ndimage.distance_transform_edt(head, sampling=spacing)
    y, z = world_yz(small_affine, small.shape)
    envelope = (z > BRAIN_MIN_Z_MM) & (y < np.interp(z, BRAIN_ENVELOPE_Z_MM, BRAIN_ENVELOPE_Y_MM))
    tissue = (small > 170) & (small < 420) & (depth > 12.0) & envelope
    labels, _ = ndimage.label(ndimage.binary_opening(tissue, ball(3)))
    seed_vox = np.round(np.linalg.solve(small_affine, [*BRAIN_SEED_MM, 1.0])[:3]).astype(int)
    seed_label = labels[tuple(seed_vox)]
    if seed_label == 0:
        raise BidsafeError("could not derive the template brain mask (seed outside tissue)")
    brain = ndimage.binary_dilation(labels == seed_label, ball(1), iterations=3, mask=tissue)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, ball(2))) & envelope
    eroded = ndimage.binary_erosion(brain, ball(1))

    def upsample(mask: np.ndarray) -> np.ndarray:
        full = mask.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
        return np.ascontiguousarray(full[: image.shape[0], : image.shape[1], : image.shape[2]])

    return upsample(brain), upsample(eroded)


def resample(
    data: np.ndarray,
    data_affine: np.ndarray,
    grid_affine: np.ndarray,
    grid_shape: tuple[int, ...],
    order: int = 1,
    cval: float = 0.0,
    mode: str = "constant",
) -> np.ndarray:
    """Sample `data` (voxel -> world by `data_affine`) at every voxel of a grid (voxel -> world by `grid_affine`)."""
    vox_to_vox = np.linalg.solve(data_affine, grid_affine)
    return ndimage.affine_transform(
        data,
        vox_to_vox[:3, :3],
        vox_to_vox[:3, 3],
        output_shape=tuple(grid_shape[:3]),
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
    )


def smooth_for_spacing(data: np.ndarray, zooms: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian smoothing so that voxels of size `zooms` can be sampled at `spacing` without aliasing."""
    fwhm = np.sqrt(np.maximum(spacing**2 - np.asarray(zooms, dtype=float) ** 2, 0.0))
    sigma_vox = fwhm / 2.3548 / np.asarray(zooms, dtype=float)
    if not np.any(sigma_vox > 0.1):
        return data
    return ndimage.gaussian_filter(data, sigma_vox, mode="nearest", truncate=3.0)


def head_mask(image: np.ndarray, spacing: float, fraction: float = 0.15) -> np.ndarray:
    """The head: above a fraction of the robust maximum, closed, holes filled, largest component."""
    positive = image[image > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    level = fraction * float(np.percentile(positive, 99.0))
    mask = image > level
    radius = max(1, round(4.0 / spacing))
    mask = ndimage.binary_closing(mask, ball(radius), border_value=0)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale to the head's 99th percentile and clip, so metric histograms see comparable ranges."""
    values = image[mask]
    scale = float(np.percentile(values, 99.0)) if values.size else 1.0
    return np.clip(image / max(scale, 1e-6), 0.0, 1.5).astype(np.float32)


@functools.lru_cache(maxsize=8)
def template_level(spacing: float) -> TemplateLevel:
    """The template on an axis-aligned grid of `spacing` mm, cropped to the head above the chin."""
    grid, image = _template_image(spacing)
    head = head_mask(image, spacing, fraction=0.1)
    image = normalise(image, head)
    margin = max(1, round(HEAD_MARGIN_MM / spacing))
    around = ndimage.binary_dilation(head, ball(margin))
    _, z = world_yz(grid.affine, grid.shape)
    face_region = around & (z >= CHIN_Z_MM)
    box, cropped = crop_grid(grid, face_region, pad=2)
    return TemplateLevel(
        grid=cropped,
        image=image[box],
        cranium_region=(around & (z >= SKULL_BASE_Z_MM))[box],
        face_region=face_region[box],
    )


@functools.lru_cache(maxsize=8)
def _template_image(spacing: float) -> tuple[Grid, np.ndarray]:
    """The template resampled at `spacing`: from the 1 mm original at 2 mm, from the 2 mm copy above."""
    assets = load_assets()
    corners = corners_world(assets.affine, assets.image.shape)
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing) + 1)
    grid = Grid(origin=tuple(float(v) for v in low), spacing=spacing, shape=shape)
    if spacing > 2.0:
        source_grid, source = _template_image(2.0)
        source_affine, zooms = source_grid.affine, np.full(3, 2.0)
    else:
        source, source_affine = assets.image, assets.affine
        zooms = np.sqrt((assets.affine[:3, :3] ** 2).sum(axis=0))
    smoothed = smooth_for_spacing(source, zooms, spacing)
    return grid, resample(smoothed, source_affine, grid.affine, shape)


def crop_grid(grid: Grid, mask: np.ndarray, pad: int) -> tuple[tuple[slice, ...], Grid]:
    """The part of `grid` around `mask` (plus `pad` voxels): slices into arrays and the cropped grid."""
    if not mask.any():
        return tuple(slice(0, n) for n in grid.shape), grid
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, grid.shape[axis])))
    origin = tuple(float(o + grid.spacing * b.start) for o, b in zip(grid.origin, box, strict=True))
    return tuple(box), Grid(origin=origin, spacing=grid.spacing, shape=tuple(b.stop - b.start for b in box))


def corners_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the outer faces' corners of a grid's voxels (half a voxel beyond the centres)."""
    lows = [-0.5, -0.5, -0.5]
    highs = [n - 0.5 for n in shape[:3]]
    corners = np.array(
        [[c[0], c[1], c[2], 1.0] for c in np.array(np.meshgrid(*zip(lows, highs, strict=True))).T.reshape(-1, 3)]
    )
    return (affine @ corners.T).T[:, :3]

