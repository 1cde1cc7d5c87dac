"""The ingest stage: scan the inbox (reusing a previous index), drop duplicates, attribute the quarantine to
sessions, write both private reports, and stop the run when no readable study was found."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple
from pathlib import Path

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.ingest.header import Unusable, read_header
from bidsafe.ingest.records import (
    INDEX_COLUMNS,
    QUARANTINE_COLUMNS,
    REASON_DUPLICATE,
    IndexRow,
    IndexSummary,
    QuarantineRow,
    read_index,
    tsv_bytes,
    write_tsv,
)
from bidsafe.ingest.walk import resolve_inbox, walk_inbox
from bidsafe.private import private_write_bytes
from bidsafe.progress import Progress

log = logging.getLogger("bidsafe.ingest")  # the name its log lines had before the split


def scan_inbox(inbox: Path, cache: Path | None = None) -> tuple[list[IndexRow], list[QuarantineRow], IndexSummary]:
    """Read every file under `inbox` (header only): index rows, quarantine rows and their counts.

    `cache` is a previous index: rows of files whose (relpath, size, mtime_ns) are unchanged are reused
    without opening the file. Nothing is written.
    """
    cached = _load_cache(Path(cache)) if cache is not None else {}
    entries = list(walk_inbox(Path(inbox)))
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
            rows.append(read_header(entry.path, entry.relpath, entry.size, entry.mtime_ns))
        except Unusable as exc:
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
    write_tsv(quarantine_tsv, QUARANTINE_COLUMNS, (astuple(q) for q in quarantine))
    index_text = tsv_bytes(INDEX_COLUMNS, (astuple(r) for r in rows))
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


def ingest_stage(
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
    log.info("ingest: %s", summary)
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
            under = studies_under.get(folder)
            if under:
                study_uid = next(iter(under)) if len(under) == 1 else ""
                break
        result.append(QuarantineRow(relpath, study_uid, reason))
    result.sort(key=lambda q: (q.study_uid, q.relpath))
    return result


def _ancestors(relpath: str) -> Iterator[str]:
    """Folders containing `relpath`, nearest first, ending with the inbox itself ('')."""
    parts = relpath.split("/")[:-1]
    for depth in range(len(parts), -1, -1):
        yield "/".join(parts[:depth])


def _load_cache(cache: Path) -> dict[str, IndexRow]:
    """A previous index by relpath; a missing or unreadable cache only costs time, so it is not an error."""
    if not cache.is_file():
        return {}
    try:
        return {row.relpath: row for row in read_index(cache)}
    except BidsafeError:
        log.warning("ingest: the cache file is not a readable index; re-reading every file")
        return {}
