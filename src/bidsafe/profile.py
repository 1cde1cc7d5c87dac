"""The processing profile of a session: which rule, vocabulary, mapping and allow-list files made it.

Each per-session stage that reads such a file records its content hash in a small JSON part
(`work/profile/sub-S/ses-T/<stage>.json`), written by the job that really used the file, so a session
processed before an edit keeps the old hash until its stage reruns. Assemble collects the parts of the
included sessions; publish writes them to SHAREABLE.json (once when every session shares one profile,
else grouped with the sessions of each) and refuses a release any session of which was de-identified with
a rule set `bidsafe check-rules` rejects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bidsafe import __version__
from bidsafe.bidsnames import session_of
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_json

WEAKER_RULES = "weaker_rules"


def file_digest(path: str | Path) -> dict[str, str]:
    """{file: name, sha256: hex} of one file (the name only: a path may hold a site's folder names)."""
    path = Path(path)
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def stage_profile(files: Mapping[str, str | Path | Sequence[str | Path]], **extra: Any) -> dict[str, Any]:
    """The files one stage read (each a path or a list of paths), hashed, plus the bidsafe version."""
    record: dict[str, Any] = {"bidsafe_version": __version__}
    for key, value in files.items():
        if isinstance(value, (str, Path)):
            record[key] = file_digest(value)
        else:
            record[key] = [file_digest(p) for p in value]
    record.update(extra)
    return record


def write_stage_profile(path: str | Path, files: Mapping[str, str | Path | Sequence[str | Path]],
                        **extra: Any) -> dict[str, Any]:
    record = stage_profile(files, **extra)
    atomic_write_json(Path(path), record)
    return record


def content_digest(*paths: str | Path) -> str:
    """One SHA-256 over the names and bytes of `paths` (for a Snakemake param: it changes exactly when a
    file's content does, even when the edited file carries an older modification time)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def session_key(path: str | Path) -> str:
    """`.../sub-S/ses-T/<stage>.json` -> `sub-S/ses-T`."""
    labels = session_of(path)
    if labels is not None:
        return f"sub-{labels[0]}/ses-{labels[1]}"
    raise BidsafeError("profile part does not name a sub-/ses- pair", path)


def collect_profiles(parts: Sequence[str | Path], sessions: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{`sub-S/ses-T`: {stage: part}} from the stage parts; restricted to `sessions` when given."""
    profiles: dict[str, dict[str, Any]] = {}
    for part in map(Path, parts):
        key = session_key(part)
        if sessions is not None and key not in sessions:
            continue
        profiles.setdefault(key, {})[part.stem] = json.loads(part.read_text(encoding="utf-8"))
    return dict(sorted(profiles.items()))


def weaker_sessions(profiles: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sessions de-identified with a rule set check-rules rejects (run with allow_weaker_rules)."""
    return [key for key, stages in profiles.items() if (stages.get("deid") or {}).get(WEAKER_RULES)]


def _canonical(profile: Mapping[str, Any]) -> str:
    return json.dumps(profile, sort_keys=True, separators=(",", ":"))


def summarise_profiles(profiles: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The SHAREABLE.json record: one profile stated once when every session shares it, else each distinct
    profile with the sessions processed with it (the largest group first)."""
    groups: dict[str, list[str]] = {}
    for key, profile in sorted(profiles.items()):
        groups.setdefault(_canonical(profile), []).append(key)
    if len(groups) == 1:
        (text, sessions), = groups.items()
        return {"uniform": True, "sessions": len(sessions), "profile": json.loads(text)}
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1]))
    return {
        "uniform": False,
        "sessions": len(profiles),
        "profiles": [{"sessions": sessions, "profile": json.loads(text)} for text, sessions in ordered],
    }


def rules_label(profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """The rule profile as one line for README, GeneratedBy and SHAREABLE.json's `profile`: the rule file and
    its hash, or each distinct one with its number of sessions (the largest group first)."""
    counts: dict[str, int] = {}
    for stages in profiles.values():
        rules = (stages.get("deid") or {}).get("rules") or {}
        label = f"{rules.get('file', 'unknown')} (sha256:{str(rules.get('sha256', ''))[:16]})"
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return "unknown"
    if len(counts) == 1:
        return next(iter(counts))
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))  # the largest group first
    return "; ".join(f"{label} for {n} session{'s' if n != 1 else ''}" for label, n in ordered)


def refuse_weaker(profiles: Mapping[str, Mapping[str, Any]], where: str | Path) -> None:
    """Raise when any session was de-identified with a rule set check-rules rejects."""
    weaker = weaker_sessions(profiles)
    if weaker:
        shown = ", ".join(weaker[:5]) + (f" and {len(weaker) - 5} more" if len(weaker) > 5 else "")
        raise BidsafeError(
            f"not published: {len(weaker)} session(s) were de-identified with a rule set that `bidsafe "
            f"check-rules` rejects (deid.allow_weaker_rules): {shown}; such output is never shareable; fix the "
            "rule file and rerun (the edit reruns deid for every session)",
            where,
        )


def read_profiles(path: str | Path) -> dict[str, dict[str, Any]]:
    profiles: dict[str, dict[str, Any]] = json.loads(Path(path).read_text(encoding="utf-8"))
    return profiles
