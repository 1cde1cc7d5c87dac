"""Column rules: how each allow-listed participant/session column is made and how coarse it may be.

Only the columns named in `participants.columns` leave the private area, each through a precision rule:
ages are floored to whole units (years, months, weeks or days) and top-coded at 89 years, measurements are
rounded to a step (weight to 0.5 kg), categories must be one of the listed levels, and dates, names and
identifiers are never a column. The config schema holds the keys, their types and the default columns; this
module holds what a schema cannot say (per-source units and precisions, names that look like identifiers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bidsafe.config import schema_defaults
from bidsafe.errors import ConfigError
from bidsafe.pseudonymise.ages import convert_years

TABLES = ("participants", "sessions", "both")
AGE_UNITS = {"years": "year", "months": "month", "weeks": "week", "days": "day"}
TOP_CODE_YEARS = 89.0  # BIDS and HIPAA: ages above 89 are reported as 89

# Built-in sources (values from the DICOM header, plus postmenstrual age from the demographics file).
SOURCES = ("sex", "age_at_scan", "postmenstrual_age", "weight", "height")
DEMOGRAPHICS_PREFIX = "demographics:"
# The demographics column `postmenstrual_age` reads gestational age at birth (weeks) from, unless the rule names one.
GESTATIONAL_AGE_COLUMN = "gestational_age_weeks"

# Column names a user may give without `source`: the source and defaults follow from the name.
BUILTIN_COLUMNS: dict[str, dict[str, object]] = {
    "sex": {"source": "sex"},
    "age": {"source": "age_at_scan", "table": "both"},
    "weight": {"source": "weight", "table": "sessions"},
    "height": {"source": "height", "table": "sessions"},
}

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
    gestational_age_column: str = GESTATIONAL_AGE_COLUMN

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
    """Check `participants.columns` and turn it into rules; anything unclear is a ConfigError.

    None means the schema's default columns (a config read through `bidsafe.config.check_config` has them filled).
    """
    if columns is None:
        columns = schema_defaults("participants")["columns"]
    if not isinstance(columns, Mapping):
        raise ConfigError("config: participants.columns must be a mapping of column name to rule")
    return [_parse_rule(str(name), spec) for name, spec in columns.items()]


def _check_name(where: str, name: str) -> None:
    if name in _RESERVED:
        raise ConfigError(f"{where}: participant_id, session_id and acq_time are reserved BIDS columns")
    if not _COLUMN_NAME.match(name):
        raise ConfigError(f"{where}: a column name must start with a letter and hold only letters, digits and '_'")
    if _FORBIDDEN_NAME.search(name):
        raise ConfigError(f"{where}: the name looks like a date, name or identifier; those are never released")


def _expand_shorthand(where: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """`round_years: 1` means unit years, precision 1; any other key must be a rule key."""
    out = dict(spec)
    for key in list(out):
        match = _ROUND_KEY.match(str(key))
        if match:
            if "unit" in out or "precision" in out:
                raise ConfigError(f"{where}: give either '{key}' or 'unit'/'precision', not both")
            out["unit"], out["precision"] = match.group(1), out.pop(key)
        elif key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(_RULE_KEYS))}, round_<unit>)")
    return out


@dataclass(frozen=True)
class _Spec:
    """One column's keys, checked for shape; what each source makes of them is decided per source."""

    where: str
    common: dict[str, Any]  # name, source, table, description
    spec: dict[str, Any]
    levels: dict[str, str] | None
    units_label: object
    valid_range: tuple[float, float] | None
    top_code: float | None
    precision: float | None
    unit: object


def _parse_rule(name: str, spec: object) -> ColumnRule:
    where = f"config: participants.columns.{name}"
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping (e.g. {{source: age_at_scan, unit: years, precision: 1}})")
    _check_name(where, name)
    spec = _expand_shorthand(where, spec)
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
    levels = _parse_levels(where, spec.get("levels"))
    units_label = spec.get("units")
    valid_range = _parse_range(where, spec.get("range"))
    top_code = _number(where, "top_code", spec.get("top_code"))
    precision = _number(where, "precision", spec.get("precision"))
    if precision is not None and precision <= 0:
        raise ConfigError(f"{where}: precision must be a positive number")
    parsed = _Spec(where=where, common={"name": name, "source": source, "table": table,
                                        "description": str(spec.get("description", ""))},
                   spec=spec, levels=levels, units_label=units_label, valid_range=valid_range, top_code=top_code,
                   precision=precision, unit=spec.get("unit"))
    maker = _MAKERS.get(source)
    if maker is not None:
        return maker(parsed)
    if source.startswith(DEMOGRAPHICS_PREFIX):
        return _demographics_rule(parsed)
    raise ConfigError(f"{where}: unknown source (one of {', '.join(SOURCES)} or '{DEMOGRAPHICS_PREFIX}<column>')")


