"""QC metrics on synthetic images whose signal and noise are known, and the derivatives output."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe.imageqc import (
    COLUMNS,
    METRICS,
    centre_of_mass_displacement,
    cnr,
    otsu_threshold,
    session_qc,
    snr,
    tsnr,
    write_qc,
    write_qc_dataset_description,
)

SIGMA = 20.0


def _ellipsoid(shape: tuple[int, int, int], scale: float = 0.75) -> np.ndarray:
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return (x / scale) ** 2 + (y / scale) ** 2 + (z / scale) ** 2


def _two_tissue_head(shape: tuple[int, int, int] = (64, 64, 48)) -> np.ndarray:
    """Noise-free signal: 'white matter' core 600, 'grey matter' shell 400, air 0."""
    radius = _ellipsoid(shape)
    return np.where(radius < 0.35, 600.0, np.where(radius < 1.0, 400.0, 0.0))


def _magnitude(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """What a scanner's magnitude image is: |signal + complex Gaussian noise| (Rician; Rayleigh in air)."""
    real = signal + rng.normal(0, sigma, signal.shape)
    imaginary = rng.normal(0, sigma, signal.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def test_otsu_splits_two_populations() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(100, 10, 5000), rng.normal(500, 30, 3000)])
    assert 180 < otsu_threshold(values) < 400


def test_snr_and_cnr_match_known_signal_and_noise() -> None:
    rng = np.random.default_rng(1)
    signal = _two_tissue_head()
    image = _magnitude(signal, SIGMA, rng)
    expected_snr = signal[signal > 0].mean() / SIGMA
    measured = snr(image)
    assert measured == pytest.approx(expected_snr, rel=0.10)
    assert cnr(image) == pytest.approx((600 - 400) / SIGMA, rel=0.10)
    # twice the noise, half the SNR
    noisier = _magnitude(signal, 2 * SIGMA, rng)
    assert snr(noisier) == pytest.approx(expected_snr / 2, rel=0.10)


def test_defaced_zeros_do_not_inflate_snr() -> None:
    rng = np.random.default_rng(2)
    signal = _two_tissue_head()
    image = _magnitude(signal, SIGMA, rng)
    reference = snr(image)
    defaced = image.copy()
    defaced[40:, :, :20] = 0  # a face block zeroed, air and head alike, as defacing does
    assert snr(defaced) == pytest.approx(reference, rel=0.05)


def test_snr_is_na_without_background() -> None:
    rng = np.random.default_rng(3)
    cropped = _magnitude(np.full((20, 20, 20), 500.0), SIGMA, rng)  # all head, no air
    assert snr(cropped) is None


def test_tsnr_with_drift_matches_known_temporal_noise() -> None:
    rng = np.random.default_rng(4)
    shape = (32, 32, 20)
    inside = _ellipsoid(shape) < 1.0
    volumes = 60
    series = np.empty(shape + (volumes,), dtype=np.float32)
    for t in range(volumes):
        signal = np.where(inside, 500.0 + 0.8 * t, 0.0)  # slow scanner drift
        series[..., t] = np.abs(signal + rng.normal(0, 10.0, shape))
    assert tsnr(series) == pytest.approx((500.0 + 0.8 * (volumes - 1) / 2) / 10.0, rel=0.10)


def test_centre_of_mass_displacement_in_mm() -> None:
    rng = np.random.default_rng(5)
    shape = (40, 40, 24)
    head = np.where(_ellipsoid(shape, 0.6) < 1.0, 800.0, 0.0)
    series = np.empty(shape + (10,), dtype=np.float32)
    for t in range(10):
        shifted = np.roll(head, 1, axis=0) if t >= 5 else head  # one 3 mm step along x at volume 5
        series[..., t] = _magnitude(shifted, 10.0, rng)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    displacement = centre_of_mass_displacement(series, affine)
    assert displacement.shape == (9,)
    assert displacement[4] == pytest.approx(3.0, abs=0.15)
    assert np.delete(displacement, 4).max() < 0.1


