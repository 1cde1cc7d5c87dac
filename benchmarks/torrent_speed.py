"""How long does `bidsafe torrent` take for a 1 GB release? Does not assert.

The release is the synthetic published version of benchmarks/mirror_speed.py (8 sessions of ~128 MB of
incompressible bytes by default: about 1 GB). Times the whole-version torrent at the automatic piece size and
at 8 and 16 MiB, then the whole version plus two subsets (anat; the first sessions) in one call. Every time
includes the release's own verification (sha256 of every file), which each `bidsafe torrent` starts with; it
is also shown alone. The files are read once before timing, so the page cache holds them as it would right
after a publish (a cold disk adds its read time).

    .venv/bin/python benchmarks/torrent_speed.py [--sessions 8] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mirror_speed import MB, synthetic_release, tree_bytes

MiB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="sessions of ~128 MB each (default 8: ~1 GB)")
    parser.add_argument("--threads", type=int, default=2, help="hashing threads (default 2)")
    parser.add_argument("--work", type=Path, help="folder for the synthetic release (default: a temporary one)")
    args = parser.parse_args()

    from bidsafe.release.manifest import verify_release
    from bidsafe.release.torrent import Subset, auto_piece_size, torrent_release

    work = args.work or Path(tempfile.mkdtemp(prefix="bidsafe-torrent-bench-"))
    try:
        version = synthetic_release(work, args.sessions)
        size = tree_bytes(version)
        files = sum(1 for p in version.rglob("*") if p.is_file())
        print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
              f"release: {files} files, {size / MB:.0f} MB; {args.threads} hashing threads")
        verify_release(version)  # warm the page cache
        t0 = time.perf_counter()
        verify_release(version)
        local = time.perf_counter() - t0
        print(f"local verification alone: {local:.1f} s")
        out = work / "out"
        for label, piece in (("auto", None), ("8 MiB", 8 * MiB), ("16 MiB", 16 * MiB)):
            t0 = time.perf_counter()
            [written] = torrent_release(version, out / "study.torrent", piece_size=piece, threads=args.threads)
            took = time.perf_counter() - t0
            print(f"whole version, pieces {label} ({written.piece_size // 1024} KiB, "
                  f"{-(-written.bytes // written.piece_size)} pieces, .torrent {written.path.stat().st_size} B): "
                  f"{took:.1f} s, {size / MB / took:.0f} MB/s; hashing alone ~{took - local:.1f} s")
        subsets = [Subset("anat", ("anat",)), Subset("first-sessions", (), (1, 1))]
        t0 = time.perf_counter()
        written = torrent_release(version, out / "study.torrent", subsets=subsets, threads=args.threads)
        took = time.perf_counter() - t0
        hashed = sum(w.bytes for w in written)
        print(f"whole version + 2 subsets ({', '.join(f'{w.bytes / MB:.0f} MB' for w in written)}): {took:.1f} s "
              f"for {hashed / MB:.0f} MB hashed")
        print(f"auto piece size for 500 GB: {auto_piece_size(500 * 10**9) // MiB} MiB")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
