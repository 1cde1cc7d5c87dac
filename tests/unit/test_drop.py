"""Folder drops (issue 12 item 3): a study copied into the drop folder is handed to the inbox once its files have
been quiet for `drop.quiet_seconds`, by this machine's clock (passed in as `now`: no sleeps), exactly once; a late
file becomes the next part; what is not image DICOM stays in the drop, reported privately, never removed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bidsafe.cli import main
from bidsafe.drop import REPORT_NAME, DropSettings, PollResult, drop_settings, poll_drop, summary_line
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.handoff import hand_over_study, series_dirname, study_key

from helpers.deid_testing import mr_dataset, write

KEY = bytes(range(32))
UID_A = "1.2.826.0.1.3680043.9.7777.41"
UID_B = "1.2.826.0.1.3680043.9.7777.42"
NAME = "Quillfeather^Marisol"
DAY = 86400.0


def put(drop: Path, relpath: str, study: str, number: int, *, rows: int = 4, mtime: float | None = None) -> Path:
    path = write(mr_dataset(study_uid=study, series_uid=study + ".2", sop_uid=f"{study}.2.{number}",
                            instance_number=number, rows=rows, patient_name=NAME), drop / relpath)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path: Path) -> DropSettings:
    for name in ("drop", "inbox", "private"):
        (tmp_path / name).mkdir()
    return DropSettings(folder=tmp_path / "drop", inbox=tmp_path / "inbox", private_dir=tmp_path / "private",
                        quiet_seconds=300, keep_originals=False, poll_seconds=60)


def parts(inbox: Path) -> list[str]:
    return sorted(p.relative_to(inbox).as_posix() for p in inbox.glob("*/part-*"))


def manifest(part: Path) -> dict:
    return json.loads((part / "manifest.json").read_text())


def test_ready_after_the_quiet_period_and_handed_over_once(site: DropSettings, caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    t0 = time.time()
    files = [put(site.folder, f"{NAME}/series 3/IM{n}", UID_A, n) for n in (1, 2, 3)]
    digests = sorted(sha(f) for f in files)
    key_a = study_key(KEY, UID_A)

    first = poll_drop(site, KEY, now=t0 + 10)
    assert first.handed == [] and first.waiting == {key_a: 300}
    assert poll_drop(site, KEY, now=t0 + 200).waiting == {key_a: pytest.approx(110)}
    assert parts(site.inbox) == []

    caplog.set_level(logging.DEBUG, logger="bidsafe")
    ready = poll_drop(site, KEY, now=t0 + 310)
    assert [(k, p.name, n) for k, p, n in ready.handed] == [(key_a, "part-001", 3)]
    part = site.inbox / key_a / "part-001"
    record = manifest(part)
    assert record["instances"] == 3 and record["info"]["source"] == "drop"
    assert record["info"]["calling_ae"] is None and record["info"]["first_receipt"] <= record["info"]["last_receipt"]
    assert sorted(f["sha256"] for f in record["files"]) == digests
    copies = [p for p in part.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert sorted(sha(p) for p in copies) == digests
    assert all(p.relative_to(part).parts[0] == series_dirname(KEY, UID_A + ".2") for p in copies)
    # the originals are gone, with the folders they left empty; the drop folder itself stays
    assert list(site.folder.iterdir()) == []
    assert ready.removed == 3 and ready.kept == 0

    assert poll_drop(site, KEY, now=t0 + 700).handed == []
    assert parts(site.inbox) == [f"{key_a}/part-001"]
    # nothing identifying in the log, the summary line or the state
    said = caplog.text + summary_line(ready) + (site.private_dir / "drop" / "state.json").read_text()
    for secret in (UID_A, NAME, "Quillfeather", "IM1", "series 3"):
        assert secret not in said
    assert key_a in caplog.text
    assert not list((site.private_dir / "drop").glob("staging-*"))


def test_a_study_still_being_copied_is_not_ready(site: DropSettings) -> None:
    t0 = time.time()
    key_a = study_key(KEY, UID_A)
    put(site.folder, "a/1", UID_A, 1)
    put(site.folder, "a/2", UID_A, 2)
    assert key_a in poll_drop(site, KEY, now=t0 + 10).waiting
    put(site.folder, "a/3", UID_A, 3)  # one more file: the count changed
    assert poll_drop(site, KEY, now=t0 + 320).waiting == {key_a: 300}
    put(site.folder, "a/3", UID_A, 3, rows=8)  # the last file grew (still being written)
    assert poll_drop(site, KEY, now=t0 + 630).waiting == {key_a: 300}
    done = poll_drop(site, KEY, now=t0 + 935)
    assert [n for _k, _p, n in done.handed] == [3]


def test_a_changing_unreadable_file_holds_every_study_back(site: DropSettings) -> None:
    """A file mid-copy may not parse yet and may belong to any study: while it changes, nothing is ready."""
    t0 = time.time()
    put(site.folder, "a/1", UID_A, 1)
    whole = put(site.folder, "tmp/b1", UID_B, 1).read_bytes()
    partial = site.folder / "tmp" / "b1"
    partial.write_bytes(whole[:200])  # B's first file, cut short: not readable DICOM yet
    poll_drop(site, KEY, now=t0 + 10)
    partial.write_bytes(whole[:300])
    held = poll_drop(site, KEY, now=t0 + 320)
    assert held.handed == [] and held.waiting == {study_key(KEY, UID_A): 300}
    # it stops changing (an abandoned copy): A goes; the cut file stays in the drop and in the private report
    done = poll_drop(site, KEY, now=t0 + 630)
    assert [k for k, _p, _n in done.handed] == [study_key(KEY, UID_A)]
    assert partial.read_bytes() == whole[:300]
    assert done.left == 1
    report = site.private_dir / "drop" / REPORT_NAME
    assert "tmp/b1\ttruncated/unreadable" in report.read_text()
    assert report.stat().st_mode & 0o777 == 0o600


def test_future_and_coarse_file_times(site: DropSettings) -> None:
    """A share whose clock runs a day ahead does not hold a study back; a size change with an unchanged
    (coarse) mtime is still a change."""
    t0 = time.time()
    ahead = t0 + DAY
    one = put(site.folder, "a/1", UID_A, 1, mtime=ahead)
    poll_drop(site, KEY, now=t0 + 10)
    put(site.folder, "a/1", UID_A, 1, rows=8, mtime=ahead)  # same mtime, new size
    assert one.stat().st_mtime == ahead
    assert poll_drop(site, KEY, now=t0 + 320).waiting == {study_key(KEY, UID_A): 300}
    assert len(poll_drop(site, KEY, now=t0 + 625).handed) == 1


def test_a_late_file_after_the_hand_over_becomes_part_002(site: DropSettings) -> None:
    t0 = time.time()
    key_a = study_key(KEY, UID_A)
    for n in (1, 2):
        put(site.folder, f"a/{n}", UID_A, n)
    poll_drop(site, KEY, now=t0 + 10)
    assert len(poll_drop(site, KEY, now=t0 + 320).handed) == 1
    late = sha(put(site.folder, "late/9", UID_A, 9))
    assert poll_drop(site, KEY, now=t0 + 330).waiting == {key_a: 300}
    again = poll_drop(site, KEY, now=t0 + 640)
    assert [(k, p.name, n) for k, p, n in again.handed] == [(key_a, "part-002", 1)]
    assert [f["sha256"] for f in manifest(site.inbox / key_a / "part-002")["files"]] == [late]
    assert manifest(site.inbox / key_a / "part-001")["instances"] == 2  # never merged into the first part


def test_non_dicom_is_left_in_place_and_two_studies_go_separately(site: DropSettings) -> None:
    t0 = time.time()
    (site.folder / "notes.txt").write_text("scanned today, patient Quillfeather\n")
    (site.folder / "a").mkdir()
    (site.folder / "a" / "empty.dcm").write_bytes(b"")
    put(site.folder, "a/1", UID_A, 1)
    put(site.folder, "b/1", UID_B, 1)
    poll_drop(site, KEY, now=t0 + 10)
    done = poll_drop(site, KEY, now=t0 + 320)
    assert sorted(k for k, _p, _n in done.handed) == sorted([study_key(KEY, UID_A), study_key(KEY, UID_B)])
    assert sorted(p.relative_to(site.folder).as_posix() for p in site.folder.rglob("*")) == [
        "a", "a/empty.dcm", "notes.txt"]
    assert (site.folder / "notes.txt").read_text() == "scanned today, patient Quillfeather\n"
    report = (site.private_dir / "drop" / REPORT_NAME).read_text().splitlines()
    assert report == ["relpath\treason", "a/empty.dcm\tempty file", "notes.txt\tnot DICOM"]
    assert "notes.txt" not in summary_line(done) and "2 files left in the drop" in summary_line(done)


def test_keep_originals_hands_each_file_over_once(site: DropSettings) -> None:
    t0 = time.time()
    site = DropSettings(**{**site.__dict__, "keep_originals": True})
    key_a = study_key(KEY, UID_A)
    one = put(site.folder, "a/1", UID_A, 1)
    before = sha(one)
    poll_drop(site, KEY, now=t0 + 10)
    first = poll_drop(site, KEY, now=t0 + 320)
    assert len(first.handed) == 1 and first.kept == 1 and sha(one) == before
    assert poll_drop(site, KEY, now=t0 + 1000).handed == []
    put(site.folder, "a/2", UID_A, 2)
    poll_drop(site, KEY, now=t0 + 1010)
    second = poll_drop(site, KEY, now=t0 + 1320)
    assert [(p.name, n) for _k, p, n in second.handed] == [("part-002", 1)]
    assert parts(site.inbox) == [f"{key_a}/part-001", f"{key_a}/part-002"]
    assert one.exists()


def test_a_failed_hand_over_keeps_everything_and_is_retried(site: DropSettings) -> None:
    t0 = time.time()
    one = put(site.folder, "a/1", UID_A, 1)
    before = sha(one)

    def broken(files: Sequence[Path], inbox: Path, key: str, info: Mapping[str, object]) -> Path:
        raise OSError(28, "No space left on device")

    poll_drop(site, KEY, now=t0 + 10)
    failed = poll_drop(site, KEY, now=t0 + 320, hand_over=broken)
    assert failed.failed == [study_key(KEY, UID_A)] and failed.handed == []
    assert sha(one) == before and parts(site.inbox) == []
    assert not list((site.private_dir / "drop").glob("staging-*"))
    assert len(poll_drop(site, KEY, now=t0 + 330).handed) == 1  # still quiet: retried at the next look


def test_an_original_changed_during_the_hand_over_is_not_removed(site: DropSettings) -> None:
    """Only what was handed over may be removed: a file rewritten meanwhile stays in the drop. Being the same SOP
    instance (same UID) as the copy handed over, it is a duplicate, as for the receiver: reported, not a part."""
    t0 = time.time()
    one = put(site.folder, "a/1", UID_A, 1)
    two = put(site.folder, "a/2", UID_A, 2)

    def racing(files: Sequence[Path], inbox: Path, key: str, info: Mapping[str, object]) -> Path:
        part = hand_over_study(files, inbox, key, info)
        put(site.folder, "a/2", UID_A, 2, rows=8)  # rewritten after it was copied
        return part

    poll_drop(site, KEY, now=t0 + 10)
    done = poll_drop(site, KEY, now=t0 + 320, hand_over=racing)
    assert done.removed == 1 and done.kept == 1 and not one.exists() and two.exists()
    rewritten = sha(two)
    poll_drop(site, KEY, now=t0 + 330)
    again = poll_drop(site, KEY, now=t0 + 640)
    assert again.handed == [] and again.left == 1 and sha(two) == rewritten
    assert parts(site.inbox) == [f"{study_key(KEY, UID_A)}/part-001"]
    assert "a/2\tduplicate: this SOP instance is in the inbox already" in (
        site.private_dir / "drop" / REPORT_NAME).read_text()


def test_drop_folder_config(tmp_path: Path) -> None:
    areas = {k: str(tmp_path / k) for k in ("inbox", "private_dir", "work_dir", "release_dir")}
    for area in areas.values():
        Path(area).mkdir()
    with pytest.raises(ConfigError, match="drop.folder is not set"):
        drop_settings({**areas, "drop": {"folder": None}})
    with pytest.raises(ConfigError, match="overlap"):
        (tmp_path / "inbox" / "drop").mkdir()
        drop_settings({**areas, "drop": {"folder": str(tmp_path / "inbox" / "drop")}})
    with pytest.raises(ConfigError, match="does not exist"):
        drop_settings({**areas, "drop": {"folder": str(tmp_path / "nowhere")}})
    (tmp_path / "drop").mkdir()
    settings = drop_settings({**areas, "drop": {"folder": str(tmp_path / "drop"), "quiet_seconds": 5}})
    assert (settings.quiet_seconds, settings.poll_seconds, settings.keep_originals) == (5, 60, False)


def test_watch_drop_once_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("drop", "inbox"):
        (tmp_path / name).mkdir()
    site = tmp_path / "site.yaml"
    site.write_text("".join(f"{k}: {tmp_path / k}\n" for k in ("inbox", "private_dir", "work_dir", "release_dir"))
                    + f"drop:\n  folder: {tmp_path / 'drop'}\n  quiet_seconds: 0\n")
    put(tmp_path / "drop", "a/1", UID_A, 1)
    assert main(["watch-drop", "--configfile", str(site), "--once"]) == 0
    err = capsys.readouterr().err
    (part,) = (tmp_path / "inbox").glob("*/part-001")
    assert f"{part.parent.name} as part-001 (1 files)" in err and UID_A not in err
    assert (tmp_path / "private_dir" / "secret.key").exists()  # the pipeline's key, made by the shared rule

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from bidsafe.runlock import exclusive_lock
            with exclusive_lock(__import__("pathlib").Path(sys.argv[1]), what="x"):
                print("held", flush=True); time.sleep(60)
            """), str(tmp_path / "private_dir" / "drop" / ".watch-drop.lock")],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["watch-drop", "--configfile", str(site), "--once"]) == 75
        assert "another bidsafe watch-drop on this site" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_poll_result_summary_names_keys_only() -> None:
    result = PollResult(waiting={"st-0123": 42.0}, left=2)
    assert summary_line(result) == (
        "bidsafe watch-drop: 0 studies handed over; 1 waiting for the quiet period (the first in 42 s); "
        "2 files left in the drop (not image DICOM; see the private report drop/left-in-drop.tsv in private_dir)")


