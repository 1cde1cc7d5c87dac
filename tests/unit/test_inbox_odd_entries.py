"""Odd inbox content never stops the run and never prints a path (issue 10, defects 3, 4 and 6).

Symbolic link loops, names with a newline, a tab or an escape sequence, names that are not UTF-8, unreadable
files and folders, FIFOs, sockets and devices: each becomes a quarantine row with its reason (or, when it is a
good DICOM file with an odd name, an index row whose name survives every private list), nothing of the path
reaches the console or a log, and the rest of the inbox is indexed. A configured consent file that is missing
or unreadable stops the run naming the configuration key.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from bidsafe.cli import main as bidsafe_main
from bidsafe.errors import ConfigError
from bidsafe.filelist import escape_name, file_list_text, read_file_list, unescape_name
from bidsafe.ingest import (
    REASON_NOT_DICOM,
    REASON_SYMLINK_BROKEN,
    REASON_SYMLINK_DIR,
    REASON_UNREADABLE,
    REASON_UNREADABLE_FOLDER,
    inbox_fingerprint,
    ingest_stage,
    read_index,
    read_quarantine,
    regular_files,
    resolve_inbox,
)
from bidsafe.pseudonymise.consent import require_input_file
from bidsafe.release.leakscan import harvest_sessions
from bidsafe.runlog import log_to
from bidsafe.stages import read_file_list as stages_read_file_list

from helpers.mr_instances import mr_instance, save_dicom

AS_ROOT = os.geteuid() == 0
PATIENT_FOLDER = "DOE_JOHN_19800101"  # the planted personal data: must never be printed or logged

# Odd names, as the bytes a file system holds (os.fsdecode gives Python's surrogate-escaped text for them).
NEWLINE_NAME = b"IM_0003\nsecond line.dcm"
TAB_ESCAPE_NAME = b"IM_0004\t\x1b[31mred.dcm"
LATIN1_NAME = b"IM_0005_M\xdcLLER.dcm"  # Latin-1, not UTF-8: an export from an old system
JUNK_NAME = b"note \xe9\x1c\n\xe2\x80\xa8.txt"  # not UTF-8, a file separator, a newline, U+2028


def test_escaped_names_round_trip_and_ordinary_names_keep_their_bytes(tmp_path: Path):
    names = [
        "sub/plain name.dcm",  # ordinary: written exactly as before (no rerun after an upgrade)
        "Müller/李/ é.dcm",
        "   ",  # a name of spaces is a name
        "a\\b\\x41\\u0009.dcm",  # backslashes and text that looks like an escape
        os.fsdecode(NEWLINE_NAME),
        os.fsdecode(TAB_ESCAPE_NAME),
        os.fsdecode(LATIN1_NAME),
        os.fsdecode(JUNK_NAME),
        "v\x0bf\x0cx\x85y\u2029z\x7f",  # every separator str.splitlines knows, and DEL
    ]
    path = tmp_path / "files.txt"
    path.write_text(file_list_text(names), encoding="utf-8")  # strict UTF-8: no surrogate reaches the file
    assert read_file_list(path) == names == stages_read_file_list(path)
    raw = path.read_bytes()
    assert raw.count(b"\n") == len(names) and b"\r" not in raw and b"\t" not in raw and b"\x1b" not in raw
    assert raw.startswith(b"sub/plain name.dcm\n" + "Müller/李/ é.dcm\n".encode())
    assert escape_name(os.fsdecode(LATIN1_NAME)) == "IM_0005_M\\xdcLLER.dcm"
    assert escape_name("IM\n1") == "IM\\u000a1" and unescape_name("IM\\u000a1") == "IM\n1"
    for name in names:
        assert escape_name(name).isprintable() and unescape_name(escape_name(name)) == name


@pytest.fixture
def odd_inbox(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """One patient's export with good slices (three with odd names) and every odd entry kind next to them."""
    root = tmp_path / "inbox"
    study, series = generate_uid(), generate_uid()
    export = root / PATIENT_FOLDER / "STUDY"
    for i in range(3):
        save_dicom(mr_instance(study, series, 2, "PID-JOHN", i), export / f"IM_{i:04d}.dcm")
    for i, name in enumerate((NEWLINE_NAME, TAB_ESCAPE_NAME, LATIN1_NAME), start=3):
        save_dicom(mr_instance(study, series, 2, "PID-JOHN", i), Path(os.fsdecode(os.fsencode(export) + b"/" + name)))
    Path(os.fsdecode(os.fsencode(export) + b"/" + JUNK_NAME)).write_text("John Doe, 1980-01-01\n")
    os.symlink("loop_b", export / "loop_a")
    os.symlink("loop_a", export / "loop_b")
    os.symlink("self_loop", export / "self_loop")
    os.symlink("..", export / "up")  # a folder loop, were it followed
    os.mkfifo(export / "fifo")
    with _unix_socket(export / "sock"):
        yield root, study


