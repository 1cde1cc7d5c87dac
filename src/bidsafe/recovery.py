"""Recovery after a crash: what a killed run leaves, swept by the next one; one run at a time per data area.

Every stage writes its outputs whole (a temporary sibling renamed into place, `bidsafe.fsutil`), and stages
that read identifying input build their files in the private scratch folder (`scratch_dir`). A run killed
with SIGKILL therefore leaves only temporary names (`.name.XXXX.tmp`, `.name.old-PID`), the private scratch
and Snakemake's own job scripts and incomplete markers. `sweep_leftovers` removes the first three at the start
of the next run (the Snakefile's onstart hook: after Snakemake has taken its lock, so never while another run
works in the same folder); Snakemake reruns the jobs it marked incomplete (`--rerun-incomplete`, which
`bidsafe run` and the workflow profile pass).

`run_lock` is what keeps two `bidsafe run`s apart: an advisory lock on a file in work_dir and one in
private_dir, held by the `bidsafe run` process for the whole run. Holding both proves no other `bidsafe run`
uses these areas; a Snakemake lock left in `.snakemake/locks` is then stale unless a Snakemake process
started some other way is working in the same folder (`other_snakemake_processes`), and only then removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bidsafe.errors import BidsafeError
from bidsafe.fsutil import leftover_temps, remove_path

SCRATCH = "scratch"
RUN_LOCK = ".bidsafe-run.lock"


def scratch_dir(private_dir: str | Path) -> Path:
    """The private scratch folder: temporary files of stages that read identifying input (never work_dir)."""
    return Path(private_dir) / SCRATCH


def sweep_leftovers(work_dir: str | Path, private_dir: str | Path, snakemake_dir: str | Path | None = None) -> int:
    """Remove what killed jobs left: temporary siblings under work_dir and private_dir, everything in the
    private scratch, and Snakemake's job scripts (they hold the job's parameters, raw inbox paths among them)
    and shadow folders. Call only while no job runs (Snakemake's onstart hook). Returns how many were
    removed (never their names: a leftover's name may be identifying)."""
    removed = 0
    for root in (Path(work_dir), Path(private_dir)):
        if root.is_dir():
            for path in leftover_temps(root):
                remove_path(path)
                removed += 1
    scratch = scratch_dir(private_dir)
    if scratch.is_dir():
        for path in list(scratch.iterdir()):
            remove_path(path)
            removed += 1
    if snakemake_dir is not None:
        snakemake_dir = Path(snakemake_dir)
        for pattern in ("scripts/tmp*", "shadow/*"):
            for path in list(snakemake_dir.glob(pattern)):
                remove_path(path)
                removed += 1
    return removed


def tighten_private_tree(private_dir: str | Path) -> int:
    """Every folder under private_dir 0700 and no file readable by others (group and other bits cleared), as
    the private area requires; folders made by Snakemake for a job's outputs get the umask's mode. Returns
    how many modes changed."""
    from bidsafe.private import DIR_MODE

    changed = 0
    root = Path(private_dir)
    if not root.is_dir():
        return 0
    for folder, _dirs, files in os.walk(root):
        here = Path(folder)
        if here.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(here, DIR_MODE)
            changed += 1
        for name in files:
            path = here / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, mode & ~0o077)
                changed += 1
    return changed


@contextlib.contextmanager
def run_lock(work_dir: str | Path, private_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on a file in work_dir and one in private_dir for the duration (released
    when the process ends, however it ends). Raises BidsafeError when another process holds one: two runs on
    the same data areas never both proceed."""
    from bidsafe.private import ensure_private_dir

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    ensure_private_dir(private_dir)
    fds: list[int] = []
    try:
        for area in (Path(work_dir), Path(private_dir)):
            fds.append(os.open(area / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600))
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BidsafeError(
                    "another bidsafe run is using the same data areas; wait for it to finish, then run again"
                ) from None
        yield
    finally:
        for fd in fds:
            os.close(fd)


# Set by `bidsafe run` for the Snakemake it starts: the run lock is held (by the parent) already.
LOCK_HELD_ENV = "BIDSAFE_RUN_LOCK_HELD"
_held: list[contextlib.ExitStack] = []


def hold_run_lock(work_dir: str | Path, private_dir: str | Path) -> None:
    """Take `run_lock` for the rest of this process (the Snakefile's onstart hook: a plain `snakemake` run
    started from another folder on the same data areas is refused too), unless `bidsafe run` holds it."""
    if os.environ.get(LOCK_HELD_ENV) == "1" or _held:
        return
    stack = contextlib.ExitStack()
    stack.enter_context(run_lock(work_dir, private_dir))
    _held.append(stack)


def other_snakemake_processes(folder: str | Path) -> list[int]:
    """Process ids of Snakemake runs (other than this process and its parents) whose working folder is
    `folder` (Linux /proc); an empty list where /proc cannot be read, so callers must not take it as proof
    on such systems (see `snakemake_lock_is_stale`)."""
    folder = Path(folder).resolve()
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder and any(b"snakemake" in part for part in cmdline[:3]):
            found.append(pid)
    return sorted(found)


def snakemake_locks(folder: str | Path) -> list[Path]:
    return sorted((Path(folder) / ".snakemake" / "locks").glob("*.lock"))


def clear_stale_snakemake_lock(folder: str | Path) -> bool:
    """Remove Snakemake's lock in `folder` when no Snakemake process works there (call while holding
    `run_lock`). True when a stale lock was removed; raises BidsafeError when a run holds it; False when
    there is no lock."""
    locks = snakemake_locks(folder)
    if not locks:
        return False
    if not Path("/proc/self/cwd").exists():
        raise BidsafeError("Snakemake's lock is held and this system cannot tell whether its run still works; "
                           "if none does, run `bidsafe run CONFIG -- --unlock` once, then run again")
    others = other_snakemake_processes(folder)
    if others:
        raise BidsafeError(f"another Snakemake run (process {others[0]}) is working in this folder; wait for it "
                           "to finish, then run again")
    for lock in locks:
        lock.unlink(missing_ok=True)
    return True


__all__ = [
    "clear_stale_snakemake_lock",
    "hold_run_lock",
    "other_snakemake_processes",
    "run_lock",
    "scratch_dir",
    "snakemake_locks",
    "sweep_leftovers",
    "tighten_private_tree",
]
