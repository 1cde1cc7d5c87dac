"""Receive speed and memory of `bidsafe receive`: dcmtk's storescu sends one study over loopback.

For each study size (default 250 and 1,000 instances) it builds an MR study with pydicom (256x256 16-bit images,
about 130 KB per instance, uncompressed explicit VR little endian), starts a fresh receiver process
(`bidsafe receive`, its own site in a temporary folder), sends the study in one association with dcmtk's
`/usr/bin/storescu` (TCP_NODELAY set: dcmtk disables Nagle by default on Linux and the environment variable
makes it explicit) and prints:

- instances/s and MB/s from storescu's start to its exit (every instance stored, fsynced and journalled before
  its Success),
- the seconds until the study was handed over to the inbox after the quiet period (and the handoff alone),
- the receiver's peak RSS (VmHWM) when idle and after the study, which must not grow with the study size,
- the receiver's CPU time per instance while receiving (user + system): on a shared, busy host wall-clock rates
  mostly measure the other processes; 1000 / (CPU ms per instance) is the rate one free core allows.

It asserts that every instance arrived (journal count and manifest); it does not assert a speed (target: at
least 200 instances/s).

    nice python benchmarks/receive_speed.py [--sizes 250 1000] [--fsync on|off|both] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

STORESCU = "/usr/bin/storescu"
QUIET = 2.0


def build_study(folder: Path, count: int, per_series: int = 250) -> int:
    """Write `count` MR instances of one study (series of `per_series`); return the total bytes."""
    rng = np.random.default_rng(count)
    study, total = generate_uid(), 0
    series = ""
    for i in range(count):
        if i % per_series == 0:
            series = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "BENCH^MARK", "BENCH-0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SeriesDescription = f"series {i // per_series + 1}"
        ds.SeriesNumber, ds.InstanceNumber = i // per_series + 1, i % per_series + 1
        ds.Modality = "MR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SliceThickness, ds.PixelSpacing = "1.0", ["0.9375", "0.9375"]
        ds.ImagePositionPatient = ["-120", "-120", str(i)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.Rows = ds.Columns = 256
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, 256 * 256, dtype=np.uint16).tobytes()
        path = folder / f"IM{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (contention-independent, unlike wall time on a busy host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError


def run(size: int, root: Path, fsync: bool = True) -> dict[str, float]:
    send = root / f"send-{size}"
    if send.is_dir():  # the same study again (e.g. with --fsync both): a fresh site, so nothing is a duplicate
        total_bytes = sum(p.stat().st_size for p in send.iterdir())
    else:
        send.mkdir()
        total_bytes = build_study(send, size)
    site = root / f"site-{size}-{'fsync' if fsync else 'nofsync'}"
    site.mkdir()
    port = _free_port()
    config = site / "site.yaml"
    config.write_text(yaml.safe_dump({
        "inbox": str(site / "inbox"), "private_dir": str(site / "private"), "work_dir": str(site / "work"),
        "release_dir": str(site / "release"),
        "receiver": {"port": port, "allowed_callers": ["BENCH"], "quiet_seconds": QUIET,
                     "fsync": fsync}}))
    log = open(site / "receiver.log", "wb")  # noqa: SIM115
    receiver = subprocess.Popen([sys.executable, "-m", "bidsafe.cli", "receive", "--configfile", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(listening, 30)
        idle_kb = _hwm_kb(receiver.pid)
        files = sorted(map(str, send.iterdir()))
        env = {**os.environ, "TCP_NODELAY": "1"}
        cpu_before = _cpu_s(receiver.pid)
        start = time.monotonic()
        subprocess.run([STORESCU, "-aet", "BENCH", "-aec", "BIDSAFE", "127.0.0.1", str(port), *files],
                       check=True, env=env, capture_output=True)
        sent = time.monotonic() - start
        cpu = _cpu_s(receiver.pid) - cpu_before
        peak_kb = _hwm_kb(receiver.pid)
        inbox = site / "inbox"
        _wait(lambda: any(inbox.glob("*/part-001/manifest.json")), 60 + size / 10)
        ready = time.monotonic() - start
        (manifest_path,) = inbox.glob("*/part-001/manifest.json")
        manifest = json.loads(manifest_path.read_text())
        db = sqlite3.connect(site / "private" / "receiver" / "journal.sqlite")
        (instances,) = db.execute("SELECT instances FROM studies").fetchone()
        db.close()
        assert manifest["instances"] == instances == size, (manifest["instances"], instances, size)
        peak_kb = max(peak_kb, _hwm_kb(receiver.pid))
    finally:
        receiver.terminate()
        receiver.wait(30)
        log.close()
    return {
        "instances": size,
        "MB": total_bytes / 1e6,
        "send_s": sent,
        "instances_per_s": size / sent,
        "MB_per_s": total_bytes / 1e6 / sent,
        "ready_after_s": ready,
        "cpu_ms_per_instance": cpu * 1000 / size,
        "handoff_s": ready - sent - QUIET,
        "idle_rss_MB": idle_kb / 1024,
        "peak_rss_MB": peak_kb / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--fsync", choices=["on", "off", "both"], default="on",
                        help="receiver.fsync for the runs (default on, the shipped default)")
    parser.add_argument("--keep", type=Path, help="keep the studies and sites in DIR (default: a temp folder)")
    args = parser.parse_args()
    if not Path(STORESCU).exists():
        print("dcmtk's storescu is needed: apt-get install dcmtk", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="bidsafe-receive-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{'fsync':>5} {'instances':>9} {'MB':>7} {'send s':>7} {'inst/s':>7} {'MB/s':>6} {'ready s':>8} "
          f"{'handoff s':>9} {'idle RSS MB':>11} {'peak RSS MB':>11} {'CPU ms/inst':>11}")
    try:
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.fsync]
        for fsync, size in [(f, n) for f in modes for n in args.sizes]:
            r = run(size, root, fsync)
            print(f"{'on' if fsync else 'off':>5} {r['instances']:>9} {r['MB']:>7.1f} {r['send_s']:>7.2f} "
                  f"{r['instances_per_s']:>7.0f} {r['MB_per_s']:>6.1f} {r['ready_after_s']:>8.2f} "
                  f"{r['handoff_s']:>9.2f} {r['idle_rss_MB']:>11.1f} {r['peak_rss_MB']:>11.1f} "
                  f"{r['cpu_ms_per_instance']:>11.2f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
