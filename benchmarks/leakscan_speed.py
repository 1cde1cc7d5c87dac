"""How fast is the leak scan? Builds N synthetic released sessions and a 500-session harvest, scans, reports.

Each session holds what a bidsafe release session holds, at realistic sizes: T1w and T2w (176x240x256),
BOLD (64x64x36x200), DWI (96x96x60x33), a field-map pair, their JSON sidecars, bval/bvec and scans.tsv. The
images are smooth heads plus noise, so they compress like MR images do. The personal values are those of a
500-session inbox (names, IDs, dates, addresses, phones, staff, ~600 instance UIDs per session), so the
automaton has the size it would have in the gate. Prints files/s and MB/s (on-disk and decompressed) with and
without voxel scanning, and extrapolates to a 500-session release. Does not assert.

    .venv/bin/python benchmarks/leakscan_speed.py --sessions 8 [--work DIR] [--small]
    .venv/bin/python benchmarks/leakscan_speed.py --demo   # the gate's cost on a demo-sized release

`--demo`: the release `make demo` publishes (4 subjects x 2 sessions, the demo's image sizes) and a harvest of
that size (8 sessions, ~900 instance UIDs each): what the gate costs per demo run, automata included.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsafe.phi import PersonalValue, PersonalValues, harvest_files
from bidsafe.release.leakscan import Scanner, scan_tree

REALISTIC = {
    "anat/T1w": (176, 240, 256),
    "anat/T2w": (176, 240, 256),
    "func/task-rest_bold": (64, 64, 36, 200),
    "dwi/dwi": (96, 96, 60, 33),
    "fmap/dir-AP_epi": (64, 64, 36, 1),
    "fmap/dir-PA_epi": (64, 64, 36, 1),
}
DEMO = {  # bidsafe.demo: T1w 224x224x176, T2w 224x192x100, EPI 64x64x30 (BOLD 12 volumes, DWI b0 + 6)
    "anat/T1w": (176, 224, 224),
    "anat/T2w": (224, 192, 100),
    "func/task-rest_bold": (64, 64, 30, 12),
    "dwi/dwi": (64, 64, 30, 7),
    "fmap/dir-AP_epi": (64, 64, 30, 1),
    "fmap/dir-PA_epi": (64, 64, 30, 1),
}
SMALL = {key: tuple(max(2, s // 3) if i < 3 else max(1, s // 4) for i, s in enumerate(shape))
         for key, shape in REALISTIC.items()}


def _head(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid 'head' with smooth contrast plus Rician-like noise, int16 like scanner output."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape[:3])
    radius = x[:, None, None] ** 2 / 0.8 + y[None, :, None] ** 2 / 0.9 + z[None, None, :] ** 2 / 0.85
    volume = np.where(radius < 1, 600 + 300 * np.cos(6 * radius), 0).astype(np.float32)
    frames = shape[3] if len(shape) == 4 else 1
    out = np.empty(shape[:3] + (frames,), dtype=np.int16)
    for t in range(frames):
        noisy = np.abs(volume + rng.normal(0, 20, size=shape[:3]).astype(np.float32))
        out[..., t] = np.clip(noisy, 0, 32767).astype(np.int16)
    return out if len(shape) == 4 else out[..., 0]


def build_session(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    scans = ["filename\tacq_time"]
    for key, shape in shapes.items():
        datatype, suffix = key.split("/")
        name = f"sub-001_ses-1_{suffix}"
        (folder / datatype).mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(_head(shape, rng), np.diag([1.0, 1.0, 1.0, 1.0]))
        image.header["descrip"] = b"bidsafe"
        nib.save(image, folder / datatype / f"{name}.nii.gz")
        sidecar = {
            "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "GE", "ManufacturersModelName": "MR750",
            "SeriesDescription": suffix, "ProtocolName": suffix, "SeriesNumber": len(scans),
            "RepetitionTime": 2.0, "EchoTime": 0.03, "FlipAngle": 77,
            "SliceTiming": [round(float(v), 4) for v in rng.uniform(0, 2, size=shape[2])],
            "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.0345, "EffectiveEchoSpacing": 0.00051,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        }
        if suffix.endswith("bold"):
            sidecar["TaskName"] = "rest"
        (folder / datatype / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
        if datatype == "dwi":
            frames = shape[3]
            (folder / datatype / f"{name}.bval").write_text(" ".join(["0"] + ["1000"] * (frames - 1)) + "\n")
            vectors = rng.normal(size=(3, frames))
            (folder / datatype / f"{name}.bvec").write_text(
                "\n".join(" ".join(f"{v:.6f}" for v in row) for row in vectors) + "\n"
            )
        scans.append(f"{datatype}/{name}.nii.gz\t1900-0{1 + seed % 9}-1{seed % 9}T10:{10 + len(scans)}:00")
    (folder / "sub-001_ses-1_scans.tsv").write_text("\n".join(scans) + "\n")


def copy_session(template: Path, release: Path, index: int) -> None:
    label = f"{index:03d}"
    target = release / f"sub-{label}" / "ses-1"
    for source in template.rglob("*"):
        if source.is_file():
            relative = source.relative_to(template).as_posix().replace("sub-001", f"sub-{label}")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


def synthetic_values(sessions: int, uids_per_session: int, seed: int = 0) -> PersonalValues:
    """A harvest as 500 real sessions would give: distinct people, visits and ~600 instance UIDs each."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def word(low: int, high: int) -> str:
        return "".join(rng.choice(letters, size=int(rng.integers(low, high)))).title()

    values: set[PersonalValue] = set()
    for s in range(sessions):
        family, given, middle = word(5, 11), word(4, 9), word(3, 7)
        birth = f"{rng.integers(1935, 2006)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        visit = f"{rng.integers(2016, 2025)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        values |= {
            PersonalValue("name", "PatientName", f"{family}^{given}^{middle}"),
            PersonalValue("name", "ReferringPhysicianName", f"{word(5, 10)}^{word(4, 8)}"),
            PersonalValue("name", "OperatorsName", f"{word(5, 10)}^{word(4, 8)}"),
            PersonalValue("id", "PatientID", f"MRN{rng.integers(10**6, 10**7)}"),
            PersonalValue("id", "OtherPatientIDsSequence>PatientID", f"{rng.integers(10**9, 10**10)}"),
            PersonalValue("id", "AccessionNumber", f"A{rng.integers(10**7, 10**8)}"),
            PersonalValue("id", "StudyID", f"{rng.integers(1000, 99999)}"),
            PersonalValue("date", "PatientBirthDate", birth),
            PersonalValue("date", "StudyDate", visit),
            PersonalValue("address", "PatientAddress", f"{rng.integers(1, 200)} {word(5, 9)} Road, {word(5, 9)}"),
            PersonalValue("phone", "PatientTelephoneNumbers", f"+44 20 {rng.integers(10**7, 10**8)}"),
            PersonalValue("free_text", "PatientComments", f"{given} {family} prefers mornings"),
        }
        root = f"1.2.826.0.1.3680043.9.{rng.integers(10**5, 10**6)}.{s}"
        values |= {PersonalValue("uid", "SOPInstanceUID", f"{root}.{i}") for i in range(uids_per_session)}
    values |= {
        PersonalValue("institution", "InstitutionName", "Harrowgate Imaging Centre"),
        PersonalValue("device", "StationName", "HARROWMR01"),
        PersonalValue("device", "DeviceSerialNumber", "5512399"),
    }
    return PersonalValues(values)


def _decompressed_bytes(release: Path) -> int:
    total = 0
    for path in release.rglob("*"):
        if path.is_file():
            if path.name.endswith(".gz"):
                with gzip.open(path, "rb") as handle:
                    while chunk := handle.read(1 << 22):
                        total += len(chunk)
            else:
                total += path.stat().st_size
    return total


def _harvest_rate() -> str:
    corpus = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    if not corpus.is_dir():
        return "harvest: ../shared/corpus absent, not measured"
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    started = time.perf_counter()
    values = harvest_files(files, private_text=True)
    seconds = time.perf_counter() - started
    return (
        f"harvest_source: {len(files)} corpus DICOM files in {seconds:.2f} s "
        f"({len(files) / seconds:.0f} files/s, {len(values)} values)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8, help="released sessions to build and scan (default 8)")
    parser.add_argument("--harvest-sessions", type=int, default=500, help="sessions in the synthetic harvest")
    parser.add_argument("--uids-per-session", type=int, default=600)
    parser.add_argument("--small", action="store_true", help="small images (a quick check, not a measurement)")
    parser.add_argument("--demo", action="store_true", help="a demo-sized release and harvest (overrides sizes)")
    parser.add_argument("--work", type=Path, help="folder to build in (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.demo:
        args.sessions, args.harvest_sessions, args.uids_per_session = 8, 8, 900

    work = Path(tempfile.mkdtemp(prefix="leakscan-bench-", dir=args.work))
    try:
        print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
        started = time.perf_counter()
        template = work / "template"
        build_session(template, DEMO if args.demo else SMALL if args.small else REALISTIC, seed=1)
        release = work / "release"
        for index in range(1, args.sessions + 1):
            copy_session(template, release, index)
        files = sum(1 for p in release.rglob("*") if p.is_file())
        on_disk = sum(p.stat().st_size for p in release.rglob("*") if p.is_file())
        decompressed = _decompressed_bytes(release)
        print(f"dataset: {args.sessions} sessions, {files} files, {on_disk / 1e6:.0f} MB on disk, "
              f"{decompressed / 1e6:.0f} MB decompressed (built in {time.perf_counter() - started:.0f} s)")

        values = synthetic_values(args.harvest_sessions, args.uids_per_session)
        started = time.perf_counter()
        scanner = Scanner(values)
        build = time.perf_counter() - started
        print(f"needles: {len(values)} values from {args.harvest_sessions} sessions -> {len(scanner.text)} folded "
              f"+ {len(scanner.raw)} byte + {len(scanner.squashed)} squashed patterns, {len(scanner.dates)} dates, "
              f"{len(scanner.uids)} UID forms; automata built in {build:.2f} s")

        for scan_voxels in (True, False):
            scanner.scan_voxels = scan_voxels
            started = time.perf_counter()
            hits, scanned, _ = scan_tree(release, scanner)
            scan_seconds = max(time.perf_counter() - started, 1e-9)
            assert not hits, sorted(h.line() for h in hits)
            per_session = scan_seconds / args.sessions
            label = "with voxel data" if scan_voxels else "headers/text only"
            print(
                f"scan {label}: {scanned} files in {scan_seconds:.2f} s: {scanned / scan_seconds:.1f} files/s, "
                f"{on_disk / 1e6 / scan_seconds:.0f} MB/s on disk, {decompressed / 1e6 / scan_seconds:.0f} MB/s "
                f"decompressed; {per_session:.2f} s/session; gate total (automata + scan) "
                f"{build + scan_seconds:.1f} s; 500 sessions ~ {(build + 500 * per_session) / 60:.1f} min"
            )
        print(_harvest_rate())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