@contextlib.contextmanager
def _unix_socket(path: Path) -> Iterator[None]:
    """A bound UNIX socket at `path` (bound by a short relative name: socket paths are limited to ~100 bytes)."""
    here = Path.cwd()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(path.parent)
        server.bind(path.name)
    finally:
        os.chdir(here)
    try:
        yield
    finally:
        server.close()


def _deny(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """`path` unreadable: chmod 000, and, as root (whom chmod does not stop), what the kernel then says to
    anyone else: no read access, and a folder cannot be listed."""
    path.chmod(0)
    if not AS_ROOT:
        return
    denied = os.fsencode(path)
    real_access, real_scandir = os.access, os.scandir

    def access(p: object, mode: int, *args: object, **kwargs: object) -> bool:
        return False if os.fsencode(p) == denied else real_access(p, mode, *args, **kwargs)  # type: ignore[arg-type]

    def scandir(p: object = ".") -> object:
        if os.fsencode(p) == denied:  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_scandir(p)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "scandir", scandir)


def _planted(root: Path) -> list[str]:
    """Every part of a planted path that must never be printed or logged."""
    return [PATIENT_FOLDER, "19800101", "DOE_JOHN", "second line", "red.dcm", "MÜLLER", "M\\xdcLLER", "loop_",
            "self_loop", "fifo", "sock", "note ", "secret", str(root)]


