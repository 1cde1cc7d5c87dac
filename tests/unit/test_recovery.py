"""Crash recovery (issue 10, items 1, 2 and 7): outputs appear whole, identifying temporaries live in the
private scratch, a killed run's leftovers are swept, private folders are 0700 and two runs never both proceed."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

import bidsafe.convert
import bidsafe.deid.engine as engine
from bidsafe.deid.rules import load_rules
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_text, leftover_temps, move_dir_into_place
from bidsafe.private import ensure_private_dir
from bidsafe.recovery import (
    RUN_LOCK,
    clear_stale_snakemake_lock,
    run_lock,
    scratch_dir,
    sweep_leftovers,
    tighten_private_tree,
)
from bidsafe.stages import convert_stage

from helpers.deid_testing import KEY, mr_dataset, write


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("cross_device", [False, True])
def test_move_dir_into_place_replaces_the_destination_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cross_device: bool
) -> None:
    src = _tree(tmp_path / "scratch" / "built", {"a.txt": "new", "sub/b.txt": "new b"})
    dst = _tree(tmp_path / "work" / "out", {"old.txt": "old"})
    if cross_device:  # what os.rename does between two file systems
        def no_rename(a: object, b: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "rename", no_rename)
    move_dir_into_place(src, dst)
    assert _files(dst) == {"a.txt": "new", "sub/b.txt": "new b"}
    assert not src.exists()
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]  # no temporary sibling left


def test_sweep_removes_what_killed_jobs_left_and_nothing_else(tmp_path: Path) -> None:
    work, private, smk = tmp_path / "work", tmp_path / "private", tmp_path / ".snakemake"
    keep = {
        work / "deid" / "sub-1" / "ses-1" / "a.dcm",
        work / "status" / "deid" / "status.json",
        work / RUN_LOCK,
        private / "linkage.tsv",
        smk / "incomplete" / "d29yaw==",  # Snakemake's markers: it reruns those jobs itself
        smk / "metadata" / "x",
    }
    gone = {
        work / "deid" / "sub-1" / ".ses-1.k2j_x9.tmp" / "pass-a.dcm",  # atomic_dir's sibling, mid-build
        work / "status" / "deid" / ".status.json.ab12cd.tmp",  # atomic_write_*'s temporary file
        work / "scrub" / ".bids.old-4242" / "x.json",  # atomic_dir's replaced original
        scratch_dir(private) / "deid-ses-1-abc" / "x.dcm",
        private / "phi" / ".values.json.zz9.tmp",
        smk / "scripts" / "tmpa1b2.deid.py",
    }
    for path in keep | gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")
    assert sweep_leftovers(work, private, smk) == 6
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)
    assert leftover_temps(work) == leftover_temps(private) == []
    assert scratch_dir(private).is_dir()  # emptied, not removed


def test_private_folders_are_0700_down_from_the_first_missing_one(tmp_path: Path) -> None:
    (tmp_path / "private").mkdir(mode=0o755)
    made = ensure_private_dir(tmp_path / "private" / "dcm2bids" / "sub-1" / "ses-1")
    for folder in (made, made.parent, made.parent.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    # an existing folder made by someone else (Snakemake, for a job's outputs) is tightened by the sweep
    loose = tmp_path / "private" / "phi" / "raw"
    loose.mkdir(parents=True, mode=0o755)
    os.chmod(loose.parent, 0o755)
    (loose / "v.json").write_text("{}", encoding="utf-8")
    os.chmod(loose / "v.json", 0o644)
    assert tighten_private_tree(tmp_path / "private") >= 3
    assert loose.stat().st_mode & 0o777 == loose.parent.stat().st_mode & 0o777 == 0o700
    assert (loose / "v.json").stat().st_mode & 0o777 == 0o600


def test_two_runs_on_the_same_areas_never_both_proceed(tmp_path: Path) -> None:
    work, private = tmp_path / "work", tmp_path / "private"
    with run_lock(work, private):
        with pytest.raises(BidsafeError, match="another bidsafe run"), run_lock(work, private):
            pass
        # a second run with the same private area and another work_dir is refused as well
        with pytest.raises(BidsafeError, match="another bidsafe run"), run_lock(tmp_path / "work2", private):
            pass
    with run_lock(work, private):  # released when the first run ends
        pass
    assert (private / RUN_LOCK).stat().st_mode & 0o777 == 0o600


def test_a_stale_snakemake_lock_is_cleared_a_live_one_refused(tmp_path: Path) -> None:
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    assert clear_stale_snakemake_lock(tmp_path) is False
    (locks / "0.input.lock").write_text("x", encoding="utf-8")
    # a Snakemake process working in the folder (argv[0] names it, as `python -m snakemake`'s argv does)
    live = subprocess.Popen(["snakemake-run", "30"], executable="/bin/sleep", cwd=tmp_path)
    try:
        for _ in range(100):  # until the child has exec'd (its command line is the one given)
            if Path(f"/proc/{live.pid}/cmdline").read_bytes().startswith(b"snakemake-run"):
                break
            time.sleep(0.05)
        with pytest.raises(BidsafeError, match="another Snakemake run"):
            clear_stale_snakemake_lock(tmp_path)
        assert (locks / "0.input.lock").exists()
    finally:
        live.kill()
        live.wait()
    assert clear_stale_snakemake_lock(tmp_path) is True
    assert list(locks.iterdir()) == []


def test_deid_builds_in_the_private_scratch_and_moves_only_the_finished_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    for k in range(2):
        ds = mr_dataset(sop_uid=f"1.2.826.0.1.3680043.9.7777.3.{k + 1}", instance_number=k + 1)
        ds.PatientName = "Crashtest^Carla"
        ds.ImageComments = "scan of Crashtest Carla"
        write(ds, raw / f"{k}.dcm")
    work, scratch = tmp_path / "work" / "deid", tmp_path / "private" / "scratch"
    seen: dict[str, list[str]] = {}
    real_move = engine.move_dir_into_place

    def watching_move(src: Path, dst: Path) -> Path:
        # the moment before the finished tree moves: a kill here must leave nothing in work_dir
        seen["work"] = [p.name for p in work.parent.rglob("*")]
        seen["scratch"] = [p.name for p in Path(src).rglob("*") if p.is_file()]
        return real_move(src, dst)

    monkeypatch.setattr(engine, "move_dir_into_place", watching_move)
    report = engine.deidentify_tree(raw, work / "ses-1", rules=load_rules(), key=KEY, subject_key="1",
                                    scratch=scratch)
    assert report.counts.get("processed") == 2
    assert seen["work"] == [] and len(seen["scratch"]) == 2
    written = [p for p in (work / "ses-1").rglob("*") if p.is_file()]
    assert len(written) == 2 and not any(b"Crashtest" in p.read_bytes() for p in written)
    assert list(scratch.iterdir()) == []


def test_a_killed_convert_leaves_no_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dicom = tmp_path / "work" / "deid" / "sub-1" / "ses-1"
    dicom.mkdir(parents=True)
    out = tmp_path / "work" / "convert" / "sub-1" / "ses-1" / "bids"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs in the job

    monkeypatch.setattr(bidsafe.convert.subprocess, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_stage(dicom_dir=dicom, out_bids=out, summary_json=out.parent / "series.json",
                      status_json=tmp_path / "work" / "status.json", upstream_status=None, subject="1",
                      session="1", config=bidsafe.convert.default_config(), scratch=tmp_path / "private" / "s")
    # no folder Snakemake could take for a finished conversion, and dcm2niix's scratch was private
    assert not out.exists()
    assert [p for p in (tmp_path / "work" / "convert").rglob("*") if p.is_file() or p.name.startswith(".")] == []


def test_atomic_write_leaves_only_a_name_the_sweep_knows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(os, "unlink", lambda p: None)  # the kill also skips the cleanup
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "values.json", "secret")
    assert [p.parent for p in leftover_temps(tmp_path)] == [tmp_path]


def test_a_plain_snakemake_run_takes_the_run_lock_unless_bidsafe_run_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bidsafe.recovery as recovery

    work, private = tmp_path / "work", tmp_path / "private"
    monkeypatch.setenv(recovery.LOCK_HELD_ENV, "1")  # started by `bidsafe run`, which holds the lock
    recovery.hold_run_lock(work, private)
    with run_lock(work, private):
        pass
    monkeypatch.delenv(recovery.LOCK_HELD_ENV)
    recovery.hold_run_lock(work, private)  # the onstart hook of a plain `snakemake` run
    try:
        with pytest.raises(BidsafeError, match="another bidsafe run"), run_lock(work, private):
            pass
    finally:
        recovery._held.pop().close()
    with run_lock(work, private):
        pass
