"""Built-in registration of pydeface's head template to a subject (template = moving, subject = fixed).

Transforms are 4x4 matrices mapping subject world coordinates (RAS mm) to template world coordinates, the
direction SimpleITK optimises and the direction of the reference in benchmarks/deface-reference.md.

Method (chosen by measurement on benchmarks/deface_accuracy.py and benchmarks/deface_robustness.py: Colin27
and pydeface's template under known poses, sizes, fields of view, grids and contrasts):
1. Working images: the subject smoothed and resampled to axis-aligned 2, 4 and 6 mm grids, each cropped to
   the head plus 10 mm. The metric samples the subject (fixed image) only there and inside its field of view,
   so what the field of view cut off (chin, nose, top of the head) is never compared with the template:
   template voxels with no counterpart in the image are outside the overlap and never sampled.
2. Start: a similarity aligning the centroids and sizes of the top 90 mm of both heads (first moments and
   volume of the skull cap, which is in every scan; the chin and neck are not).
3. Global stage: from that start turned by -30, -15, 0, +15, +30 degrees of pitch, each alone or with a roll
   or a yaw of +-15 degrees; per pitch the best-scoring of those five starts (metric where it stands, cheap at
   6 mm) is optimised as a similarity of the template's cranium (head above the skull base) at 6 mm; the best
   Mattes MI wins. With the single 0-degree start, of 16 cases one ended 70 mm off (refused by the guards),
   another 13 mm off while passing every guard, and one was refused for disagreeing initialisations; with five
   pitch starts all 16 ended within 4 mm.
4. Refinement: similarity at 4 mm on the cranium, then affine at 4 mm and 2 mm on the head above the chin
   (the 4 mm stages sample a regular half of their grid, the 2 mm stage a regular 15 % for 90 iterations).
5. The same refinement from a deliberately perturbed start (10 degrees, 8 mm, 5 %; half the samples at 2 mm)
   gives the second initialisation that the agreement guard compares with.
Measured on one core per 1 mm T1 (before the half sampling at 4 mm): global 3-4 s, refinement 9-10 s, second
initialisation 6-7 s; see benchmarks/deface_robustness_baseline.txt for the whole `bidsafe deface` process.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bidsafe.deface import template as tpl
from bidsafe.deface.template import Grid, TemplateLevel

log = logging.getLogger(__name__)
# SimpleITK's Python functions and methods carry no annotations: calls go through this Any-typed handle
# (mypy --strict: no-untyped-call); signatures keep naming SimpleITK's classes.
_itk: Any = sitk

GLOBAL_SPACING_MM = 6.0
GLOBAL_PITCHES = (-30.0, -15.0, 0.0, 15.0, 30.0)
GLOBAL_TURN = 15.0  # roll and yaw added to each pitch (degrees)
GLOBAL_ITERATIONS = 80
SIMILARITY_SPACING_MM = 4.0
REFINE_SPACINGS_MM = (4.0, 2.0)  # affine stages
# The second initialisation (the agreement guard's) samples fewer voxels for fewer iterations at 2 mm: it must
# land on the same head, not match the first to the millimetre, and the 2 mm stage is most of its cost.
# (Stopping at 4 mm instead left face masks 6-14 mm apart, agreement Dice 0.88-0.90.)
ALTERNATIVE_FINE_SAMPLING = 0.10
ALTERNATIVE_FINE_ITERATIONS = 60
REFINE_ITERATIONS = 60  # per stage at 4 mm; 100 gained < 0.3 mm on the benchmark for 50 % more time
# The 4 mm affine stage samples a regular half of its grid: on 4 Colin27/pydeface cases of the robustness
# benchmark the transforms ended within 0.1 mm (primary) and 0.5 mm (second initialisation) of full sampling's,
# for ~1 s less CPU per stage.
COARSE_AFFINE_SAMPLING = 0.5
# The 4 mm similarity stage too (4 hard benchmark cases: face left and agreement within 0.5 % of full sampling's).
SIMILARITY_SAMPLING = 0.5
# The 2 mm stage samples a regular (seeded, jittered) 15 % of its grid for up to 120 iterations. Random 10 %
# for 60 stopped unconverged 3.3-4.7 mm from the truth on T2-like Colin heads (face tissue left 6-11 %);
# regular 15 % for 120 reached 1.6-3.7 mm for 6-7 s of CPU (regular sampling costs half of random per sample).
FINE_SAMPLING = 0.15
# 90 instead of 120 iterations (with half-sampled 4 mm stages): the same transform within 0.2 mm on 3 of 4
# benchmark cases, 0.4 mm further on the fourth (a large-field T2-like Colin head), 1.5 s less CPU.
FINE_ITERATIONS = 90
AFFINE_LEARNING_RATE = 2.0
CHECK_SPACING_MM = 4.0
MASK_SPACING_MM = 4.0
SUBJECT_MARGIN_MM = 10.0
SAMPLING_SEED = 20240601


@dataclass(frozen=True)
class SubjectLevel:
    grid: Grid
    image: np.ndarray  # float32, scaled to the head's 99th percentile
    head: np.ndarray  # bool: the head (inside the field of view)
    region: np.ndarray  # bool: inside the field of view and near the head: where the metric samples


@dataclass
class Candidate:
    """One registration: the transform, its metric value and the path that led to it."""

    matrix: np.ndarray
    metric: float
    label: str
    history: list[str] = field(default_factory=list)


@dataclass
class RegistrationResult:
    primary: Candidate
    alternative: Candidate
    global_candidates: list[Candidate]
    final_metric: float
    seconds: float
    levels: dict[float, SubjectLevel]


def set_threads(threads: int) -> None:
    _itk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


# --- working images -------------------------------------------------------------------------------------------


def subject_grid(affine: np.ndarray, shape: tuple[int, ...], spacing: float) -> Grid:
    corners = tpl.corners_world(affine, shape)
    low, high = corners.min(axis=0), corners.max(axis=0)
    dims = tuple(int(n) for n in np.ceil((high - low) / spacing) + 1)
    return Grid(origin=cast(tuple[float, float, float], tuple(float(v) for v in low)), spacing=spacing,
                shape=cast(tuple[int, int, int], dims))


def field_of_view(affine: np.ndarray, shape: tuple[int, ...], grid: Grid) -> np.ndarray:
    """Voxels of `grid` whose centres lie inside the image's field of view."""
    vox_to_vox = np.linalg.solve(affine, grid.affine)
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in grid.shape), indexing="ij", sparse=True)
    inside = np.ones(grid.shape, dtype=bool)
    for axis in range(3):
        coord = vox_to_vox[axis, 0] * ii + vox_to_vox[axis, 1] * jj + vox_to_vox[axis, 2] * kk
        coord = coord + vox_to_vox[axis, 3]
        inside &= (coord >= -0.5) & (coord <= shape[axis] - 0.5)
    return inside


