"""QC picture: three orthogonal views before and after defacing, the removed region outlined in red.

Small (a 64-colour palette PNG of about 80-150 kB) so that hundreds can be browsed. The picture shows the
face before removal, so it belongs to the QC area beside the release, never inside it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from bidsafe.fsutil import atomic_write_bytes

# 810 x 567 px: 15-point titles are ~19 px high, readable at 100 % zoom where the report shows the picture
# at its own size (the first pictures had 8-point text at 72 dpi, 6 px letters).
DPI = 90


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip voxel axes towards RAS (no resampling) and return the matching voxel sizes."""
    ornt = nib.orientations.io_orientation(affine)  # type: ignore[no-untyped-call]
    out = nib.orientations.apply_orientation(data, ornt)  # type: ignore[no-untyped-call]
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # input axis i -> output axis
    return out, zooms


def _centre(mask: np.ndarray, data: np.ndarray, vmax: float) -> tuple[int, int, int]:
    """Slices through the removed head tissue (its centroid) and the head's middle in x (mid-sagittal).

    The removed region's own centroid would often fall in the air in front of or below the head.
    """
    tissue = data > 0.15 * vmax
    centre = (np.array(mask.shape) - 1) / 2
    removed = np.argwhere(mask & tissue)
    if removed.size == 0:
        removed = np.argwhere(mask)
    if removed.size:
        centre = removed.mean(axis=0)
    head = np.argwhere(tissue)
    if head.size:
        centre[0] = head[:, 0].mean()
    return cast(tuple[int, int, int], tuple(int(round(c)) for c in centre))


def write_qc_png(img: nib.Nifti1Image, removal: np.ndarray, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    first = img.dataobj[..., 0] if img.ndim == 4 else img.dataobj
    data, zooms = _canonical(np.nan_to_num(np.asarray(first, dtype=np.float32)), img.affine)
    mask, _ = _canonical(removal, img.affine)
    after = np.where(mask, 0.0, data)
    vmax = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0
    x, y, z = _centre(mask, data, vmax)
    views: list[tuple[Callable[[np.ndarray], np.ndarray], float, str]] = [
        (lambda a: a[x, :, :], zooms[2] / zooms[1], "sagittal"),
        (lambda a: a[:, y, :], zooms[2] / zooms[0], "coronal"),
        (lambda a: a[:, :, z], zooms[1] / zooms[0], "axial"),
    ]
    fig = Figure(figsize=(9.0, 6.3), dpi=DPI)
    axes = fig.subplots(2, 3)
    for column, (cut, aspect, name) in enumerate(views):
        for row, volume in enumerate((data, after)):
            ax = axes[row, column]
            ax.imshow(cut(volume).T, origin="lower", cmap="gray", vmin=0, vmax=vmax, aspect=aspect,
                      interpolation="nearest")
            if cut(mask).any():
                ax.contour(cut(mask).T.astype(np.uint8), levels=[0.5], colors="red", linewidths=1.2)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=15)
    fig.suptitle(f"{title}\ntop: before, bottom: after defacing; red outline: removed", fontsize=15)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.86, wspace=0.02, hspace=0.08)
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=DPI)
    # A 64-colour palette keeps grey levels and the red outline and makes noisy images ~3x smaller.
    from PIL import Image

    rendered.seek(0)
    small = io.BytesIO()
    Image.open(rendered).convert("RGB").quantize(colors=64).save(small, format="PNG", optimize=True)
    return atomic_write_bytes(path, small.getvalue())
