"""The consent registry and the audience gate.

The research team keeps one row per participant: `patient_id` (as in DICOM PatientID), `consent` (one of
none < named < members < public < open), and optionally `study_id` (the team's own participant ID), `consent_form_id`
and `withdrawn` (a date). A session enters a release only when its participant's level covers the release's
audience; everything else is withheld with a reason code that names no one.

Errors about the registry name the file, the row number and the column, never a cell's value: the registry
holds real identifiers.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from bidsafe.config import schema_enum
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.tables import read_table

# Ordered from least to most open: a level covers every audience at or below it.
# `open` is consent to fully open sharing (a public-domain CC0 release anyone may download without an agreement,
# as OpenNeuro publishes): it covers `public` too, but `public` consent never reaches an `open` release.
# The audiences are the config schema's `release.audience` enum, which lists them in that order.
AUDIENCES: tuple[str, ...] = schema_enum("release", "audience")
LEVELS: tuple[str, ...] = ("none", *AUDIENCES)

# `consent: none-required` in the config says the data need no per-participant consent (e.g. already open
# data). Without it, a missing registry withholds everyone: forgetting to configure consent must not publish.
NONE_REQUIRED = "none-required"

REASON_OK = "consent:ok"
REASON_NOT_REQUIRED = "consent:not-required"
REASON_NONE = "consent:none"
REASON_MISSING = "consent:missing"
REASON_WITHDRAWN = "consent:withdrawn"
REASON_INSUFFICIENT = "consent:insufficient"
REASON_NO_REGISTRY = "consent:no-registry"

_NOT_WITHDRAWN = {"", "n/a", "na", "no", "false", "0", "-"}
_WITHDRAWN_WORDS = {"yes", "true", "1", "y", "withdrawn"}
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d.%m.%Y", "%d/%m/%Y", "%Y/%m/%d")


@dataclass(frozen=True)
class ConsentRecord:
    """One participant's consent as the registry states it (values are personal: never print them).

    A registry may list a participant on several rows (e.g. one per visit); they must agree on `consent` and
    `withdrawn`, and their study IDs and consent form IDs are collected.
    """

    patient_id: str
    consent: str
    study_ids: tuple[str, ...] = ()
    consent_form_ids: tuple[str, ...] = ()
    withdrawn: bool = False
    withdrawn_on: date | None = None
    rows: tuple[int, ...] = ()  # registry row numbers (the header is row 1)

    @property
    def study_id(self) -> str:
        """The participant's study ID when the registry gives exactly one, else ''."""
        return self.study_ids[0] if len(self.study_ids) == 1 else ""


@dataclass
class ConsentRegistry:
    """Registry records by DICOM PatientID."""

    path: Path | None
    by_patient_id: dict[str, ConsentRecord] = field(default_factory=dict)
    none_required: bool = False

    def lookup(self, patient_id: str) -> ConsentRecord | None:
        return self.by_patient_id.get(patient_id.strip())


def level_covers(level: str, audience: str) -> bool:
    """True when consent `level` allows sharing with `audience` (open ⊇ public ⊇ members ⊇ named; none covers
    nothing)."""
    if level not in LEVELS:
        raise ValueError(f"unknown consent level {level!r}")
    if audience not in AUDIENCES:
        raise ValueError(f"unknown audience {audience!r}")
    return level != "none" and LEVELS.index(level) >= LEVELS.index(audience)


def check_audience(audience: object) -> str:
    """Validate `release.audience` from the config."""
    if not isinstance(audience, str) or audience.strip().lower() not in AUDIENCES:
        raise ConfigError(f"config: release.audience must be one of {', '.join(AUDIENCES)}")
    return audience.strip().lower()


def _parse_withdrawn(cell: str) -> tuple[bool, date | None] | None:
    """(withdrawn, date) for a `withdrawn` cell, or None when it means nothing recognisable."""
    text = cell.strip().lower()
    if text in _NOT_WITHDRAWN:
        return False, None
    if text in _WITHDRAWN_WORDS:
        return True, None
    for fmt in _DATE_FORMATS:
        try:
            return True, datetime.strptime(cell.strip(), fmt).date()
        except ValueError:
            continue
    return None