def prepare_subject(volume: np.ndarray, affine: np.ndarray, spacings: tuple[float, ...]) -> dict[float, SubjectLevel]:
    """Resample a 3D volume onto axis-aligned working grids, each cropped to the head plus a margin.

    The finest level is sampled from the (smoothed) volume, coarser ones from the finest. The head is found
    once, on a 4 mm grid (morphology on finer grids costs seconds and gains nothing), and carried to the others.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    finest = min(spacings)
    mask_spacing = max(MASK_SPACING_MM, finest)
    grid = subject_grid(affine, volume.shape, finest)
    smoothed = tpl.smooth_for_spacing(np.asarray(volume, dtype=np.float32), zooms, finest)
    image = tpl.resample(smoothed, affine, grid.affine, grid.shape)
    del smoothed
    images = {finest: (grid, image)}
    for spacing in sorted({*spacings, mask_spacing} - {finest}):
        level_grid = subject_grid(affine, volume.shape, spacing)
        coarse = tpl.smooth_for_spacing(image, np.full(3, finest), spacing)
        images[spacing] = (level_grid, tpl.resample(coarse, grid.affine, level_grid.affine, level_grid.shape))
    mask_grid, mask_image = images[mask_spacing]
    mask_fov = field_of_view(affine, volume.shape, mask_grid)
    head = tpl.head_mask(np.where(mask_fov, mask_image, 0.0), mask_spacing)
    margin = max(1, round(SUBJECT_MARGIN_MM / mask_spacing))
    region = ndimage.binary_dilation(head, tpl.ball(margin)) & mask_fov
    levels: dict[float, SubjectLevel] = {}
    for spacing in spacings:
        level_grid, level_image = images[spacing]
        fov = field_of_view(affine, volume.shape, level_grid)
        level_head = _carry_mask(head, mask_grid, level_grid) & fov
        level_region = _carry_mask(region, mask_grid, level_grid) & fov
        box, level_grid = tpl.crop_grid(level_grid, level_region, pad=2)
        levels[spacing] = SubjectLevel(
            grid=level_grid, image=tpl.normalise(level_image[box], level_head[box]),
            head=level_head[box], region=level_region[box],
        )
    return levels


def _carry_mask(mask: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    if source == target:
        return mask
    return tpl.resample(mask.view(np.uint8), source.affine, target.affine, target.shape, order=0).astype(bool)


def _to_sitk(array: np.ndarray, grid: Grid, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    image = _itk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image = _itk.Cast(image, pixel)
    image.SetSpacing((grid.spacing,) * 3)
    image.SetOrigin(grid.origin)
    result: sitk.Image = image
    return result


# --- transforms -----------------------------------------------------------------------------------------------


def matrix_of(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix of an affine-family SimpleITK transform (x -> A (x - c) + c + t)."""
    t = _itk.AffineTransform(3)
    source: Any = transform
    t.SetMatrix(source.GetMatrix())
    t.SetCenter(source.GetCenter())
    t.SetTranslation(source.GetTranslation())
    a = np.array(t.GetMatrix()).reshape(3, 3)
    c = np.array(t.GetCenter())
    out = np.eye(4)
    out[:3, :3] = a
    out[:3, 3] = np.array(t.GetTranslation()) + c - a @ c
    return out


