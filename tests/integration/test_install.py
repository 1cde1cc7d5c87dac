"""A regular wheel install works without the repository: rules, table, vocabulary and workflow ship inside it.

The wheel is built from a copy of the source (nothing is written into the checkout), installed without
dependencies into a fresh venv, and the dependencies are borrowed from the interpreter running the tests through
a `.pth` file (so nothing is downloaded but the build backend pip's build isolation fetches, usually from its
cache). Every command runs from an empty folder outside the repository with PYTHONPATH cleared, so the only
bidsafe the commands can see is the installed one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What a build needs; the workflow files are the ones setup.py copies into bidsafe/_data/.
SOURCE = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "Snakefile", "config", "workflow", "envs",
          "profiles")
SHIPPED = (
    "Snakefile",
    "config/config.yaml",
    "config/dcm2bids.json",
    "config/sidecar_allowlist.yaml",
    "config/deid/basic-mr.yaml",
    "config/deid/vocabulary.yaml",
    "workflow/rules/common.smk",
    "workflow/scripts/ingest.py",
    "workflow/schemas/config.schema.yaml",
    "envs/dicom.yaml",
    "envs/dicom.post-deploy.sh",
    "profiles/default/profile.yaml",
    "profiles/slurm/profile.yaml",
)
PATIENT_NAME, PATIENT_ID, GIVEN = "Quist^Orla", "QX731", "Orla"


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    for name in SOURCE:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    out = base / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)], base,
                 dict(os.environ), timeout=300)
    if built.returncode != 0 and any(w in built.stderr for w in ("NewConnectionError", "No matching distribution")):
        pytest.skip("building a wheel needs setuptools from PyPI (pip's build isolation) and it is unreachable")
    assert built.returncode == 0, built.stderr[-2000:]
    (found,) = out.glob("bidsafe-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(venv bin folder, environment) of a fresh venv holding only the wheel, dependencies borrowed."""
    # No PYTHONPATH (a checkout's src/ on it would make pip think bidsafe is installed already) and no
    # BIDSAFE_* override (the packaged table must be the one found).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BIDSAFE_"))}
    env["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(pip, check=True, timeout=300, capture_output=True, env=env)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Plain folder lines: the test interpreter's own .pth files (an editable bidsafe) are not processed, so
    # bidsafe itself can only come from the wheel.
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "zz_borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in borrowed), encoding="utf-8")
    return venv / "bin", env


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """An empty folder outside the repository to run the installed commands from."""
    folder = tmp_path / "site"
    folder.mkdir()
    assert REPO not in folder.parents
    return folder


def write_mr_slice(path: Path) -> None:
    """One small MR slice carrying a name, an ID and the given name inside a series description."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19800101"
    ds.StudyDate, ds.SeriesDescription = "20240105", f"t1_mprage {GIVEN}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_wheel_carries_the_workflow_and_shipped_config_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in SHIPPED:
            member = f"bidsafe/_data/{name}"
            assert member in names, member
            assert archive.read(member) == (REPO / name).read_bytes(), name
        assert "bidsafe/data/ps315/table_e1_1.json" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_bidsafe_is_the_wheel_not_the_checkout(installed: tuple[Path, dict[str, str]], outside: Path) -> None:
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import bidsafe.resources as r; print(r.root())"], outside, env)
    assert where.returncode == 0, where.stderr
    root = Path(where.stdout.strip())
    assert root.name == "_data" and bin_dir.parent in root.parents


def test_check_rules_finds_its_packaged_rule_file_and_table(
    installed: tuple[Path, dict[str, str]], outside: Path
) -> None:
    bin_dir, env = installed
    result = _run([str(bin_dir / "bidsafe"), "check-rules"], outside, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every row covered" in result.stdout
    assert "basic-mr" in result.stdout


def test_deid_applies_the_packaged_rules_and_vocabulary(installed: tuple[Path, dict[str, str]], outside: Path) -> None:
    bin_dir, env = installed
    write_mr_slice(outside / "in" / "slice.dcm")
    (outside / "key.hex").write_text("ab" * 16, encoding="ascii")
    result = _run([str(bin_dir / "bidsafe"), "deid", "in", "out", "--key", "key.hex"], outside, env)
    assert result.returncode == 0, result.stderr
    (written,) = (outside / "out").rglob("*.dcm")
    ds = pydicom.dcmread(written)
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.DeidentificationMethod).startswith("bidsafe basic-mr")
    assert str(ds.PatientName) != PATIENT_NAME and ds.PatientID != PATIENT_ID
    assert ds.StudyDate < "19250101"  # shifted before any real date
    # The vocabulary keeps the sequence descriptor; the cleaner removes the given name beside it.
    assert ds.SeriesDescription.startswith("t1_mprage") and GIVEN not in ds.SeriesDescription
    assert PATIENT_NAME.encode() not in written.read_bytes() and PATIENT_ID.encode() not in written.read_bytes()


def test_run_dry_runs_the_packaged_workflow_from_the_current_folder(
    installed: tuple[Path, dict[str, str]], outside: Path
) -> None:
    bin_dir, env = installed
    write_mr_slice(outside / "inbox" / "a" / "slice.dcm")
    (outside / "cfg.yaml").write_text(
        "inbox: inbox\nprivate_dir: private\nwork_dir: work\nrelease_dir: release\nconsent: none-required\n",
        encoding="utf-8",
    )
    result = _run([str(bin_dir / "bidsafe"), "run", "--configfile", "cfg.yaml", "--cores", "1", "-n"], outside, env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "This was a dry-run" in output
    for rule in ("ingest", "pseudonymise", "publish", "report"):
        assert f"rule {rule}:" in output or f"checkpoint {rule}:" in output, rule
    # The workflow is the one inside the wheel; a dry run makes no data area (no side effects at parse time).
    assert not (outside / "private").exists() and not (outside / "work").exists()
    assert f"{bin_dir.parent}" in output and "_data/Snakefile" in output


def test_run_refuses_a_config_with_a_typo_before_starting_snakemake(
    installed: tuple[Path, dict[str, str]], outside: Path
) -> None:
    bin_dir, env = installed
    (outside / "inbox").mkdir()
    (outside / "cfg.yaml").write_text(
        "inbox: inbox\nprivate_dir: private\nwork_dir: work\nrelease_dir: release\nrelease: {audiance: public}\n",
        encoding="utf-8",
    )
    result = _run([str(bin_dir / "bidsafe"), "run", "--configfile", "cfg.yaml", "--cores", "1", "-n"], outside, env)
    assert result.returncode == 2
    assert "cfg.yaml" in result.stderr and "release.audiance: unknown key" in result.stderr
    assert not (outside / ".snakemake").exists() and not (outside / "private").exists()