def test_a_study_copied_twice_is_handed_over_once(site: DropSettings) -> None:
    """The same instances again (a second copy of the export) are never a part of their own: left in the drop and
    reported, not removed (they were not handed over)."""
    t0 = time.time()
    key_a = study_key(KEY, UID_A)
    for n in (1, 2):
        put(site.folder, f"first/{n}", UID_A, n)
        put(site.folder, f"second/{n}", UID_A, n)
    poll_drop(site, KEY, now=t0 + 10)
    done = poll_drop(site, KEY, now=t0 + 320)
    assert [(p.name, n) for _k, p, n in done.handed] == [("part-001", 2)]
    assert sorted(p.relative_to(site.folder).as_posix() for p in site.folder.rglob("*") if p.is_file()) == [
        "second/1", "second/2"]
    for now in (t0 + 330, t0 + 640, t0 + 950):
        assert poll_drop(site, KEY, now=now).handed == []
    assert parts(site.inbox) == [f"{key_a}/part-001"]
    report = (site.private_dir / "drop" / REPORT_NAME).read_text()
    assert "second/1\tduplicate: this SOP instance is in the inbox already" in report
    assert (site.folder / "second" / "1").is_file()


def test_an_unreachable_drop_changes_nothing(site: DropSettings) -> None:
    t0 = time.time()
    put(site.folder, "a/1", UID_A, 1)
    poll_drop(site, KEY, now=t0 + 10)
    state = (site.private_dir / "drop" / "state.json").read_text()
    gone = site.folder.rename(site.folder.with_name("unmounted"))
    with pytest.raises(BidsafeError, match="cannot be reached"):
        poll_drop(site, KEY, now=t0 + 320)
    assert (site.private_dir / "drop" / "state.json").read_text() == state
    gone.rename(site.folder)
    assert len(poll_drop(site, KEY, now=t0 + 330).handed) == 1  # its quiet period was not lost


