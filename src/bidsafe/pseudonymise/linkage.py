"""Pseudonyms and the private linkage table (labels stable across runs and machines given the key and table).

Subject labels are either a keyed hash (HMAC-SHA256 of the participant's identity under the secret key, 8 base32
characters) or a counter; session labels number a subject's sessions in order of scan date (`01`, `02`, ...).
Every label ever given is recorded in `private_dir/linkage.tsv` together with the real identifiers it stands
for, so labels are stable across runs and machines given the same key and table:

- a session seen before keeps its labels, whatever else changed;
- a new session of a known participant gets the next session number. A session that arrives *after* a later
  one was labelled therefore gets a higher number than its date suggests: relabelling released sessions would
  be worse (sessions.tsv keeps the age at each scan, so the order stays recoverable);
- a new participant gets a new label; a label that shares three or more consecutive characters with any of the
  participant's identifiers (PatientID, names, study or consent form IDs) is skipped, so a label can never
  look like the identity behind it.

The table is changed only under an exclusive lock (`fcntl.flock` on `private_dir/.linkage.lock`) with
read-modify-write inside the lock and an atomic replace, so concurrent runs can neither corrupt nor fork it.
The secret key is created inside the same lock, so two first runs cannot make two keys.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bidsafe.bidsnames import is_label
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import write_if_changed
from bidsafe.keys import keyed_digest, load_or_create_key, resolve_key_path
from bidsafe.phi import MIN_NEEDLE_LENGTH
from bidsafe.private import FILE_MODE, ensure_private_dir

LINKAGE_FILENAME = "linkage.tsv"
LOCK_FILENAME = ".linkage.lock"
LINKAGE_COLUMNS = (
    "subject", "session", "study_uid", "patient_id", "study_id", "consent_form_id", "scheme", "first_seen",
    "withdrawn",
)
# Tables written before withdrawal was recorded lack the last column; they read as "nobody withdrawn".
OPTIONAL_LINKAGE_COLUMNS = ("withdrawn",)
HMAC_LABEL_LENGTH = 8
SEQUENTIAL_WIDTH = 3
SESSION_WIDTH = 2
MAX_LABEL_ATTEMPTS = 10_000
MULTI_SEPARATOR = "|"  # several study IDs / consent form IDs of one participant in one linkage cell



# ------------------------------------------------------------------------------------------ labels


def hmac_subject_label(key: bytes, identity: str, attempt: int = 0) -> str:
    """8 lower-case base32 characters of HMAC(key, "subject", identity); `attempt` > 0 gives the next candidate."""
    value = identity if attempt == 0 else f"{identity}\x00{attempt}"
    digest = keyed_digest(key, "subject", value)
    return base64.b32encode(digest).decode("ascii").lower()[:HMAC_LABEL_LENGTH]


def shares_identifier(label: str, identifiers: Sequence[str] | set[str] | frozenset[str]) -> bool:
    """True when `label` has MIN_NEEDLE_LENGTH consecutive characters in common with any identifier.

    Compared case-insensitively, identifiers with separators removed (so "AB-123" also blocks "b12").
    """
    n = MIN_NEEDLE_LENGTH
    text = label.lower()
    grams = {text[i : i + n] for i in range(len(text) - n + 1)} or {text}
    for identifier in identifiers:
        squashed = re.sub(r"[^0-9a-z]", "", identifier.lower())
        if any(gram in squashed for gram in grams):
            return True
    return False


def new_subject_label(
    key: bytes, identity: str, identifiers: set[str] | frozenset[str], used: set[str], scheme: str,
    next_number: int = 1,
) -> str:
    """A fresh subject label: unused, alphanumeric, sharing no 3-character run with the participant's identifiers."""
    for attempt in range(MAX_LABEL_ATTEMPTS):
        if scheme == "hmac":
            label = hmac_subject_label(key, identity, attempt)
        else:
            label = f"{next_number + attempt:0{SEQUENTIAL_WIDTH}d}"
        if label not in used and not shares_identifier(label, identifiers):
            return label
    raise BidsafeError("could not find a subject label that resembles none of the participant's identifiers")


# ------------------------------------------------------------------------------------------ linkage table


@dataclass(frozen=True)
class LinkageRow:
    """One session's pseudonyms and the real identifiers behind them (private: never leaves private_dir)."""

    subject: str
    session: str
    study_uid: str
    patient_id: str = ""
    study_id: str = ""  # one or more, joined by MULTI_SEPARATOR
    consent_form_id: str = ""
    scheme: str = "hmac"
    first_seen: str = ""
    # the UTC date a run first saw the participant's withdrawal; once set, every session of the subject is
    # withheld and its data removed, whatever the consent registry says later (clear it by hand to re-admit)
    withdrawn: str = ""

    def as_row(self) -> list[str]:
        return [getattr(self, name) for name in LINKAGE_COLUMNS]


