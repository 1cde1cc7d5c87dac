"""Ingest: index an inbox of raw DICOM files by study, header-only, and quarantine what cannot be used.

The inbox is read, never written. Every regular file under it ends up in exactly one of two private
reports (both may name patients through folder names and PatientID, so both live in `private_dir`):

- the **index** (one row per readable DICOM image file: where it is, its stat, and the UIDs that group it
  into sessions = studies and series), and
- the **quarantine** report (one row per file that is not usable image DICOM, with a reason that never
  contains a value read from the file, attributed to a session when its folder makes that unambiguous).

Folders whose name starts with '.' are not walked: a study handed over to a receiver-fed inbox is built in
`inbox/.incoming-*` and renamed into place whole (`bidsafe.handoff`), so a half-moved study is never seen; the
handoff's `part-NNN/manifest.json` is its record, not input, and is not listed either.

Symbolic links are never followed. The configured inbox path itself may be a link (it is resolved once, at the
start); a link found inside the inbox is listed in the quarantine report with what it points to (out of the
inbox, a folder, a file, nothing), never read: a link can lead out of the inbox (whose files were never meant
for this release) or into a loop, and a link to a file or folder inside the inbox adds nothing, as that file
is read where it lies.

Nothing in the inbox stops the walk: FIFOs, sockets and devices (never opened), files without read permission
and folders that cannot be listed are quarantined with their reason. A file name is only a name: one with a
newline, a tab, an escape sequence or bytes that are not UTF-8 is indexed like any other, and both reports write
it escaped (`bidsafe.filelist`), so it stays one cell of one row. No message names a path.

A run that finds no readable DICOM study stops at ingest (`require_studies`), saying how many files were
looked at and why they were quarantined, instead of failing stages later with an empty dataset.

Reads are header-only (`stop_before_pixels` plus a handful of tags); a file whose declared pixel data runs
past its end is caught by comparing the element's offset and length with the file size, which costs one
extra 12-byte read. With a cache (a previous index), files whose (relpath, size, mtime_ns) did not change
are not opened at all, so re-indexing a large inbox costs one stat() per file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
import stat
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.filelist import escape_name, unescape_name
from bidsafe.handoff import MANIFEST_NAME as HANDOFF_MANIFEST
from bidsafe.handoff import PART_RE as HANDOFF_PART_RE
from bidsafe.phi import quiet_pydicom
from bidsafe.private import private_write_bytes
from bidsafe.progress import Progress

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# The header attributes the index keeps. PatientID is personal data: it is here so the pseudonymise stage
# can link sessions of one person; the index therefore lives in the private area only.
HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "SeriesNumber",
    "Modality",
    "SOPClassUID",
)

REASON_NOT_DICOM = "not DICOM"
REASON_NO_FILE_META = "not DICOM: no DICOM file header (raw data set without 'DICM' prefix; re-export as DICOM)"
REASON_EMPTY = "empty file"
REASON_DICOMDIR = "DICOMDIR (index file, no images)"
REASON_NO_STUDY = "no StudyInstanceUID"
REASON_NO_SERIES = "no SeriesInstanceUID"
REASON_NO_SOP = "no SOPInstanceUID"
REASON_NON_IMAGE = "no pixel data (non-image DICOM object)"
REASON_DUPLICATE = "duplicate SOPInstanceUID (the same image is indexed from another file)"
REASON_TRUNCATED = "truncated/unreadable"
REASON_SYMLINK_OUT = "symbolic link out of the inbox (not followed)"
REASON_SYMLINK_DIR = "symbolic link to a folder (not followed)"
REASON_SYMLINK_FILE = "symbolic link to a file in the inbox (not followed; the file is read where it lies)"
REASON_SYMLINK_BROKEN = "broken or looping symbolic link"
REASON_SPECIAL = "not a regular file"  # followed by its kind: FIFO, socket, device
REASON_UNREADABLE = "unreadable file (no read permission)"
REASON_UNREADABLE_FOLDER = "unreadable folder (its files cannot be listed)"

# Pixel data elements that end a header-only read, and value representations with a 4-byte length.
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM_TAG = 0xFFFEE000
_SEQ_DELIMITER_TAG = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF

# Index files may hold paths that are not valid UTF-8 (exports from old systems); keep their bytes intact.
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True)
class IndexRow:
    """One readable DICOM image file of the inbox (relpath is relative to the inbox, '/'-separated)."""

    relpath: str
    size: int
    mtime_ns: int
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    study_date: str
    study_time: str
    series_number: str
    modality: str
    sop_class_uid: str

    def sort_key(self) -> tuple[str, str, str]:
        return (self.study_uid, self.series_uid, self.relpath)


@dataclass(frozen=True)
class QuarantineRow:
    """One file that is not usable image DICOM; study_uid is empty when no session can be attributed."""

    relpath: str
    study_uid: str
    reason: str


INDEX_COLUMNS = tuple(f.name for f in fields(IndexRow))
QUARANTINE_COLUMNS = tuple(f.name for f in fields(QuarantineRow))


@dataclass(frozen=True)
class IndexSummary:
    """Counts only, so it can be printed and logged: no paths, names or UIDs."""

    files: int
    dicom: int
    quarantined: int
    studies: int
    series: int = 0
    reused: int = 0
    reasons: tuple[tuple[str, int], ...] = ()  # (quarantine reason, files), most frequent first

    def __str__(self) -> str:
        return (
            f"{self.files} files: {self.dicom} DICOM images in {self.studies} studies "
            f"({self.series} series), {self.quarantined} quarantined; "
            f"{self.reused} unchanged files reused from the cache"
        )


@dataclass(frozen=True)
class _Entry:
    """A file found by the walk: where to read it, its stat, or why it is not read at all."""

    relpath: str
    path: str
    size: int = 0
    mtime_ns: int = 0
    skip_reason: str = ""


# ---------------------------------------------------------------------------------------------- walk


def _walk_inbox(inbox: Path) -> Iterator[_Entry]:
    """Yield every file under `inbox`, depth first, following no symbolic link below the inbox itself.

    The inbox path is resolved once (it may be a link). Below it, every link is reported, never entered nor
    read (see the module docstring for why). Special files (FIFOs, sockets, devices) are reported, never
    opened: reading a FIFO would block forever. A file without read permission and a folder that cannot be
    listed are reported too. Nothing here raises for an odd entry (a link loop, a name with a newline or bytes
    that are not UTF-8): each becomes an entry with its reason, and no message names it.
    """
    root = resolve_inbox(inbox)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            yield _Entry(_relpath(folder, root), str(folder), skip_reason=REASON_UNREADABLE_FOLDER)
            continue
        subfolders = []
        for entry in entries:
            relpath = _relpath(Path(entry.path), root)
            try:
                if entry.is_symlink():
                    yield _Entry(relpath, entry.path, skip_reason=_symlink_reason(Path(entry.path), root))
                elif entry.is_dir(follow_symlinks=False):
                    # a folder named '.xxx' is being built (a study handed over by the receiver or a drop
                    # is renamed into place whole), so a half-moved study is never indexed
                    if not entry.name.startswith("."):
                        subfolders.append(Path(entry.path))
                elif _is_handoff_manifest(entry.name, folder):
                    continue  # the handoff's own record (bidsafe.handoff), not raw input
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    # checked here, not only on open: a cached row would otherwise be reused for a file that
                    # can no longer be read (chmod changes no mtime)
                    readable = os.access(entry.path, os.R_OK)
                    yield _Entry(relpath, entry.path, st.st_size, st.st_mtime_ns,
                                 skip_reason="" if readable else REASON_UNREADABLE)
                else:
                    yield _Entry(relpath, entry.path, skip_reason=_special_reason(entry))
            except OSError as exc:  # vanished or unreadable between listing and stat
                yield _Entry(relpath, entry.path, skip_reason=f"{REASON_TRUNCATED}: {exc.strerror}")
        stack.extend(reversed(subfolders))


def _is_handoff_manifest(name: str, folder: Path) -> bool:
    """`manifest.json` directly inside a `part-NNN` folder is written by `bidsafe.handoff`, not received."""
    return name == HANDOFF_MANIFEST and HANDOFF_PART_RE.match(folder.name) is not None


_INBOX_KEY = "inbox (config key 'inbox', or INBOX; its path is not shown: it may name a patient)"


def resolve_inbox(inbox: str | Path) -> Path:
    """The configured inbox as a real folder (it may be a link, resolved once); the error never names it.

    The inbox path can itself name a patient (an export folder): a loop or a missing folder is reported by
    the configuration key only.
    """
    try:
        root = Path(inbox).resolve(strict=True)
    except RuntimeError:  # a symbolic link loop before Python 3.13
        raise ConfigError(f"{_INBOX_KEY}: cannot be resolved (a symbolic link loop)") from None
    except OSError as exc:
        raise ConfigError(f"{_INBOX_KEY}: cannot be opened ({exc.strerror})") from None
    if not root.is_dir():
        raise ConfigError(f"{_INBOX_KEY}: is not a folder")
    return root


def regular_files(folder: Path) -> list[str]:
    """The '/'-separated relative paths of the readable regular files under `folder`, by ingest's walk (no link
    followed, no special file, any file name), for every other reader of the inbox (the leak scan's harvest).
    """
    return [entry.relpath for entry in _walk_inbox(Path(folder)) if not entry.skip_reason]


def _special_reason(entry: os.DirEntry[str]) -> str:
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISFIFO(mode):
        kind = "FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "device"
    else:
        kind = "unknown kind"
    return f"{REASON_SPECIAL}: {kind}"


def _symlink_reason(link: Path, root: Path) -> str:
    """Why a link is not followed, from where it points (resolving reads no file content)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError before Python 3.13)
        return REASON_SYMLINK_BROKEN
    if not target.is_relative_to(root):
        return REASON_SYMLINK_OUT
    return REASON_SYMLINK_DIR if target.is_dir() else REASON_SYMLINK_FILE


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def inbox_fingerprint(inbox: Path) -> str:
    """A cheap hash of every file's (relpath, size, mtime_ns), from stat() only.

    Passed to Snakemake as a rule parameter so that ingest re-runs whenever a file is added, removed or
    replaced in the inbox. The hash hides the paths (they may name patients).
    """
    digest = hashlib.sha256()
    for entry in sorted(_walk_inbox(Path(inbox)), key=lambda e: e.relpath):
        # escaped: a name holding a tab or newline cannot pass for another entry (ordinary names unchanged)
        line = f"{escape_name(entry.relpath)}\t{entry.size}\t{entry.mtime_ns}\t{entry.skip_reason}\n"
        digest.update(line.encode(_ENCODING, _ERRORS))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- header reads