def test_ingest_reads_the_handed_over_parts_as_one_study(site: DropSettings) -> None:
    """What the drop hands over is what the pipeline's ingest indexes: one study, every instance of both parts,
    nothing quarantined (the manifests are the handoff's records, not input)."""
    from bidsafe.ingest import scan_inbox

    t0 = time.time()
    for n in (1, 2):
        put(site.folder, f"a/{n}", UID_A, n)
    poll_drop(site, KEY, now=t0 + 10)
    poll_drop(site, KEY, now=t0 + 320)
    put(site.folder, "a/3", UID_A, 3)
    poll_drop(site, KEY, now=t0 + 330)
    assert len(poll_drop(site, KEY, now=t0 + 640).handed) == 1
    rows, quarantine, summary = scan_inbox(site.inbox)
    assert quarantine == [] and summary.studies == 1
    assert sorted(r.sop_uid for r in rows) == [f"{UID_A}.2.{n}" for n in (1, 2, 3)]


def test_a_stale_index_entry_never_names_what_is_handed_over(site: DropSettings) -> None:
    """The index cache is keyed on path, size and mtime: a file replaced by another instance of the same size with
    the same (coarse) mtime keeps its old row. The copy's own header is checked before the hand-over."""
    t0 = time.time()
    path = put(site.folder, "x/1", UID_A, 1, mtime=t0 - 100)
    poll_drop(site, KEY, now=t0 + 10)
    put(site.folder, "x/1", UID_B, 1, mtime=t0 - 100)  # same size (UIDs of equal length), same mtime
    assert path.stat().st_mtime == t0 - 100
    poll_drop(site, KEY, now=t0 + 20)
    refused = poll_drop(site, KEY, now=t0 + 330)
    assert refused.failed == [study_key(KEY, UID_A)] and refused.handed == [] and path.is_file()
    poll_drop(site, KEY, now=t0 + 340)  # read afresh: it is B's, a new listing
    done = poll_drop(site, KEY, now=t0 + 650)
    assert [k for k, _p, _n in done.handed] == [study_key(KEY, UID_B)]
    assert parts(site.inbox) == [f"{study_key(KEY, UID_B)}/part-001"]