def read_linkage(path: Path) -> list[LinkageRow]:
    """Read the linkage table; a damaged one is an error naming the file and line (never a value)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    rows = list(reader)
    if not rows:
        return []
    header = rows[0]
    missing = [c for c in LINKAGE_COLUMNS if c not in header and c not in OPTIONAL_LINKAGE_COLUMNS]
    if missing:
        raise BidsafeError(f"linkage table: column(s) {', '.join(missing)} missing from the header", path)
    out = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(rows[1:], start=2):
        if not any(cells):
            continue
        if len(cells) != len(header):
            raise BidsafeError(f"linkage table: line {number} has {len(cells)} cells, expected {len(header)}", path)
        record = dict(zip(header, cells, strict=True))
        row = LinkageRow(**{c: record.get(c, "") for c in LINKAGE_COLUMNS})
        if not (is_label(row.subject) and is_label(row.session) and row.study_uid):
            raise BidsafeError(f"linkage table: line {number} has an empty or non-alphanumeric label or study", path)
        if row.study_uid in seen:
            raise BidsafeError(f"linkage table: lines {seen[row.study_uid]} and {number} hold the same study", path)
        seen[row.study_uid] = number
        out.append(row)
    return out


def render_linkage(rows: Sequence[LinkageRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(LINKAGE_COLUMNS)
    for row in rows:
        writer.writerow(row.as_row())
    return buffer.getvalue()


@contextlib.contextmanager
def linkage_lock(private_dir: Path) -> Iterator[None]:
    """An exclusive lock over the linkage table and key (released on exit, and by the OS if the process dies)."""
    ensure_private_dir(private_dir)
    fd = os.open(Path(private_dir) / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass(frozen=True)
class StudyIdentity:
    """What labelling needs to know about one study (session); private."""

    study_uid: str
    identity: str  # "study:<id>", "patient:<id>" or "uid:<study uid>": what a new subject label is derived from
    patient_id: str  # "" when missing or conflicting
    study_ids: tuple[str, ...] = ()
    consent_form_ids: tuple[str, ...] = ()
    study_date: str = ""
    study_time: str = ""
    identifiers: frozenset[str] = frozenset()


def _split(cell: str) -> list[str]:
    return [v for v in cell.split(MULTI_SEPARATOR) if v]


def _join(values: Sequence[str]) -> str:
    return MULTI_SEPARATOR.join(dict.fromkeys(v for v in values if v))


def assign_labels(
    studies: Sequence[StudyIdentity], table: Sequence[LinkageRow], key: bytes, scheme: str, now: str
) -> tuple[list[LinkageRow], dict[str, tuple[str, str]]]:
    """Labels for every study: reused from `table` where known, new ones appended. Pure: no I/O.

    `scheme` is the validated `pseudonyms.scheme` (the config schema lists the schemes).
    Returns the updated table and {study_uid: (subject, session)}.
    """
    rows, result, pending = _reuse_known(studies, table)
    book = _Book.of(rows)

    def group_order(item: tuple[str, list[StudyIdentity]]) -> tuple[str, str, str]:
        first = min(item[1], key=lambda s: (s.study_date, s.study_time, s.study_uid))
        return first.study_date, first.study_time, first.study_uid

    for identity, group in sorted(pending.items(), key=group_order):
        subject, row_scheme = _subject_for(identity, group, rows, book, key, scheme)
        taken = book.sessions_of.setdefault(subject, set())
        number = 1 + max((int(s) for s in taken if s.isdigit()), default=0)
        for study in sorted(group, key=lambda s: (s.study_date, s.study_time, s.study_uid)):
            session = f"{number:0{SESSION_WIDTH}d}"
            number += 1
            taken.add(session)
            rows.append(LinkageRow(
                subject=subject, session=session, study_uid=study.study_uid, patient_id=study.patient_id,
                study_id=_join(study.study_ids), consent_form_id=_join(study.consent_form_ids),
                scheme=row_scheme, first_seen=now,
            ))
            result[study.study_uid] = (subject, session)
            book.note(subject, study.patient_id, study.study_ids)
    return rows, result


def _reuse_known(studies: Sequence[StudyIdentity], table: Sequence[LinkageRow]
                 ) -> tuple[list[LinkageRow], dict[str, tuple[str, str]], dict[str, list[StudyIdentity]]]:
    """(table with what the registry has learnt since filled in, labels of known studies, new studies by identity)."""
    rows = list(table)
    index_of = {row.study_uid: i for i, row in enumerate(rows)}
    result: dict[str, tuple[str, str]] = {}
    pending: dict[str, list[StudyIdentity]] = {}
    for study in studies:
        i = index_of.get(study.study_uid)
        if i is None:
            pending.setdefault(study.identity, []).append(study)
            continue
        row = rows[i]
        result[study.study_uid] = (row.subject, row.session)
        # Fill what the registry has learnt since (a study ID added later); recorded values are never rewritten.
        filled = replace(
            row,
            patient_id=row.patient_id or study.patient_id,
            study_id=row.study_id or _join(study.study_ids),
            consent_form_id=row.consent_form_id or _join(study.consent_form_ids),
        )
        if filled != row:
            rows[i] = filled
    return rows, result, pending


@dataclass
class _Book:
    """Who is known under which patient ID and study ID, and which labels are taken (while labelling)."""

    subjects_of_patient: dict[str, set[str]]
    subjects_of_study_id: dict[str, set[str]]
    sessions_of: dict[str, set[str]]
    used: set[str]
    next_number: int

    @classmethod
    def of(cls, rows: Sequence[LinkageRow]) -> _Book:
        book = cls({}, {}, {}, set(), 1)
        for row in rows:
            book.note(row.subject, row.patient_id, _split(row.study_id))
            book.sessions_of.setdefault(row.subject, set()).add(row.session)
        book.used = set(book.sessions_of)
        book.next_number = 1 + max(
            (int(r.subject) for r in rows if r.scheme == "sequential" and r.subject.isdigit()), default=0)
        return book

    def note(self, subject: str, patient_id: str, study_ids: Sequence[str]) -> None:
        if patient_id:
            self.subjects_of_patient.setdefault(patient_id, set()).add(subject)
        for study_id in study_ids:
            self.subjects_of_study_id.setdefault(study_id, set()).add(subject)


def _subject_for(identity: str, group: Sequence[StudyIdentity], rows: Sequence[LinkageRow], book: _Book,
                 key: bytes, scheme: str) -> tuple[str, str]:
    """(subject label, its scheme) for a group of new studies of one identity: a known subject's, or a new one."""
    known: set[str] = set()
    for study in group:
        if study.patient_id:
            known |= book.subjects_of_patient.get(study.patient_id, set())
        for study_id in study.study_ids:
            known |= book.subjects_of_study_id.get(study_id, set())
    if len(known) > 1:
        raise BidsafeError(
            "linkage conflict: the consent registry makes one participant of subjects "
            f"{', '.join('sub-' + s for s in sorted(known))}; correct the registry or merge them in the "
            "linkage table by hand"
        )
    if known:
        subject = known.pop()
        return subject, next(r.scheme for r in rows if r.subject == subject)
    identifiers = frozenset().union(*(s.identifiers for s in group))
    subject = new_subject_label(key, identity, identifiers, book.used, scheme, book.next_number)
    book.used.add(subject)
    if scheme == "sequential":
        book.next_number = int(subject) + 1
    return subject, scheme


