"""The released participant metadata files: participants.tsv/json and sub-<S>/sub-<S>_sessions.tsv/json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsafe.fsutil import write_if_changed
from bidsafe.pseudonymise.columns import ColumnRule
from bidsafe.pseudonymise.kanonymity import KAnonymityOutcome
from bidsafe.pseudonymise.metadata import MetadataTables, plain, release_value

# ------------------------------------------------------------------------------------------ rendering


def _sidecar_entry(rule: ColumnRule, step: float | None) -> dict[str, object]:
    entry: dict[str, object] = {}
    description = rule.description
    if rule.kind == "numeric":
        step = step if step is not None else rule.precision or 1.0
        unit = f" {rule.unit}" if rule.unit else ""
        if rule.floor:
            how = f"in whole {rule.unit}, rounded down" if step == 1 and rule.unit else \
                f"rounded down to a multiple of {plain(step)}{unit}"
        else:
            how = f"rounded to the nearest {plain(step)}{unit}"
        description += f"; {how}"
        if rule.top_code is not None:
            description += f"; values above {plain(rule.top_code)} are given as {plain(rule.top_code)}"
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
