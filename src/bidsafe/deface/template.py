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

A site may use its own template + face mask pair instead (e.g. an age-appropriate one for children and
infants, `TemplatePair`): it must bring a brain mask on the same grid (the brain guard needs one and no
envelope is known for it), and its landmarks (chin, skull base) are placed at the adult proportions of its
brain's height. The pair in use is a context (`using`), so the registration, the face mask and the guards all
read the same one without threading it through every call.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsafe.errors import BidsafeError, ConfigError

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
# Landmarks of a site's template, as fractions of its brain's height above the brain's lowest point: the
# pinned template's (skull base 20 mm and chin -33 mm from the lowest brain point, brain 129.5 mm high).
SKULL_BASE_BRAIN_FRACTION = 0.156
CHIN_BRAIN_FRACTION = -0.255
SHIPPED_NAME = "adult"  # pydeface's template and face mask, the default pair
# Plausible overall scale (geometric mean of the singular values, template mm per subject mm). pydeface's
# template head is small for an adult: Colin27 registers at 0.885 (0.837 along its height), an adult head 15 %
# larger than Colin at 0.77, 20 % larger at 0.74; a head 0.8x the template's size is at 1.25. Lower bound 0.7:
# adult heads pass; upper 1.25: a child's head (0.65x, scale 1.36-1.54) is refused as smaller than adult.
ADULT_SCALE_RANGE = (0.7, 1.25)
# A site's own pair is built for its population, so its heads centre on 1: sizes differ, but not by 25 %.
SITE_SCALE_RANGE = (0.8, 1.25)


@dataclass(frozen=True)
class TemplatePair:
    """A head template, its face mask (pydeface's convention: 0 = face) and a brain mask on the same grid.

    `brainmask` is None only for the shipped pair, whose brain is derived (module note). `scale_range` is
    the plausible range of the registration's overall scale (geometric mean of its singular values, template mm
    per subject mm) for the heads this template is meant for.
    """

    name: str
    template: Path
    facemask: Path
    brainmask: Path | None = None
    scale_range: tuple[float, float] = SITE_SCALE_RANGE

    @property
    def shipped(self) -> bool:
        return self.brainmask is None


def shipped_pair() -> TemplatePair:
    return TemplatePair(SHIPPED_NAME, data_path("mean_reg2mean.nii.gz"), data_path("facemask.nii.gz"),
                        scale_range=ADULT_SCALE_RANGE)


def site_pair(name: str, template: str | Path, facemask: str | Path, brainmask: str | Path,
              scale_range: tuple[float, float] | list[float] | None = None) -> TemplatePair:
    """A site's pair, its files checked to exist (they are read when first used)."""
    for label, path in (("template", template), ("facemask", facemask), ("brainmask", brainmask)):
        if not Path(path).is_file():
            raise ConfigError(f"deface template {name!r}: {label} file not found", path)
    low, high = (float(v) for v in (scale_range or SITE_SCALE_RANGE))
    if not 0 < low < 1 < high:
        raise ConfigError(f"deface template {name!r}: scale_range must be [low < 1 < high], got [{low}, {high}]")
    return TemplatePair(name, Path(template), Path(facemask), Path(brainmask), (low, high))


def select_pair(entries: Iterable[Mapping[str, Any]], subject: str, session: str) -> TemplatePair | None:
    """The site's pair for a session: the first `deface.templates` entry whose `sessions` name it
    (`sub-S/ses-T`) or its participant (`sub-S`), in released labels; None: the shipped adult pair."""
    wanted = {f"sub-{subject}", f"sub-{subject}/ses-{session}"}
    for entry in entries:
        if wanted & {str(s) for s in entry.get("sessions") or ()}:
            return site_pair(str(entry["name"]), entry["template"], entry["facemask"], entry["brainmask"],
                             entry.get("scale_range"))
    return None


_ACTIVE: ContextVar[TemplatePair | None] = ContextVar("bidsafe_deface_template", default=None)


def active_pair() -> TemplatePair:
    return _ACTIVE.get() or shipped_pair()


