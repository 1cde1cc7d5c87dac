"""The demo pipeline through `--profile profiles/slurm` on a real single-node SLURM (issue 13, item 2).

A throw-away cluster (tests/helpers/slurm_cluster.py: Debian's slurm-wlm and munge, which `.ci/run`
installs; nothing is installed here) runs every job of one subject x one session as a SLURM job; the published
release must equal a local run's on the same inbox with the same key: the same MANIFEST.sha256 once the date
of publication is masked, which is the only thing that may differ (the CHANGES entry's date, hence the
CHANGES line of the manifest; dates masked in CHANGES itself, which must then be equal). The daemons are
stopped by PID at teardown whatever happened.

Accounting is off on this cluster, as on many small ones: job status comes from `squeue`
(`--slurm-status-command squeue`, the profile's documented switch; with the default `sacct` the run would wait
forever, known-traps.md), and no account is passed (the plugin finds none to guess and submits without).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidsafe.keys import create_key

from helpers import slurm_cluster
from helpers.pipeline_run import make_run_folder

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEED = 11
# every rule of the pipeline runs one job for one session: none may run on the submitting host
RULES = {"ingest", "pseudonymise", "harvest", "deid", "convert", "scrub", "deface", "qc", "assemble",
         "gate_validator", "gate_leak_scan", "gate_deface", "gate_consent", "publish", "report"}
MISSING = slurm_cluster.missing_binaries()


class Snakemake:
    """Snakemake started in `root`; output to a file, not a pipe, so a long log never stalls the run."""

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
                   "--configfile", str(root / "config.yaml"), "--cores", "2", *extra]
        full_env = {**os.environ, **(env or {})}
        full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
        self.out = root.parent / f"{root.name}.log"
        with open(self.out, "wb") as handle:
            self.proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=full_env)

    def finish(self, timeout: float = 2400) -> tuple[int, str]:
        """Its exit code and log; on timeout it gets SIGINT (it ignores SIGTERM while cluster jobs run), then
        SIGKILL if it still runs."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            code = -1
        return code, self.out.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.Cluster]:
    if MISSING:
        pytest.skip(f"SLURM binaries missing ({', '.join(MISSING)}); .ci/run installs slurm-wlm and munge")
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    pids = dict(started.pids)
    try:
        yield started
    finally:
        started.stop()
        left = [name for name, pid in pids.items() if _running(pid)]
        assert not left, f"SLURM daemons still running after stop(): {left}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and ") Z " not in stat.read_text(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cluster: slurm_cluster.Cluster) -> dict[str, Path]:
    """The same inbox and key processed locally and through the SLURM profile, at the same time (the SLURM run
    mostly waits between status polls)."""
    key = tmp_path_factory.mktemp("key") / "secret.key"
    create_key(key)
    local, _ = make_run_folder(tmp_path_factory.mktemp("local") / "run", seed=SEED)
    on_slurm, _ = make_run_folder(tmp_path_factory.mktemp("on-slurm") / "run", seed=SEED)
    for run in (local, on_slurm):  # one key: the same pseudonyms, date shift and UIDs, so the same release bytes
        (run / "private").mkdir(mode=0o700)
        shutil.copy(key, run / "private" / "secret.key")
        os.chmod(run / "private" / "secret.key", 0o600)
    started = time.monotonic()
    slurm_run = Snakemake(on_slurm, "--profile", str(REPO / "profiles" / "slurm"),
                          "--slurm-status-command", "squeue",
                          # a small test: the first status poll soon, so the test waits less
                          "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5",
                          env=cluster.env)
    code, log = Snakemake(local).finish()
    if code != 0:
        slurm_run.finish(timeout=1)
        pytest.fail(f"local run failed:\n{log[-6000:]}")
    code, log = slurm_run.finish()
    if code != 0:
        pytest.fail(f"SLURM run failed (exit {code}) after {time.monotonic() - started:.0f} s:\n{log[-8000:]}\n"
                    f"{cluster.logs()}")
    return {"local": local, "slurm": on_slurm, "slurm_log": log, "cluster": cluster}


def slurm_jobs(cluster: slurm_cluster.Cluster) -> dict[str, str]:
    """Every job the controller still remembers (MinJobAge 600 s): SLURM job name's comment -> state."""
    result = subprocess.run([slurm_cluster.find_binary("squeue"), "--states=all", "--noheader",
                             "--format=%i|%T|%k"], capture_output=True, text=True, env={**os.environ, **cluster.env},
                            timeout=60, check=True)
    return {line.split("|")[0]: "|".join(line.split("|")[1:]) for line in result.stdout.splitlines() if line}


def test_every_rule_ran_as_a_slurm_job(runs):
    log = runs["slurm_log"]
    submitted = set(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", log))
    # nothing ran on the submitting host but the target rule `all` (Snakemake says "localrule" for those)
    assert re.findall(r"^localrule (\w+):", log, re.M) == ["all"], log[-4000:]
    assert len(submitted) >= len(RULES), log[-4000:]
    jobs = slurm_jobs(runs["cluster"])
    assert submitted <= set(jobs), (submitted, jobs)
    states = {jobs[j].split("|")[0] for j in submitted}
    assert states == {"COMPLETED"}, jobs
    # the plugin puts "rule_<name>[_wildcards_...]" in each job's comment: every rule ran under SLURM
    comments = [jobs[j].split("|")[1] for j in submitted]
    ran = {m.group(1) for c in comments for m in [re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", c)] if m}
    assert ran >= RULES, RULES - ran


def manifest(run: Path) -> dict[str, str]:
    text = (run / "release" / "latest" / "MANIFEST.sha256").read_text(encoding="utf-8")
    return {line[66:]: line[:64] for line in text.splitlines() if line}


def masked_changes(run: Path) -> bytes:
    changes = (run / "release" / "latest" / "CHANGES").read_bytes()
    return re.sub(rb"\d{4}-\d\d-\d\d([T ][0-9:.+Z-]+)?", b"<date>", changes)


def test_the_slurm_release_equals_the_local_one(runs):
    local, on_slurm = manifest(runs["local"]), manifest(runs["slurm"])
    assert len(local) > 20 and any(name.endswith(".nii.gz") for name in local)
    assert sorted(local) == sorted(on_slurm)
    differ = {name for name in local if local[name] != on_slurm[name]}
    # only the publication date may differ: it is in CHANGES alone (a run across midnight changes it)
    assert differ <= {"CHANGES"}, differ
    assert masked_changes(runs["local"]) == masked_changes(runs["slurm"])
    for name in local:
        path = runs["slurm"] / "release" / "latest" / name
        assert path.is_file(), name
    # the release is complete and sealed: bidsafe verify checks every hash and SHAREABLE.json's seal
    verified = subprocess.run([str(BIN / "bidsafe"), "verify", str(runs["slurm"] / "release" / "latest")],
                              capture_output=True, text=True, timeout=600, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
