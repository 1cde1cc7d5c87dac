"""Minimal participant metadata: participants.tsv/json and sessions.tsv/json through an allow-list.

Only the columns named in `participants.columns` leave the private area, each through a precision rule:
ages are floored to whole units (years, months, weeks or days) and top-coded at 89 years, measurements are
rounded to a step (weight to 0.5 kg), categories must be one of the listed levels, and dates, names and
identifiers are never a column. A k-anonymity check over the quasi-identifier columns then reports every
equivalence class smaller than k and either fails or generalises (coarser bins, then suppression) until it holds.

Values come from one DICOM header per session (PatientSex, PatientBirthDate vs StudyDate or PatientAge,
PatientWeight, PatientSize) and from the optional demographics file kept by the research team.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path

from pydicom.dataset import Dataset

from bidsafe.consent import read_table
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import write_if_changed

NA = "n/a"
TABLES = ("participants", "sessions", "both")
AGE_UNITS = {"years": "year", "months": "month", "weeks": "week", "days": "day"}
TOP_CODE_YEARS = 89.0  # BIDS and HIPAA: ages above 89 are reported as 89

# Built-in sources (values from the DICOM header, plus postmenstrual age from the demographics file).
SOURCES = ("sex", "age_at_scan", "postmenstrual_age", "weight", "height")
DEMOGRAPHICS_PREFIX = "demographics:"

# Column names a user may give without `source`: the source and defaults follow from the name.
BUILTIN_COLUMNS: dict[str, dict[str, object]] = {
    "sex": {"source": "sex"},
    "age": {"source": "age_at_scan", "table": "both"},
    "weight": {"source": "weight", "table": "sessions"},
    "height": {"source": "height", "table": "sessions"},
}
DEFAULT_COLUMNS: dict[str, dict[str, object]] = {"sex": {}, "age": {"unit": "years", "precision": 1}}

# Multiples of a numeric quasi-identifier's precision tried in turn when generalising (1 y -> 5 -> 10 -> 20 -> 50).
DEFAULT_GENERALISE_BINS = (5, 10, 20, 50)

# A column (or demographics source column) whose name says date, time, name or identifier is refused outright.
_FORBIDDEN_NAME = re.compile(
    r"(date|dob|birthday|time|name|initials|address|phone|email|postcode|zip|mrn|accession|(^|_)id$|^id_|uid)",
    re.IGNORECASE,
)
_COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED = {"participant_id", "session_id", "acq_time"}
_RULE_KEYS = {"source", "table", "unit", "precision", "levels", "top_code", "range", "description", "units",
              "gestational_age_column"}
_ROUND_KEY = re.compile(r"^round_(years|months|weeks|days|kg|g|cm|m)$")
_MISSING = {"", "n/a", "na", "nan", "none", "null", "-", "unknown"}


# ------------------------------------------------------------------------------------------ column rules


@dataclass(frozen=True)
class ColumnRule:
    """How one released column is made: where its value comes from and how coarse it may be."""

    name: str
    source: str
    table: str  # participants | sessions | both
    kind: str  # numeric | categorical
    unit: str | None = None
    precision: float | None = None
    floor: bool = False  # ages are floored (completed units); measurements rounded to the nearest step
    levels: dict[str, str] | None = None
    top_code: float | None = None
    valid_range: tuple[float, float] | None = None
    description: str = ""
    units_label: str | None = None
    gestational_age_column: str = "gestational_age_weeks"

    @property
    def in_participants(self) -> bool:
        return self.table in ("participants", "both")

    @property
    def in_sessions(self) -> bool:
        return self.table in ("sessions", "both")

    @property
    def demographics_column(self) -> str | None:
        return self.source[len(DEMOGRAPHICS_PREFIX) :] if self.source.startswith(DEMOGRAPHICS_PREFIX) else None


def parse_columns(columns: Mapping[str, object] | None) -> list[ColumnRule]:
    """Check `participants.columns` and turn it into rules; anything unclear is a ConfigError."""
    if columns is None:
        columns = DEFAULT_COLUMNS
    if not isinstance(columns, Mapping):
        raise ConfigError("config: participants.columns must be a mapping of column name to rule")
    rules = [_parse_rule(str(name), spec) for name, spec in columns.items()]
    return rules


def _parse_rule(name: str, spec: object) -> ColumnRule:
    where = f"config: participants.columns.{name}"
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping (e.g. {{source: age_at_scan, unit: years, precision: 1}})")
    if name in _RESERVED:
        raise ConfigError(f"{where}: participant_id, session_id and acq_time are reserved BIDS columns")
    if not _COLUMN_NAME.match(name):
        raise ConfigError(f"{where}: a column name must start with a letter and hold only letters, digits and '_'")
    if _FORBIDDEN_NAME.search(name):
        raise ConfigError(f"{where}: the name looks like a date, name or identifier; those are never released")
    spec = dict(spec)
    for key in list(spec):
        match = _ROUND_KEY.match(str(key))
        if match:  # shorthand: `round_years: 1` means unit years, precision 1
            if "unit" in spec or "precision" in spec:
                raise ConfigError(f"{where}: give either '{key}' or 'unit'/'precision', not both")
            spec["unit"], spec["precision"] = match.group(1), spec.pop(key)
        elif key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(_RULE_KEYS))}, round_<unit>)")
    builtin = BUILTIN_COLUMNS.get(name, {})
    source = str(spec.get("source", builtin.get("source", "")))
    if not source:
        raise ConfigError(
            f"{where}: 'source' is required for a column not named {', '.join(BUILTIN_COLUMNS)} "
            f"(one of {', '.join(SOURCES)} or '{DEMOGRAPHICS_PREFIX}<column>')"
        )
    default_table = "sessions" if source == "postmenstrual_age" else "participants"
    table = str(spec.get("table", builtin.get("table", default_table)))
    if table not in TABLES:
        raise ConfigError(f"{where}: table must be one of {', '.join(TABLES)}")
    description = str(spec.get("description", ""))
    levels = _parse_levels(where, spec.get("levels"))
    units_label = spec.get("units")
    valid_range = _parse_range(where, spec.get("range"))
    top_code = _number(where, "top_code", spec.get("top_code"))
    precision = _number(where, "precision", spec.get("precision"))
    if precision is not None and precision <= 0:
        raise ConfigError(f"{where}: precision must be a positive number")
    unit = spec.get("unit")
    common = {"name": name, "source": source, "table": table, "description": description}

    if source == "sex":
        if unit is not None or precision is not None:
            raise ConfigError(f"{where}: sex takes no unit or precision")
        return ColumnRule(**{**common, "description": description or "Sex recorded at the scanner (DICOM PatientSex)"},
                          kind="categorical", levels=levels or {"M": "male", "F": "female", "O": "other"})
    if source in ("age_at_scan", "postmenstrual_age"):
        allowed = ("weeks", "days") if source == "postmenstrual_age" else tuple(AGE_UNITS)
        unit = str(unit or ("weeks" if source == "postmenstrual_age" else "years"))
        if unit not in allowed:
            raise ConfigError(f"{where}: unit must be one of {', '.join(allowed)}")
        if top_code is None and source == "age_at_scan":
            top_code = _convert_years(TOP_CODE_YEARS, unit)
        default = ("Age at scan" if source == "age_at_scan"
                   else "Postmenstrual age at scan (gestational age at birth plus age since birth)")
        return ColumnRule(**{**common, "description": description or default}, kind="numeric", unit=unit,
                          precision=precision or 1.0, floor=True, top_code=top_code,
                          valid_range=valid_range or (0.0, math.inf), units_label=str(units_label or AGE_UNITS[unit]),
                          gestational_age_column=str(spec.get("gestational_age_column", "gestational_age_weeks")))
    if source == "weight":
        unit = str(unit or "kg")
        if unit not in ("kg", "g"):
            raise ConfigError(f"{where}: unit must be kg or g")
        return ColumnRule(**{**common, "description": description or "Body weight at scan (DICOM PatientWeight)"},
                          kind="numeric", unit=unit, precision=precision or (0.5 if unit == "kg" else 100.0),
                          top_code=top_code, valid_range=valid_range or ((0.3, 400.0) if unit == "kg" else (300, 4e5)),
                          units_label=str(units_label or unit))
    if source == "height":
        unit = str(unit or "cm")
        if unit not in ("cm", "m"):
            raise ConfigError(f"{where}: unit must be cm or m")
        return ColumnRule(**{**common, "description": description or "Body height at scan (DICOM PatientSize)"},
                          kind="numeric", unit=unit, precision=precision or (1.0 if unit == "cm" else 0.01),
                          top_code=top_code, valid_range=valid_range or ((20, 260) if unit == "cm" else (0.2, 2.6)),
                          units_label=str(units_label or unit))
    if source.startswith(DEMOGRAPHICS_PREFIX):
        column = source[len(DEMOGRAPHICS_PREFIX) :].strip().lower()
        if not column:
            raise ConfigError(f"{where}: '{DEMOGRAPHICS_PREFIX}' needs a column name")
        if _FORBIDDEN_NAME.search(column):
            raise ConfigError(f"{where}: the demographics column looks like a date, name or identifier")
        source = DEMOGRAPHICS_PREFIX + column
        common["source"] = source
        desc = description or f"From the study's demographics records ({column})"
        if levels is not None:
            if precision is not None or unit is not None:
                raise ConfigError(f"{where}: a column with levels takes no unit or precision")
            return ColumnRule(**{**common, "description": desc}, kind="categorical", levels=levels)
        if precision is None:
            raise ConfigError(
                f"{where}: a demographics column needs 'precision' (numeric) or 'levels' (categorical); "
                "free text is never released"
            )
        return ColumnRule(**{**common, "description": desc}, kind="numeric", unit=str(unit) if unit else None,
                          precision=precision, top_code=top_code, valid_range=valid_range,
                          units_label=str(units_label or unit) if (units_label or unit) else None)
    raise ConfigError(f"{where}: unknown source (one of {', '.join(SOURCES)} or '{DEMOGRAPHICS_PREFIX}<column>')")


def _number(where: str, key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number")
    return float(value)


def _parse_levels(where: str, value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        levels = {str(k): str(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        levels = {str(v): str(v) for v in value}
    else:
        raise ConfigError(f"{where}: levels must be a list of values or a mapping of value to meaning")
    if not levels:
        raise ConfigError(f"{where}: levels must not be empty")
    return levels


def _parse_range(where: str, value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
    ):
        raise ConfigError(f"{where}: range must be [low, high]")
    return float(value[0]), float(value[1])


# ------------------------------------------------------------------------------------------ ages and facts


@dataclass(frozen=True)
class Age:
    """An age in completed-calendar-unit terms (fractional parts below one unit)."""

    days: float
    months: float
    years: float

    def in_unit(self, unit: str) -> float:
        return {"years": self.years, "months": self.months, "weeks": self.days / 7.0, "days": self.days}[unit]


def _convert_years(years: float, unit: str) -> float:
    return Age(days=years * 365.25, months=years * 12, years=years).in_unit(unit)


def parse_da(text: object) -> date | None:
    """A DICOM DA value (YYYYMMDD, also YYYY-MM-DD / YYYY.MM.DD) as a date, or None."""
    digits = re.sub(r"\D", "", str(text or ""))[:8]
    if len(digits) != 8:
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def _anniversary(birth: date, year: int, month: int) -> date:
    """The birth day in a given month, clamped to the month's end (a 29 February birthday, a 31st)."""
    for day in range(birth.day, 27, -1):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    return date(year, month, min(birth.day, 28))


