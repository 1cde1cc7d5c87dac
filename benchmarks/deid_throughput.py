"""Throughput of `bidsafe deid` next to a bare pydicom read+write of the same files, in the same run.

    .venv/bin/python benchmarks/deid_throughput.py CORPUS [--jobs N] [--repeat R]

Prints files/s and MB/s for the bare pydicom baseline (`dcmread` + `save_as` per file, one core), for
`bidsafe deid` with one job and with N jobs, and each rate's ratio to the baseline; then the machine.
Every variant runs as its own process (the command as a user runs it: process start-up included) on the
same files; the best of R repeats is kept, since the machine may be shared. Nothing is asserted.
Only DICOM files count: non-DICOM files in CORPUS are listed once and left out of every variant.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = r"""
import sys, pydicom
from pathlib import Path
out = Path(sys.argv[1])
for i, line in enumerate(open(sys.argv[2], encoding="utf-8")):
    ds = pydicom.dcmread(line.rstrip("\n"))
    ds.save_as(out / f"{i}.dcm")
"""


def dicom_files(corpus: Path) -> list[Path]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    found = []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        try:
            pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        found.append(path)
    return found


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs for the parallel run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is kept (default 2)")
    parser.add_argument("--rules", type=Path, help="rule file for bidsafe deid (default: the shipped profile)")
    args = parser.parse_args()

    files = dicom_files(args.corpus)
    if not files:
        print(f"no DICOM files under {args.corpus}", file=sys.stderr)
        return 2
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    python = sys.executable
    bidsafe = str(Path(python).with_name("bidsafe"))

    with tempfile.TemporaryDirectory(prefix="bidsafe-bench-") as tmp:
        work = Path(tmp)
        # `bidsafe deid` takes a folder: link the DICOM files into one (same bytes, no copies).
        src = work / "src"
        for i, path in enumerate(files):
            link = src / f"{i // 1000:03d}" / f"{i}.dcm"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), link)
        listing = work / "files.txt"
        listing.write_text("".join(f"{p}\n" for p in files), encoding="utf-8")
        key = work / "bench.key"
        key.write_text("00" * 32 + "\n", encoding="ascii")
        key.chmod(0o600)

        def baseline() -> float:
            out = work / "baseline"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            return timed([python, "-c", BASELINE, str(out), str(listing)])

        def deid(jobs: int) -> float:
            out = work / f"deid-{jobs}"
            shutil.rmtree(out, ignore_errors=True)
            rules = ["--rules", str(args.rules)] if args.rules else []
            return timed([bidsafe, "deid", str(src), str(out), "--key", str(key), "--jobs", str(jobs), *rules])

        variants = [("pydicom read+write (1 core)", baseline), ("bidsafe deid --jobs 1", lambda: deid(1))]
        if args.jobs > 1:
            variants.append((f"bidsafe deid --jobs {args.jobs}", lambda: deid(args.jobs)))
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, run in variants:  # interleaved, so load changes hit every variant alike
                seconds = run()
                best[name] = min(best.get(name, seconds), seconds)

    base = best[variants[0][0]]
    print(f"corpus: {args.corpus} ({len(files)} DICOM files, {megabytes:.1f} MB)")
    print(f"rules: {args.rules or 'shipped profile'}")
    print(f"{'variant':32s} {'seconds':>8s} {'files/s':>8s} {'MB/s':>7s} {'x baseline':>10s}")
    for name, _ in variants:
        seconds = best[name]
        print(
            f"{name:32s} {seconds:8.2f} {len(files) / seconds:8.1f} {megabytes / seconds:7.2f} {base / seconds:10.2f}"
        )
    import pydicom

    print(
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, pydicom {pydicom.__version__}, "
        f"{platform.system()} {platform.release()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
