"""Stage `qc`: a few predefined image-quality metrics per released image, as a BIDS derivatives table (the
deface stage's check pictures are `bidsafe.deface.qc`, another concern).

Computed with numpy/nibabel/scipy only, on the images as released (defaced):

- `snr` (anat, fmap, other images; first volume): mean in the head / noise sigma (see below).
- `cnr` (anat): two-class tissue contrast in the head / noise sigma (a grey/white matter proxy).
- `tsnr` (func bold, at least MIN_TSNR_VOLUMES volumes): median over the head mask of mean/std over time,
  after removing a linear trend. Fewer volumes give no meaningful temporal noise (a 3-volume run gave 5e15).
- `com_shift_mean_mm`, `com_shift_max_mm` (func bold): centre-of-mass displacement, the shift of the
  intensity centre of mass between consecutive volumes, in mm (translations only). It is NOT Power's
  framewise displacement (MRIQC, fMRIPrep: from a rigid realignment, rotations included) and is named so;
  intensity changes move the centre of mass too, so large values call for a look, not a motion verdict.
- `dvars_pct` (func bold): RMS over the mask of the volume-to-volume intensity change, in % of the median
  mask intensity, averaged over volume pairs.
- `b0_snr` (dwi): `snr` of the first b=0 volume (b <= 50 s/mm2 in the .bval).

Head mask: Otsu threshold (histogram, 256 bins up to the 99.9th percentile, exact zeros ignored so that
defaced and zero-padded voxels do not count), holes filled, largest connected part kept. Noise: magnitude
images have Rayleigh-distributed background noise, whose standard deviation is sigma * sqrt(2 - pi/2)
(~0.655 sigma); sigma is estimated from the background (below the threshold, at least 3 voxels away from
the head, exact zeros excluded) and corrected by that factor. Hence `snr` = mean(head) / sigma, the NEMA
"single image, background" method. Values are n/a when an image has too little background to measure
(tightly cropped) or is not of the kind a metric needs.

Output (`write_qc`): `sub-S_ses-T_qc.tsv` (one row per image, `filename` relative to the session folder)
and its column sidecar `sub-S_ses-T_qc.json`, placed under `derivatives/bidsafe-qc/sub-S/ses-T/` by the
assemble stage. `write_qc_dataset_description` writes the derivative's `dataset_description.json` and the
`.bidsignore` that declares those tables (BIDS has no suffix for per-image QC tables), so the derivative
validates on its own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsafe import __version__
from bidsafe.bidsnames import ANAT, LABEL, datatypes, session_of, split_nifti, structural_suffixes
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_dir, atomic_write_json, atomic_write_text

RAYLEIGH_STD_FACTOR = math.sqrt(2.0 - math.pi / 2.0)
BACKGROUND_MARGIN_VOXELS = 3
MIN_BACKGROUND_VOXELS = 200
B0_MAX = 50.0
MIN_TSNR_VOLUMES = 10
QC_PIPELINE = "bidsafe-qc"

COLUMNS: dict[str, dict[str, str]] = {
    "filename": {"Description": "Image, relative to the session folder of the released dataset"},
    "datatype": {"Description": "BIDS datatype folder of the image"},
    "suffix": {"Description": "BIDS suffix of the image"},
    "volumes": {"Description": "Number of volumes (4th dimension; 1 for 3D images)"},
    "snr": {
        "Description": "Signal-to-noise ratio of the (first) volume: mean intensity in the head mask (Otsu "
        "threshold, holes filled, largest component) divided by the noise sigma estimated from the background "
        "standard deviation corrected for Rayleigh statistics (std / 0.655); exact zeros (defaced or padded "
        "voxels) excluded",
        "Units": "ratio",
    },
    "cnr": {
        "Description": "Contrast-to-noise ratio (grey/white matter proxy): the head mask is split into two "
        "intensity classes by a second Otsu threshold; difference of the class means divided by the noise sigma",
        "Units": "ratio",
    },
    "tsnr": {
        "Description": "Temporal SNR: per voxel mean over time divided by the standard deviation over time after "
        "removing a linear trend; median over the head mask of the mean image",
        "Units": "ratio",
    },
    "com_shift_mean_mm": {
        "Description": "Centre-of-mass displacement (not Power's framewise displacement): distance between the "
        "intensity centres of mass of consecutive volumes (world coordinates), mean over volume pairs; "
        "translations only, and intensity changes move it too",
        "Units": "mm",
    },
    "com_shift_max_mm": {"Description": "Largest centre-of-mass displacement between consecutive volumes (not "
                         "Power's framewise displacement)", "Units": "mm"},
    "dvars_pct": {
        "Description": "DVARS: root mean square over the head mask of the intensity change between consecutive "
        "volumes, as a percentage of the median mask intensity; mean over volume pairs",
        "Units": "percent",
    },
    "b0_snr": {"Description": "snr (as above) of the first b=0 volume (b <= 50 s/mm2 in the .bval file)",
               "Units": "ratio"},
}
METRICS = [c for c in COLUMNS if c not in ("filename", "datatype", "suffix", "volumes")]
_BIDS_NAME = re.compile(rf"^sub-{LABEL}_ses-{LABEL}(?:_[a-z]+-{LABEL})*_(?P<suffix>{LABEL})$")


# ---------------------------------------------------------------------------------------------- masks


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values` (1D): the cut maximising the between-class variance of a histogram up to
    the 99.9th percentile (so a few bright vessels or artefacts do not squash the histogram)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    top = float(np.percentile(values, 99.9))
    low = float(values.min())
    if top <= low:
        return low
    counts, edges = np.histogram(np.clip(values, low, top), bins=bins, range=(low, top))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = (weight_low * weight_high * (mean_low - mean_high) ** 2)[:-1]
    # An empty gap between two populations gives a plateau of equal scores: cut in its middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[int(best[len(best) // 2]) + 1])


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Foreground of a magnitude volume: Otsu on non-zero voxels, holes filled, largest component."""
    nonzero = volume[volume != 0]
    if nonzero.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    mask = volume > otsu_threshold(nonzero)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    filled: np.ndarray = ndimage.binary_fill_holes(mask)
    return filled