def read_registry(path: str | Path) -> ConsentRegistry:
    """Parse and check a consent registry; any malformed row is an error naming row and column (no values).

    A participant listed twice (same patient_id) is an error: which row wins would be a guess.
    A future withdrawal date still counts as withdrawn (withholding early is the safe side).
    """
    path = Path(path)
    header, rows = read_table(path, "consent registry")
    if "consent" not in header:
        raise BidsafeError("consent registry: required column 'consent' is missing from the header", path)
    if "patient_id" in header:
        key_column = "patient_id"
    elif "study_id" in header:
        key_column = "study_id"  # the scanner's PatientID was entered as the study ID
    else:
        raise BidsafeError(
            "consent registry: required column 'patient_id' (or 'study_id' when the scanner's PatientID is the "
            "study ID) is missing from the header",
            path,
        )
    registry = ConsentRegistry(path=path)
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        patient_id = row.get(key_column, "")
        if not patient_id:
            raise BidsafeError(f"consent registry: row {number}, column '{key_column}' is empty", path)
        level = row.get("consent", "").lower()
        if level not in LEVELS:
            raise BidsafeError(
                f"consent registry: row {number}, column 'consent' is not one of {', '.join(LEVELS)}", path
            )
        parsed = _parse_withdrawn(row.get("withdrawn", ""))
        if parsed is None:
            raise BidsafeError(
                f"consent registry: row {number}, column 'withdrawn' is neither empty, yes/no nor a date "
                "(YYYY-MM-DD)",
                path,
            )
        record = ConsentRecord(
            patient_id=patient_id,
            consent=level,
            study_ids=(row["study_id"],) if row.get("study_id") else (),
            consent_form_ids=(row["consent_form_id"],) if row.get("consent_form_id") else (),
            withdrawn=parsed[0],
            withdrawn_on=parsed[1],
            rows=(number,),
        )
        earlier = registry.by_patient_id.get(patient_id)
        if earlier is not None:
            record = _merge(earlier, record, key_column, path)
        registry.by_patient_id[patient_id] = record
    _check_study_ids(registry, path)
    return registry


def _merge(a: ConsentRecord, b: ConsentRecord, key_column: str, path: Path) -> ConsentRecord:
    """Two rows of one participant: they must agree on consent and withdrawal (which would win is a guess)."""
    if (a.consent, a.withdrawn) != (b.consent, b.withdrawn):
        raise BidsafeError(
            f"consent registry: rows {a.rows[0]} and {b.rows[0]} have the same '{key_column}' but disagree on "
            "'consent' or 'withdrawn'",
            path,
        )
    return ConsentRecord(
        patient_id=a.patient_id,
        consent=a.consent,
        study_ids=tuple(dict.fromkeys(a.study_ids + b.study_ids)),
        consent_form_ids=tuple(dict.fromkeys(a.consent_form_ids + b.consent_form_ids)),
        withdrawn=a.withdrawn,
        withdrawn_on=a.withdrawn_on or b.withdrawn_on,
        rows=a.rows + b.rows,
    )


def _check_study_ids(registry: ConsentRegistry, path: Path) -> None:
    """Participants sharing a study ID are one person under several PatientIDs: their consent must agree."""
    by_study: dict[str, list[ConsentRecord]] = {}
    for record in registry.by_patient_id.values():
        for study_id in record.study_ids:
            by_study.setdefault(study_id, []).append(record)
    for records in by_study.values():
        if len({(r.consent, r.withdrawn) for r in records}) > 1:
            rows = sorted(row for r in records for row in r.rows)
            raise BidsafeError(
                f"consent registry: rows {', '.join(map(str, rows))} share a 'study_id' but disagree on "
                "'consent' or 'withdrawn'",
                path,
            )


def require_input_file(key: str, value: str | Path) -> Path:
    """A configured private input file (the consent registry, demographics) that must be there and readable.

    Checked before any job: a file that disappears (or loses its read permission) after a first release must
    stop the run, whatever was decided with it before, not leave the old decisions standing while new sessions
    wait unprocessed. The message names the configuration key, never a participant (nor the path, which the
    user knows from the key).
    """
    path = Path(value)
    remedy = "restore it" + (f", or set '{key}: {NONE_REQUIRED}' if no consent is needed" if key == "consent" else "")
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"config '{key}': the configured file is missing; the run stops here, before any "
                          f"decision is made or reused: {remedy}") from None
    except IsADirectoryError:
        raise ConfigError(f"config '{key}': the configured path is a folder, not a file; {remedy}") from None
    except OSError as exc:
        raise ConfigError(f"config '{key}': the configured file cannot be read ({exc.strerror}); the run stops "
                          f"here, before any decision is made or reused: {remedy}") from None
    return path


def load_registry(config: Mapping[str, object]) -> ConsentRegistry | None:
    """The registry named by `config["consent"]` (see `open_registry`)."""
    return open_registry(config.get("consent"))