@contextlib.contextmanager
def using(pair: TemplatePair | None) -> Iterator[TemplatePair]:
    """Make `pair` the template in use inside the block (None: keep the one in use, by default the shipped)."""
    token = _ACTIVE.set(pair or _ACTIVE.get())
    try:
        yield active_pair()
    finally:
        _ACTIVE.reset(token)


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
    sha256: str = EXPECTED_TEMPLATE_SHA256  # of the template file
    chin_z: float = CHIN_Z_MM
    skull_base_z: float = SKULL_BASE_Z_MM


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


def load_assets() -> TemplateAssets:
    """The assets of the template pair in use (`using`)."""
    return pair_assets(active_pair())


@functools.lru_cache(maxsize=4)
def pair_assets(pair: TemplatePair) -> TemplateAssets:
    if not pair.shipped:
        return _site_assets(pair)
    template_path, mask_path = pair.template, pair.facemask
    digest = hashlib.sha256(template_path.read_bytes()).hexdigest()
    if digest != EXPECTED_TEMPLATE_SHA256:
        raise BidsafeError(
            "pydeface's head template is not the one bidsafe's brain envelope was placed on "
            f"(sha256 {digest[:12]}...); install a pydeface 2.x whose template matches",
            template_path,
        )
    template = cast(nib.Nifti1Image, nib.load(template_path))
    mask = cast(nib.Nifti1Image, nib.load(mask_path))
    if not np.allclose(template.affine, mask.affine, atol=1e-3) or template.shape != mask.shape:
        raise BidsafeError("pydeface's face mask and template do not share a grid", mask_path)
    image = np.asarray(template.dataobj, dtype=np.float32)
    face = np.asarray(mask.dataobj) < 0.5
    brain, brain_eroded = derive_brain_mask(image, template.affine)
    return TemplateAssets(
        affine=template.affine.copy(), image=image, face=face, brain=brain, brain_eroded=brain_eroded
    )


def _site_assets(pair: TemplatePair) -> TemplateAssets:
    """A site's pair: the three images on one grid, a non-empty face and brain that do not overlap."""
    images: dict[str, nib.Nifti1Image] = {}
    for label in ("template", "facemask", "brainmask"):
        path = getattr(pair, label)
        try:
            images[label] = cast(nib.Nifti1Image, nib.load(path))
        except Exception as exc:  # nibabel raises several types for a damaged file
            raise ConfigError(f"deface template {pair.name!r}: {label} is not a readable NIfTI", path) from exc
        if len(images[label].shape) != 3:
            raise ConfigError(f"deface template {pair.name!r}: {label} must be a 3D image", path)
    template = images["template"]
    for label in ("facemask", "brainmask"):
        other = images[label]
        if other.shape != template.shape or not np.allclose(other.affine, template.affine, atol=1e-3):
            raise ConfigError(f"deface template {pair.name!r}: {label} and template do not share a grid",
                              getattr(pair, label))
    image = np.asarray(template.dataobj, dtype=np.float32)
    face = np.asarray(images["facemask"].dataobj) < 0.5
    brain = np.asarray(images["brainmask"].dataobj) > 0.5
    if not face.any() or face.all() or not brain.any() or (face & brain).any():
        raise ConfigError(f"deface template {pair.name!r}: the face mask must mark a face (0) that misses the "
                          "brain mask, and the brain mask must not be empty", pair.facemask)
    zooms = np.sqrt((template.affine[:3, :3] ** 2).sum(axis=0))
    eroded = ndimage.distance_transform_edt(brain, sampling=zooms) > 2.0
    _, z = world_yz(template.affine, image.shape)
    brain_z = np.broadcast_to(z, image.shape)[brain]
    low, height = float(brain_z.min()), float(brain_z.max() - brain_z.min())
    return TemplateAssets(
        affine=template.affine.copy(), image=image, face=face, brain=brain, brain_eroded=eroded,
        sha256=hashlib.sha256(Path(pair.template).read_bytes()).hexdigest(),
        chin_z=low + CHIN_BRAIN_FRACTION * height, skull_base_z=low + SKULL_BASE_BRAIN_FRACTION * height,
    )


