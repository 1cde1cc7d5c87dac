"""The FSL engine: pydeface itself (FSL FLIRT, mutual information), used when FSL is installed.

pydeface runs on a 3D copy of the volume to register (the mean of a 4D image: pydeface's own 4D branch is
suspect), keeps its face mask and FLIRT matrix (`--nocleanup`), and bidsafe applies the mask and its guards
itself, so the FSL and built-in engines write identical kinds of output and are judged by the same rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from bidsafe.deface import template as tpl
from bidsafe.errors import BidsafeError

FSL_TOOLS = ("flirt", "fsl")  # pydeface calls flirt through nipype and refuses to start without `fsl`


@dataclass
class FslResult:
    matrix: np.ndarray  # subject world -> template world (RAS mm)
    removal: np.ndarray  # bool, on the subject grid


def fsl_available(environ: dict[str, str] | None = None) -> bool:
    """FSL is usable: FSLDIR names a folder and `flirt` and `fsl` are executables on PATH."""
    env = os.environ if environ is None else environ
    fsldir = env.get("FSLDIR", "")
    if not fsldir or not Path(fsldir).is_dir():
        return False
    path = env.get("PATH", "")
    return all(shutil.which(tool, path=path) for tool in FSL_TOOLS)


def pydeface_program() -> list[str]:
    beside = Path(sys.executable).with_name("pydeface")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "pydeface"]


def fsl_command(in_path: Path, out_path: Path) -> list[str]:
    """pydeface's command line: the template pair in use (by default bidsafe's pinned one), mutual information,
    keep mask and matrix."""
    return [
        *pydeface_program(),
        str(in_path),
        "--outfile",
        str(out_path),
        "--force",
        "--nocleanup",
        "--cost",
        "mutualinfo",
        "--template",
        str(tpl.active_pair().template),
        "--facemask",
        str(tpl.active_pair().facemask),
    ]


def nocleanup_outputs(in_path: Path) -> tuple[Path, Path]:
    """Where pydeface --nocleanup leaves the warped mask and the FLIRT matrix (beside its input)."""
    base = str(in_path).replace(".gz", "").replace(".nii", "")
    return Path(base + "_pydeface_mask.nii.gz"), Path(base + "_pydeface.mat")


def fsl_scaled_voxels(affine: np.ndarray, shape: tuple[int, ...], zooms: tuple[float, ...]) -> np.ndarray:
    """Voxel -> FSL coordinates (voxel index times voxel size, i flipped when the affine's determinant is > 0)."""
    to_fsl = np.diag([float(zooms[0]), float(zooms[1]), float(zooms[2]), 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = shape[0] - 1
        to_fsl = to_fsl @ flip
    return to_fsl


def flirt_to_world(
    mat: np.ndarray,
    moving: tuple[np.ndarray, tuple[int, ...], tuple[float, ...]],
    reference: tuple[np.ndarray, tuple[int, ...], tuple[float, ...]],
) -> np.ndarray:
    """A FLIRT matrix (moving FSL coords -> reference FSL coords) as a world map moving -> reference.

    Each image is given as (affine, shape, zooms).
    """
    m_affine, m_shape, m_zooms = moving
    r_affine, r_shape, r_zooms = reference
    m_vox_to_fsl = fsl_scaled_voxels(m_affine, m_shape, m_zooms)
    r_vox_to_fsl = fsl_scaled_voxels(r_affine, r_shape, r_zooms)
    world: np.ndarray = r_affine @ np.linalg.inv(r_vox_to_fsl) @ mat @ m_vox_to_fsl @ np.linalg.inv(m_affine)
    return world


def run_pydeface(volume: np.ndarray, img: nib.Nifti1Image, work_dir: Path | None = None) -> FslResult:
    with tempfile.TemporaryDirectory(prefix="bidsafe-pydeface-", dir=work_dir) as tmp:
        in_path = Path(tmp) / "image.nii.gz"
        out_path = Path(tmp) / "defaced.nii.gz"
        copy = nib.Nifti1Image(volume.astype(np.float32), img.affine)  # type: ignore[no-untyped-call]
        copy.set_sform(img.affine, code=1)  # type: ignore[no-untyped-call]
        copy.set_qform(img.affine, code=1)  # type: ignore[no-untyped-call]
        copy.header.set_zooms(img.header.get_zooms()[:3])  # type: ignore[no-untyped-call]
        copy.to_filename(in_path)
        proc = subprocess.run(fsl_command(in_path, out_path), cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            # pydeface's output names only the temporary copy, never the original path.
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BidsafeError(f"pydeface (FSL) failed with exit {proc.returncode}: {tail[0][:200]}")
        mask_path, mat_path = nocleanup_outputs(in_path)
        if not mask_path.is_file() or not mat_path.is_file():
            raise BidsafeError("pydeface (FSL) finished without leaving its mask and matrix")
        mask = np.asarray(cast(nib.Nifti1Image, nib.load(mask_path)).dataobj, dtype=np.float32)
        mat = np.loadtxt(mat_path)
    if mask.shape[:3] != volume.shape:
        raise BidsafeError(f"pydeface's mask has shape {mask.shape}, expected {volume.shape}")
    template = cast(nib.Nifti1Image, nib.load(tpl.active_pair().template))
    template_to_subject = flirt_to_world(
        mat,
        (template.affine, template.shape, template.header.get_zooms()),  # type: ignore[no-untyped-call]
        (img.affine, volume.shape, img.header.get_zooms()[:3]),  # type: ignore[no-untyped-call]
    )
    return FslResult(matrix=np.linalg.inv(template_to_subject), removal=mask.reshape(volume.shape) < 0.5)
