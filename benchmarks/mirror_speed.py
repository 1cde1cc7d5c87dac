"""How fast does `bidsafe mirror` upload a release, and `bidsafe verify s3://` read it back? Against moto's S3
server in its own process on loopback, so the figure is bidsafe's and boto3's cost plus a local server's, not
a network's (a real bucket is bounded by the uplink instead). Does not assert.

The release is a synthetic published version made with the publish module's own functions (files, then
MANIFEST.sha256 and a sealed SHAREABLE.json): per session a T1w (20 MB), a T2w (15 MB), a BOLD (60 MB), a DWI
(30 MB), a field-map pair (1.5 MB each), their JSON sidecars and a scans table, as incompressible bytes (gzipped
NIfTI barely compresses further). 8 sessions are about 1 GB.

    .venv/bin/python benchmarks/mirror_speed.py [--sessions 8] [--threads 4] [--work DIR]

Prints: the local verification (which every mirror starts with), the upload (MB/s), a second run that finds
everything there (the resume path: listing and one HEAD per object), and the read-back verification (MB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 10**6
# (relative path pattern, size in bytes) of one session; {s} is the subject, {t} the session label
SESSION_FILES = (
    ("anat/sub-{s}_ses-{t}_T1w.nii.gz", 20 * MB),
    ("anat/sub-{s}_ses-{t}_T2w.nii.gz", 15 * MB),
    ("func/sub-{s}_ses-{t}_task-rest_bold.nii.gz", 60 * MB),
    ("dwi/sub-{s}_ses-{t}_dwi.nii.gz", 30 * MB),
    ("fmap/sub-{s}_ses-{t}_dir-AP_epi.nii.gz", 3 * MB // 2),
    ("fmap/sub-{s}_ses-{t}_dir-PA_epi.nii.gz", 3 * MB // 2),
)


def synthetic_release(root: Path, sessions: int, seed: int = 0) -> Path:
    """A published version `root/release/v1` of `sessions` sessions (two per participant): see the docstring."""
    from bidsafe.release.manifest import write_manifest
    from bidsafe.release.publish import shareable_record, write_shareable

    version = root / "release" / "v1"
    rng = random.Random(seed)
    files: dict[str, bytes | int] = {
        "dataset_description.json": json.dumps({"Name": "benchmark", "BIDSVersion": "1.10.0"}).encode(),
        "README": b"Synthetic release for benchmarks.\n", "CHANGES": b"1.0.0 2026-01-01\n  - Benchmark.\n",
        "LICENSE": b"Data usage agreement.\n", "participants.tsv": b"participant_id\n", ".bidsignore": b"*.bin\n",
    }
    for n in range(sessions):
        subject, session = f"bench{n // 2:03d}", f"{n % 2 + 1:02d}"
        folder = f"sub-{subject}/ses-{session}"
        for pattern, size in SESSION_FILES:
            rel = f"{folder}/{pattern.format(s=subject, t=session)}"
            files[rel] = size
            files[rel.replace(".nii.gz", ".json")] = json.dumps({"RepetitionTime": 2.0, "n": n}).encode()
        files[f"{folder}/sub-{subject}_ses-{session}_scans.tsv"] = b"filename\tacq_time\n"
    for rel, content in files.items():
        path = version / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else rng.randbytes(content))
    _, manifest_sha256, digests = write_manifest(version)
    write_shareable(version, shareable_record(1, [], "benchmark profile", manifest_sha256, digests, version))
    return version


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="sessions of ~128 MB each (default 8: ~1 GB)")
    parser.add_argument("--threads", type=int, default=4, help="uploads in flight (default 4)")
    parser.add_argument("--work", type=Path, help="folder for the synthetic release (default: a temporary one)")
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)

    from bidsafe.release.manifest import verify_release
    from bidsafe.release.mirror import mirror_release, s3_client, verify_mirror

    work = args.work or Path(tempfile.mkdtemp(prefix="bidsafe-mirror-bench-"))
    server, endpoint = start_moto()
    try:
        t0 = time.perf_counter()
        version = synthetic_release(work, args.sessions)
        size = tree_bytes(version)
        files = sum(1 for p in version.rglob("*") if p.is_file())
        print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
              f"release: {files} files, {size / MB:.0f} MB (built in {time.perf_counter() - t0:.1f} s)")
        client = s3_client(endpoint, threads=args.threads)
        client.create_bucket(Bucket="bench")

        t0 = time.perf_counter()
        assert verify_release(version).ok
        local = time.perf_counter() - t0
        print(f"local verification: {local:.1f} s ({size / MB / local:.0f} MB/s)")

        t0 = time.perf_counter()
        outcome = mirror_release(version, "s3://bench/study", client=client, threads=args.threads)
        upload = time.perf_counter() - t0
        assert len(outcome.uploaded) == files
        print(f"mirror (verification included): {upload:.1f} s, {size / MB / upload:.0f} MB/s; "
              f"upload alone ~{size / MB / max(upload - local, 1e-9):.0f} MB/s ({args.threads} threads)")

        t0 = time.perf_counter()
        again = mirror_release(version, "s3://bench/study", client=client, threads=args.threads)
        resume = time.perf_counter() - t0
        assert not again.uploaded and len(again.skipped) == files
        print(f"second mirror, everything already there: {resume:.1f} s (local verification, listing, "
              f"{files} HEADs)")

        t0 = time.perf_counter()
        result = verify_mirror("s3://bench/study/v1", client=client, threads=args.threads)
        readback = time.perf_counter() - t0
        assert result.ok, result.summary()
        print(f"verify s3:// (read back every object): {readback:.1f} s, {size / MB / readback:.0f} MB/s")
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