def noise_sigma(volume: np.ndarray, mask: np.ndarray) -> float | None:
    """Noise sigma from the background: voxels away from the head, not exactly zero, below the head's
    threshold, Rayleigh-corrected. None when there is too little background to tell."""
    near_head = ndimage.binary_dilation(mask, iterations=BACKGROUND_MARGIN_VOXELS)
    background = volume[~near_head & (volume != 0)]
    if background.size < MIN_BACKGROUND_VOXELS:
        return None
    sigma = float(np.std(background)) / RAYLEIGH_STD_FACTOR
    return sigma if sigma > 0 else None


def snr(volume: np.ndarray) -> float | None:
    volume = np.asarray(volume, dtype=np.float32)
    mask = head_mask(volume)
    sigma = noise_sigma(volume, mask)
    if sigma is None or not mask.any():
        return None
    return float(volume[mask].mean()) / sigma


def cnr(volume: np.ndarray) -> float | None:
    volume = np.asarray(volume, dtype=np.float32)
    mask = head_mask(volume)
    sigma = noise_sigma(volume, mask)
    inside = volume[mask]
    if sigma is None or inside.size < 2:
        return None
    split = otsu_threshold(inside)
    low, high = inside[inside <= split], inside[inside > split]
    if low.size == 0 or high.size == 0:
        return None
    return float(high.mean() - low.mean()) / sigma


# ---------------------------------------------------------------------------------------------- time series


