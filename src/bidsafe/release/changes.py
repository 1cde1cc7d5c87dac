"""What changed since the previous published version, as the automatic notes of a CHANGES entry.

Compared are the dataset about to be published and the highest published version: sessions added, withdrawn
(the participant withdrew consent), removed for another reason, reprocessed (a session present in both whose
files or bytes differ: a rerun with new rules or tools, a fixed conversion), and the de-identification rule
profile. Notes name sessions by their released pseudonyms only, which are already the released folder names.

Reprocessing is found without reading the data twice in the usual case: a staged file that is the very file
(same device and inode) the previous version links to is unchanged, one of another size changed; any other is
hashed and compared with the previous version's MANIFEST.sha256.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath

from bidsafe import bidsnames
from bidsafe.errors import BidsafeError
from bidsafe.release.manifest import (
    MANIFEST_NAME,
    SHAREABLE_NAME,
    iter_release_files,
    parse_manifest,
    sha256_file,
)

Session = tuple[str, str]


def session_of(rel: str) -> Session | None:
    """(subject, session) of a release path inside a `sub-S/ses-T` folder (raw or derivatives), else None."""
    return bidsnames.session_of(PurePath(rel).parent)  # the session folder must hold the file, not be it


def _session_files(root: Path, files: Iterable[str]) -> dict[Session, set[str]]:
    out: dict[Session, set[str]] = {}
    for rel in files:
        session = session_of(rel)
        if session is not None:
            out.setdefault(session, set()).add(rel)
    return out


def _same_file(a: Path, b: Path) -> bool | None:
    """True: the very same file (one inode); False: sizes differ, so the bytes do; None: hash to know."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return None
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    return None if sa.st_size == sb.st_size else False


def reprocessed_sessions(dataset: Path, previous_dir: Path, sessions: Iterable[Session]) -> list[Session]:
    """The `sessions` (present in both) whose files differ between `dataset` and the published `previous_dir`:
    another set of file names, or other bytes (by the previous version's manifest)."""
    try:
        published = parse_manifest((previous_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, BidsafeError):
        return []  # no readable manifest: nothing can be said (verify reports it), so nothing is claimed
    wanted = set(sessions)
    now = _session_files(dataset, iter_release_files(dataset))
    before = _session_files(previous_dir, published)
    changed = []
    for session in sorted(wanted):
        files = now.get(session, set())
        if files != before.get(session, set()):
            changed.append(session)
            continue
        for rel in sorted(files):
            same = _same_file(dataset / rel, previous_dir / rel)
            if same is True:
                continue
            if same is False or sha256_file(dataset / rel) != published[rel]:
                changed.append(session)
                break
    return changed


def published_profile(previous_dir: Path) -> str | None:
    """The rule profile a published version records in SHAREABLE.json, None when unreadable."""
    try:
        value = json.loads((previous_dir / SHAREABLE_NAME).read_text(encoding="utf-8")).get("profile")
    except (OSError, ValueError):
        return None
    return str(value) if value else None


def _listed(pairs: Iterable[Session]) -> str:
    return ", ".join(f"sub-{s}/ses-{t}" for s, t in sorted(pairs))


def _sessions(n: int) -> str:
    return f"{n} session{'s' if n != 1 else ''}"


def version_notes(
    dataset: Path,
    previous_dir: Path | None,
    profile: str,
    withheld: Mapping[Session, str] | None = None,
) -> list[str]:
    """The automatic notes of the CHANGES entry for `dataset` (counts first, as `split_changes` and
    `site_notes` expect), against `previous_dir` (None: the first version). `withheld` gives the reason code a
    session left out of this version was withheld with (consent:withdrawn marks a withdrawal)."""
    from bidsafe.pseudonymise.consent import REASON_WITHDRAWN
    from bidsafe.release.assemble import released_sessions

    current = released_sessions(dataset)
    subjects = {s for s, _ in current}
    counts = f"{len(subjects)} participants, {len(current)} sessions."
    if previous_dir is None:
        return [f"Initial release: {counts}"]
    previous = released_sessions(previous_dir)
    notes = [f"Release contents: {counts}"]
    added, removed = current - previous, previous - current
    withheld = withheld or {}
    withdrawn = {p for p in removed if withheld.get(p) == REASON_WITHDRAWN}
    removed -= withdrawn
    if added:
        # the wording of earlier releases ("Added 1 sessions") is kept: scripts may read it
        notes.append(f"Added {len(added)} sessions: {_listed(added)}.")
    if withdrawn:
        notes.append(f"Withdrawn {_sessions(len(withdrawn))} (the participant withdrew consent; delete any copies "
                     f"you hold): {_listed(withdrawn)}.")
    if removed:
        notes.append(f"Removed {len(removed)} sessions (delete any copies you hold): {_listed(removed)}.")
    reprocessed = reprocessed_sessions(dataset, previous_dir, current & previous)
    if reprocessed:
        notes.append(f"Reprocessed {_sessions(len(reprocessed))} (their files changed; fetch them again): "
                     f"{_listed(reprocessed)}.")
    before = published_profile(previous_dir)
    if before is not None and before != profile:
        notes.append(f"De-identification rule profile changed: was {before}, now {profile}.")
    if len(notes) == 1:
        # publish makes a version only when released bytes changed (bidsafe.release.publish): say so
        notes.append("Same sessions as the previous release; some of their files or the dataset files changed.")
    return notes
