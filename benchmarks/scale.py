"""How bidsafe's cost grows with the archive: a synthetic archive of tiny but realistic sessions.

Each session is one patient's visit: a 4D resting-state BOLD series (3 volumes x 4 slices of 32x32, one DICOM
file per slice and volume, as scanners export them) with a full identity in the headers. Every patient
consented to public sharing. For each archive size it prints:

- `plan s`: `snakemake --dry-run` of the whole workflow once ingest and pseudonymise have run (the DAG of every
  per-session job; on a fresh archive a dry run stops at the checkpoint), and the parse time alone (`--list`);
  `DAG s`: building that DAG without listing its jobs (`--rulegraph`: one line per rule). A dry run also lists
  every job, and Snakemake's listing formats each job's shell command three times (even with `--quiet all`):
  about as long again as building the DAG, at 5,000 sessions;
- for the sizes given to `--process` (the whole pipeline is run on them): the first full run, a no-op rerun
  (nothing changed), and the run that publishes a new version after one more session arrived, next to what
  that one session costs alone (a fresh site holding only it), the seconds of that run's leak scan (the
  release's text scan), the target (2x alone plus that scan) and the release's size.

Targets (issue 13): dry-run DAG <= 60 s at 5,000 sessions; a no-op rerun on 500 <= 30 s; publishing one more
session on 500 <= 2x that session alone plus the release's text scan.

    nice python benchmarks/scale.py [--sizes 50 500 5000] [--process 50] [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAMILIES = ["Quennell", "Abernethy", "Castellanos", "Oyelaran", "Lindqvist", "Marchetti", "Nakagawa", "Whitcombe"]
GIVEN = ["Imogen", "Tobias", "Ottilie", "Rafferty", "Sunniva", "Caspian", "Leocadia", "Evander"]


def write_session(inbox: Path, number: int) -> tuple[str, str]:
    """One visit of patient `number`; returns (patient_id, study_id) for the consent registry."""
    rng = np.random.default_rng(number)
    family, given = FAMILIES[number % len(FAMILIES)], GIVEN[(number // len(FAMILIES)) % len(GIVEN)]
    patient_id, study_id = f"HX{7000000 + number}", f"BSF-{number:05d}"
    folder = inbox / f"{family.upper()}_{given.upper()}_{number:05d}" / f"2024{(number % 12) + 1:02d}15_RAD{number:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for volume in range(3):
        for slice_index in range(4):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.PatientName, ds.PatientID = f"{family}^{given}", patient_id
            ds.PatientBirthDate, ds.PatientSex = f"19{50 + number % 40}0{1 + number % 9}1{number % 9}", "F"
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = f"2024{(number % 12) + 1:02d}15"
            ds.StudyTime, ds.AccessionNumber = "101500", f"RAD{number:06d}"
            ds.InstitutionName, ds.StationName = "Harrowgate Imaging Centre", "HARROWMR01"
            ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "Prisma"
            ds.MagneticFieldStrength, ds.DeviceSerialNumber = "3", "5512399"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.StudyDescription, ds.SeriesDescription, ds.ProtocolName = "Brain", "fMRI_rest", "fMRI_rest"
            ds.SeriesNumber, ds.AcquisitionNumber = 5, volume + 1
            ds.InstanceNumber = volume * 4 + slice_index + 1
            ds.Modality, ds.ScanningSequence, ds.SequenceVariant = "MR", "EP", "SK"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "2000", "30", "90"
            ds.SliceThickness, ds.PixelSpacing = "4.0", ["3.0", "3.0"]
            ds.ImagePositionPatient = ["-48", "-48", str(4 * slice_index)]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.Rows = ds.Columns = 32
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = rng.integers(0, 4096, 32 * 32, dtype=np.uint16).tobytes()
            ds.save_as(folder / f"IM{volume * 4 + slice_index:04d}.dcm", enforce_file_format=True)
    return patient_id, study_id


def make_site(root: Path, numbers: list[int]) -> Path:
    inbox = root / "inbox"
    rows = ["patient_id\tstudy_id\tconsent\tconsent_form_id\twithdrawn"]
    for number in numbers:
        patient_id, study_id = write_session(inbox, number)
        rows.append(f"{patient_id}\t{study_id}\tpublic\tCF-{number:05d}\t")
    (root / "consent.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox="inbox", private_dir="private", work_dir="work", release_dir="release",
                  consent="consent.tsv", demographics=None)
    config["release"]["k_anonymity"] = 1
    (root / "site.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def snakemake(root: Path, *extra: str, cores: int = 2) -> float:
    """Seconds of one snakemake call in the site folder (fails loudly); its CPU seconds (user + system, its
    jobs included) are added to CPU_SECONDS under the same arguments, since wall time on a shared machine
    overstates."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(root / "site.yaml"), "--cores", str(cores), "--quiet", "all", *extra]
    started, cpu_before = time.perf_counter(), _children_cpu()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    CPU_SECONDS[(str(root), extra)] = _children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(extra)} failed in {root}:\n{result.stderr[-3000:]}")
    return seconds