def tsnr(series: np.ndarray) -> float | None:
    """Median over the head mask (of the mean image) of mean / std over time, after a linear detrend."""
    if series.ndim != 4 or series.shape[3] < MIN_TSNR_VOLUMES:
        return None
    mean_image = series.mean(axis=3, dtype=np.float64).astype(np.float32)
    mask = head_mask(mean_image)
    if not mask.any():
        return None
    voxels = series[mask].astype(np.float64)  # (n_voxels, n_volumes)
    time = np.arange(voxels.shape[1], dtype=np.float64)
    design = np.column_stack([np.ones_like(time), time - time.mean()])
    coefficients, *_ = np.linalg.lstsq(design, voxels.T, rcond=None)
    residual = voxels - (design @ coefficients).T
    std = residual.std(axis=1, ddof=2)
    mean = voxels.mean(axis=1)
    valid = std > 0
    if not valid.any():
        return None
    return float(np.median(mean[valid] / std[valid]))


def centre_of_mass_displacement(series: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance (mm) between the intensity centres of mass of consecutive volumes, in world coordinates.

    Intensities are taken above the head threshold of the mean image, so the (static) background noise does
    not dilute the head's movement.
    """
    if series.ndim != 4 or series.shape[3] < 2:
        return np.zeros(0)
    mean_image = series.mean(axis=3, dtype=np.float64)
    nonzero = mean_image[mean_image != 0]
    floor = otsu_threshold(nonzero) if nonzero.size else 0.0
    grid = [np.arange(n, dtype=np.float64) for n in series.shape[:3]]
    centres = []
    for t in range(series.shape[3]):
        weights = np.clip(series[..., t].astype(np.float64) - floor, 0, None)
        total = weights.sum()
        if total <= 0:
            centres.append([np.nan] * 3)
            continue
        centres.append([
            float((weights.sum(axis=tuple(a for a in range(3) if a != axis)) * grid[axis]).sum() / total)
            for axis in range(3)
        ])
    world = np.asarray(centres) @ affine[:3, :3].T + affine[:3, 3]
    steps: np.ndarray = np.linalg.norm(np.diff(world, axis=0), axis=1)
    return steps


def dvars_percent(series: np.ndarray) -> float | None:
    if series.ndim != 4 or series.shape[3] < 2:
        return None
    mask = head_mask(series.mean(axis=3, dtype=np.float64).astype(np.float32))
    if not mask.any():
        return None
    voxels = series[mask].astype(np.float64)
    scale = float(np.median(voxels))
    if scale <= 0:
        return None
    change = np.sqrt((np.diff(voxels, axis=1) ** 2).mean(axis=0))
    return float(change.mean() / scale * 100.0)


# ---------------------------------------------------------------------------------------------- session


def _split_name(path: Path) -> tuple[str, str]:
    return split_nifti(path.name)


def _session_dir(root: Path, subject: str, session: str) -> Path:
    for candidate in (root / f"sub-{subject}" / f"ses-{session}", root):
        if candidate.is_dir() and any((candidate / d).is_dir() for d in datatypes()):
            return candidate
    nested = root / f"sub-{subject}" / f"ses-{session}"
    if nested.is_dir():
        return nested
    raise BidsafeError(f"no sub-{subject}/ses-{session} BIDS folder", root)


def _read_bvals(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        return np.array([float(v) for v in path.read_text(encoding="utf-8").split()])
    except ValueError:
        return None


def image_qc(path: Path, datatype: str, suffix: str) -> dict[str, Any]:
    """Metrics of one image (n/a metrics are None). An image that cannot be read is the session's problem
    (BidsafeError: the qc stage withholds that session), not a crash of the run."""
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is one too
            raise ValueError("not a NIfTI image")
        data = np.asanyarray(image.dataobj).astype(np.float32, copy=False)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise BidsafeError(f"cannot read image {path.name} ({type(exc).__name__})") from exc
    if data.ndim > 4:
        data = data.reshape(data.shape[:3] + (-1,))
    volumes = data.shape[3] if data.ndim == 4 else 1
    row: dict[str, Any] = dict.fromkeys(METRICS)
    row["volumes"] = volumes
    first = data[..., 0] if data.ndim == 4 else data
    if datatype == "func" and suffix == "bold" and volumes >= 3:
        row["tsnr"] = tsnr(data)
        displacement = centre_of_mass_displacement(data, image.affine)
        displacement = displacement[np.isfinite(displacement)]
        if displacement.size:
            row["com_shift_mean_mm"] = float(displacement.mean())
            row["com_shift_max_mm"] = float(displacement.max())
        row["dvars_pct"] = dvars_percent(data)
    elif datatype == "dwi":
        bvals = _read_bvals(path.with_name(_split_name(path)[0] + ".bval"))
        if bvals is not None and bvals.size == volumes:
            b0 = np.flatnonzero(bvals <= B0_MAX)
            if b0.size:
                volume = data[..., int(b0[0])] if data.ndim == 4 else data
                row["b0_snr"] = snr(volume)
    else:
        row["snr"] = snr(first)
        if datatype == ANAT and suffix in structural_suffixes():
            row["cnr"] = cnr(first)
    return row


def session_qc(bids_session_dir: Path, subject: str, session: str) -> list[dict[str, Any]]:
    """One row per NIfTI image of the session: filename, datatype, suffix, volumes and the metrics."""
    folder = _session_dir(Path(bids_session_dir), subject, session)
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*/*.nii*")):
        stem, ext = _split_name(path)
        match = _BIDS_NAME.match(stem)
        if not ext or match is None:
            continue
        datatype = path.parent.name
        row = {"filename": f"{datatype}/{path.name}", "datatype": datatype, "suffix": match["suffix"]}
        row.update(image_qc(path, datatype, match["suffix"]))
        row["subject"], row["session"] = subject, session
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def qc_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(COLUMNS)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def _labels(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[str, str]:
    if rows:
        return str(rows[0]["subject"]), str(rows[0]["session"])
    labels = session_of(out_dir)
    if labels is not None:
        return labels
    raise BidsafeError("cannot tell subject and session for an empty QC table", out_dir)


def write_qc(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> Path:
    """Write `sub-S_ses-T_qc.tsv` and its column sidecar into `out_dir` (whole or not at all)."""
    out_dir = Path(out_dir)
    subject, session = _labels(rows, out_dir)
    stem = f"sub-{subject}_ses-{session}_qc"
    with atomic_dir(out_dir) as tmp:
        (tmp / f"{stem}.tsv").write_text(qc_table(rows), encoding="utf-8")
        (tmp / f"{stem}.json").write_text(json.dumps(COLUMNS, indent=2) + "\n", encoding="utf-8")
    return out_dir / f"{stem}.tsv"


def write_qc_dataset_description(path: Path, versions: Mapping[str, str] | None = None) -> Path:
    """`dataset_description.json` (DatasetType derivative, GeneratedBy) and `.bidsignore` for the QC
    derivative rooted at `path` (e.g. `<release>/derivatives/bidsafe-qc`)."""
    path = Path(path)
    version = (versions or {}).get("bidsafe", __version__)
    atomic_write_json(
        path / "dataset_description.json",
        {
            "Name": "bidsafe image quality metrics",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            # "bidsafe.qc" below is this module's name before the deface QC got a module of the same name: the
            # released text stays as it was (a release must not change its bytes for an internal rename)
            "GeneratedBy": [
                {"Name": "bidsafe", "Version": str(version),
                 "Description": "bidsafe.qc: SNR, CNR, tSNR, centre-of-mass displacement, DVARS, b0 SNR"}
            ],
        },
    )
    # BIDS has no entity/suffix for per-image QC tables: declared here so validators skip, not reject, them.
    atomic_write_text(path / ".bidsignore", "*_qc.tsv\n*_qc.json\n")
    return path / "dataset_description.json"
