"""Pseudonyms, the private linkage table and the `pseudonymise` stage (consent gate + participant metadata).

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
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsafe import consent as consent_mod
from bidsafe import participants as meta
from bidsafe.config import schema_defaults
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.filelist import file_list_text
from bidsafe.fsutil import write_if_changed
from bidsafe.keys import keyed_digest, load_or_create_key, resolve_key_path
from bidsafe.phi import MIN_NEEDLE_LENGTH, harvest_dataset
from bidsafe.private import FILE_MODE, ensure_private_dir
from bidsafe.siteexclusions import read_site_exclusions, site_decision

log = logging.getLogger("bidsafe")

SCHEMES = ("hmac", "sequential")
LINKAGE_FILENAME = "linkage.tsv"
LOCK_FILENAME = ".linkage.lock"
LINKAGE_COLUMNS = (
    "subject", "session", "study_uid", "patient_id", "study_id", "consent_form_id", "scheme", "first_seen",
    "withdrawn",
)
# Tables written before withdrawal was recorded lack the last column; they read as "nobody withdrawn".
OPTIONAL_LINKAGE_COLUMNS = ("withdrawn",)
SESSIONS_COLUMNS = ("subject", "session", "study_uid", "included", "reason", "n_files")
HMAC_LABEL_LENGTH = 8
SEQUENTIAL_WIDTH = 3
SESSION_WIDTH = 2
MAX_LABEL_ATTEMPTS = 10_000
MULTI_SEPARATOR = "|"  # several study IDs / consent form IDs of one participant in one linkage cell

REASON_NO_PATIENT_ID = "identity:no-patient-id"
REASON_CONFLICTING_IDS = "identity:conflicting-patient-ids"

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


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
        if not (_LABEL.match(row.subject) and _LABEL.match(row.session) and row.study_uid):
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

    Returns the updated table and {study_uid: (subject, session)}.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"config: pseudonyms.scheme must be one of {', '.join(SCHEMES)}")
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

    subjects_of_patient: dict[str, set[str]] = {}
    subjects_of_study_id: dict[str, set[str]] = {}
    sessions_of: dict[str, set[str]] = {}
    for row in rows:
        if row.patient_id:
            subjects_of_patient.setdefault(row.patient_id, set()).add(row.subject)
        for study_id in _split(row.study_id):
            subjects_of_study_id.setdefault(study_id, set()).add(row.subject)
        sessions_of.setdefault(row.subject, set()).add(row.session)
    used = set(sessions_of)
    next_number = 1 + max((int(r.subject) for r in rows if r.scheme == "sequential" and r.subject.isdigit()),
                          default=0)

    def group_order(item: tuple[str, list[StudyIdentity]]) -> tuple[str, str, str]:
        first = min(item[1], key=lambda s: (s.study_date, s.study_time, s.study_uid))
        return first.study_date, first.study_time, first.study_uid

    for identity, group in sorted(pending.items(), key=group_order):
        known: set[str] = set()
        for study in group:
            if study.patient_id:
                known |= subjects_of_patient.get(study.patient_id, set())
            for study_id in study.study_ids:
                known |= subjects_of_study_id.get(study_id, set())
        if len(known) > 1:
            raise BidsafeError(
                "linkage conflict: the consent registry makes one participant of subjects "
                f"{', '.join('sub-' + s for s in sorted(known))}; correct the registry or merge them in the "
                "linkage table by hand"
            )
        if known:
            subject = known.pop()
            row_scheme = next(r.scheme for r in rows if r.subject == subject)
        else:
            identifiers = frozenset().union(*(s.identifiers for s in group))
            subject = new_subject_label(key, identity, identifiers, used, scheme, next_number)
            row_scheme = scheme
            used.add(subject)
            if scheme == "sequential":
                next_number = int(subject) + 1
        taken = sessions_of.setdefault(subject, set())
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
            if study.patient_id:
                subjects_of_patient.setdefault(study.patient_id, set()).add(subject)
            for study_id in study.study_ids:
                subjects_of_study_id.setdefault(study_id, set()).add(subject)
    return rows, result


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


# ------------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class SessionDecision:
    subject: str
    session: str
    included: bool
    reason: str  # "" when included; otherwise a code such as consent:none (never a real identifier)


@dataclass
class PseudonymiseResult:
    decisions: list[SessionDecision]
    k_anonymity: meta.KAnonymityOutcome
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def included(self) -> list[tuple[str, str]]:
        return [(d.subject, d.session) for d in self.decisions if d.included]


@dataclass(frozen=True)
class _Study:
    """Everything private the stage knows about one study."""

    uid: str
    relpaths: tuple[str, ...]
    patient_ids: tuple[str, ...]
    study_date: str
    study_time: str
    header: Dataset | None


@dataclass(frozen=True)
class StageSettings:
    scheme: str
    audience: str
    k: int
    action: str
    quasi_identifiers: tuple[str, ...]
    bins: tuple[float, ...]
    columns: list[meta.ColumnRule]


def read_settings(config: Mapping) -> StageSettings:
    """The stage's config keys, checked (defaults from the workflow's config schema)."""
    defaults = {**schema_defaults("pseudonyms"), **schema_defaults("release")}
    pseudonyms = config.get("pseudonyms") or {}
    release = config.get("release") or {}
    participants = config.get("participants") or {}
    if not isinstance(pseudonyms, Mapping) or not isinstance(release, Mapping) or not isinstance(participants,
                                                                                                 Mapping):
        raise ConfigError("config: 'pseudonyms', 'release' and 'participants' must be mappings")
    scheme = str(pseudonyms.get("scheme", defaults["scheme"]))
    if scheme not in SCHEMES:
        raise ConfigError(f"config: pseudonyms.scheme must be one of {', '.join(SCHEMES)}")
    audience = consent_mod.check_audience(release.get("audience", defaults["audience"]))
    k = release.get("k_anonymity", defaults["k_anonymity"])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("config: release.k_anonymity must be a whole number >= 1")
    action = str(release.get("k_anonymity_action", defaults["k_anonymity_action"]))
    if action not in ("fail", "generalise"):
        raise ConfigError("config: release.k_anonymity_action must be 'fail' or 'generalise'")
    qis = release.get("quasi_identifiers", defaults["quasi_identifiers"])
    if not isinstance(qis, (list, tuple)) or not all(isinstance(q, str) for q in qis):
        raise ConfigError("config: release.quasi_identifiers must be a list of column names")
    bins = release.get("k_anonymity_bins", defaults["k_anonymity_bins"])
    if (not isinstance(bins, (list, tuple)) or not bins
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 1 for b in bins)):
        raise ConfigError("config: release.k_anonymity_bins must be a list of multipliers greater than 1")
    columns = meta.parse_columns(participants.get("columns"))
    return StageSettings(scheme, audience, k, action, tuple(qis), tuple(float(b) for b in sorted(bins)), columns)


def _read_index(index_tsv: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """study_uid -> [(relpath, patient_id, study_date, study_time)] from the ingest stage's index."""
    from bidsafe.ingest import read_index, sessions

    grouped = sessions(read_index(Path(index_tsv)))
    return {uid: [(r.relpath, r.patient_id.strip(), r.study_date.strip(), r.study_time.strip()) for r in rows]
            for uid, rows in grouped.items() if uid}