def _save(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (2.0, 2.0, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(np.clip(np.rint(data), 0, 32767).astype(np.int16), affine), path)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A defaced-stage output: bids/sub-01/ses-1/{anat,func,dwi,fmap} with known signal and noise."""
    rng = np.random.default_rng(6)
    root = tmp_path_factory.mktemp("qc") / "bids"
    folder = root / "sub-01" / "ses-1"
    _save(folder / "anat" / "sub-01_ses-1_T1w.nii.gz", _magnitude(_two_tissue_head((48, 56, 40)), SIGMA, rng))
    shape = (24, 24, 16)
    inside = _ellipsoid(shape) < 1.0
    bold = np.stack([_magnitude(np.where(inside, 700.0, 0.0), 14.0, rng) for _ in range(30)], axis=-1)
    _save(folder / "func" / "sub-01_ses-1_task-rest_bold.nii.gz", bold, (3.0, 3.0, 3.0))
    dwi_signal = [np.where(inside, b, 0.0) for b in (900.0, 250.0, 250.0, 900.0)]
    dwi = np.stack([_magnitude(s, 15.0, rng) for s in dwi_signal], axis=-1)
    _save(folder / "dwi" / "sub-01_ses-1_dwi.nii.gz", dwi)
    (folder / "dwi" / "sub-01_ses-1_dwi.bval").write_text("5 1000 1000 0\n")
    _save(folder / "fmap" / "sub-01_ses-1_dir-AP_epi.nii.gz", _magnitude(np.where(inside, 500.0, 0.0), 10.0, rng))
    (folder / "anat" / "sub-01_ses-1_T1w.json").write_text("{}")  # sidecars are not images
    return root


def test_session_qc_rows(session: Path) -> None:
    rows = {r["filename"]: r for r in session_qc(session, "01", "1")}
    assert sorted(rows) == [
        "anat/sub-01_ses-1_T1w.nii.gz",
        "dwi/sub-01_ses-1_dwi.nii.gz",
        "fmap/sub-01_ses-1_dir-AP_epi.nii.gz",
        "func/sub-01_ses-1_task-rest_bold.nii.gz",
    ]
    t1 = rows["anat/sub-01_ses-1_T1w.nii.gz"]
    signal = _two_tissue_head((48, 56, 40))
    assert t1["snr"] == pytest.approx(signal[signal > 0].mean() / SIGMA, rel=0.10)
    assert t1["cnr"] == pytest.approx(10.0, rel=0.10)
    assert t1["tsnr"] is None and t1["b0_snr"] is None and t1["volumes"] == 1
    bold = rows["func/sub-01_ses-1_task-rest_bold.nii.gz"]
    assert bold["tsnr"] == pytest.approx(700.0 / 14.0, rel=0.10)
    assert bold["com_shift_max_mm"] < 0.2  # no motion
    assert bold["dvars_pct"] == pytest.approx(100 * np.sqrt(2) * 14.0 / 700.0, rel=0.15)
    assert bold["snr"] is None and bold["volumes"] == 30
    dwi = rows["dwi/sub-01_ses-1_dwi.nii.gz"]
    assert dwi["b0_snr"] == pytest.approx(900.0 / 15.0, rel=0.10)
    fmap = rows["fmap/sub-01_ses-1_dir-AP_epi.nii.gz"]
    assert fmap["snr"] == pytest.approx(500.0 / 10.0, rel=0.10) and fmap["cnr"] is None
    # the session folder itself works as input too
    assert len(session_qc(session / "sub-01" / "ses-1", "01", "1")) == 4


def test_write_qc_and_derivative_validates(session: Path, tmp_path: Path) -> None:
    rows = session_qc(session, "01", "1")
    derivative = tmp_path / "derivatives" / "bidsafe-qc"
    out = derivative / "sub-01" / "ses-1"
    table = write_qc(rows, out)
    assert table == out / "sub-01_ses-1_qc.tsv"
    with open(table, newline="") as handle:
        read = list(csv.DictReader(handle, delimiter="\t"))
    assert list(read[0]) == list(COLUMNS)
    by_name = {r["filename"]: r for r in read}
    assert by_name["anat/sub-01_ses-1_T1w.nii.gz"]["tsnr"] == "n/a"
    assert float(by_name["anat/sub-01_ses-1_T1w.nii.gz"]["snr"]) == pytest.approx(rows[0]["snr"], rel=1e-3)
    sidecar = json.loads((out / "sub-01_ses-1_qc.json").read_text())
    assert set(sidecar) == set(COLUMNS)
    assert all(sidecar[m]["Units"] for m in METRICS) and sidecar["com_shift_mean_mm"]["Units"] == "mm"

    write_qc_dataset_description(derivative)
    description = json.loads((derivative / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "bidsafe"
    (derivative / "README").write_text("Image quality metrics computed by bidsafe for every released image.\n")
    validator = Path(sys.executable).parent / "bids-validator-deno"
    if not validator.exists():
        pytest.skip("bids-validator-deno is not installed in the venv")
    result = subprocess.run([str(validator), str(derivative), "--format", "json"], capture_output=True, text=True,
                            timeout=300)
    issues = json.loads(result.stdout)["issues"]["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert result.returncode == 0 and errors == []


def test_empty_session_writes_header_only_table(tmp_path: Path) -> None:
    out = tmp_path / "qc" / "sub-02" / "ses-b"
    write_qc([], out)
    assert (out / "sub-02_ses-b_qc.tsv").read_text().splitlines() == ["\t".join(COLUMNS)]