def _described(p: _Spec, default: str) -> dict[str, Any]:
    return {**p.common, "description": p.common["description"] or default}


def _sex_rule(p: _Spec) -> ColumnRule:
    if p.unit is not None or p.precision is not None:
        raise ConfigError(f"{p.where}: sex takes no unit or precision")
    return ColumnRule(**_described(p, "Sex recorded at the scanner (DICOM PatientSex)"),
                      kind="categorical", levels=p.levels or {"M": "male", "F": "female", "O": "other"})


def _age_rule(p: _Spec) -> ColumnRule:
    source = p.common["source"]
    allowed = ("weeks", "days") if source == "postmenstrual_age" else tuple(AGE_UNITS)
    unit = str(p.unit or ("weeks" if source == "postmenstrual_age" else "years"))
    if unit not in allowed:
        raise ConfigError(f"{p.where}: unit must be one of {', '.join(allowed)}")
    top_code = p.top_code
    if top_code is None and source == "age_at_scan":
        top_code = convert_years(TOP_CODE_YEARS, unit)
    default = ("Age at scan" if source == "age_at_scan"
               else "Postmenstrual age at scan (gestational age at birth plus age since birth)")
    return ColumnRule(**_described(p, default), kind="numeric", unit=unit,
                      precision=p.precision or 1.0, floor=True, top_code=top_code,
                      valid_range=p.valid_range or (0.0, math.inf), units_label=str(p.units_label or AGE_UNITS[unit]),
                      gestational_age_column=str(p.spec.get("gestational_age_column", GESTATIONAL_AGE_COLUMN)))


def _weight_rule(p: _Spec) -> ColumnRule:
    unit = str(p.unit or "kg")
    if unit not in ("kg", "g"):
        raise ConfigError(f"{p.where}: unit must be kg or g")
    return ColumnRule(**_described(p, "Body weight at scan (DICOM PatientWeight)"),
                      kind="numeric", unit=unit, precision=p.precision or (0.5 if unit == "kg" else 100.0),
                      top_code=p.top_code,
                      valid_range=p.valid_range or ((0.3, 400.0) if unit == "kg" else (300, 4e5)),
                      units_label=str(p.units_label or unit))


def _height_rule(p: _Spec) -> ColumnRule:
    unit = str(p.unit or "cm")
    if unit not in ("cm", "m"):
        raise ConfigError(f"{p.where}: unit must be cm or m")
    return ColumnRule(**_described(p, "Body height at scan (DICOM PatientSize)"),
                      kind="numeric", unit=unit, precision=p.precision or (1.0 if unit == "cm" else 0.01),
                      top_code=p.top_code,
                      valid_range=p.valid_range or ((20, 260) if unit == "cm" else (0.2, 2.6)),
                      units_label=str(p.units_label or unit))


def _demographics_rule(p: _Spec) -> ColumnRule:
    where, source = p.where, p.common["source"]
    column = source[len(DEMOGRAPHICS_PREFIX) :].strip().lower()
    if not column:
        raise ConfigError(f"{where}: '{DEMOGRAPHICS_PREFIX}' needs a column name")
    if _FORBIDDEN_NAME.search(column):
        raise ConfigError(f"{where}: the demographics column looks like a date, name or identifier")
    common = {**p.common, "source": DEMOGRAPHICS_PREFIX + column}
    common["description"] = common["description"] or f"From the study's demographics records ({column})"
    if p.levels is not None:
        if p.precision is not None or p.unit is not None:
            raise ConfigError(f"{where}: a column with levels takes no unit or precision")
        return ColumnRule(**common, kind="categorical", levels=p.levels)
    if p.precision is None:
        raise ConfigError(
            f"{where}: a demographics column needs 'precision' (numeric) or 'levels' (categorical); "
            "free text is never released"
        )
    unit, units_label = p.unit, p.units_label
    return ColumnRule(**common, kind="numeric", unit=str(unit) if unit else None,
                      precision=p.precision, top_code=p.top_code, valid_range=p.valid_range,
                      units_label=str(units_label or unit) if (units_label or unit) else None)


_MAKERS = {"sex": _sex_rule, "age_at_scan": _age_rule, "postmenstrual_age": _age_rule, "weight": _weight_rule,
           "height": _height_rule}


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


