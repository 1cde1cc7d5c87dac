"""Odd inbox content never stops the run nor prints a path; a vanished consent file stops it (issue 10 item 3).

One Snakemake run of 1 subject x 1 session whose export also holds symbolic link loops, a FIFO, a socket, an
unreadable file, a junk file whose name is not UTF-8 and holds a newline, and three diffusion slices renamed
to odd names (a newline, a tab and an escape sequence, Latin-1 bytes). The session is published with its
whole diffusion series, every odd entry is in the private quarantine report, and nothing of a planted path
reaches the console, `.snakemake/log` or the job logs. Then the consent file disappears: the next run stops
before any job, naming the configuration key.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pydicom
import pytest
import yaml

from bidsafe.filelist import read_file_list
from bidsafe.ingest import (
    REASON_NOT_DICOM,
    REASON_SYMLINK_BROKEN,
    REASON_SYMLINK_DIR,
    REASON_UNREADABLE,
    read_quarantine,
)

from helpers.pipeline_run import make_run_folder, snakemake

pytestmark = pytest.mark.slow

ODD_SLICE_NAMES = (b"_\nsecondline_q7", b"_\ttabzz\x1b[31mredzz", b"_M\xdcLLERzz")
JUNK_NAME = b"notes_\xe9\n_junk.txt"
# parts of planted paths that must never be printed or logged (beside the patient's planted values)
PLANTED_PARTS = ("secondline_q7", "tabzz", "redzz", "LLERzz", "notes_", "_junk", "loop_a", "loop_b", "up_again",
                 "fifo_export", "sock_export", "unreadable_export")


def _plant_odd_entries(session_folder: Path, dwi_files: list[Path]) -> dict[str, str]:
    """Add every odd entry kind to the export; return {name in the export folder: expected quarantine reason}."""
    for path, odd in zip(dwi_files[:3], ODD_SLICE_NAMES, strict=True):  # good slices, odd names: kept
        os.rename(path, os.fsencode(path.parent) + b"/" + path.name.encode() + odd)
    junk = os.fsencode(session_folder) + b"/" + JUNK_NAME
    with open(junk, "wb") as handle:
        handle.write(b"exported by the scanner console\n")
    os.symlink("loop_b", session_folder / "loop_a")
    os.symlink("loop_a", session_folder / "loop_b")
    os.symlink("..", session_folder / "up_again")
    os.mkfifo(session_folder / "fifo_export")
    here = Path.cwd()
    try:  # bound by a relative name: socket paths are limited to ~100 bytes
        os.chdir(session_folder)
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind("sock_export")
    finally:
        os.chdir(here)
    unreadable = session_folder / "unreadable_export"
    unreadable.write_bytes(b"not for you\n")
    unreadable.chmod(0)
    as_root = os.geteuid() == 0  # root reads a 000 file: then it is read, and is not DICOM
    return {
        os.fsdecode(JUNK_NAME): REASON_NOT_DICOM,
        "loop_a": REASON_SYMLINK_BROKEN,
        "loop_b": REASON_SYMLINK_BROKEN,
        "up_again": REASON_SYMLINK_DIR,
        "fifo_export": "not a regular file: FIFO",
        "sock_export": "not a regular file: socket",
        "unreadable_export": REASON_NOT_DICOM if as_root else REASON_UNREADABLE,
    }


def _expected_volumes(files: list[Path]) -> int:
    """Diffusion volumes in the export: files / slices per volume (distinct slice positions)."""
    positions = {tuple(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient) for f in files}
    return len(files) // len(positions)


def test_odd_entries_are_quarantined_the_session_publishes_and_a_vanished_consent_file_stops_the_run(tmp_path):
    root, (session,) = make_run_folder(tmp_path, seed=31)
    (dwi,) = [s for s in session.series if s.expected_suffix == "dwi"]
    volumes = _expected_volumes(list(dwi.files))
    expected = _plant_odd_entries(session.folder, list(dwi.files))

    result = snakemake(root)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-6000:]

    # Every odd entry is in the private report, with its reason, attributed to the session.
    prefix = session.folder.relative_to(root / "inbox").as_posix() + "/"
    quarantine = {q.relpath.removeprefix(prefix): (q.reason, q.study_uid)
                  for q in read_quarantine(root / "private" / "ingest" / "quarantine.tsv")}
    for name, reason in expected.items():
        assert quarantine[name] == (reason, session.study_instance_uid), name
    # The odd-named slices went through the session's file list whole, and the series is published whole.
    (files_txt,) = (root / "private" / "sessions").glob("sub-*/ses-*/files.txt")
    listed = set(read_file_list(files_txt))
    dwi_rel = dwi.folder.relative_to(root / "inbox").as_posix()
    for path, odd in zip(dwi.files[:3], ODD_SLICE_NAMES, strict=True):
        assert f"{dwi_rel}/{path.name}{os.fsdecode(odd)}" in listed
    (bval,) = (root / "release" / "latest").glob("sub-*/ses-*/dwi/*_dwi.bval")
    assert len(bval.read_text(encoding="utf-8").split()) == volumes

    # Nothing of a planted path (nor a planted value) on the console or in any log.
    logs = [p for p in (root / ".snakemake" / "log").iterdir()] + [
        p for p in (root / "work" / "logs").rglob("*") if p.is_file()
    ]
    text = printed + "".join(p.read_text(encoding="utf-8", errors="replace") for p in logs)
    planted = {v for v in session.planted.values() if len(v) >= 4} | set(PLANTED_PARTS)
    found = sorted(v for v in planted if v.lower() in text.lower())
    assert not found, found

    # The consent file disappears after the release: the run stops before any job, naming the key.
    consent = root / "consent.tsv"
    consent.rename(root / "consent.tsv.away")
    stopped = snakemake(root)
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "Nothing to be done" not in said
    assert "config 'consent': the configured file is missing" in said
    assert session.patient_id not in said and session.patient_folder.name not in said
    # A consent path that is a folder (unreadable as a file) stops it too.
    consent.mkdir()
    folder_run = snakemake(root, "-n")
    said = folder_run.stdout + folder_run.stderr
    assert folder_run.returncode != 0
    assert "config 'consent': the configured path is a folder" in said
    consent.rmdir()
    # `consent: none-required` stays a valid setting, not a file name.
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    config["consent"] = "none-required"
    (root / "none.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    dry = snakemake(root, "-n", configfile="none.yaml")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
