"""The ingest records: index and quarantine rows, the quarantine reasons, the counts, and their private TSV files."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError
from bidsafe.filelist import escape_name, unescape_name
from bidsafe.private import private_write_bytes

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

# Index files may hold paths that are not valid UTF-8 (exports from old systems); keep their bytes intact.
TSV_ENCODING = "utf-8"
TSV_ERRORS = "surrogateescape"

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


def tsv_bytes(columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> bytes:
    """The relpath (first column) escaped: a name with a newline, a tab or bytes that are not UTF-8 stays one
    cell of one row (bidsafe.filelist), and the report prints no escape sequence to a terminal."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerows((escape_name(row[0]), *row[1:]) for row in rows)
    return buffer.getvalue().encode(TSV_ENCODING, TSV_ERRORS)


def write_tsv(path: Path, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    private_write_bytes(path, tsv_bytes(columns, rows))


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    try:
        text = Path(path).read_bytes().decode(TSV_ENCODING, TSV_ERRORS)
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
