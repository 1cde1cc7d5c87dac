"""The run report's facts, in words and counts (no HTML): session outcomes, reason codes as sentences,
quarantine counts by reason, what k-anonymity did, QC values with their flags, why nothing was published.

Every fact here is read from stage outputs that hold pseudonyms and counts only; nothing names a person.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bidsafe.release.gates import GateResult


def is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in {"1", "true", "yes", "included"}


# Reasons of the pseudonymise stage that take a session out of the dataset for good (a QA or phantom
# session, one the site excluded), as opposed to withholding it from this release (see bidsafe.siteexclusions).
EXCLUDED_PREFIXES = ("excluded", "qa session")


def outcome_of(reason: str) -> str:
    """"excluded" or "withheld", from a session's reason."""
    return "excluded" if reason.lower().startswith(EXCLUDED_PREFIXES) else "withheld"


# ------------------------------------------------------------------------------------------ reasons in words

# Every reason code a stage writes (bidsafe.pseudonymise, the per-session stages through
# bidsafe.sessionstatus), as a sentence a lab manager reads without the source code. A code missing here is
# still shown, as "withheld (code)", and a unit test lists the codes so a new one gets its sentence.
REASON_WORDS: dict[str, str] = {
    "consent:none": "The consent registry records no consent to share this participant's data.",
    "consent:missing": "The participant is not in the consent registry.",
    "consent:withdrawn": "The participant withdrew consent.",
    "consent:insufficient": "The participant's consent covers a narrower audience than this release's.",
    "consent:no-registry": "No consent registry is configured, and this release's audience needs one.",
    "identity:no-patient-id": "The scanner export carries no PatientID, so the session cannot be matched to a "
    "consent record.",
    "identity:conflicting-patient-ids": "The study's files carry more than one PatientID, so it cannot be "
    "attributed to one participant.",
    "deid:all-burned-in": "Every image of the session may hold text burned into its pixels (screenshots, "
    "secondary captures), so none could be released.",
    "deid:nothing-deidentified": "De-identification kept no image of this session.",
    "deid:failed": "De-identification failed for this session.",
    "convert:ambiguous": "The conversion mapping matches several series to one BIDS name; the mapping "
    "(dcm2bids config) needs a sharper criterion.",
    "convert:no-series": "The session holds no series to convert (e.g. localizers only, a structured report, "
    "CT or RT objects sent by mistake).",
    "convert:nothing-converted": "The conversion mapping matched none of the session's series.",
    "convert:dcm2bids-failed": "The converter (dcm2bids) failed on this session; see its private log.",
    "convert:failed": "Conversion to NIfTI failed for this session.",
    "scrub:refused": "A sidecar could not be reduced to the allow-listed fields.",
    "deface:refused": "A deface safety guard refused the images (e.g. a phantom, a head that does not match "
    "the template, an implausible registration): the face could not be removed with confidence.",
    "qc:failed": "Image-quality metrics could not be computed (an image could not be read).",
}
UNFINISHED = "unfinished"


def reason_in_words(code: str, detail: str = "", stage: str = "") -> str:
    """The sentence for a reason code, with the stage's own sentence (`detail`) after it when it adds one.
    Reasons that are sentences already (the site configuration's, a QA session's) are returned as they are."""
    code, detail = str(code or "").strip(), " ".join(str(detail or "").split())
    if not code and detail in REASON_WORDS:  # pseudonymise writes the code as its reason
        code, detail = detail, ""
    words = REASON_WORDS.get(code)
    if words is None:
        if not code:
            return f"at {stage}: {detail}" if stage and detail else detail or "withheld (no reason recorded)"
        words = f"Withheld ({code})."
    if detail and detail != code:
        words += f" (at {stage}: {detail})" if stage else f" ({detail})"
    return words


