"""Participant metadata values: header facts, the demographics file, raw values per participant and session,
and the released text of a value under its precision rule.

Values come from one DICOM header per session (PatientSex, PatientBirthDate vs StudyDate or PatientAge,
PatientWeight, PatientSize) and from the optional demographics file kept by the research team.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path

from pydicom.dataset import Dataset

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.ages import Age, age_between, parse_da, parse_dicom_age
from bidsafe.pseudonymise.columns import ColumnRule
from bidsafe.pseudonymise.tables import read_table

NA = "n/a"
_MISSING = {"", "n/a", "na", "nan", "none", "null", "-", "unknown"}

@dataclass(frozen=True)
class HeaderFacts:
    """The few values one session's DICOM header gives for metadata (private until released by a rule)."""

    sex: str | None = None
    age: Age | None = None
    weight_kg: float | None = None
    height_m: float | None = None


def facts_from_dataset(ds: Dataset | None) -> HeaderFacts:
    if ds is None:
        return HeaderFacts()
    sex = str(ds.get("PatientSex", "") or "").strip().upper()[:1] or None
    if sex not in (None, "M", "F", "O"):
        sex = None
    birth = parse_da(ds.get("PatientBirthDate", ""))
    scan = parse_da(ds.get("StudyDate", "")) or parse_da(ds.get("SeriesDate", "")) or parse_da(
        ds.get("AcquisitionDate", "")
    )
    age = age_between(birth, scan) if birth and scan else None
    if age is None:
        age = parse_dicom_age(ds.get("PatientAge", ""))
    return HeaderFacts(sex=sex, age=age, weight_kg=_positive(ds.get("PatientWeight")),
                       height_m=_positive(ds.get("PatientSize")))


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and math.isfinite(number) else None


# ------------------------------------------------------------------------------------------ demographics


@dataclass
class Demographics:
    """Rows of the demographics file: per participant, and per session where a study_uid/study_date is given."""

    path: Path | None = None
    key_column: str = "patient_id"
    participant_rows: dict[str, dict[str, str]] = field(default_factory=dict)
    session_rows: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    def rows_for(self, keys: Iterable[str], study_uid: str, study_date: str) -> tuple[dict[str, str], dict[str, str]]:
        """(participant-level row, session-level row) for a session; empty dicts when absent."""
        participant: dict[str, str] = {}
        session: dict[str, str] = {}
        day = re.sub(r"\D", "", study_date)
        for key in keys:
            if not key:
                continue
            participant = participant or self.participant_rows.get(key, {})
            session = session or self.session_rows.get((key, study_uid), {}) or self.session_rows.get((key, day), {})
        return participant, session


def read_demographics(path: str | Path | None) -> Demographics:
    """Parse the optional demographics TSV/CSV keyed by `patient_id` (or `study_id`)."""
    if path is None or (isinstance(path, str) and not path.strip()):
        return Demographics()
    path = Path(path)
    header, rows = read_table(path, "demographics")
    key_column = "patient_id" if "patient_id" in header else "study_id" if "study_id" in header else ""
    if not key_column:
        raise BidsafeError(
            "demographics: required column 'patient_id' (or 'study_id') is missing from the header", path
        )
    demo = Demographics(path=path, key_column=key_column, columns=tuple(header))
    first_row: dict[object, int] = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        key = row.get(key_column, "")
        if not key:
            raise BidsafeError(f"demographics: row {number}, column '{key_column}' is empty", path)
        study_uid = row.get("study_uid", "")
        study_date = re.sub(r"\D", "", row.get("study_date", ""))
        if row.get("study_date") and len(study_date) != 8:
            raise BidsafeError(f"demographics: row {number}, column 'study_date' is not a date (YYYY-MM-DD)", path)
        slot: object = (key, study_uid or study_date) if (study_uid or study_date) else key
        if slot in first_row:
            raise BidsafeError(f"demographics: rows {first_row[slot]} and {number} describe the same participant "
                               "and session", path)
        first_row[slot] = number
        if study_uid or study_date:
            demo.session_rows[(key, study_uid or study_date)] = row
        else:
            demo.participant_rows[key] = row
    return demo


def check_columns_against_demographics(rules: Sequence[ColumnRule], demographics: Demographics) -> None:
    """Every demographics column a rule names must exist in the file (a typo must not silently give n/a)."""
    for rule in rules:
        needed = rule.demographics_column or (rule.gestational_age_column if rule.source == "postmenstrual_age"
                                              else None)
        if needed is None:
            continue
        if demographics.path is None:
            raise ConfigError(f"config: participants.columns.{rule.name} needs the 'demographics' file, "
                              "which is not configured")
        if needed not in demographics.columns:
            raise BidsafeError(f"demographics: column '{needed}' (used by participants.columns.{rule.name}) is "
                               "missing from the header", demographics.path)


# ------------------------------------------------------------------------------------------ values


RawValue = float | str | None


@dataclass(frozen=True)
class SessionMetadataInput:
    """One included session as the metadata builder sees it (identifiers stay private, used for lookups)."""

    subject: str
    session: str
    patient_id: str
    study_uid: str
    study_date: str
    study_time: str
    facts: HeaderFacts
    lookup_keys: tuple[str, ...] = ()  # patient_id and study IDs, to find demographics rows