CPU_SECONDS: dict[tuple[str, tuple[str, ...]], float] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def published(root: Path) -> dict:
    return json.loads((root / "work" / "publish" / "published.json").read_text(encoding="utf-8"))


def plan(size: int, base: Path, cores: int) -> dict[str, float]:
    root = make_site(base / f"plan-{size}", list(range(size)))
    until = snakemake(root, "--until", "pseudonymise", cores=cores)
    parse = snakemake(root, "--list-target-rules", cores=cores)
    dry = snakemake(root, "--dry-run", cores=cores)
    dag = snakemake(root, "--rulegraph", cores=cores)
    return {"sessions": size, "ingest+pseudonymise s": until, "parse s": parse, "plan s": dry,
            "plan CPU s": CPU_SECONDS[(str(root), ("--dry-run",))], "DAG s": dag}


def process(size: int, base: Path, cores: int) -> dict[str, float]:
    root = make_site(base / f"run-{size}", list(range(size)))
    first = snakemake(root, cores=cores)
    noop = snakemake(root, cores=cores)
    number = size  # one more patient's visit arrives
    patient_id, study_id = write_session(root / "inbox", number)
    with open(root / "consent.tsv", "a", encoding="utf-8") as registry:
        registry.write(f"{patient_id}\t{study_id}\tpublic\tCF-{number:05d}\t\n")
    one_more = snakemake(root, cores=cores)
    # the release's text scan inside that run: what the leak gate scanned again, and its seconds
    leak = json.loads((root / "work" / "gates" / "leak_scan.json").read_text(encoding="utf-8"))["details"]
    alone = snakemake(make_site(base / f"alone-{size}", [number]), cores=cores)
    release = root / "release" / "latest"
    release_bytes = sum(p.stat().st_size for p in release.rglob("*") if p.is_file())
    return {"sessions": size, "first run s": first, "no-op rerun s": noop, "one more session s": one_more,
            "that session alone s": alone, "leak scan s": leak.get("seconds", 0.0),
            "target s": 2 * alone + leak.get("seconds", 0.0), "version": published(root)["version"],
            "release MB": release_bytes / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 500, 5000], help="archive sizes to plan")
    parser.add_argument("--process", type=int, nargs="*", default=[50], help="sizes to run the pipeline on")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="build the sites here and keep them")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bidsafe-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        print(f"{'sessions':>8} {'ingest+pseud s':>14} {'parse s':>8} {'plan s':>8} {'plan CPU s':>10} {'DAG s':>7}",
              flush=True)
        for size in args.sizes:
            row = plan(size, base, args.cores)
            print(f"{size:>8} {row['ingest+pseudonymise s']:>14.1f} {row['parse s']:>8.1f} {row['plan s']:>8.1f} "
                  f"{row['plan CPU s']:>10.1f} {row['DAG s']:>7.1f}", flush=True)
        if args.process:
            print(f"\n{'sessions':>8} {'first s':>8} {'no-op s':>8} {'+1 sess s':>9} {'alone s':>8} "
                  f"{'leak s':>7} {'target s':>8} {'version':>7} {'release MB':>10}", flush=True)
        for size in args.process:
            row = process(size, base, args.cores)
            print(f"{size:>8} {row['first run s']:>8.1f} {row['no-op rerun s']:>8.1f} "
                  f"{row['one more session s']:>9.1f} {row['that session alone s']:>8.1f} {row['leak scan s']:>7.1f} "
                  f"{row['target s']:>8.1f} {row['version']:>7} {row['release MB']:>10.1f}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