def mark_withdrawn(rows: Sequence[LinkageRow], subjects: set[str] | frozenset[str], today: str) -> list[LinkageRow]:
    """Every row of `subjects` marked withdrawn on `today` (a date already recorded is kept). Pure."""
    return [replace(row, withdrawn=today) if row.subject in subjects and not row.withdrawn else row for row in rows]


def withdrawn_subjects(rows: Sequence[LinkageRow]) -> set[str]:
    """Subjects with any row marked withdrawn: all their sessions are withheld for good."""
    return {row.subject for row in rows if row.withdrawn}


def update_linkage(
    private_dir: Path, studies: Sequence[StudyIdentity], scheme: str, withdrawn: Sequence[str] = (),
) -> tuple[bytes, dict[str, tuple[str, str]]]:
    """Load (or first create) the key and assign labels, all under the linkage lock; returns (key, labels).

    `withdrawn` holds the study UIDs whose participant the consent registry says withdrew: every row of their
    subject is marked withdrawn in the same locked update (`linkage_withdrawn` reads the marks back).
    """
    private_dir = Path(private_dir)
    linkage = private_dir / LINKAGE_FILENAME
    with linkage_lock(private_dir):
        key = load_or_create_key(resolve_key_path(private_dir=private_dir), dependents=[linkage])
        rows = read_linkage(linkage)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        updated, labels = assign_labels(studies, rows, key, scheme, now)
        updated = mark_withdrawn(updated, {labels[uid][0] for uid in withdrawn if uid in labels}, now[:10])
        if updated != rows or not linkage.exists():
            write_if_changed(linkage, render_linkage(updated), mode=FILE_MODE)
        os.chmod(linkage, FILE_MODE)
    return key, labels


def linkage_withdrawn(private_dir: Path) -> set[str]:
    """The withdrawn subjects recorded in private_dir's linkage table."""
    return withdrawn_subjects(read_linkage(Path(private_dir) / LINKAGE_FILENAME))


