"""Every crash recoverable by the same command (issue 10, items 1, 2 and 7): `bidsafe run` is killed with SIGKILL
(its whole process group: bidsafe, Snakemake and the running job) when a chosen job is at work, then the same
command is run once. It must reach the reference release (same files, same bytes but the dates in CHANGES and
SHAREABLE.json) and leave no harvested value anywhere under work_dir, neither at the moment of the kill nor
after. 1 subject x 1 session; the reference is built once (same inbox, same secret key, so same pseudonyms).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bidsafe.demo import DemoSession
from bidsafe.fsutil import leftover_temps

from helpers.pipeline_run import make_run_folder

pytestmark = pytest.mark.slow

SEED = 11
RUN = [sys.executable, "-c", "import sys; from bidsafe.cli import main; sys.exit(main())",
       "run", "--configfile", "config.yaml", "--cores", "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def bidsafe_run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(RUN, cwd=root, capture_output=True, text=True, env=_env(), timeout=1800, check=False)


def run_folder(root: Path, key: Path | None = None) -> tuple[Path, DemoSession]:
    root, sessions = make_run_folder(root, seed=SEED)
    if key is not None:  # the reference's key: same pseudonyms, date shift and UIDs, so the same release bytes
        (root / "private").mkdir(mode=0o700)
        shutil.copy(key, root / "private" / "secret.key")
        os.chmod(root / "private" / "secret.key", 0o600)
    return root, sessions[0]


def release_files(root: Path) -> dict[str, bytes]:
    """Every file of every published version, by path; dates (CHANGES, SHAREABLE.json) and the seal of
    SHAREABLE.json (a hash over its dates) masked."""
    files = {}
    for path in sorted((root / "release").rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != ".publish.lock":
            data = path.read_bytes()
            if path.name in ("CHANGES", "SHAREABLE.json"):
                data = re.sub(rb"\d{4}-\d\d-\d\d([T ][0-9:.+Z-]+)?", b"<date>", data)
                # SHAREABLE.json's seal hashes its own content, dates included: checked by `bidsafe verify`
                data = re.sub(rb'"record_sha256": "[0-9a-f]{64}"', b'"record_sha256": "<seal>"', data)
            files[path.relative_to(root / "release").as_posix()] = data
    return files


def needles(session: DemoSession, private: Path) -> list[bytes]:
    """The patient's identity as planted in the raw headers, and every value the pipeline harvested from them
    (private_dir/phi/raw; 6 bytes or more, so that no short number matches by chance): what must never sit in
    work_dir."""
    planted = [session.family_name, session.given_name, session.patient_id, session.birth_date, session.accession,
               *session.planted.values()]
    harvested = [row["value"] for path in sorted((private / "phi" / "raw").glob("*.json"))
                 for row in json.loads(path.read_text(encoding="utf-8"))]
    values = [v for v in planted if len(v) >= 4] + [v for v in harvested if len(v) >= 6]
    return sorted({form for v in values for form in (v.encode(), v.upper().encode())})


def identifying_files(work: Path, session: DemoSession) -> list[str]:
    found = []
    wanted = needles(session, work.parent / "private")
    assert len(wanted) > 10
    for path in work.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(work)}: {n!r}" for n in wanted if n in data]
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference release; while it is built, a second `bidsafe run` on the same folder is started once
    de-identification works, and must stop at once, changing nothing (two runs never both proceed)."""
    root, _ = run_folder(tmp_path_factory.mktemp("crash-reference"))
    err = root.parent / "first-run.err"
    with open(err, "wb") as handle:  # a file, not a pipe: a full pipe would stall the run
        first = subprocess.Popen(RUN, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=handle)
    deadline = time.monotonic() + 600
    while not _log("deid")(root):
        assert first.poll() is None and time.monotonic() < deadline, "the reference run never reached deid"
        time.sleep(0.05)
    second = bidsafe_run(root)
    assert second.returncode == 75  # bidsafe.runlock: another run on this site is in progress
    assert "another bidsafe run on this site is in progress; nothing was done" in second.stderr
    assert "Building DAG" not in second.stderr  # stopped before Snakemake started
    assert first.wait(timeout=1800) == 0, err.read_text(encoding="utf-8", errors="replace")[-6000:]
    return root


def _files_under(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def _log(stage: str) -> Callable[[Path], bool]:
    return lambda root: any((root / "work" / "logs" / stage).glob("*.log"))


def _deid_half_done(root: Path) -> bool:
    """Pass A has staged at least half the session's files (their free text not yet cleaned of the harvested
    values), wherever de-identification stages them (private scratch, or a temporary sibling in work_dir)."""
    lists = list((root / "private" / "sessions").glob("sub-*/ses-*/files.txt"))
    if not lists:
        return False
    wanted = len(lists[0].read_text(encoding="utf-8").splitlines()) // 2
    staged = [*(root / "private" / "scratch").glob("*/.bidsafe-staging/*"),
              *(root / "work" / "deid").glob("*/.*/.bidsafe-staging/*")]
    return len(staged) >= wanted


# When to kill, per stage: while the job is at work (publish: once its log exists, i.e. the job started).
KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "deid": _deid_half_done,
    "convert": _log("convert"),
    "deface": _log("deface"),
    "publish": lambda root: (root / "work" / "logs" / "release" / "publish.log").exists(),
}


def run_and_kill(root: Path, when: Callable[[Path], bool], timeout: float = 900) -> None:
    process = subprocess.Popen(RUN, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not when(root):
            assert process.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        # the group's other processes die (and are reaped by init) a moment later
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, check=False).stdout:
            assert time.monotonic() < deadline, "a process of the killed run survived"
            time.sleep(0.1)


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_a_run_killed_at_a_stage_is_recovered_by_the_same_command(
    reference: Path, tmp_path: Path, stage: str
) -> None:
    root, session = run_folder(tmp_path / "run", key=reference / "private" / "secret.key")
    run_and_kill(root, KILL_POINTS[stage])
    # at the moment of the kill: nothing identifying in work_dir. De-identification's half-made files (pass A:
    # text not yet cleaned of the values of the patient's other files and visits) are in the private scratch;
    # on this small inbox pass A already cleans every value, so their place is checked as well as their bytes.
    assert identifying_files(root / "work", session) == []
    assert list((root / "work").rglob(".bidsafe-staging")) == []
    if stage == "deid":
        assert list((root / "private" / "scratch").glob("*/.bidsafe-staging/*"))

    result = bidsafe_run(root)  # the plain command, once: no --unlock, no --rerun-incomplete, nothing deleted
    assert result.returncode == 0, result.stderr[-6000:]
    assert release_files(root) == release_files(reference)
    assert (root / "release" / "latest").resolve().name == "v1"
    verified = subprocess.run([*RUN[:3], "verify", str(root / "release" / "latest")], capture_output=True, text=True,
                              env=_env())
    assert verified.returncode == 0, verified.stdout + verified.stderr  # the seal masked above is right
    assert identifying_files(root / "work", session) == []
    assert leftover_temps(root / "work") == [] and leftover_temps(root / "private") == []
    assert not _files_under(root / "private" / "scratch")
    for folder in [p for p in (root / "private").rglob("*") if p.is_dir()]:
        assert folder.stat().st_mode & 0o777 == 0o700, folder.relative_to(root)