class _Unusable(Exception):
    """This file goes to quarantine with the given reason (a fixed phrase, never a value from the file)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TrackedFile:
    """A read-only file that notices a read returning fewer bytes than asked for: the file was cut off.

    pydicom stops quietly at the end of a file, even inside a value. The one clean ending is an 8-byte
    element header read that returns nothing. The name is a placeholder so that nothing pydicom might
    print names the patient's folder.
    """

    name = "<inbox file>"

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.cut_short = False

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(size)
        if size is not None and size > 0 and len(data) < size and not (size == 8 and not data):
            self.cut_short = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _read_header(path: str | Path, relpath: str, size: int, mtime_ns: int) -> IndexRow:
    """Read one file's header (never its pixels) into an index row, or raise _Unusable with the reason."""
    if size == 0:
        raise _Unusable(REASON_EMPTY)
    try:
        with open(path, "rb") as raw, quiet_pydicom():
            fp = _TrackedFile(raw)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
            except InvalidDicomError:
                fp.seek(0)
                raise _Unusable(
                    REASON_NO_FILE_META if _looks_like_raw_dataset(fp.read(8)) else REASON_NOT_DICOM
                ) from None
            media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
            if media_class == DICOMDIR_SOP_CLASS:
                raise _Unusable(REASON_DICOMDIR)
            values = {kw: _text(ds.get(kw)) for kw in HEADER_KEYWORDS}
            sop_class = values["SOPClassUID"] or media_class
            transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
            # Pixels first: a file cut inside its header also lacks the attributes checked below, and
            # "truncated" is the true reason then.
            if transfer_syntax != DeflatedExplicitVRLittleEndian:
                # Deflated files are inflated whole in memory by pydicom, so the offset check cannot apply;
                # the inflate itself fails on a truncated stream.
                implicit_vr, little_endian = ds.original_encoding
                _check_pixel_data(fp, size, bool(implicit_vr), little_endian is not False, sop_class)
    except _Unusable:
        raise
    except OSError as exc:
        raise _Unusable(f"{REASON_TRUNCATED}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of arbitrary inbox junk means "unreadable"
        # The exception's kind names the failure; its message may quote header bytes, so it is dropped.
        raise _Unusable(f"{REASON_TRUNCATED}: {_failure_kind(exc)}") from None
    if not values["StudyInstanceUID"]:
        raise _Unusable(REASON_NO_STUDY)
    if not values["SeriesInstanceUID"]:
        raise _Unusable(REASON_NO_SERIES)
    if not values["SOPInstanceUID"]:
        raise _Unusable(REASON_NO_SOP)
    return IndexRow(
        relpath=relpath,
        size=size,
        mtime_ns=mtime_ns,
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_uid=values["SOPInstanceUID"],
        patient_id=values["PatientID"],
        study_date=values["StudyDate"],
        study_time=values["StudyTime"],
        series_number=values["SeriesNumber"],
        modality=values["Modality"],
        sop_class_uid=values["SOPClassUID"],
    )


def _check_pixel_data(fp: _TrackedFile, size: int, implicit_vr: bool, little_endian: bool, sop_class: str) -> None:
    """After a header-only read `fp` sits on the pixel data element (or at the end): check it is whole."""
    start = fp.tell()
    cut_in_header = fp.cut_short
    head = fp._raw.read(12)  # untracked: a short read here is judged below
    endian = "<" if little_endian else ">"
    if len(head) < 8 or _tag(head[:4], endian) not in _PIXEL_TAGS:
        # No pixel data: an object without an image, or a file cut inside its header (a short read, or a
        # cut exactly between two elements of an image, whose storage class promises pixel data).
        if cut_in_header or (sop_class and "Image Storage" in UID(sop_class).name):
            raise _Unusable(f"{REASON_TRUNCATED}: file ends before the pixel data")
        raise _Unusable(REASON_NON_IMAGE)
    if implicit_vr:
        (length,) = struct.unpack(f"{endian}I", head[4:8])
        value_start = start + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise _Unusable(f"{REASON_TRUNCATED}: file ends inside the pixel data element")
        (length,) = struct.unpack(f"{endian}I", head[8:12])
        value_start = start + 12
    else:
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        value_start = start + 8
    if length == _UNDEFINED_LENGTH:
        _check_encapsulated(fp, value_start, size)
    elif value_start + length > size:
        raise _Unusable(f"{REASON_TRUNCATED}: pixel data runs past the end of the file")


def _check_encapsulated(fp: _TrackedFile, position: int, size: int) -> None:
    """Walk the fragment items of compressed pixel data (seeks only) up to the sequence delimiter."""
    while True:
        if position + 8 > size:
            raise _Unusable(f"{REASON_TRUNCATED}: compressed pixel data ends before its delimiter")
        fp.seek(position)
        head = fp.read(8)
        tag, (length,) = _tag(head[:4], "<"), struct.unpack("<I", head[4:8])
        if tag == _SEQ_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG or length == _UNDEFINED_LENGTH:
            raise _Unusable(f"{REASON_TRUNCATED}: malformed compressed pixel data")
        position += 8 + length
        if position > size:
            raise _Unusable(f"{REASON_TRUNCATED}: compressed pixel data runs past the end of the file")


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "unexpected end of file"
    if isinstance(exc, struct.error):
        return "malformed data element"
    if isinstance(exc, UnicodeError):
        return "undecodable text"
    return type(exc).__name__


def _tag(raw: bytes, endian: str) -> int:
    """A tag is stored as two 16-bit halves (group, element) in the data set's byte order."""
    group, element = struct.unpack(f"{endian}HH", raw)
    return group << 16 | element


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without 'DICM' starts like a bare data set (group 0008 little endian)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group == 0x0008 and element < 0x0100


def _text(element_value: object) -> str:
    """A header value as one clean line of text (TSV-safe; multi-values joined with a backslash)."""
    if element_value is None:
        return ""
    if isinstance(element_value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in element_value)
    else:
        text = str(element_value)
    return " ".join(text.replace("\x00", " ").split())


# --------------------------------------------------------------------------------------- the index


def scan_inbox(inbox: Path, cache: Path | None = None) -> tuple[list[IndexRow], list[QuarantineRow], IndexSummary]:
    """Read every file under `inbox` (header only): index rows, quarantine rows and their counts.

    `cache` is a previous index: rows of files whose (relpath, size, mtime_ns) are unchanged are reused
    without opening the file. Nothing is written.
    """
    cached = _load_cache(Path(cache)) if cache is not None else {}
    entries = list(_walk_inbox(Path(inbox)))
    rows: list[IndexRow] = []
    junk: list[tuple[str, str]] = []  # (relpath, reason)
    reused = 0
    # counts only on the terminal: inbox paths are named after patients
    progress = Progress("bidsafe: reading inbox headers", len(entries))
    for number, entry in enumerate(entries, start=1):
        progress.update(number)
        if entry.skip_reason:
            junk.append((entry.relpath, entry.skip_reason))
            continue
        previous = cached.get(entry.relpath)
        if previous is not None and (previous.size, previous.mtime_ns) == (entry.size, entry.mtime_ns):
            rows.append(previous)
            reused += 1
            continue
        try:
            rows.append(_read_header(entry.path, entry.relpath, entry.size, entry.mtime_ns))
        except _Unusable as exc:
            junk.append((entry.relpath, exc.reason))
    progress.done()

    rows, duplicates = _drop_duplicates(rows)
    junk.extend((row.relpath, REASON_DUPLICATE) for row in duplicates)
    rows.sort(key=IndexRow.sort_key)
    quarantine = attribute_quarantine(junk, rows)
    summary = IndexSummary(
        files=len(entries),
        dicom=len(rows),
        quarantined=len(quarantine),
        studies=len({r.study_uid for r in rows}),
        series=len({(r.study_uid, r.series_uid) for r in rows}),
        reused=reused,
        reasons=tuple(Counter(q.reason for q in quarantine).most_common()),
    )
    return rows, quarantine, summary


def index_inbox(
    inbox: Path, index_tsv: Path, quarantine_tsv: Path, cache: Path | None = None
) -> IndexSummary:
    """Index every file under `inbox` into `index_tsv` and `quarantine_tsv` (both private, mode 0600).

    `cache` is a previous index (see `scan_inbox`). When given, the cache is refreshed with the new index
    afterwards, so it can live outside the outputs a workflow manager deletes before re-running this step.
    """
    inbox, index_tsv, quarantine_tsv = Path(inbox), Path(index_tsv), Path(quarantine_tsv)
    check_outside_inbox(inbox, {"--index": index_tsv, "--quarantine": quarantine_tsv, "--cache": cache})
    rows, quarantine, summary = scan_inbox(inbox, cache)
    _write_tsv(quarantine_tsv, QUARANTINE_COLUMNS, (astuple(q) for q in quarantine))
    index_text = _tsv_bytes(INDEX_COLUMNS, (astuple(r) for r in rows))
    private_write_bytes(index_tsv, index_text)
    if cache is not None and Path(cache).resolve() != index_tsv.resolve():
        private_write_bytes(Path(cache), index_text)
    return summary


def check_outside_inbox(inbox: Path, outputs: Mapping[str, Path | None]) -> None:
    """Refuse an output inside the inbox: the inbox is read, never written."""
    root = resolve_inbox(inbox)
    for label, out in outputs.items():
        if out is not None and Path(out).resolve().is_relative_to(root):
            raise ConfigError(f"{label} must not be inside the inbox (the inbox is never written)", out)


def require_studies(summary: IndexSummary, quarantine_report: Path | None = None) -> None:
    """Stop with the reason when the inbox holds no readable DICOM study (counts and reasons only)."""
    if summary.studies:
        return
    if not summary.files:
        raise BidsafeError("ingest: no DICOM study found: the inbox holds no file (is `inbox` the right folder?)")
    reasons = "; ".join(f"{count} {reason}" for reason, count in summary.reasons)
    where = f"; see the private quarantine report {quarantine_report}" if quarantine_report else ""
    raise BidsafeError(
        f"ingest: no DICOM study found in the inbox ({summary.files} files looked at, {summary.quarantined} "
        f"quarantined: {reasons}){where}"
    )


def run_ingest(
    inbox: Path, index_tsv: Path, quarantine_tsv: Path, cache: Path | None = None,
    failed_quarantine: Path | None = None,
) -> IndexSummary:
    """The `ingest` stage: index the inbox, and stop the run here when it holds no readable study.

    A workflow manager deletes a failed job's outputs, quarantine report included; `failed_quarantine` (not
    an output) keeps a copy for the user when the stage stops, and is removed once a run finds studies.
    """
    summary = index_inbox(inbox, index_tsv, quarantine_tsv, cache=cache)
    report = Path(quarantine_tsv)
    if failed_quarantine is not None:
        failed_quarantine = Path(failed_quarantine)
        if summary.studies:
            failed_quarantine.unlink(missing_ok=True)
        else:
            private_write_bytes(failed_quarantine, report.read_bytes())
            report = failed_quarantine
    require_studies(summary, report)
    return summary


def _drop_duplicates(rows: list[IndexRow]) -> tuple[list[IndexRow], list[IndexRow]]:
    """Keep one file per SOPInstanceUID (the first by relpath): a copied export must not double slices."""
    kept: dict[tuple[str, str], IndexRow] = {}
    duplicates = []
    for row in sorted(rows, key=lambda r: r.relpath):
        key = (row.study_uid, row.sop_uid)
        if key in kept:
            duplicates.append(row)
        else:
            kept[key] = row
    return list(kept.values()), duplicates


def attribute_quarantine(junk: Iterable[tuple[str, str]], rows: Iterable[IndexRow]) -> list[QuarantineRow]:
    """Attribute each junk file to the session whose DICOM files share its folder.

    Walking up from the junk file's folder, the first folder whose subtree holds any indexed DICOM decides:
    exactly one study there means the file belongs to that session; several studies leave it unattributed
    (a shared folder says nothing about which session a stray file came from).
    """
    studies_under: dict[str, set[str]] = {}
    for row in rows:
        for folder in _ancestors(row.relpath):
            found = studies_under.setdefault(folder, set())
            if len(found) < 2:  # only "none, one or several" matters
                found.add(row.study_uid)
    result = []
    for relpath, reason in junk:
        study_uid = ""
        for folder in _ancestors(relpath):
            found = studies_under.get(folder)
            if found:
                study_uid = next(iter(found)) if len(found) == 1 else ""
                break
        result.append(QuarantineRow(relpath, study_uid, reason))
    result.sort(key=lambda q: (q.study_uid, q.relpath))
    return result


def _ancestors(relpath: str) -> Iterator[str]:
    """Folders containing `relpath`, nearest first, ending with the inbox itself ('')."""
    parts = relpath.split("/")[:-1]
    for depth in range(len(parts), -1, -1):
        yield "/".join(parts[:depth])


# ------------------------------------------------------------------------------------ TSV in and out


def _tsv_bytes(columns: tuple[str, ...], rows: Iterable[tuple]) -> bytes:
    """The relpath (first column) escaped: a name with a newline, a tab or bytes that are not UTF-8 stays one
    cell of one row (bidsafe.filelist), and the report prints no escape sequence to a terminal."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerows((escape_name(row[0]), *row[1:]) for row in rows)
    return buffer.getvalue().encode(_ENCODING, _ERRORS)


def _write_tsv(path: Path, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    private_write_bytes(path, _tsv_bytes(columns, rows))


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    try:
        text = Path(path).read_bytes().decode(_ENCODING, _ERRORS)
    except OSError as exc:
        raise BidsafeError(f"cannot read: {exc.strerror}", path) from None
    records = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not records or tuple(records[0]) != columns:
        raise BidsafeError(f"not an index file of this kind: expected columns {', '.join(columns)}", path)
    body = records[1:]
    for line, record in enumerate(body, start=2):
        if len(record) != len(columns):
            raise BidsafeError(f"line {line}: {len(record)} fields, expected {len(columns)}", path)
        record[0] = unescape_name(record[0])
    return body


def read_index(index_tsv: Path) -> list[IndexRow]:
    """Read an index written by `index_inbox` (rows in the file's order: study, series, relpath)."""
    rows = []
    for line, record in enumerate(_read_tsv(Path(index_tsv), INDEX_COLUMNS), start=2):
        try:
            size, mtime_ns = int(record[1]), int(record[2])
        except ValueError:
            raise BidsafeError(f"line {line}: size and mtime_ns must be integers", index_tsv) from None
        rows.append(IndexRow(record[0], size, mtime_ns, *record[3:]))
    return rows


def read_quarantine(quarantine_tsv: Path) -> list[QuarantineRow]:
    return [QuarantineRow(*record) for record in _read_tsv(Path(quarantine_tsv), QUARANTINE_COLUMNS)]


def sessions(rows: Iterable[IndexRow]) -> dict[str, list[IndexRow]]:
    """Group index rows by StudyInstanceUID (one scan session each), keeping their order."""
    grouped: dict[str, list[IndexRow]] = {}
    for row in rows:
        grouped.setdefault(row.study_uid, []).append(row)
    return grouped


def _load_cache(cache: Path) -> dict[str, IndexRow]:
    """A previous index by relpath; a missing or unreadable cache only costs time, so it is not an error."""
    if not cache.is_file():
        return {}
    try:
        return {row.relpath: row for row in read_index(cache)}
    except BidsafeError:
        log.warning("ingest: the cache file is not a readable index; re-reading every file")
        return {}


# -------------------------------------------------------------------------------------------- CLI


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe ingest INBOX --index F --quarantine F [--cache F]`: prints counts, never paths or names."""
    cache = getattr(args, "cache", None)
    summary = index_inbox(
        Path(args.inbox), Path(args.index), Path(args.quarantine), Path(cache) if cache else None
    )
    print(f"ingest: {summary}")
    require_studies(summary, Path(args.quarantine))
    return 0