def ball(radius_vox: int) -> np.ndarray:
    grid = np.mgrid[tuple(slice(-radius_vox, radius_vox + 1) for _ in range(3))]
    inside: np.ndarray = (grid**2).sum(axis=0) <= radius_vox**2 + 0.5
    return inside


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
    sampled: np.ndarray = ndimage.affine_transform(
        data,
        vox_to_vox[:3, :3],
        vox_to_vox[:3, 3],
        output_shape=tuple(grid_shape[:3]),
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
    )
    return sampled


def smooth_for_spacing(data: np.ndarray, zooms: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian smoothing so that voxels of size `zooms` can be sampled at `spacing` without aliasing."""
    fwhm = np.sqrt(np.maximum(spacing**2 - np.asarray(zooms, dtype=float) ** 2, 0.0))
    sigma_vox = fwhm / 2.3548 / np.asarray(zooms, dtype=float)
    if not np.any(sigma_vox > 0.1):
        return data
    smoothed: np.ndarray = ndimage.gaussian_filter(data, sigma_vox, mode="nearest", truncate=3.0)
    return smoothed


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
    filled: np.ndarray = ndimage.binary_fill_holes(mask)
    return filled


def normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale to the head's 99th percentile and clip, so metric histograms see comparable ranges."""
    values = image[mask]
    scale = float(np.percentile(values, 99.0)) if values.size else 1.0
    return np.clip(image / max(scale, 1e-6), 0.0, 1.5).astype(np.float32)


def template_level(spacing: float) -> TemplateLevel:
    """The template in use on an axis-aligned grid of `spacing` mm, cropped to the head above the chin."""
    return _template_level(active_pair(), spacing)


@functools.lru_cache(maxsize=16)
def _template_level(pair: TemplatePair, spacing: float) -> TemplateLevel:
    assets = pair_assets(pair)
    grid, image = _template_image(pair, spacing)
    head = head_mask(image, spacing, fraction=0.1)
    image = normalise(image, head)
    margin = max(1, round(HEAD_MARGIN_MM / spacing))
    around = ndimage.binary_dilation(head, ball(margin))
    _, z = world_yz(grid.affine, grid.shape)
    face_region = around & (z >= assets.chin_z)
    box, cropped = crop_grid(grid, face_region, pad=2)
    return TemplateLevel(
        grid=cropped,
        image=image[box],
        cranium_region=(around & (z >= assets.skull_base_z))[box],
        face_region=face_region[box],
    )


@functools.lru_cache(maxsize=16)
def _template_image(pair: TemplatePair, spacing: float) -> tuple[Grid, np.ndarray]:
    """The template resampled at `spacing`: from the 1 mm original at 2 mm, from the 2 mm copy above."""
    assets = pair_assets(pair)
    corners = corners_world(assets.affine, assets.image.shape)
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing) + 1)
    grid = Grid(origin=cast(tuple[float, float, float], tuple(float(v) for v in low)), spacing=spacing,
                shape=cast(tuple[int, int, int], shape))
    if spacing > 2.0:
        source_grid, source = _template_image(pair, 2.0)
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
    shape = tuple(b.stop - b.start for b in box)
    return tuple(box), Grid(origin=cast(tuple[float, float, float], origin), spacing=grid.spacing,
                            shape=cast(tuple[int, int, int], shape))


def corners_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the outer faces' corners of a grid's voxels (half a voxel beyond the centres)."""
    lows = [-0.5, -0.5, -0.5]
    highs = [n - 0.5 for n in shape[:3]]
    corners = np.array(
        [[c[0], c[1], c[2], 1.0] for c in np.array(np.meshgrid(*zip(lows, highs, strict=True))).T.reshape(-1, 3)]
    )
    world: np.ndarray = (affine @ corners.T).T[:, :3]
    return world

