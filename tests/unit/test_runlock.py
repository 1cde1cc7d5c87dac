"""One scheduled run at a time (issue 12 item 4): `bidsafe run` holds an flock in private_dir for the whole run;
a second run exits 75 with a clear message (or waits with --wait), and a killed holder never blocks the next."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bidsafe import runner
from bidsafe.cli import main
from bidsafe.runlock import EX_TEMPFAIL, SCHEDULED_RUN_LOCK, RunInProgress, scheduled_run_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from bidsafe.runlock import scheduled_run_lock
    with scheduled_run_lock(sys.argv[1], wait=len(sys.argv) > 2):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 120)
    print("released", flush=True)
    """
)


def _python(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True, env=env)


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site.yaml"
    site.write_text("".join(f"{key}: {tmp_path / key}\n" for key in ("inbox", "private_dir", "work_dir",
                                                                     "release_dir")))
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "exported.dcm").write_bytes(b"a study arrived")  # an empty inbox runs nothing
    return site


@pytest.fixture
def holder(tmp_path: Path):
    proc = _python(str(tmp_path / "private_dir"))
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_run_exits_75_with_a_message_and_runs_nothing(tmp_path: Path, holder: subprocess.Popen[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    started = []
    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: started.append(a))
    code = main(["run", "--configfile", str(_site(tmp_path)), "--cores", "1"])
    err = capsys.readouterr().err
    assert code == EX_TEMPFAIL == 75
    assert "another bidsafe run on this site is in progress; nothing was done" in err
    assert started == []  # Snakemake was never started
    assert (tmp_path / "private_dir" / SCHEDULED_RUN_LOCK).stat().st_mode & 0o777 == 0o600


def test_a_killed_holder_does_not_block(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(RunInProgress), scheduled_run_lock(tmp_path / "private_dir"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with scheduled_run_lock(tmp_path / "private_dir") as fd:  # no stale-lock cleanup needed
        assert fd >= 0


def test_wait_blocks_until_the_holder_ends(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    waiter = _python(str(tmp_path / "private_dir"), "0")  # wait=True, then release at once
    try:
        time.sleep(0.5)
        assert waiter.poll() is None  # still waiting: it has not printed "held"
        holder.send_signal(signal.SIGKILL)
        out, _ = waiter.communicate(timeout=20)
        assert out == "held\nreleased\n"
    finally:
        if waiter.poll() is None:
            waiter.kill()


def test_snakemake_inherits_the_lock_and_dry_run_takes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is held while Snakemake runs, and Snakemake holds it too (a killed `bidsafe run` leaves its
    Snakemake working: the lock must stay taken until that ends)."""
    site = _site(tmp_path)
    seen: list[tuple[tuple[int, ...], int]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        probe = _python(str(tmp_path / "private_dir"))
        time.sleep(0.2)
        seen.append((kwargs.get("pass_fds", ()), probe.wait(timeout=20)))  # type: ignore[arg-type]
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    args = argparse.Namespace(configfile=str(site), cores="1", dry_run=False, snakemake=[], wait=False)
    assert runner.cli_main(args) == 0
    (pass_fds, probe_code), = seen
    assert len(pass_fds) == 1 and probe_code == 1  # the probe met RunInProgress (exit 1 from python -c)
    with scheduled_run_lock(tmp_path / "private_dir"):  # released after the run
        seen.clear()
        args.dry_run = True
        assert runner.cli_main(args) == 0  # a dry run needs no lock, so it works during a run
        assert seen[0][0] == ()


def test_an_empty_inbox_runs_nothing_and_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A receiver- or drop-fed inbox is empty until the first study is complete: a timer's run then exits 0
    without starting Snakemake (whose ingest would fail with "no DICOM study found" at every tick); a hand-over
    in progress (a hidden folder) does not count."""
    site = _site(tmp_path)
    (tmp_path / "inbox" / "exported.dcm").unlink()
    (tmp_path / "inbox" / ".incoming-x1").mkdir()
    calls: list[list[str]] = []
    monkeypatch.setattr(runner.subprocess, "run", lambda command, **kw: calls.append(command))
    args = argparse.Namespace(configfile=str(site), cores="1", dry_run=False, snakemake=[], wait=False)
    assert runner.cli_main(args) == 0
    assert calls == []
    assert "the inbox holds nothing yet; nothing to do" in capsys.readouterr().err
