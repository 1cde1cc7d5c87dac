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

Modules (data flows down the list): `cli` (`bidsafe ingest`), `index` (the stage: scan, duplicates,
quarantine attribution, reports), `header` (one file's header read), `walk` (the inbox walk, fingerprint),
`records` (rows, reasons, counts, the TSV files).
"""

from bidsafe.ingest.cli import cli_main
from bidsafe.ingest.header import DICOMDIR_SOP_CLASS, HEADER_KEYWORDS
from bidsafe.ingest.index import (
    attribute_quarantine,
    check_outside_inbox,
    index_inbox,
    ingest_stage,
    require_studies,
    scan_inbox,
)
from bidsafe.ingest.records import (
    INDEX_COLUMNS,
    QUARANTINE_COLUMNS,
    REASON_DICOMDIR,
    REASON_DUPLICATE,
    REASON_EMPTY,
    REASON_NO_FILE_META,
    REASON_NO_SERIES,
    REASON_NO_SOP,
    REASON_NO_STUDY,
    REASON_NON_IMAGE,
    REASON_NOT_DICOM,
    REASON_SPECIAL,
    REASON_SYMLINK_BROKEN,
    REASON_SYMLINK_DIR,
    REASON_SYMLINK_FILE,
    REASON_SYMLINK_OUT,
    REASON_TRUNCATED,
    REASON_UNREADABLE,
    REASON_UNREADABLE_FOLDER,
    IndexRow,
    IndexSummary,
    QuarantineRow,
    read_index,
    read_quarantine,
    sessions,
    write_tsv,
)
from bidsafe.ingest.walk import inbox_fingerprint, regular_files, resolve_inbox

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "HEADER_KEYWORDS",
    "INDEX_COLUMNS",
    "QUARANTINE_COLUMNS",
    "REASON_DICOMDIR",
    "REASON_DUPLICATE",
    "REASON_EMPTY",
    "REASON_NO_FILE_META",
    "REASON_NO_SERIES",
    "REASON_NO_SOP",
    "REASON_NO_STUDY",
    "REASON_NON_IMAGE",
    "REASON_NOT_DICOM",
    "REASON_SPECIAL",
    "REASON_SYMLINK_BROKEN",
    "REASON_SYMLINK_DIR",
    "REASON_SYMLINK_FILE",
    "REASON_SYMLINK_OUT",
    "REASON_TRUNCATED",
    "REASON_UNREADABLE",
    "REASON_UNREADABLE_FOLDER",
    "IndexRow",
    "IndexSummary",
    "QuarantineRow",
    "attribute_quarantine",
    "check_outside_inbox",
    "cli_main",
    "inbox_fingerprint",
    "index_inbox",
    "read_index",
    "read_quarantine",
    "regular_files",
    "require_studies",
    "resolve_inbox",
    "ingest_stage",
    "scan_inbox",
    "sessions",
    "write_tsv",
]
