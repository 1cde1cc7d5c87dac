"""A site's own word on which sessions leave the pipeline at pseudonymise, each with a reason.

Config (defaults and descriptions in workflow/schemas/config.schema.yaml):

    sessions:
      withhold:   # not in this release (e.g. pending a radiologist's review); may be released later
        - {subject: a1b2c3, session: 01, reason: incidental finding under review}
      exclude:    # never part of the dataset (wrong patient, test scan, duplicate export)
        - {patient_id: "12345", reason: scanned under the wrong study}
        - {study_uid: "1.2.3.4", reason: duplicate export}
    qa_sessions:  # QA and phantom sessions, by the whole PatientName or PatientID (regex, any case)
      - {field: PatientName, pattern: "phantom.*", reason: weekly QA phantom}

A QA session is never released, and the gate does not search for its placeholder identity ("phantom",
"dicom", "QA") in the release (see bidsafe.stages.qa_session_files). The reasons are shown in the report: they
are the site's words, so they must not name a person.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bidsafe.errors import ConfigError

WITHHOLD = "withhold"
EXCLUDE = "exclude"
QA_FIELDS = ("PatientName", "PatientID")
# Sentence openings of the reasons written here; the report tells "excluded" from "withheld" by them and the
# leak gate finds QA sessions by the first (bidsafe.release.reportfacts.EXCLUDED_PREFIXES).
QA_PREFIX = "QA session"
EXCLUDED_PREFIX = "excluded by the site configuration"
WITHHELD_PREFIX = "withheld by the site configuration"
_KEYS = ("subject", "patient_id", "study_uid")


@dataclass(frozen=True)
class SessionRule:
    action: str  # WITHHOLD or EXCLUDE
    key: str  # one of _KEYS
    value: str
    session: str | None
    reason: str


@dataclass(frozen=True)
class QAPattern:
    field: str
    pattern: re.Pattern[str]
    reason: str


@dataclass(frozen=True)
class SiteExclusions:
    rules: tuple[SessionRule, ...] = ()
    qa: tuple[QAPattern, ...] = ()


def _sentence(text: object, where: str) -> str:
    reason = " ".join(str(text or "").split())  # one line: it goes into TSV cells and the report
    if not reason:
        raise ConfigError(f"config: {where} needs a reason")
    return reason


def read_site_exclusions(config: Mapping[str, Any]) -> SiteExclusions:
    """The `sessions` and `qa_sessions` keys, checked (the schema checks them too; this is for library use)."""
    sessions = config.get("sessions") or {}
    if not isinstance(sessions, Mapping):
        raise ConfigError("config: 'sessions' must be a mapping with 'withhold' and/or 'exclude' lists")
    rules: list[SessionRule] = []
    for action in (WITHHOLD, EXCLUDE):
        for i, entry in enumerate(sessions.get(action) or [], start=1):
            where = f"sessions.{action}[{i}]"
            if not isinstance(entry, Mapping):
                raise ConfigError(f"config: {where} must be a mapping")
            keys = [k for k in _KEYS if entry.get(k) not in (None, "")]
            if len(keys) != 1:
                raise ConfigError(f"config: {where} needs exactly one of {', '.join(_KEYS)}")
            session = entry.get("session")
            if session is not None and keys[0] != "subject":
                raise ConfigError(f"config: {where}: 'session' goes with 'subject' only")
            rules.append(SessionRule(action, keys[0], str(entry[keys[0]]).strip(),
                                     None if session is None else str(session).removeprefix("ses-"),
                                     _sentence(entry.get("reason"), where)))
    qa: list[QAPattern] = []
    for i, entry in enumerate(config.get("qa_sessions") or [], start=1):
        where = f"qa_sessions[{i}]"
        if not isinstance(entry, Mapping) or entry.get("field") not in QA_FIELDS:
            raise ConfigError(f"config: {where}: 'field' must be one of {', '.join(QA_FIELDS)}")
        try:
            pattern = re.compile(str(entry.get("pattern") or ""), re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"config: {where}: 'pattern' is not a valid regular expression ({exc})") from exc
        if not pattern.pattern:
            raise ConfigError(f"config: {where} needs a pattern")
        qa.append(QAPattern(str(entry["field"]), pattern, _sentence(entry.get("reason"), where)))
    return SiteExclusions(tuple(rules), tuple(qa))


def site_decision(
    site: SiteExclusions,
    *,
    subject: str,
    session: str,
    patient_ids: Sequence[str],
    patient_name: str,
    study_uid: str,
) -> str | None:
    """The reason a session leaves the pipeline by the site's config (QA first, then exclude, then
    withhold), or None. A QA pattern must match the whole value."""
    for qa in site.qa:
        values = [patient_name] if qa.field == "PatientName" else list(patient_ids)
        if any(v and qa.pattern.fullmatch(v.strip()) for v in values):
            return f"{QA_PREFIX} ({qa.field} matches a qa_sessions pattern): {qa.reason}"
    subject = subject.removeprefix("sub-")
    for action, prefix in ((EXCLUDE, EXCLUDED_PREFIX), (WITHHOLD, WITHHELD_PREFIX)):
        for rule in site.rules:
            if rule.action != action:
                continue
            if rule.key == "subject":
                hit = rule.value.removeprefix("sub-") == subject and rule.session in (None, session)
            elif rule.key == "patient_id":
                hit = rule.value in patient_ids
            else:
                hit = rule.value == study_uid
            if hit:
                return f"{prefix}: {rule.reason}"
    return None


def is_qa_reason(reason: str) -> bool:
    return reason.startswith(QA_PREFIX)