@dataclass
class MetadataTables:
    """Raw (unrounded, private) values per released row; rounding happens only when rendering."""

    rules: list[ColumnRule]
    participants: dict[str, dict[str, RawValue]]  # subject -> column -> raw value
    sessions: dict[str, dict[str, dict[str, RawValue]]]  # subject -> session -> column -> raw value
    notes: Counter[str] = field(default_factory=Counter)  # e.g. "weight: out of range" -> count (no values)


def _raw_value(rule: ColumnRule, s: SessionMetadataInput, participant_row: Mapping[str, str],
               session_row: Mapping[str, str], notes: Counter[str]) -> RawValue:
    facts = s.facts
    value: RawValue
    if rule.source == "sex":
        value = facts.sex
    elif rule.source == "age_at_scan":
        value = facts.age.in_unit(rule.unit or "years") if facts.age else None
    elif rule.source == "postmenstrual_age":
        ga = _demographics_number(rule, session_row.get(rule.gestational_age_column)
                                  or participant_row.get(rule.gestational_age_column), notes)
        value = ga * (7.0 if rule.unit == "days" else 1.0) + facts.age.in_unit(rule.unit or "weeks") \
            if (ga is not None and facts.age is not None) else None
    elif rule.source == "weight":
        value = facts.weight_kg * (1000.0 if rule.unit == "g" else 1.0) if facts.weight_kg else None
    elif rule.source == "height":
        value = facts.height_m * (100.0 if rule.unit == "cm" else 1.0) if facts.height_m else None
    else:
        column = rule.demographics_column or ""
        cell = session_row.get(column) or participant_row.get(column) or ""
        if rule.kind == "categorical":
            value = _demographics_level(rule, cell, notes)
        else:
            value = _demographics_number(rule, cell, notes)
    if value is not None and rule.kind == "numeric":
        value = float(value)  # ages from PatientAge are whole numbers: they must be range-checked and top-coded too
        low, high = rule.valid_range or (-math.inf, math.inf)
        if not (low <= value <= high):
            notes[f"{rule.name}: value outside the plausible range, released as n/a"] += 1
            return None
        if rule.top_code is not None and value > rule.top_code:
            notes[f"{rule.name}: value above {plain(rule.top_code)} top-coded"] += 1
            value = rule.top_code
    return value


def _demographics_number(rule: ColumnRule, cell: str | None, notes: Counter[str]) -> float | None:
    text = (cell or "").strip()
    if text.lower() in _MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        notes[f"{rule.name}: demographics value is not a number, released as n/a"] += 1
        return None
    return number if math.isfinite(number) else None


def _demographics_level(rule: ColumnRule, cell: str, notes: Counter[str]) -> str | None:
    text = cell.strip()
    if text.lower() in _MISSING:
        return None
    if rule.levels and text in rule.levels:
        return text
    # `levels: [1, 2, 3]` written as numbers should still match a cell "1.0"? No: only exact levels leave.
    notes[f"{rule.name}: demographics value is not one of the levels, released as n/a"] += 1
    return None


def build_tables(sessions: Sequence[SessionMetadataInput], rules: Sequence[ColumnRule],
                 demographics: Demographics) -> MetadataTables:
    """Raw values per included participant (from its earliest included session) and per included session."""
    tables = MetadataTables(rules=list(rules), participants={}, sessions={})
    by_subject: dict[str, list[SessionMetadataInput]] = {}
    for s in sessions:
        by_subject.setdefault(s.subject, []).append(s)
    for subject, subject_sessions in sorted(by_subject.items()):
        ordered = sorted(subject_sessions, key=lambda s: (s.study_date, s.study_time, s.session))
        rows = {s.session: demographics.rows_for(s.lookup_keys or (s.patient_id,), s.study_uid, s.study_date)
                for s in ordered}
        participant: dict[str, RawValue] = {}
        for rule in rules:
            if not rule.in_participants:
                continue
            value: RawValue = None
            for s in ordered:  # the earliest session that has the value
                value = _raw_value(rule, s, rows[s.session][0], rows[s.session][1], tables.notes)
                if value is not None:
                    break
            participant[rule.name] = value
        tables.participants[subject] = participant
        tables.sessions[subject] = {
            s.session: {r.name: _raw_value(r, s, rows[s.session][0], rows[s.session][1], tables.notes)
                        for r in rules if r.in_sessions}
            for s in ordered
        }
    return tables


def plain(number: float) -> str:
    return f"{number:g}"


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -int(exponent))


def release_value(rule: ColumnRule, raw: RawValue, step: float | None = None) -> str:
    """The released text of a raw value under the rule (and a coarser `step` when generalised)."""
    if raw is None:
        return NA
    if rule.kind == "categorical":
        return str(raw)
    step_d = Decimal(repr(step if step is not None else rule.precision or 1.0))
    value = Decimal(repr(float(raw)))
    bins = (value / step_d).quantize(Decimal(1), rounding=ROUND_FLOOR if rule.floor else ROUND_HALF_UP)
    released = bins * step_d
    decimals = _decimals(step_d)
    return f"{released:.{decimals}f}"