def age_between(birth: date, scan: date) -> Age | None:
    """Age on `scan` for someone born on `birth`: calendar-exact completed years and months; None if negative.

    Fractions below one unit are kept (< 1), so flooring gives the completed years/months a person states.
    """
    if scan < birth:
        return None
    months = (scan.year - birth.year) * 12 + (scan.month - birth.month)
    if scan < _anniversary(birth, scan.year, scan.month):
        months -= 1
    years = months // 12
    month_index = birth.month - 1 + months
    month_start = _anniversary(birth, birth.year + month_index // 12, month_index % 12 + 1)
    year_start = _anniversary(birth, birth.year + years, birth.month)
    month_fraction = min((scan - month_start).days / 31.0, 0.999)
    year_fraction = min((scan - year_start).days / 366.0, 0.999)
    return Age(days=float((scan - birth).days), months=months + month_fraction, years=years + year_fraction)


def parse_dicom_age(text: object) -> Age | None:
    """A DICOM AS value (e.g. '034Y', '012W', '005D', '003M') as an Age, or None."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(text or "").upper())
    if not match:
        return None
    n, unit = float(match.group(1)), match.group(2)
    if unit == "D":
        return Age(days=n, months=n / 30.4375, years=n / 365.25)
    if unit == "W":
        return Age(days=7 * n, months=7 * n / 30.4375, years=7 * n / 365.25)
    if unit == "M":
        return Age(days=n * 30.4375, months=n, years=n / 12)
    return Age(days=n * 365.25, months=12 * n, years=n)


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
    notes: Counter = field(default_factory=Counter)  # e.g. "weight: out of range" -> count (no values)


def _raw_value(rule: ColumnRule, s: SessionMetadataInput, participant_row: Mapping[str, str],
               session_row: Mapping[str, str], notes: Counter) -> RawValue:
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
            notes[f"{rule.name}: value above {_plain(rule.top_code)} top-coded"] += 1
            value = rule.top_code
    return value


def _demographics_number(rule: ColumnRule, cell: str | None, notes: Counter) -> float | None:
    text = (cell or "").strip()
    if text.lower() in _MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        notes[f"{rule.name}: demographics value is not a number, released as n/a"] += 1
        return None
    return number if math.isfinite(number) else None


def _demographics_level(rule: ColumnRule, cell: str, notes: Counter) -> str | None:
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


def _plain(number: float) -> str:
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


# ------------------------------------------------------------------------------------------ k-anonymity


@dataclass
class KAnonymityOutcome:
    """What the k-anonymity check found and did (sizes and generalised bins only, never raw values)."""

    k: int
    action: str
    quasi_identifiers: list[str]  # the released columns checked
    holds: bool = True
    participants: int = 0
    small_classes_before: list[int] = field(default_factory=list)  # sizes of classes below k, before generalising
    small_classes_after: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # what generalisation did, in order
    column_steps: dict[str, float] = field(default_factory=dict)  # generalised step per numeric column
    suppressed: list[str] = field(default_factory=list)  # columns removed from the release
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "k": self.k, "action": self.action, "quasi_identifiers": self.quasi_identifiers, "holds": self.holds,
            "participants": self.participants, "small_classes_before": self.small_classes_before,
            "small_classes_after": self.small_classes_after, "steps": self.steps,
            "column_steps": self.column_steps, "suppressed": self.suppressed, "note": self.note,
        }


def equivalence_classes(tables: MetadataTables, columns: Sequence[ColumnRule],
                        steps: Mapping[str, float]) -> Counter:
    """Class sizes (distinct participants) over the released, binned quasi-identifier values.

    Every released session row is a record an attacker can match: it carries the participant's columns
    (participants.tsv) and the session's (sessions.tsv; a column in both tables is taken per session, so every
    session's age is checked, not only the first). A participant counts once per class however many sessions
    fall into it.
    """
    members: dict[tuple[str, ...], set[str]] = {}
    for subject, participant_values in tables.participants.items():
        for session_values in (tables.sessions.get(subject) or {"": {}}).values():
            key = tuple(
                release_value(c, (session_values if c.in_sessions else participant_values).get(c.name),
                              steps.get(c.name))
                for c in columns
            )
            members.setdefault(key, set()).add(subject)
    return Counter({key: len(subjects) for key, subjects in members.items()})


def enforce_k_anonymity(tables: MetadataTables, *, k: int, action: str, quasi_identifiers: Sequence[str],
                        bins: Sequence[float] = DEFAULT_GENERALISE_BINS) -> KAnonymityOutcome:
    """Check k-anonymity over the released quasi-identifiers (see `equivalence_classes`); fail or generalise.

    Generalising coarsens every numeric quasi-identifier one step at a time (precision x 5, 10, 20, 50), then
    suppresses numeric ones, then categorical ones (last listed first). With no quasi-identifier left, nothing
    is left to link on, so the check holds whatever the number of participants: the loop always ends.
    """
    if action not in ("fail", "generalise"):
        raise ConfigError("config: release.k_anonymity_action must be 'fail' or 'generalise'")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("config: release.k_anonymity must be a whole number >= 1")
    by_name = {r.name: r for r in tables.rules}
    qis = [by_name[name] for name in quasi_identifiers if name in by_name]
    outcome = KAnonymityOutcome(k=k, action=action, quasi_identifiers=[q.name for q in qis],
                                participants=len(tables.participants))
    steps: dict[str, float] = {q.name: float(q.precision or 1.0) for q in qis if q.kind == "numeric"}
    ladders = {q.name: [steps[q.name] * m for m in bins if steps[q.name] * m > steps[q.name]]
               for q in qis if q.kind == "numeric"}
    active = list(qis)
    first = True
    while True:
        if not active:
            small: list[int] = []
            if outcome.participants and outcome.participants < k:
                outcome.note = "no quasi-identifier column is released, so no participant can be singled out by one"
        else:
            classes = equivalence_classes(tables, active, steps)
            small = sorted(size for size in classes.values() if size < k)
        if first:
            outcome.small_classes_before = small
            first = False
        if not small:
            outcome.holds = True
            outcome.small_classes_after = []
            break
        if action == "fail":
            outcome.holds = False
            outcome.small_classes_after = small
            classes = equivalence_classes(tables, active, steps)
            listing = "; ".join(f"({', '.join(key)}): {size}" for key, size in sorted(classes.items()) if size < k)
            raise BidsafeError(
                f"k-anonymity: {len(small)} equivalence class(es) of ({', '.join(q.name for q in active)}) hold "
                f"fewer than k={k} participants [{listing}]; set release.k_anonymity_action: generalise, lower "
                "release.k_anonymity, or release fewer quasi-identifier columns"
            )
        numeric = [q for q in active if q.kind == "numeric"]
        if numeric:
            for q in numeric:
                if ladders[q.name]:
                    steps[q.name] = ladders[q.name].pop(0)
                    outcome.steps.append(f"{q.name}: bins of {_plain(steps[q.name])} {q.unit or ''}".rstrip())
                else:
                    active.remove(q)
                    outcome.suppressed.append(q.name)
                    outcome.steps.append(f"{q.name}: suppressed")
        else:
            q = active.pop()
            outcome.suppressed.append(q.name)
            outcome.steps.append(f"{q.name}: suppressed")
    outcome.column_steps = {name: step for name, step in steps.items() if name not in outcome.suppressed
                            and step != float(by_name[name].precision or 1.0)}
    return outcome


# ------------------------------------------------------------------------------------------ rendering


def _sidecar_entry(rule: ColumnRule, step: float | None) -> dict[str, object]:
    entry: dict[str, object] = {}
    description = rule.description
    if rule.kind == "numeric":
        step = step if step is not None else rule.precision or 1.0
        unit = f" {rule.unit}" if rule.unit else ""
        if rule.floor:
            how = f"in whole {rule.unit}, rounded down" if step == 1 and rule.unit else \
                f"rounded down to a multiple of {_plain(step)}{unit}"
        else:
            how = f"rounded to the nearest {_plain(step)}{unit}"
        description += f"; {how}"
        if rule.top_code is not None:
            description += f"; values above {_plain(rule.top_code)} are given as {_plain(rule.top_code)}"
        if step != (rule.precision or 1.0):
            description += " (generalised for k-anonymity)"
        entry["Description"] = description
        if rule.units_label:
            entry["Units"] = rule.units_label
    else:
        entry["Description"] = description
        entry["Levels"] = dict(rule.levels or {})
    return entry


def _tsv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["\t".join(header)]
    lines.extend("\t".join(row) for row in rows)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RenderedMetadata:
    files: dict[str, str]  # out_dir-relative path -> text


def render_metadata(tables: MetadataTables, outcome: KAnonymityOutcome) -> RenderedMetadata:
    """participants.tsv/json and sub-<S>/sub-<S>_sessions.tsv/json texts for the included participants."""
    steps = {r.name: outcome.column_steps.get(r.name) for r in tables.rules}
    released = [r for r in tables.rules if r.name not in outcome.suppressed]
    p_cols = [r for r in released if r.in_participants]
    s_cols = [r for r in released if r.in_sessions]
    files: dict[str, str] = {}
    files["participants.tsv"] = _tsv(
        ["participant_id", *(c.name for c in p_cols)],
        ([f"sub-{subject}", *(release_value(c, values.get(c.name), steps[c.name]) for c in p_cols)]
         for subject, values in sorted(tables.participants.items())),
    )
    sidecar: dict[str, object] = {
        "participant_id": {"Description": "Pseudonymous participant label; it cannot be linked to a person "
                           "without the data controller's private linkage table"},
    }
    sidecar.update({c.name: _sidecar_entry(c, steps[c.name]) for c in p_cols})
    files["participants.json"] = json.dumps(sidecar, indent=2) + "\n"
    session_sidecar: dict[str, object] = {
        "session_id": {"Description": "Session label; sessions are numbered in order of scan date when first seen"},
    }
    session_sidecar.update({c.name: _sidecar_entry(c, steps[c.name]) for c in s_cols})
    for subject, by_session in sorted(tables.sessions.items()):
        base = f"sub-{subject}/sub-{subject}_sessions"
        files[f"{base}.tsv"] = _tsv(
            ["session_id", *(c.name for c in s_cols)],
            ([f"ses-{session}", *(release_value(c, values.get(c.name), steps[c.name]) for c in s_cols)]
             for session, values in sorted(by_session.items())),
        )
        files[f"{base}.json"] = json.dumps(session_sidecar, indent=2) + "\n"
    return RenderedMetadata(files=files)


def write_metadata(out_dir: Path, rendered: RenderedMetadata) -> list[Path]:
    """Write every file if changed; remove per-subject session files of subjects no longer included."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rel, text in sorted(rendered.files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(path, text)
        written.append(path)
    keep = {out_dir / rel for rel in rendered.files}
    for folder in sorted(out_dir.glob("sub-*")):
        if not folder.is_dir():
            continue
        for stale in folder.glob("sub-*_sessions.*"):
            if stale not in keep:
                stale.unlink()  # a withdrawn or withheld participant must not linger in the next release
        if not any(folder.iterdir()):
            folder.rmdir()
    return written
