"""End to end: Snakemake on demo exports (1 consenting subject x 2 sessions, plus one without consent).

Checks the published BIDS tree against the raw DICOM it came from: files, geometry, diffusion tables, timing,
validator, no planted personal value anywhere, consent honoured, and that a new session reruns only its own jobs.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from bidsafe.demo import DemoSession, generate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, configfile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "2", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    inbox = root / "inbox"
    sessions = generate(inbox, subjects=2, sessions=2, seed=7)
    consenting = [s for s in sessions if s.subject_index == 1]
    refusing = [s for s in sessions if s.subject_index == 2]
    consent = root / "consent.tsv"
    consent.write_text(
        "patient_id\tconsent\tconsent_form_id\n"
        f"{consenting[0].patient_id}\tpublic\tCF-0001\n"
        f"{refusing[0].patient_id}\tnone\tCF-0002\n",
        encoding="utf-8",
    )
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    # relative data areas, resolved in the run folder, as `make demo` gives them
    config.update(
        inbox="inbox", private_dir="private", work_dir="work", release_dir="release", consent="consent.tsv",
        demographics=None,
    )
    config["release"]["k_anonymity"] = 1
    configfile = root / "config.yaml"
    configfile.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = snakemake(root, configfile)
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return {"root": root, "config": configfile, "sessions": sessions, "consenting": consenting,
            "refusing": refusing, "release": root / "release" / "latest", "log": result.stderr}


def released_sessions(release: Path) -> list[Path]:
    return sorted(release.glob("sub-*/ses-*"))


def series_datasets(session: DemoSession, suffix: str) -> list[pydicom.Dataset]:
    (series,) = [s for s in session.series if s.expected_suffix == suffix]
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]


def dicom_corners(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """World (RAS) positions of the 8 corner voxel centres of a slice stack, from the DICOM geometry alone."""
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ordered = sorted(datasets, key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    first = np.array(ordered[0].ImagePositionPatient, dtype=float)
    last = np.array(ordered[-1].ImagePositionPatient, dtype=float)
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)
    rows, cols = int(ordered[0].Rows), int(ordered[0].Columns)
    corners = []
    for origin in (first, last):
        for i in (0, cols - 1):
            for j in (0, rows - 1):
                corners.append(origin + i * dc * row_dir + j * dr * col_dir)
    lps = np.array(corners)
    return lps * np.array([-1, -1, 1])  # LPS -> RAS


def nifti_corners(image: nib.Nifti1Image) -> np.ndarray:
    shape = image.shape[:3]
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return nib.affines.apply_affine(image.affine, idx)


def same_points(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return all(np.min(np.linalg.norm(b - p, axis=1)) < tol for p in a)


def test_only_consenting_sessions_are_published(run):
    release = run["release"]
    assert (release / "SHAREABLE.json").is_file()
    subjects = {p.parent.name for p in released_sessions(release)}
    assert len(subjects) == 1
    assert len(released_sessions(release)) == 2
    with open(release / "participants.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["participant_id"] for r in rows] == sorted(subjects)


def test_expected_files_in_every_session(run):
    for session_dir in released_sessions(run["release"]):
        names = {p.relative_to(session_dir).as_posix() for p in session_dir.rglob("*") if p.is_file()}
        prefix = f"{session_dir.parent.name}_{session_dir.name}"
        for expected in (f"anat/{prefix}_T1w.nii.gz", f"anat/{prefix}_T1w.json", f"anat/{prefix}_T2w.nii.gz",
                         f"dwi/{prefix}_dwi.nii.gz", f"dwi/{prefix}_dwi.bval", f"dwi/{prefix}_dwi.bvec"):
            assert expected in names, f"{expected} missing from {session_dir.name}"
        assert any(re.fullmatch(rf"func/{prefix}_task-\w+_bold\.nii\.gz", n) for n in names)
        assert any(n.startswith("fmap/") and n.endswith(".nii.gz") for n in names)
        assert not any("localizer" in n.lower() or "screen" in n.lower() for n in names)


def session_pairs(run) -> list[tuple[Path, DemoSession]]:
    """Released sessions paired with the demo session they came from (sessions are ordered by date)."""
    released = released_sessions(run["release"])
    ordered = sorted(run["consenting"], key=lambda s: s.study_date)
    assert len(released) == len(ordered)
    return list(zip(released, ordered, strict=True))


def test_anat_geometry_matches_dicom(run):
    for session_dir, demo in session_pairs(run):
        for suffix in ("T1w", "T2w"):
            datasets = series_datasets(demo, suffix)
            image = nib.load(next((session_dir / "anat").glob(f"*_{suffix}.nii.gz")))
            rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
            assert sorted(image.shape) == sorted((rows, cols, len(datasets)))
            spacing = [float(v) for v in datasets[0].PixelSpacing]
            slice_gap = float(datasets[0].get("SpacingBetweenSlices", datasets[0].SliceThickness))
            assert np.allclose(sorted(image.header.get_zooms()[:3]), sorted([*spacing, slice_gap]), atol=1e-3)
            assert same_points(dicom_corners(datasets), nifti_corners(image), tol=0.05)


def test_diffusion_tables_match_dicom(run):
    for session_dir, demo in session_pairs(run):
        datasets = series_datasets(demo, "dwi")
        by_volume: dict[float, tuple[float, np.ndarray]] = {}
        for ds in datasets:
            bvalue = float(ds.DiffusionBValue)
            direction = np.array(ds.get("DiffusionGradientOrientation", [0, 0, 0]), dtype=float)
            by_volume[float(ds.get("AcquisitionNumber", ds.get("TemporalPositionIdentifier", 0)))] = (bvalue, direction)
        expected = [by_volume[k] for k in sorted(by_volume)]
        bvals = np.loadtxt(next((session_dir / "dwi").glob("*_dwi.bval")))
        bvecs = np.loadtxt(next((session_dir / "dwi").glob("*_dwi.bvec")))
        image = nib.load(next((session_dir / "dwi").glob("*_dwi.nii.gz")))
        assert image.shape[3] == len(expected) == len(bvals)
        assert np.allclose(bvals, [b for b, _ in expected])
        # bvecs are in voxel space (FSL convention); back to patient LPS they must equal the DICOM directions.
        rotation = image.affine[:3, :3] / np.array(image.header.get_zooms()[:3])
        for column, (bvalue, direction) in enumerate(expected):
            if bvalue == 0:
                assert np.allclose(bvecs[:, column], 0)
                continue
            voxel = bvecs[:, column].copy()
            if np.linalg.det(rotation) > 0:
                voxel[0] = -voxel[0]
            world_lps = (rotation @ voxel) * np.array([-1, -1, 1])
            assert np.allclose(world_lps, direction, atol=1e-3) or np.allclose(world_lps, -direction, atol=1e-3)


def test_timing_in_sidecars(run):
    for session_dir, demo in session_pairs(run):
        bold = series_datasets(demo, "bold")
        sidecar = json.loads(next((session_dir / "func").glob("*_bold.json")).read_text())
        assert sidecar["RepetitionTime"] == pytest.approx(float(bold[0].RepetitionTime) / 1000)
        assert sidecar["EchoTime"] == pytest.approx(float(bold[0].EchoTime) / 1000)
        slices = nib.load(next((session_dir / "func").glob("*_bold.nii.gz"))).shape[2]
        assert len(sidecar["SliceTiming"]) == slices
        assert min(sidecar["SliceTiming"]) >= 0 and max(sidecar["SliceTiming"]) < sidecar["RepetitionTime"]
        t1 = series_datasets(demo, "T1w")
        anat = json.loads(next((session_dir / "anat").glob("*_T1w.json")).read_text())
        assert anat["RepetitionTime"] == pytest.approx(float(t1[0].RepetitionTime) / 1000)


def test_release_validates(run):
    from bidsafe.validate import run_validator

    result = run_validator(run["release"])
    assert result.valid, [f"{e.location}: {e.code}" for e in result.errors]
    assert result.errors == []


def test_no_planted_personal_value_in_release_work_or_logs(run):
    planted = {v.lower() for s in run["sessions"] for v in s.planted.values() if len(v) >= 4}
    roots = [run["release"].resolve(), run["root"] / "work"]
    for root in roots:
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix().lower()
            assert not any(v in rel for v in planted), f"personal value in path {path.name}"
            if not path.is_file() or "/deid/" in f"/{rel}":
                continue
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)[:4096]  # NIfTI header + extensions; voxels are checked by leak scan
            text = data.decode("latin-1")
            if path.suffix == ".html":
                # pictures embedded as base64: a 4-letter value (an age such as 033Y) turns up there by chance
                text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "data:image", text)
            text = text.lower()
            assert not any(v in text for v in planted), f"personal value in {path.relative_to(root)}"
    assert not any(v in run["log"].lower() for v in planted)


def test_private_area_is_private(run):
    private = run["root"] / "private"
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    for path in (private / "secret.key", private / "linkage.tsv"):
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_verify_accepts_the_published_release(run):
    result = subprocess.run([str(BIN / "bidsafe"), "verify", str(run["release"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_new_session_reruns_only_its_own_jobs(run):
    (newcomer,) = generate(run["root"] / "inbox" / "arrived-later", subjects=1, sessions=1, seed=99)
    with open(run["root"] / "consent.tsv", "a", encoding="utf-8") as handle:
        handle.write(f"{newcomer.patient_id}\tpublic\tCF-0003\n")
    result = snakemake(run["root"], run["config"])
    assert result.returncode == 0, result.stderr[-6000:]
    executed = re.findall(r"^\s*(?:local)?rule (\w+):", result.stderr, flags=re.M)
    per_session = {rule: executed.count(rule) for rule in ("deid", "convert", "scrub", "deface", "qc")}
    assert per_session == dict.fromkeys(per_session, 1), executed
    assert executed.count("publish") == 1 and executed.count("assemble") == 1
    latest = (run["root"] / "release" / "latest").resolve()
    assert latest.name == "v2"
    assert len(released_sessions(latest)) == 3