def open_registry(setting: object) -> ConsentRegistry | None:
    """The registry a `consent` setting names; None when none is configured; `none-required` honoured."""
    if setting is None or (isinstance(setting, str) and not setting.strip()):
        return None
    if not isinstance(setting, str):
        raise ConfigError("config: 'consent' must be a path to a TSV/CSV registry or the word 'none-required'")
    if setting.strip().lower() == NONE_REQUIRED:
        return ConsentRegistry(path=None, none_required=True)
    return read_registry(Path(setting))


def decide(registry: ConsentRegistry | None, patient_id: str, audience: str) -> tuple[bool, str]:
    """(included, reason code) for one participant and the release audience."""
    audience = check_audience(audience)
    if registry is None:
        return False, REASON_NO_REGISTRY
    if registry.none_required:
        return True, REASON_NOT_REQUIRED
    record = registry.lookup(patient_id) if patient_id else None
    if record is None:
        return False, REASON_MISSING
    if record.withdrawn:
        return False, REASON_WITHDRAWN
    if record.consent == "none":
        return False, REASON_NONE
    if not level_covers(record.consent, audience):
        return False, REASON_INSUFFICIENT
    return True, REASON_OK


# --------------------------------------------------------------------------------------------- template
# The registry's columns as `read_registry` reads them, then what helps the team fill in `consent` (ignored
# by the pipeline). Registry rows are keyed by `patient_id`: one row per DICOM PatientID.
TEMPLATE_COLUMNS: tuple[str, ...] = (
    "patient_id", "consent", "study_id", "consent_form_id", "withdrawn", "study_count", "first_study", "last_study",
)


@dataclass(frozen=True)
class TemplateSummary:
    """Counts only (printable): no IDs, no dates."""

    patients: int
    studies: int
    studies_without_patient_id: int


def template_rows(studies: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Registry rows from one (patient_id, study_date YYYYMMDD) per study: one row per PatientID, sorted."""
    by_patient: dict[str, list[str]] = {}
    for patient_id, study_date in studies:
        if patient_id:
            by_patient.setdefault(patient_id, []).append(study_date)
    rows = []
    for patient_id in sorted(by_patient):
        dates = sorted(_iso_date(d) for d in by_patient[patient_id] if _iso_date(d))
        rows.append({
            "patient_id": patient_id,
            "study_count": str(len(by_patient[patient_id])),
            "first_study": dates[0] if dates else "",
            "last_study": dates[-1] if dates else "",
        })
    return rows


def _iso_date(value: str) -> str:
    """A DICOM DA value as YYYY-MM-DD; '' when it is not a date."""
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date().isoformat()
    except ValueError:
        return ""


def write_consent_template(inbox: str | Path, out: str | Path, force: bool = False) -> TemplateSummary:
    """Write a consent registry to fill in, one row per PatientID of the inbox (private: 0600, atomic).

    Studies are the ingest stage's (header-only reads, same quarantine rules); a study whose files disagree on
    PatientID counts for each of them. The `consent` column is left empty on purpose: `read_registry` refuses
    the file until the team has filled in every row, so a template can never release anyone by itself.
    """
    from bidsafe.ingest import check_outside_inbox, scan_inbox
    from bidsafe.private import private_write_text

    inbox, out = Path(inbox), Path(out)
    check_outside_inbox(inbox, {"OUT": out})
    if out.exists() and not force:
        raise ConfigError("exists; give --force to replace it (it may hold consent already filled in)", out)
    rows, _, _ = scan_inbox(inbox)
    studies: dict[tuple[str, str], tuple[str, str]] = {}
    for row in rows:
        studies.setdefault((row.study_uid, row.patient_id.strip()), (row.patient_id.strip(), row.study_date))
    records = template_rows(studies.values())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TEMPLATE_COLUMNS, delimiter="," if out.suffix.lower() == ".csv"
                            else "\t", lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(records)
    private_write_text(out, buffer.getvalue())
    uids = {uid for uid, _ in studies}
    without = {uid for uid, pid in studies if not pid}
    return TemplateSummary(patients=len(records), studies=len(uids), studies_without_patient_id=len(without))


def cli_template(args: argparse.Namespace) -> int:
    """`bidsafe consent-template INBOX OUT [--force]`: prints counts, never IDs."""
    summary = write_consent_template(args.inbox, args.out, force=args.force)
    print(f"consent-template: {summary.patients} patient(s), {summary.studies} studies, written to {args.out} "
          "(private, 0600); fill in the 'consent' column (none, named, members, public or open) before a run")
    if summary.studies_without_patient_id:
        print(f"consent-template: {summary.studies_without_patient_id} studies have no PatientID: they cannot be "
              "matched to the registry and are withheld")
    return 0
