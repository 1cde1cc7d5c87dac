"""Test heads for defacing: pydeface's own template moved into new voxel grids by a known affine (with noise
and a bias field), so the face mask carried through that affine is the truth the engine must reproduce."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsafe.deface import template as tpl
from bidsafe.deface.register import rotation_matrix


def head_pose(pitch=12.0, roll=-5.0, yaw=8.0, shift=(6.0, -9.0, 7.0), scale=1.04) -> np.ndarray:
    """Template world -> subject world: a tilted, shifted, slightly larger head."""
    move = np.eye(4)
    move[:3, 3] = shift
    linear = rotation_matrix("x", pitch) @ rotation_matrix("y", roll) @ rotation_matrix("z", yaw)
    return move @ linear @ np.diag([scale] * 3 + [1.0])


def grid_affine(axes: np.ndarray, voxel: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """A grid with the given axis directions whose centre is at world (0, 10, 10)."""
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(voxel)
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    affine[:3, 3] = np.array([0.0, 10.0, 10.0]) - centre
    return affine


LPS = np.diag([-1.0, -1.0, 1.0])
PIR = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # sagittal slices


def make_head(path: Path, pose: np.ndarray, axes: np.ndarray, voxel, fov_mm=(200.0, 250.0, 250.0),
              volumes: int = 1, slope: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the template moved by `pose` into a new grid; return (expected face mask, subject->template)."""
    assets = tpl.load_assets()
    along_axes = np.abs(axes.T) @ np.array(fov_mm)  # field of view along each voxel axis
    shape = tuple(int(round(n / v)) for n, v in zip(along_axes, voxel, strict=True))
    affine = grid_affine(axes, voxel, shape)
    to_template = np.linalg.inv(pose)
    vox = np.linalg.solve(assets.affine, to_template @ affine)
    head = ndimage.affine_transform(assets.image, vox[:3, :3], vox[:3, 3], output_shape=shape, order=1)
    keep = ndimage.affine_transform((~assets.face).astype(np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=shape, order=1, mode="nearest")
    rng = np.random.default_rng(seed)
    ii = np.linspace(-1, 1, shape[0])[:, None, None]
    bias = np.exp(0.15 * ii)
    frames = []
    for _ in range(volumes):
        noisy = np.abs(head * bias + rng.normal(0, 8.0, shape))
        frames.append(np.round(noisy / slope).astype(np.int16))
    data = np.stack(frames, axis=-1) if volumes > 1 else frames[0]
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_slope_inter(slope, 0.0)
    img.header["descrip"] = b"bidsafe deface test"
    img.to_filename(path)
    return keep < 0.5, to_template


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def transform_error_mm(found: np.ndarray, truth: np.ndarray, centre=(0.0, 10.0, 10.0), half=75.0) -> float:
    """Largest distance between where two transforms send the corners of a 150 mm cube around the head."""
    corners = np.array([[x, y, z, 1.0] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    corners[:, :3] += centre
    return float(np.max(np.linalg.norm((found @ corners.T - truth @ corners.T)[:3], axis=0)))


def raw_data(path: Path) -> np.ndarray:
    """The stored (unscaled) voxel values of a NIfTI file."""
    return np.asanyarray(nib.load(path).dataobj.get_unscaled())


def make_session(root: Path, heads: dict[str, Path]) -> Path:
    """A BIDS session folder (sub-01/ses-1) holding copies of `heads` under anat/, with sidecars and a func file."""
    session = root / "sub-01" / "ses-1"
    (session / "anat").mkdir(parents=True)
    (session / "func").mkdir()
    for name, source in heads.items():
        (session / "anat" / name).write_bytes(source.read_bytes())
        (session / "anat" / name.replace(".nii.gz", ".json")).write_text('{"EchoTime": 0.003}\n')
    (session / "func" / "sub-01_ses-1_task-rest_bold.json").write_text('{"RepetitionTime": 2}\n')
    (session / "sub-01_ses-1_scans.tsv").write_text("filename\tacq_time\n")
    return session
