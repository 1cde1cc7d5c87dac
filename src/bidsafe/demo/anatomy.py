"""The demo head: pydeface's full-head template (with a face) resampled onto a slice geometry, per-visit head
pose, T2-like contrast and scanner noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bidsafe.errors import BidsafeError

# Head centre of the template in patient LPS millimetres (measured on its bounding box).
HEAD_CENTRE_LPS = np.array([7.0, -13.5, -20.0])
# Centre of the functional slab: the cerebrum, above the head centre.
BRAIN_CENTRE_LPS = np.array([7.0, -5.0, 15.0])


@dataclass(frozen=True)
class Geometry:
    """A stack of parallel slices in patient (LPS) coordinates, as DICOM describes it."""

    rows: int
    columns: int
    slices: int
    row_dir: tuple[float, float, float]  # IOP[0:3]: direction of increasing column index
    col_dir: tuple[float, float, float]  # IOP[3:6]: direction of increasing row index
    row_spacing: float  # PixelSpacing[0]: distance between rows
    col_spacing: float  # PixelSpacing[1]: distance between columns
    slice_spacing: float  # centre-to-centre
    slice_thickness: float
    centre: tuple[float, float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.array(self.row_dir), np.array(self.col_dir))

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice k (centre of its first transmitted pixel)."""
        r, c = np.array(self.row_dir), np.array(self.col_dir)
        first = (
            np.array(self.centre)
            - (self.columns - 1) / 2 * self.col_spacing * r
            - (self.rows - 1) / 2 * self.row_spacing * c
            - (self.slices - 1) / 2 * self.slice_spacing * self.normal
        )
        return first + k * self.slice_spacing * self.normal

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix from (column, row, slice) voxel indices to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, 0] = np.array(self.row_dir) * self.col_spacing
        affine[:3, 1] = np.array(self.col_dir) * self.row_spacing
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.position(0)
        return affine


def centred(centre: np.ndarray) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in centre)
    return (x, y, z)


def oblique_axial(rows: int, columns: int, slices: int, pixel: float, spacing: float, thickness: float,
                  tilt_deg: float, centre: np.ndarray) -> Geometry:
    """Axial slices tilted by `tilt_deg` about the left-right axis."""
    t = math.radians(tilt_deg)
    return Geometry(
        rows=rows,
        columns=columns,
        slices=slices,
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, round(math.cos(t), 6), round(math.sin(t), 6)),
        row_spacing=pixel,
        col_spacing=pixel,
        slice_spacing=spacing,
        slice_thickness=thickness,
        centre=centred(centre),
    )


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """pydeface's full-head template (with face) as float32 data and its voxel-to-RAS affine."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("pydeface")
    if spec is None or spec.origin is None:
        raise BidsafeError("pydeface is not installed: its head template is needed for demo data")
    path = Path(spec.origin).parent / "data" / "mean_reg2mean.nii.gz"
    if not path.is_file():
        raise BidsafeError("pydeface's head template is missing", path)
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):
        raise BidsafeError("pydeface's head template is not a NIfTI-1 image", path)
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotation: np.ndarray = rot_z @ rot_y @ rot_x
    return rotation


def session_pose(rng: np.random.Generator) -> np.ndarray:
    """A small head movement in the scanner (RAS, about the head centre): each visit sits differently."""
    angles = np.radians(rng.uniform(-4.0, 4.0, size=3))
    shift = rng.uniform(-4.0, 4.0, size=3)
    centre_ras = HEAD_CENTRE_LPS * np.array([-1.0, -1.0, 1.0])
    pose = np.eye(4)
    pose[:3, :3] = _rotation(*angles)
    pose[:3, 3] = centre_ras - pose[:3, :3] @ centre_ras + shift
    return pose


def sample_head(geometry: Geometry, pose: np.ndarray) -> np.ndarray:
    """Template intensities at every voxel of `geometry`, for a head moved by the 4x4 RAS `pose`.

    One affine chain maps output (slice, row, column) indices to template voxel indices, so no grid of
    coordinates is ever materialised.
    """
    from scipy import ndimage

    data, affine = _template()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    # (column, row, slice) -> template (i, j, k); reorder the input axes to (slice, row, column).
    chain = np.linalg.inv(affine) @ np.linalg.inv(pose) @ lps_to_ras @ geometry.affine_lps()
    krc_to_crs = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    matrix = chain @ krc_to_crs
    values: np.ndarray = ndimage.affine_transform(
        data, matrix[:3, :3], offset=matrix[:3, 3], order=1, mode="constant", cval=0.0,
        output_shape=(geometry.slices, geometry.rows, geometry.columns), output=np.float32,
    )
    return values


def t2_contrast(t1: np.ndarray) -> np.ndarray:
    """Remap the template's T1-like intensities to a T2-like contrast (CSF bright, white matter dark)."""
    knots = [0, 20, 60, 130, 200, 270, 360, 420, 520, 700]
    values = [0, 0, 250, 950, 800, 620, 380, 450, 650, 650]
    remapped: np.ndarray = np.interp(t1, knots, values).astype(np.float32)
    return remapped


def to_int16(volume: np.ndarray, rng: np.random.Generator, scale: float, noise: float) -> np.ndarray:
    """Scaled magnitude with Gaussian noise, as stored pixels."""
    noisy = volume * scale + rng.normal(0.0, noise, size=volume.shape)
    return np.clip(np.rint(np.abs(noisy)), 0, 32767).astype(np.int16)