def test_every_odd_entry_is_quarantined_with_its_reason_and_the_rest_is_indexed(
    odd_inbox: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    root, study = odd_inbox
    export = root / PATIENT_FOLDER / "STUDY"
    save_dicom(mr_instance(study, generate_uid(), 9, "PID-JOHN", 0), export / "IM_secret_unreadable.dcm")
    save_dicom(mr_instance(study, generate_uid(), 8, "PID-JOHN", 0), export / "secret_folder" / "IM_0000.dcm")
    _deny(monkeypatch, export / "IM_secret_unreadable.dcm")
    _deny(monkeypatch, export / "secret_folder")
    if AS_ROOT:  # a character device (mknod needs root); as another user the other kinds are still tested
        os.mknod(export / "secret_device", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    index, quarantine, log_file = tmp_path / "p" / "index.tsv", tmp_path / "p" / "quarantine.tsv", tmp_path / "l.log"
    caplog.set_level(logging.DEBUG)
    try:
        with log_to(log_file):  # what the workflow's ingest script does
            summary = ingest_stage(root, index, quarantine, cache=tmp_path / "p" / "cache.tsv")
        assert bidsafe_main(["ingest", str(root), "--index", str(tmp_path / "i2.tsv"),
                             "--quarantine", str(tmp_path / "q2.tsv")]) == 0
        fingerprint = inbox_fingerprint(root)
    finally:
        (export / "secret_folder").chmod(0o700)
        (export / "IM_secret_unreadable.dcm").chmod(0o600)

    prefix = f"{PATIENT_FOLDER}/STUDY/"
    indexed = [row.relpath for row in read_index(index)]
    good = [f"{prefix}IM_{i:04d}.dcm" for i in range(3)] + [
        prefix + os.fsdecode(name) for name in (NEWLINE_NAME, TAB_ESCAPE_NAME, LATIN1_NAME)
    ]
    assert sorted(indexed) == sorted(good)  # odd names are only names: those slices are kept, whole
    reasons = {row.relpath: (row.study_uid, row.reason) for row in read_quarantine(quarantine)}
    expected = {
        prefix + os.fsdecode(JUNK_NAME): REASON_NOT_DICOM,
        f"{prefix}loop_a": REASON_SYMLINK_BROKEN,
        f"{prefix}loop_b": REASON_SYMLINK_BROKEN,
        f"{prefix}self_loop": REASON_SYMLINK_BROKEN,
        f"{prefix}up": REASON_SYMLINK_DIR,
        f"{prefix}fifo": "not a regular file: FIFO",
        f"{prefix}sock": "not a regular file: socket",
        f"{prefix}IM_secret_unreadable.dcm": REASON_UNREADABLE,
        f"{prefix}secret_folder": REASON_UNREADABLE_FOLDER,
        **({f"{prefix}secret_device": "not a regular file: device"} if AS_ROOT else {}),
    }
    assert {k: v[1] for k, v in reasons.items()} == expected
    assert {v[0] for v in reasons.values()} == {study}  # each attributed to the session it sits in
    assert summary.studies == 1 and summary.dicom == 6 and summary.quarantined == len(expected)

    # One row per entry: no name breaks a TSV row, and the private report holds no control character.
    raw = quarantine.read_bytes()
    assert raw.count(b"\n") == len(expected) + 1 and b"\x1b" not in raw and b"\x1c" not in raw
    assert index.read_bytes().count(b"\n") == len(good) + 1
    assert len(fingerprint) == 64

    out = capsys.readouterr()
    printed = out.out + out.err + caplog.text + log_file.read_text(encoding="utf-8")
    assert "6 DICOM images in 1 studies" in printed  # the counts are printed ...
    for part in _planted(root):  # ... and nothing of a path
        assert part not in printed, part


def test_the_leak_scan_harvests_odd_names_by_session_and_opens_no_special_file(odd_inbox: tuple[Path, str],
                                                                                tmp_path: Path):
    root, _ = odd_inbox
    export = os.fsencode(root / PATIENT_FOLDER / "STUDY")
    odd = mr_instance(generate_uid(), generate_uid(), 4, "PID-ODD-NAMED", 0)
    odd_rel = os.fsdecode(os.fsencode(f"{PATIENT_FOLDER}/STUDY/") + NEWLINE_NAME + b"2")
    save_dicom(odd, Path(os.fsdecode(export + b"/" + NEWLINE_NAME + b"2")))
    sessions = tmp_path / "sessions" / "sub-01" / "ses-01"
    sessions.mkdir(parents=True)
    (sessions / "files.txt").write_text(file_list_text([odd_rel]), encoding="utf-8")

    assert odd_rel in regular_files(root) and not [r for r in regular_files(root) if r.endswith(("fifo", "sock"))]
    rows, origins = harvest_sessions(root, tmp_path / "sessions")  # a FIFO opened here would block forever
    by_value = {row.value: origins[row] for row in rows}
    assert by_value["PID-ODD-NAMED"] == ["sub-01_ses-01"]  # read through the escaped list, not "no session"
    assert by_value["PID-JOHN"] == ["inbox (no session)"]


def test_an_inbox_that_loops_or_is_missing_is_reported_by_key_not_path(tmp_path: Path):
    loop = tmp_path / "DOE_JOHN_19800101_inbox"
    os.symlink(loop, loop)
    for inbox, problem in ((loop, "symbolic link loop"), (tmp_path / "DOE_JOHN_19800101_gone", "cannot be opened")):
        with pytest.raises(ConfigError, match=problem) as caught:
            resolve_inbox(inbox)
        assert "config key 'inbox'" in str(caught.value) and "DOE_JOHN" not in str(caught.value)
        with pytest.raises(ConfigError) as caught:
            ingest_stage(inbox, tmp_path / "i.tsv", tmp_path / "q.tsv")
        assert "DOE_JOHN" not in str(caught.value)


def test_a_missing_or_unreadable_consent_file_stops_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    registry = tmp_path / "DOE_consent.tsv"
    registry.write_text("patient_id\tconsent\nPID-JOHN\tpublic\n", encoding="utf-8")
    assert require_input_file("consent", registry) == registry

    with pytest.raises(ConfigError) as caught:
        require_input_file("consent", tmp_path / "DOE_gone.tsv")
    message = str(caught.value)
    assert message.startswith("config 'consent': the configured file is missing") and "none-required" in message
    assert "DOE" not in message and "PID-JOHN" not in message

    with pytest.raises(ConfigError, match=r"^config 'demographics': the configured path is a folder") as caught:
        require_input_file("demographics", tmp_path)
    assert "none-required" not in str(caught.value)

    registry.chmod(0)
    if AS_ROOT:  # root reads a 000 file: make open() answer as it does for everyone else
        real_open = Path.open

        def denied_open(self: Path, *args: object, **kwargs: object) -> object:
            if self == registry:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "open", denied_open)
    with pytest.raises(ConfigError, match=r"^config 'consent': the configured file cannot be read \(Permission"):
        require_input_file("consent", registry)
