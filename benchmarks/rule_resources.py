"""Peak memory and wall time of every rule's job, on a demo session and on a larger one.

    .venv/bin/python benchmarks/rule_resources.py [--large-volumes 150] [--cores 2] [--keep DIR]

Runs the whole pipeline (the checkout's Snakefile, `--cores N`, the workflow profile) once on one demo subject
with one session (about 900 DICOM files) and once on a session whose BOLD run has `--large-volumes` volumes of
30 slices (150: about 5,000 files), and prints per rule: peak RSS in MB and wall time in seconds of its job,
plus the peak of Snakemake's own process (what every cluster job adds: a job re-parses the Snakefile on its
node). The figures are what `resources:` in workflow/rules/*.smk are set from (see the comment in
common.smk); the last measurement is in benchmarks/rule_resources_baseline.txt.

How a job is measured: each job is a Python process started by Snakemake (`bidsafe step STAGE` for the six
per-session rules, `.snakemake/scripts/tmpXXXX.<script>.py` for the `script:` rules); a sampler polls every
process of the run every 50 ms and keeps, per job, the highest sum of resident memory over the job's process
and its children (dcm2niix, the validator, pydeface's FSL tools) and the kernel's own high-water mark of the
job's process (VmHWM, exact whatever the polling missed), and the job's first and last sighting as its wall
time. Rule names come from the step's stage or the job's script file (the four gates share gate.py: the gate's
name is in the file). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = re.compile(r"\.snakemake/scripts/tmp[^/]*\.(\w+)\.py$")
GATES = ("validator", "leak_scan", "deface", "consent")


@dataclass
class Job:
    rule: str
    start: float
    end: float
    peak_rss: int = 0  # bytes, sum over the job's process tree at one poll
    hwm: int = 0  # bytes, the job process's own VmHWM


def vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rule_of(script: Path, name: str) -> str:
    """The rule a script job belongs to: the script's name, or for gate.py the gate named in its preamble."""
    if name != "gate":
        return name
    try:
        text = script.read_text(errors="replace")
    except OSError:
        return "gate_?"
    for gate in GATES:
        if f"gate_{gate}" in text:
            return f"gate_{gate}"
    return "gate_?"


def step_of(cmdline: list[str]) -> str | None:
    """The stage a `bidsafe step STAGE` process runs (`.../bidsafe step STAGE` or `python -m bidsafe step STAGE`;
    the per-session rules), else None."""
    for i, arg in enumerate(cmdline[:-2]):
        if (Path(arg).name == "bidsafe" or (arg == "bidsafe" and i and cmdline[i - 1] == "-m")) \
                and cmdline[i + 1] == "step":
            return cmdline[i + 2]
    return None


class Sampler(threading.Thread):
    """Polls the process tree under `root_pid`; one Job per script process seen."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.jobs: dict[int, Job] = {}
        self.snakemake_hwm = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            time.sleep(self.interval)

    def poll(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            self.snakemake_hwm = max(self.snakemake_hwm, vm_hwm(self.root_pid))
            children = root.children(recursive=True)
        except psutil.Error:
            return
        now = time.monotonic()
        for proc in children:
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            match = next((m for m in map(SCRIPT.search, cmdline) if m), None)
            step = step_of(cmdline)
            if match is None and step is None:
                continue
            job = self.jobs.get(proc.pid)
            if job is None and step is not None:
                job = self.jobs[proc.pid] = Job(step, now, now)
            elif job is None and match is not None:
                script = Path(next(arg for arg in cmdline if SCRIPT.search(arg)))
                if not script.is_absolute():
                    script = Path(proc.cwd()) / script
                job = self.jobs[proc.pid] = Job(rule_of(script, match.group(1)), now, now)
            assert job is not None
            job.end = now
            rss = 0
            try:
                for member in [proc, *proc.children(recursive=True)]:
                    rss += member.memory_info().rss
            except psutil.Error:
                pass
            job.peak_rss = max(job.peak_rss, rss)
            job.hwm = max(job.hwm, vm_hwm(proc.pid))


def write_site(root: Path, inbox: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox=str(inbox), private_dir="private", work_dir="work", release_dir="release",
                  consent="none-required", demographics=None)
    config["release"]["k_anonymity"] = 1
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def measure(root: Path, volumes: int, cores: int) -> tuple[list[Job], int, int, float]:
    """Generate one session with `volumes` BOLD volumes, run the pipeline, return its jobs and totals."""
    from bidsafe import demo
    from bidsafe.demo import session

    saved = session.BOLD_VOLUMES  # the name the BOLD series builder reads
    session.BOLD_VOLUMES = volumes
    try:
        demo.generate(root / "inbox", subjects=1, sessions=1, seed=11)
    finally:
        session.BOLD_VOLUMES = saved
    files = sum(1 for p in (root / "inbox").rglob("*") if p.is_file())
    configfile = write_site(root, root / "inbox")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(configfile), "--cores", str(cores)]
    start = time.monotonic()
    with open(root / "snakemake.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.stop_event.set()
        sampler.join()
    wall = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"snakemake failed (exit {code}); see {root / 'snakemake.log'}")
    return list(sampler.jobs.values()), files, sampler.snakemake_hwm, wall


def table(runs: dict[str, tuple[list[Job], int, int, float]]) -> str:
    rules = sorted({job.rule for jobs, *_ in runs.values() for job in jobs})
    header = f"{'rule':<16}" + "".join(f"{label + ' MB':>14}{label + ' s':>12}" for label in runs)
    lines = [header, "-" * len(header)]
    for rule in rules:
        row = f"{rule:<16}"
        for jobs, *_ in runs.values():
            mine = [j for j in jobs if j.rule == rule]
            mb = max((max(j.peak_rss, j.hwm) for j in mine), default=0) / 2**20
            seconds = max((j.end - j.start for j in mine), default=0.0)
            row += f"{mb:>14.0f}{seconds:>12.1f}"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(f"{'snakemake':<16}" + "".join(f"{hwm / 2**20:>14.0f}{wall:>12.1f}" for _, _, hwm, wall in
                                                runs.values()) + "   (its own peak; whole run's wall time)")
    lines.append(f"{'DICOM files':<16}" + "".join(f"{files:>14}{'':>12}" for _, files, _, _ in runs.values()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-volumes", type=int, default=150, help="BOLD volumes of the larger session")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    from bidsafe.demo.protocol import BOLD_VOLUMES

    base = args.keep or Path(tempfile.mkdtemp(prefix="bidsafe-rule-resources-"))
    runs = {}
    try:
        for label, volumes in (("demo", BOLD_VOLUMES), ("large", args.large_volumes)):
            root = base / label
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            runs[label] = measure(root, volumes, args.cores)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(table(runs))
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GB, "
          f"Python {platform.python_version()}, --cores {args.cores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
