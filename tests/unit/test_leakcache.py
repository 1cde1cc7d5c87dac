"""The leak gate's memory between runs: unchanged files are searched only for new values, unchanged sessions
are not harvested again, and nothing it skips can hide a value it must find."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bidsafe.release import leakharvest, leakscan
from bidsafe.release.leakforms import RawValue
from bidsafe.release.leakscan import harvest_sessions, leak_scan

from helpers.deid_testing import mr_dataset, write
from helpers.leak_inbox import two_patient_inbox

PERSON = RawValue("name", "PatientName", "Quillfeather^Marisol")
NEWCOMER = RawValue("name", "PatientName", "Vandersloot^Ignatia")
ACCESSION = RawValue("id", "AccessionNumber", "ACC99123")


def _release(root: Path) -> Path:
    files = {
        "README": "A pilot release.\n",
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.json": json.dumps({"SeriesDescription": "t1 ACC99123"}),
        "sub-01/ses-01/anat/notes.txt": "scanned by the usual team\n",
        "sub-02/ses-01/anat/sub-02_ses-01_T1w.json": json.dumps({"SeriesDescription": "Vandersloot t1"}),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _hits(report: leakscan.LeakReport) -> set[tuple[str, str, str]]:
    return {(h.file, h.where, h.field) for h in report.hits}


def test_a_rescan_reads_nothing_unchanged_and_finds_the_same(tmp_path: Path) -> None:
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "leakscan" / "scan.json"
    first = leak_scan(release, [PERSON, ACCESSION], memory=memory)
    assert _hits(first) == {("sub-01/ses-01/anat/sub-01_ses-01_T1w.json", "json:SeriesDescription",
                             "AccessionNumber")}
    assert first.bytes > 0
    again = leak_scan(release, [PERSON, ACCESSION], memory=memory)
    assert _hits(again) == _hits(first) and again.files == first.files
    assert again.bytes == 0  # every file remembered, no new value: nothing read
    # private: values inside, 0600 in a 0700 folder
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600 and stat.S_IMODE(memory.parent.stat().st_mode) == 0o700
    assert "ACC99123" in memory.read_text(encoding="utf-8")


def test_a_new_value_is_searched_in_unchanged_files(tmp_path: Path) -> None:
    """A second session brings a value that an old, unchanged sidecar holds: found without a full rescan."""
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "scan.json"
    leak_scan(release, [PERSON], memory=memory)
    report = leak_scan(release, [PERSON, NEWCOMER], memory=memory)
    assert _hits(report) == {("sub-02/ses-01/anat/sub-02_ses-01_T1w.json", "json:SeriesDescription",
                              "PatientName")}
    # and the other way round: a value that left the harvest (a withdrawn session) is no longer a finding
    assert _hits(leak_scan(release, [PERSON], memory=memory)) == set()


def test_a_changed_file_is_scanned_in_full(tmp_path: Path) -> None:
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "scan.json"
    leak_scan(release, [PERSON, ACCESSION], memory=memory)
    notes = release / "sub-01/ses-01/anat/notes.txt"
    notes.write_text("scanned by the usual team; patient Quillfeather\n", encoding="utf-8")  # new inode
    report = leak_scan(release, [PERSON, ACCESSION], memory=memory)
    assert ("sub-01/ses-01/anat/notes.txt", "text", "PatientName") in _hits(report)
    assert report.bytes == notes.stat().st_size  # only the changed file was read


def test_a_file_replaced_with_its_old_size_and_time_is_scanned_again(tmp_path: Path) -> None:
    """The memory knows a file by (device, inode, size, mtime); the pipeline writes every file anew (atomic
    rename), so a reprocessed session's files have new inodes, even with their old size and time."""
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "scan.json"
    leak_scan(release, [PERSON], memory=memory)
    notes = release / "sub-01/ses-01/anat/notes.txt"
    before = notes.stat()
    text = "Quillfeather's usual team\n"
    assert len(text) == before.st_size
    replacement = notes.with_name("notes.new")
    replacement.write_text(text, encoding="utf-8")
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, notes)
    assert _hits(leak_scan(release, [PERSON], memory=memory)) == {
        ("sub-01/ses-01/anat/notes.txt", "text", "PatientName")}


def test_another_vocabulary_or_gate_version_rescans_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "scan.json"
    leak_scan(release, [PERSON], memory=memory)
    monkeypatch.setattr(leakscan, "scan_settings_key", lambda *args: "another version of the gate")
    report = leak_scan(release, [PERSON], memory=memory)
    assert report.bytes == sum(p.stat().st_size for p in release.rglob("*") if p.is_file())


def test_an_unreadable_memory_is_ignored_not_trusted(tmp_path: Path) -> None:
    release, memory = _release(tmp_path / "release"), tmp_path / "private" / "scan.json"
    memory.parent.mkdir(parents=True)
    memory.write_text("{not json", encoding="utf-8")
    report = leak_scan(release, [PERSON, ACCESSION], memory=memory)
    assert report.bytes > 0 and len(report.hits) == 1


def test_the_gate_memory_matches_a_scan_without_memory_on_logs_too(tmp_path: Path) -> None:
    release = _release(tmp_path / "release")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run.log").write_text("job for Vandersloot^Ignatia done\n", encoding="utf-8")
    memory = tmp_path / "private" / "scan.json"
    values = [PERSON, NEWCOMER, ACCESSION]
    plain = leak_scan(release, values, also=[logs])
    leak_scan(release, [PERSON], also=[logs], memory=memory)
    remembered = leak_scan(release, values, also=[logs], memory=memory)
    assert _hits(remembered) == _hits(plain)
    assert remembered.found == plain.found


def test_harvest_memory_reads_only_new_or_changed_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, sessions = two_patient_inbox(tmp_path)
    memory = tmp_path / "private" / "leakscan" / "harvest"
    plain = harvest_sessions(inbox, sessions)
    assert harvest_sessions(inbox, sessions, memory=memory) == plain
    read: list[int] = []
    real = leakharvest.harvest_files

    def counting(paths, **kwargs):
        paths = list(paths)
        read.append(len(paths))
        return real(paths, **kwargs)

    monkeypatch.setattr(leakharvest, "harvest_files", counting)
    assert harvest_sessions(inbox, sessions, memory=memory) == plain
    assert read == []  # nothing changed: nothing read
    # a late file of session sub-01: that session (only) is read again, and its new value is there
    write(mr_dataset(patient_name="Quillfeather^Marisol^Late", patient_id="PID-99812",
                     study_uid="1.2.826.0.1.3680043.9.7777.1", series_uid="1.2.826.0.1.3680043.9.7777.1.9",
                     sop_uid="1.2.826.0.1.3680043.9.7777.1.9.1"), inbox / "PID-99812" / "late.dcm")
    (sessions / "sub-01" / "ses-01" / "files.txt").write_text("PID-99812/img.dcm\nPID-99812/late.dcm\n")
    rows, origins = harvest_sessions(inbox, sessions, memory=memory)
    assert read == [2]
    assert origins[RawValue("name", "PatientName", "Quillfeather^Marisol^Late")] == ["sub-01_ses-01"]
    assert (rows, origins) == harvest_sessions(inbox, sessions)
    files = sorted(memory.iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert not any("sub-" in p.name or "PID" in p.name for p in files)  # names are hashes
    # a session that left (withdrawn) is forgotten
    (sessions / "sub-02" / "ses-01" / "files.txt").unlink()
    harvest_sessions(inbox, sessions, memory=memory)
    assert len(list(memory.iterdir())) == len(files) - 1
