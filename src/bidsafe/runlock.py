"""bidsafe's one lock helper (`exclusive_lock`), and the scheduled run's lock: one run at a time, an exclusive
`fcntl.flock` on a file in the private area, held for the whole run. The drop watcher and the release folder's
publisher/withdrawer (`publish.publish_lock`) take their locks through `exclusive_lock` too.

A timer or cron line starts `bidsafe run` every few minutes; a run that takes longer than the interval must not
meet a second one working on the same data areas. The lock is advisory and belongs to the open file, so the
kernel releases it when the holder ends however it ends (SIGKILL and power loss included): a killed run never
blocks the next one, and no stale-lock cleanup or PID guessing is needed. The file itself stays (an empty,
0600 file in `private_dir`); only who holds the lock matters.

A second run either waits for the first (`wait=True`, `bidsafe run --wait`) or stops at once with
`RunInProgress`, whose exit code is 75 (EX_TEMPFAIL from sysexits.h: "try again later", which cron wrappers
and systemd's `SuccessExitStatus=` can treat as a normal outcome).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bidsafe.errors import BidsafeError

EX_TEMPFAIL = 75
SCHEDULED_RUN_LOCK = ".scheduled-run.lock"
DROP_WATCH_LOCK = ".watch-drop.lock"


class RunInProgress(BidsafeError):
    """Another process holds the lock: nothing was done, try again later."""

    exit_code = EX_TEMPFAIL


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, *, what: str, wait: bool = False, mode: int = 0o600) -> Iterator[int]:
    """Hold an exclusive flock on `lock_file` (created 0600) while the block runs; yields the descriptor, which a
    child process may inherit (`subprocess.run(..., pass_fds=(fd,))`) to keep the lock held as long as it runs.

    Without `wait`, a lock held elsewhere raises RunInProgress naming `what` ("another bidsafe run");
    with `wait`, a line says so on stderr and the call blocks until the holder ends. `mode`: of a new lock file
    (before the umask).
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RunInProgress(f"{what} is in progress; nothing was done (exit {EX_TEMPFAIL}: try again "
                                    "later, or pass --wait to wait for it)") from None
            print(f"bidsafe: {what} is in progress; waiting for it to finish", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # the lock ends when every process holding this open file has closed it or ended


@contextlib.contextmanager
def scheduled_run_lock(private_dir: str | Path, *, wait: bool = False) -> Iterator[int]:
    """The lock `bidsafe run` holds around its Snakemake run: one run per site (per `private_dir`)."""
    from bidsafe.private import ensure_private_dir

    folder = ensure_private_dir(private_dir)
    with exclusive_lock(folder / SCHEDULED_RUN_LOCK, what="another bidsafe run on this site", wait=wait) as fd:
        yield fd


__all__ = ["DROP_WATCH_LOCK", "EX_TEMPFAIL", "SCHEDULED_RUN_LOCK", "RunInProgress", "exclusive_lock",
           "scheduled_run_lock"]