def session_counts(sessions: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """included / withheld / excluded / unfinished counts of the report's session rows."""
    counts = {"included": 0, "withheld": 0, "excluded": 0, UNFINISHED: 0}
    for r in sessions:
        if is_true(r.get("included")):
            counts["included"] += 1
        else:
            outcome = str(r.get("outcome") or outcome_of(str(r.get("reason", ""))))
            counts[outcome if outcome in counts else "withheld"] += 1
    return counts


# ------------------------------------------------------------------------------------------ quarantine


def quarantine_counts(quarantine_tsv: Path | None) -> dict[str, int] | None:
    """Files quarantined at ingest, counted by reason; None when the (private) report is absent. Only the
    ingest stage's fixed reasons are shown (an OS message after one is cut off): the file's other columns hold
    inbox paths and UIDs and are never read into the report."""
    from bidsafe.ingest import records as ingest

    if quarantine_tsv is None or not Path(quarantine_tsv).is_file():
        return None
    known = sorted((v for k, v in vars(ingest).items() if k.startswith("REASON_") and isinstance(v, str)),
                   key=len, reverse=True)
    counts: dict[str, int] = {}
    for row in ingest.read_quarantine(Path(quarantine_tsv)):
        reason = str(row.reason)
        shown = next((k for k in known if reason == k), None) or next(
            (k for k in known if reason.startswith(k + ":")), "other reason")
        counts[shown] = counts.get(shown, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ------------------------------------------------------------------------------------------ k-anonymity


def k_anonymity_actions(k_anonymity: Mapping[str, Any] | None) -> str:
    """What the k-anonymity step did to the released metadata, as one sentence (columns and bin widths only;
    the outcome records no participant's value)."""
    if not k_anonymity:
        return "not recorded (the pseudonymise stage has not run)"
    k = k_anonymity.get("k")
    columns = ", ".join(map(str, k_anonymity.get("quasi_identifiers") or [])) or "no column"
    participants = int(k_anonymity.get("participants") or 0)
    if not k_anonymity.get("holds", True):
        return f"k={k} not reached over {columns}: nothing may be published"
    last_step: dict[str, str] = {}
    for step in k_anonymity.get("steps") or []:
        name, _, what = str(step).partition(": ")
        last_step[name] = what
    actions = []
    for name in k_anonymity.get("column_steps") or {}:
        what = last_step.get(name, "").removeprefix("bins of ").strip()
        actions.append(f"{name} generalised to bins of {what}" if what else f"{name} generalised")
    for name in k_anonymity.get("suppressed") or []:
        whom = "the one released participant" if participants == 1 else f"all {participants} released participants"
        actions.append(f"{name} suppressed (column removed for {whom})")
    if not actions:
        return f"k={k} held over {columns} with no change ({participants} participants)"
    note = f"; {k_anonymity['note']}" if k_anonymity.get("note") else ""
    return f"k={k} over {columns}: " + "; ".join(actions) + note


# ------------------------------------------------------------------------------------------ QC with flags

TSNR_IMPLAUSIBLE = 1000.0
COM_SHIFT_IMPLAUSIBLE_MM = 5.0
QC_COLUMNS = (
    ("filename", "image", ""),
    ("volumes", "volumes", ""),
    ("snr", "SNR", ""),
    ("cnr", "CNR", ""),
    ("tsnr", "tSNR", ""),
    ("com_shift_mean_mm", "centre-of-mass displacement, mean (mm; not Power FD)", ""),
    ("com_shift_max_mm", "centre-of-mass displacement, max (mm; not Power FD)", ""),
    ("dvars_pct", "DVARS (%)", ""),
    ("b0_snr", "b0 SNR", ""),
)
_LEGACY = {"fd_mean_mm": "com_shift_mean_mm", "fd_max_mm": "com_shift_max_mm", "image": "filename"}


def number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def qc_flags(row: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(cell text per column, flags) of one QC row: tSNR of a run too short to measure it is shown as n/a with
    the volume count, implausible values are flagged in words."""
    from bidsafe.imageqc import MIN_TSNR_VOLUMES

    row = {_LEGACY.get(k, k): v for k, v in row.items()}
    cells: dict[str, str] = {}
    flags: list[str] = []
    volumes = number_or_none(row.get("volumes"))
    for key, _, _ in QC_COLUMNS:
        value = row.get(key)
        number = number_or_none(value)
        if number is None:
            cells[key] = "" if value in (None, "") else str(value)
        else:
            cells[key] = f"{number:.4g}"
    tsnr_value = number_or_none(row.get("tsnr"))
    bold = str(row.get("suffix") or "bold") == "bold"  # tSNR is a BOLD measure (a DWI series has none)
    if bold and volumes is not None and 1 < volumes < MIN_TSNR_VOLUMES and "tsnr" in row:
        # also for tables written before bidsafe.imageqc stopped computing it: a few volumes give no temporal noise
        cells["tsnr"] = f"n/a ({int(volumes)} volumes)"
    elif tsnr_value is not None and tsnr_value > TSNR_IMPLAUSIBLE:
        flags.append(f"tSNR {tsnr_value:.3g} is implausible (above {TSNR_IMPLAUSIBLE:g})")
    shift = number_or_none(row.get("com_shift_max_mm"))
    if shift is not None and shift > COM_SHIFT_IMPLAUSIBLE_MM:
        flags.append(f"centre-of-mass displacement of {shift:.3g} mm between volumes is implausible as head "
                     "motion: check the run (intensity change, wrap-around or a real large movement)")
    return cells, flags


def nothing_published_reason(gates: Sequence[GateResult], sessions: Sequence[Mapping[str, Any]],
                             failed_rules: Sequence[str], missing: Sequence[str]) -> str:
    failed = [g for g in gates if not g.passed]
    gate_text = "gate(s) failed: " + "; ".join(f"{g.name}: {g.summary}" for g in failed)
    counts = session_counts(sessions)
    if sessions and not counts["included"] and not counts[UNFINISHED]:
        # the root cause first: an empty dataset also fails the validator
        return "no session was included" + (f" ({gate_text})" if failed else "")
    if failed:
        return gate_text
    if failed_rules:
        return "the run failed at " + ", ".join(sorted(set(failed_rules)))
    if missing:
        return "the release stage did not run (missing: " + ", ".join(missing) + ")"
    return "the release was not published"