def _read_one_header(inbox: Path, relpaths: Sequence[str]) -> Dataset | None:
    """The first readable header of a session (header only); None when no file reads."""
    for relpath in relpaths:
        try:
            return pydicom.dcmread(Path(inbox) / relpath, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError,
                IndexError, NotImplementedError):
            continue  # an unreadable header only costs metadata; ingest already reported the file
    return None


def _identifiers(header: Dataset | None, patient_ids: Sequence[str], record: consent_mod.ConsentRecord | None
                 ) -> frozenset[str]:
    """Every ID and name a label must not resemble (patient IDs, names, study and consent form IDs)."""
    values: set[str] = {p for p in patient_ids if p}
    if header is not None:
        for value in harvest_dataset(header):
            if value.category in ("id", "name"):
                values.update(value.renderings() if value.category == "name" else {value.value})
    if record is not None:
        values.update(record.study_ids)
        values.update(record.consent_form_ids)
        values.add(record.patient_id)
    return frozenset(v for v in values if v)


def _first(values: Sequence[str]) -> str:
    return next((v for v in values if v), "")


def run_pseudonymise(
    index_tsv: Path, inbox: Path, private_dir: Path, out_dir: Path, config: Mapping, work_dir: Path | None = None,
) -> PseudonymiseResult:
    """The `pseudonymise` stage: labels, consent gate, private session lists, released participant metadata.

    Writes (each only when its content changed, so finished sessions are not redone):
    - private_dir/linkage.tsv (under the lock), private_dir/secret.key (first run only);
    - private_dir/pseudonymise/sessions.tsv: subject, session, study_uid, included, reason, n_files;
    - private_dir/sessions/sub-<S>/ses-<T>/files.txt: the session's inbox-relative paths, sorted;
    - out_dir/participants.tsv/json, out_dir/sub-<S>/sub-<S>_sessions.tsv/json (included only, allow-listed);
    - out_dir/summary.json: per session pseudonym, included, reason, and the k-anonymity outcome (no real IDs).

    A participant the registry says withdrew is marked so in the linkage table; every session of a marked
    subject is withheld (consent:withdrawn) for good, and their data in `work_dir` and `private_dir` are
    removed (bidsafe.withdrawal), right after the mark, so that a later failure cannot skip it.
    """
    index_tsv, inbox, private_dir, out_dir = Path(index_tsv), Path(inbox), Path(private_dir), Path(out_dir)
    _check_apart(private_dir, out_dir)
    settings = read_settings(config)
    site = read_site_exclusions(config)
    registry = consent_mod.load_registry(config)
    demographics = meta.read_demographics(config.get("demographics"))
    meta.check_columns_against_demographics(settings.columns, demographics)

    studies: list[_Study] = []
    for uid, rows in sorted(_read_index(index_tsv).items()):
        relpaths = tuple(sorted({r[0] for r in rows}))
        studies.append(_Study(
            uid=uid, relpaths=relpaths, patient_ids=tuple(sorted({r[1] for r in rows} - {""})),
            study_date=_first(sorted(r[2] for r in rows)), study_time=_first(sorted(r[3] for r in rows)),
            header=_read_one_header(inbox, relpaths),
        ))

    identities: list[StudyIdentity] = []
    problems: dict[str, str] = {}
    withdrawn_uids: list[str] = []
    for study in studies:
        patient_id = study.patient_ids[0] if len(study.patient_ids) == 1 else ""
        if not study.patient_ids:
            problems[study.uid] = REASON_NO_PATIENT_ID
        elif len(study.patient_ids) > 1:
            problems[study.uid] = REASON_CONFLICTING_IDS
        record = registry.lookup(patient_id) if (registry is not None and patient_id) else None
        if record is not None and record.withdrawn:
            withdrawn_uids.append(study.uid)
        if record is not None and record.study_id:
            identity = f"study:{record.study_id}"
        elif patient_id:
            identity = f"patient:{patient_id}"
        else:
            identity = f"uid:{study.uid}"
        identities.append(StudyIdentity(
            study_uid=study.uid, identity=identity, patient_id=patient_id,
            study_ids=record.study_ids if record else (), consent_form_ids=record.consent_form_ids if record else (),
            study_date=study.study_date, study_time=study.study_time,
            identifiers=_identifiers(study.header, study.patient_ids, record),
        ))

    _key, labels = update_linkage(private_dir, identities, settings.scheme, withdrawn_uids)
    withdrawn = linkage_withdrawn(private_dir)
    if withdrawn:
        from bidsafe.withdrawal import remove_withdrawn

        # without a work_dir (a direct call) only this stage's own folder is cleaned besides private_dir
        remove_withdrawn(Path(work_dir) if work_dir is not None else out_dir, private_dir, withdrawn)

    decisions: list[SessionDecision] = []
    metadata_inputs: list[meta.SessionMetadataInput] = []
    for study, ident in zip(studies, identities, strict=True):
        subject, session = labels[study.uid]
        site_reason = site_decision(
            site, subject=subject, session=session, patient_ids=study.patient_ids, study_uid=study.uid,
            patient_name=str(study.header.get("PatientName", "") or "") if study.header is not None else "")
        if subject in withdrawn:
            # before the site's exclusions: withdrawal decides what is removed, whatever else applies
            included, reason = False, consent_mod.REASON_WITHDRAWN
        elif site_reason is not None:
            included, reason = False, site_reason
        elif study.uid in problems:
            included, reason = False, problems[study.uid]
        else:
            included, reason = consent_mod.decide(registry, ident.patient_id, settings.audience)
        decisions.append(SessionDecision(subject, session, included, "" if included else reason))
        if included:
            metadata_inputs.append(meta.SessionMetadataInput(
                subject=subject, session=session, patient_id=ident.patient_id, study_uid=study.uid,
                study_date=study.study_date, study_time=study.study_time,
                facts=meta.facts_from_dataset(study.header),
                lookup_keys=(ident.patient_id, *ident.study_ids),
            ))
    decisions.sort(key=lambda d: (d.subject, d.session))

    # Metadata and k-anonymity before any session list is written: a failing check leaves nothing half-done.
    tables = meta.build_tables(metadata_inputs, settings.columns, demographics)
    outcome = meta.enforce_k_anonymity(tables, k=settings.k, action=settings.action,
                                       quasi_identifiers=settings.quasi_identifiers, bins=settings.bins)
    rendered = meta.render_metadata(tables, outcome)

    _write_private_session_lists(private_dir, studies, labels, decisions, withdrawn)
    meta.write_metadata(out_dir, rendered)
    summary = _summary(settings, registry, decisions, outcome, tables)
    write_if_changed(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("pseudonymise: %d of %d sessions included", sum(d.included for d in decisions), len(decisions))
    return PseudonymiseResult(decisions=decisions, k_anonymity=outcome, summary=summary)


def _check_apart(private_dir: Path, out_dir: Path) -> None:
    private, out = private_dir.resolve(), out_dir.resolve()
    if private == out or private.is_relative_to(out) or out.is_relative_to(private):
        raise ConfigError("pseudonymise: the output folder and private_dir overlap; private data must stay apart")


def _write_private_session_lists(private_dir: Path, studies: Sequence[_Study],
                                 labels: Mapping[str, tuple[str, str]], decisions: Sequence[SessionDecision],
                                 withdrawn: set[str] | frozenset[str] = frozenset()) -> None:
    by_label = {(d.subject, d.session): d for d in decisions}
    sessions_root = ensure_private_dir(private_dir / "sessions")
    rows = []
    for study in studies:
        subject, session = labels[study.uid]
        decision = by_label[(subject, session)]
        rows.append((subject, session, study.uid, "yes" if decision.included else "no", decision.reason,
                     str(len(study.relpaths))))
        if subject in withdrawn:
            continue  # a withdrawn participant's inbox paths are not kept (nothing reads them again)
        folder = ensure_private_dir(ensure_private_dir(sessions_root / f"sub-{subject}") / f"ses-{session}")
        # escaped (bidsafe.filelist): a name with a newline or bytes that are not UTF-8 must come back whole
        write_if_changed(folder / "files.txt", file_list_text(study.relpaths), mode=FILE_MODE)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(SESSIONS_COLUMNS)
    writer.writerows(sorted(rows))
    folder = ensure_private_dir(private_dir / "pseudonymise")
    write_if_changed(folder / "sessions.tsv", buffer.getvalue(), mode=FILE_MODE)


def _summary(settings: StageSettings, registry: consent_mod.ConsentRegistry | None,
             decisions: Sequence[SessionDecision], outcome: meta.KAnonymityOutcome,
             tables: meta.MetadataTables) -> dict[str, object]:
    if registry is None:
        consent_state = "no-registry"
    elif registry.none_required:
        consent_state = consent_mod.NONE_REQUIRED
    else:
        consent_state = "registry"
    included = [d for d in decisions if d.included]
    return {
        "stage": "pseudonymise",
        "audience": settings.audience,
        "consent": consent_state,
        "pseudonym_scheme": settings.scheme,
        "counts": {
            "sessions": len(decisions),
            "included_sessions": len(included),
            "withheld_sessions": len(decisions) - len(included),
            "released_participants": len({d.subject for d in included}),
        },
        "sessions": [{"subject": d.subject, "session": d.session, "included": d.included, "reason": d.reason}
                     for d in decisions],
        "k_anonymity": outcome.to_json(),
        "metadata_notes": dict(sorted(tables.notes.items())),
    }


# ------------------------------------------------------------------------------------------ for the workflow


def all_sessions(sessions_tsv: Path) -> list[SessionDecision]:
    """Every session of the stage's private sessions.tsv, included or not (for the run summary)."""
    path = Path(sessions_tsv)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in SESSIONS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BidsafeError(f"sessions table: column(s) {', '.join(missing)} missing", path)
        return [SessionDecision(r["subject"], r["session"], r["included"] == "yes", r["reason"]) for r in reader]


def included_sessions(sessions_tsv: Path) -> list[tuple[str, str]]:
    """(subject, session) of every included session, sorted: the per-session jobs' wildcards."""
    return sorted((d.subject, d.session) for d in all_sessions(sessions_tsv) if d.included)