def affine_transform_of(matrix: np.ndarray, center: np.ndarray) -> sitk.AffineTransform:
    t = _itk.AffineTransform(3)
    a = matrix[:3, :3]
    t.SetMatrix(tuple(a.ravel()))
    t.SetCenter(tuple(float(v) for v in center))
    t.SetTranslation(tuple(float(v) for v in matrix[:3, 3] - center + a @ center))
    result: sitk.AffineTransform = t
    return result


def similarity_transform_of(matrix: np.ndarray, center: np.ndarray) -> sitk.Similarity3DTransform:
    """Nearest similarity to a matrix (polar decomposition: rotation times mean scale)."""
    a = matrix[:3, :3]
    u, s, vt = np.linalg.svd(a)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    scale = float(np.exp(np.mean(np.log(s))))
    t = _itk.Similarity3DTransform()
    t.SetCenter(tuple(float(v) for v in center))
    t.SetMatrix(tuple(rotation.ravel()))
    t.SetScale(scale)
    linear = scale * rotation
    t.SetTranslation(tuple(float(v) for v in matrix[:3, 3] - center + linear @ center))
    result: sitk.Similarity3DTransform = t
    return result


def rotation_matrix(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(4)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def translation_matrix(offset: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


# --- the registration -------------------------------------------------------------------------------------------


def _cap(image: np.ndarray, region: np.ndarray, grid: Grid, depth_mm: float = 90.0) -> tuple[np.ndarray, float]:
    """Centroid (world) and size (cube root of volume, mm) of the top `depth_mm` of the head."""
    head = tpl.head_mask(np.where(region, image, 0.0), grid.spacing)
    idx = np.argwhere(head)
    world = grid.affine[:3, :3] @ idx.T + grid.affine[:3, 3:4]
    top = world[2].max()
    cap = world[:, world[2] > top - depth_mm]
    return cap.mean(axis=1), float(cap.shape[1] ** (1 / 3) * grid.spacing)


def initial_transform(subject: SubjectLevel, template: TemplateLevel) -> tuple[np.ndarray, np.ndarray]:
    """Similarity aligning the skull caps (top 90 mm) of subject and template; returns (matrix, subject centre)."""
    s_centre, s_size = _cap(subject.image, subject.region, subject.grid)
    t_centre, t_size = _cap(template.image, template.cranium_region, template.grid)
    scale = t_size / s_size
    m = translation_matrix(t_centre) @ np.diag([scale, scale, scale, 1.0]) @ translation_matrix(-s_centre)
    return m, s_centre


def _method(fixed_mask: sitk.Image, moving_mask: sitk.Image, sampling: float, iterations: int,
            learning_rate: float, min_step: float) -> sitk.ImageRegistrationMethod:
    r = _itk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricFixedMask(fixed_mask)
    r.SetMetricMovingMask(moving_mask)
    if sampling < 1.0:
        r.SetMetricSamplingStrategy(r.REGULAR)
        r.SetMetricSamplingPercentage(sampling, SAMPLING_SEED)
    else:
        r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate, minStep=min_step, numberOfIterations=iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    method: sitk.ImageRegistrationMethod = r
    return method


@dataclass
class _Stage:
    fixed: sitk.Image
    fixed_mask: sitk.Image
    moving: sitk.Image
    moving_mask: sitk.Image


def _stage(subject: SubjectLevel, template: TemplateLevel, region: str) -> _Stage:
    moving_region = template.cranium_region if region == "cranium" else template.face_region
    return _Stage(
        fixed=_to_sitk(subject.image, subject.grid),
        fixed_mask=_to_sitk(subject.region.astype(np.uint8), subject.grid, sitk.sitkUInt8),
        moving=_to_sitk(template.image, template.grid),
        moving_mask=_to_sitk(moving_region.astype(np.uint8), template.grid, sitk.sitkUInt8),
    )


def _optimise(stage: _Stage, transform: sitk.Transform, sampling: float, iterations: int,
              learning_rate: float = 2.0, min_step: float = 0.01) -> tuple[np.ndarray, float]:
    r: Any = _method(stage.fixed_mask, stage.moving_mask, sampling, iterations, learning_rate, min_step)
    r.SetInitialTransform(transform, inPlace=True)
    started = time.process_time()
    r.Execute(stage.fixed, stage.moving)
    fixed: Any = stage.fixed
    log.debug("%d iterations, %.2f s cpu, metric %.4f, fixed grid %s: %s", r.GetOptimizerIteration(),
              time.process_time() - started, r.GetMetricValue(), fixed.GetSize(),
              r.GetOptimizerStopConditionDescription())
    return matrix_of(transform), float(r.GetMetricValue())


def evaluate(stage: _Stage, matrix: np.ndarray, centre: np.ndarray) -> float:
    r: Any = _method(stage.fixed_mask, stage.moving_mask, 1.0, 0, 1.0, 1.0)
    r.SetInitialTransform(affine_transform_of(matrix, centre), inPlace=False)
    return float(r.MetricEvaluate(stage.fixed, stage.moving))


def starts(init: np.ndarray, centre: np.ndarray) -> dict[float, list[tuple[str, np.ndarray]]]:
    """The global stage's starting poses by pitch: the skull-cap alignment turned about the subject's head
    centre by each pitch in GLOBAL_PITCHES, alone or with a roll or a yaw of +-GLOBAL_TURN degrees."""
    turns = [("", np.eye(4))]
    for axis, name in (("y", "roll"), ("z", "yaw")):
        turns += [(f" {name}{sign * GLOBAL_TURN:+.0f}", rotation_matrix(axis, sign * GLOBAL_TURN)) for sign in (-1, 1)]
    found: dict[float, list[tuple[str, np.ndarray]]] = {}
    for pitch in GLOBAL_PITCHES:
        found[pitch] = []
        for label, turn in turns:
            rotation = rotation_matrix("x", pitch) @ turn
            found[pitch].append((f"pitch{pitch:+.0f}{label}",
                                 init @ translation_matrix(centre) @ rotation @ translation_matrix(-centre)))
    return found


def global_search(levels: dict[float, SubjectLevel]) -> tuple[list[Candidate], np.ndarray]:
    """Similarity registrations of the cranium from several starts covering all three rotation axes; best first.

    Per pitch, the five starts (unturned, rolled or yawed either way) are scored by the metric where they
    stand (cheap at 6 mm) and the best is optimised: the search covers roll and yaw as well as pitch for the
    price of the five optimisations the pitch-only search cost."""
    subject = levels[GLOBAL_SPACING_MM]
    template = tpl.template_level(GLOBAL_SPACING_MM)
    init, centre = initial_transform(subject, template)
    stage = _stage(subject, template, "cranium")
    candidates = []
    for options in starts(init, centre).values():
        label, start = min(options, key=lambda option: evaluate(stage, option[1], centre))
        transform = similarity_transform_of(start, centre)
        matrix, metric = _optimise(stage, transform, 1.0, GLOBAL_ITERATIONS, learning_rate=2.0, min_step=0.05)
        candidates.append(Candidate(matrix, metric, label))
    candidates.sort(key=lambda c: c.metric)
    return candidates, centre


def refine(levels: dict[float, SubjectLevel], start: np.ndarray, centre: np.ndarray, label: str,
           fine_sampling: float = FINE_SAMPLING, fine_iterations: int = FINE_ITERATIONS) -> Candidate:
    """Similarity on the cranium, then affine on the head above the chin, coarse to fine (the 2 mm stage
    sampling `fine_sampling` of its grid)."""
    history = []
    spacing = SIMILARITY_SPACING_MM
    stage = _stage(levels[spacing], tpl.template_level(spacing), "cranium")
    matrix, metric = _optimise(stage, similarity_transform_of(start, centre), SIMILARITY_SAMPLING, REFINE_ITERATIONS,
                               1.0, 0.01)
    history.append(f"similarity@{spacing:g}mm {metric:.4f}")
    for spacing in REFINE_SPACINGS_MM:
        stage = _stage(levels[spacing], tpl.template_level(spacing), "face")
        if spacing >= 4:
            sampling, iterations = COARSE_AFFINE_SAMPLING, REFINE_ITERATIONS
        else:
            sampling, iterations = fine_sampling, fine_iterations
        matrix, metric = _optimise(stage, affine_transform_of(matrix, centre), sampling, iterations,
                                   AFFINE_LEARNING_RATE, 0.005)
        history.append(f"affine@{spacing:g}mm {metric:.4f}")
    return Candidate(matrix, metric, label, history)


def perturb(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A deliberately different start near `matrix`: 10 degrees of pitch, 5 of yaw, 8 mm forward, 5 % larger."""
    turn = rotation_matrix("x", 10.0) @ rotation_matrix("z", -5.0) @ np.diag([1.05, 1.05, 1.05, 1.0])
    forward = translation_matrix(centre + np.array([0.0, 8.0, 0.0]))
    start: np.ndarray = matrix @ forward @ turn @ translation_matrix(-centre)
    return start


def register(volume: np.ndarray, affine: np.ndarray, threads: int = 1) -> RegistrationResult:
    started = time.monotonic()
    set_threads(threads)
    spacings = {GLOBAL_SPACING_MM, SIMILARITY_SPACING_MM, CHECK_SPACING_MM, *REFINE_SPACINGS_MM}
    levels = prepare_subject(volume, affine, tuple(sorted(spacings)))
    candidates, centre = global_search(levels)
    best = candidates[0]
    primary = refine(levels, best.matrix, centre, best.label)
    alternative = refine(levels, perturb(best.matrix, centre), centre, best.label + "+perturbed",
                         ALTERNATIVE_FINE_SAMPLING, ALTERNATIVE_FINE_ITERATIONS)
    final_metric = check_metric(levels, primary.matrix)
    return RegistrationResult(primary, alternative, candidates, final_metric, time.monotonic() - started, levels)


def check_metric(levels: dict[float, SubjectLevel], matrix: np.ndarray) -> float:
    """The guard's metric: Mattes MI over the head above the chin at 4 mm, every voxel sampled."""
    subject = levels[CHECK_SPACING_MM]
    stage = _stage(subject, tpl.template_level(CHECK_SPACING_MM), "face")
    centre = subject.grid.affine[:3, :3] @ (np.array(subject.grid.shape) / 2) + np.array(subject.grid.origin)
    return evaluate(stage, matrix, centre)


def refit(levels: dict[float, SubjectLevel], matrix: np.ndarray, spacing: float = CHECK_SPACING_MM) -> np.ndarray:
    """The affine stage at `spacing` (head above the chin) started from `matrix`: where the template settles on
    this image when it starts where another image of the session put it (`--applyto`'s co-registration check)."""
    subject = levels[spacing]
    stage = _stage(subject, tpl.template_level(spacing), "face")
    centre = subject.grid.affine[:3, :3] @ (np.array(subject.grid.shape) / 2) + np.array(subject.grid.origin)
    refitted, _ = _optimise(stage, affine_transform_of(matrix, centre), 1.0, REFINE_ITERATIONS,
                            AFFINE_LEARNING_RATE, 0.005)
    return refitted
