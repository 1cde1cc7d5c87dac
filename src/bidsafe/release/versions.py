"""Release versions and the CHANGES text: published `v<N>` folders, the next number, CHANGES entries written,
split and continued, and the automatic notes (counts, sessions added or removed; pseudonyms only)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from bidsafe.errors import BidsafeError

_CHANGES_HEAD = re.compile(r"^(\d+)\.0\.0\s+\S+")


def published_versions(release_dir: str | Path | None) -> list[int]:
    """The N of every `v<N>` folder under `release_dir`, ascending."""
    if release_dir is None or not Path(release_dir).is_dir():
        return []
    found = []
    for entry in Path(release_dir).iterdir():
        match = re.fullmatch(r"v(\d+)", entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append(int(match.group(1)))
    return sorted(found)


def latest_version_dir(release_dir: str | Path | None) -> Path | None:
    """`release_dir/v<N>` of the highest published N, or None. Read this, not the `latest` link: a crash
    between publishing `v<N>` and moving `latest` leaves the link one version behind (publish repairs it)."""
    published = published_versions(release_dir)
    return Path(release_dir) / f"v{published[-1]}" if published and release_dir is not None else None


def next_version(release_dir: str | Path | None, requested: int | str | None = "auto") -> int:
    """1 + the highest published version, or `requested` when it is higher than every published one."""
    published = published_versions(release_dir)
    highest = published[-1] if published else 0
    if requested in (None, "auto"):
        return highest + 1
    if not isinstance(requested, int) or requested <= highest:
        raise BidsafeError(f"release version {requested} is not above the highest published v{highest}", release_dir)
    return requested


def version_label(version: int) -> str:
    """The CHANGES form of release N (CPAN style wants a version number, not `v<N>`)."""
    return f"{version}.0.0"


def changes_version(text: str) -> int | None:
    """N of the newest entry of a bidsafe CHANGES text (`N.0.0 DATE` on its first non-blank line)."""
    for line in text.splitlines():
        if line.strip():
            match = _CHANGES_HEAD.match(line.strip())
            return int(match.group(1)) if match else None
    return None


def changes_text(version: int, date: str, notes: Sequence[str], previous: str = "") -> str:
    """A CHANGES text: the new entry, then every earlier entry carried forward unchanged."""
    lines = [f"{version_label(version)} {date}"]
    for note in notes:
        first, *rest = [part.strip() for part in str(note).strip().splitlines()] or [""]
        lines.append(f"  - {first}")
        lines.extend(f"    {part}" for part in rest)
    entry = "\n".join(lines) + "\n"
    previous = previous.strip("\n")
    return entry + ("\n" + previous + "\n" if previous else "")


_AUTOMATIC_FIRST_NOTE = re.compile(r"^(Initial release|Release contents): \d+ participants, \d+ sessions\.$")


def split_changes(text: str) -> tuple[str, list[str], str]:
    """(header line, notes, earlier entries) of a CHANGES text as `changes_text` writes it: the newest entry
    runs to the first blank line; each note starts with `  - ` and continues on lines indented by 4."""
    lines = text.strip("\n").splitlines()
    if not lines:
        return "", [], ""
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    notes: list[str] = []
    for line in lines[1:end]:
        if line.startswith("  - "):
            notes.append(line[4:])
        elif notes:
            notes[-1] += "\n" + line.strip()
    history = "\n".join(lines[end:]).strip("\n")
    return lines[0].strip(), notes, (history + "\n" if history else "")


def site_notes(notes: Sequence[str]) -> list[str]:
    """The notes of an entry the site wrote (`release.changes`), without the automatic ones that follow them
    (`automatic_notes`: they start with the counts line)."""
    for i, note in enumerate(notes):
        if _AUTOMATIC_FIRST_NOTE.match(note):
            return list(notes[:i])
    return list(notes)


def continue_changes(
    staged: str, version: int, date: str, current: set[tuple[str, str]], previous_changes: str | None,
    previous_sessions: set[tuple[str, str]] | None, automatic: Sequence[str] | None = None,
) -> str:
    """The CHANGES of version `version` when the staged text was written for another version or against
    another previous release (a crash after publishing, two runs sharing release_dir): the site's notes of the
    staged entry kept, the automatic notes recomputed against the previous release (`automatic`, else the
    counts and the sessions added or removed), and the previous release's
    CHANGES carried forward whole, so CHANGES is continued and "Initial release" only ever heads version 1."""
    _, notes, _ = split_changes(staged)
    if automatic is None:
        automatic = automatic_notes(current, previous_sessions)
    return changes_text(version, date, [*site_notes(notes), *automatic], previous_changes or "")


def released_sessions(dataset: str | Path) -> set[tuple[str, str]]:
    """(subject, session) of every `sub-S/ses-T` folder in a dataset."""
    dataset = Path(dataset)
    found: set[tuple[str, str]] = set()
    if dataset.is_dir():
        for sub in dataset.glob("sub-*"):
            if sub.is_dir():
                found.update((sub.name[4:], ses.name[4:]) for ses in sub.glob("ses-*") if ses.is_dir())
    return found


def _session_list(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"sub-{s}/ses-{t}" for s, t in sorted(pairs))


def automatic_notes(current: set[tuple[str, str]], previous: set[tuple[str, str]] | None) -> list[str]:
    """Counts, plus which sessions were added or removed since the previous release (pseudonyms only)."""
    subjects = {s for s, _ in current}
    counts = f"{len(subjects)} participants, {len(current)} sessions."
    if previous is None:
        return [f"Initial release: {counts}"]
    notes = [f"Release contents: {counts}"]
    added, removed = current - previous, previous - current
    if added:
        notes.append(f"Added {len(added)} sessions: {_session_list(added)}.")
    if removed:
        notes.append(f"Removed {len(removed)} sessions (delete any copies you hold): {_session_list(removed)}.")
    if not added and not removed:
        # publish makes a version only when released bytes changed (bidsafe.release.publish): say so
        notes.append("Same sessions as the previous release; some of their files or the dataset files changed.")
    return notes
