"""Withdrawal inside a site's own areas: what the next run removes of a participant who withdrew.

Once the linkage table marks a subject withdrawn (bidsafe.pseudonymise.linkage.update_linkage, from the consent
registry's `withdrawn` column), every pseudonymise run removes, before any later stage runs:

- in work_dir: every file or folder whose name carries the label (`sub-S`, `sub-S_ses-T.log`, ...): every
  stage's per-session folders (de-identified DICOM, converted, scrubbed and defaced images, QC pictures),
  status files, profile parts, per-session logs, the staged release's copy;
- in private_dir: the same by name (harvested values `phi/raw/sub-S_ses-T.json`, `phi/sub-S_ses-T.json`,
  deid reports, dcm2bids logs, the session file lists), and the subject's entries in the leak gate's
  harvest and findings (`leakscan/values.json`, `leakscan/findings.json`).

The linkage rows and the stage's `sessions.tsv` rows stay (the pseudonym is never reused and the participant
never re-added); the inbox is never touched (removing the raw exports is the site's task). The sessions
are no longer included, so Snakemake never asks for the removed files again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsafe.bidsnames import LABEL
from bidsafe.fsutil import atomic_write_text
from bidsafe.private import FILE_MODE

log = logging.getLogger("bidsafe")

# The leak gate's private harvest and findings: personal values, each tied to the sessions it came from.
LEAKSCAN_FILES = ("leakscan/values.json", "leakscan/findings.json")
# Another subject's or session's folder (not entered); a folder of any other name is searched.
_OTHER_LABEL = re.compile(rf"^(?:sub|ses)-{LABEL}$")


def label_pattern(subjects: Iterable[str]) -> re.Pattern[str] | None:
    """Matches a file name carrying any of the labels (`sub-S` not followed or preceded by a letter or digit,
    so `sub-ab` never matches `sub-abc`); None for no subjects."""
    labels = sorted({s.removeprefix("sub-") for s in subjects if s})
    if not labels:
        return None
    return re.compile(r"(?<![A-Za-z0-9])sub-(?:" + "|".join(map(re.escape, labels)) + r")(?![A-Za-z0-9])")


def named_paths(root: Path, subjects: Iterable[str]) -> list[Path]:
    """Every file or folder under `root` whose name carries one of the subjects' labels (outermost only).

    Other subjects' `sub-*` and `ses-*` folders are not entered: every stage keeps a subject's files under a
    folder or name of its own label, and a work area holds many thousands of files per session.
    """
    pattern = label_pattern(subjects)
    root = Path(root)
    if pattern is None or not root.is_dir():
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            if pattern.search(name):
                found.append(here / name)
                dirnames.remove(name)
            elif _OTHER_LABEL.match(name):
                dirnames.remove(name)
        found.extend(here / name for name in filenames if pattern.search(name))
    return sorted(found)


def _remove(path: Path) -> int:
    """Remove a file, a symbolic link or a whole folder; returns the number of files removed."""
    if path.is_dir() and not path.is_symlink():
        count = sum(len(files) for _, _, files in os.walk(path))
        shutil.rmtree(path)
        return count
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return 1
    return 0


def _strip_sessions(obj: Any, pattern: re.Pattern[str]) -> tuple[Any, bool]:
    """`obj` without the value rows ({value, sessions: [...]}) that came only from the subjects' sessions, and
    with their labels taken off the rows shared with others; (new object, changed)."""
    if isinstance(obj, list):
        out, changed = [], False
        for item in obj:
            if isinstance(item, dict) and "value" in item and isinstance(item.get("sessions"), list):
                sessions = [s for s in item["sessions"] if not pattern.search(str(s))]
                if len(sessions) != len(item["sessions"]):
                    changed = True
                    if not sessions:
                        continue
                    item = {**item, "sessions": sessions}
            new, inner = _strip_sessions(item, pattern)
            out.append(new)
            changed = changed or inner
        return out, changed
    if isinstance(obj, dict):
        out_dict, changed = {}, False
        for key, value in obj.items():
            out_dict[key], inner = _strip_sessions(value, pattern)
            changed = changed or inner
        return out_dict, changed
    return obj, False


@dataclass(frozen=True)
class Removal:
    """What `remove_withdrawn` did (counts only: printable)."""

    subjects: int
    files: int  # files removed (a folder counts as the files it held)
    entries: int  # private files from which values of the subjects were taken out


def remove_withdrawn(work_dir: Path, private_dir: Path, subjects: Collection[str]) -> Removal:
    """Remove the withdrawn `subjects`' data from work_dir and private_dir (see the module docstring).

    Idempotent and cheap when there is nothing left to remove, so every run calls it for every withdrawn subject.
    """
    pattern = label_pattern(subjects)
    if pattern is None:
        return Removal(0, 0, 0)
    files = 0
    for root in (Path(work_dir), Path(private_dir)):
        for path in named_paths(root, subjects):
            files += _remove(path)
    entries = 0
    for rel in LEAKSCAN_FILES:
        path = Path(private_dir) / rel
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            # unreadable: it may hold anything, and the leak gate writes a new one on its next run
            path.unlink()
            entries += 1
            continue
        stripped, changed = _strip_sessions(data, pattern)
        if changed:
            atomic_write_text(path, json.dumps(stripped, ensure_ascii=False, indent=1) + "\n", mode=FILE_MODE)
            entries += 1
    if files or entries:
        log.info("withdrawal: removed %d files of %d withdrawn participant(s) and their values from %d private "
                 "file(s)", files, len(subjects), entries)
    return Removal(len(subjects), files, entries)


def withdrawn_session_files(sessions_tsv: object, index_tsv: object, inbox: object = None) -> frozenset[str]:
    """Inbox-relative paths of every session the pseudonymise stage withheld as withdrawn (its private
    sessions.tsv and the ingest index): the leak gate does not harvest them, so no value of a withdrawn
    participant is collected into private_dir again. Nothing when either file is not given.

    With `inbox`, also every file in a folder that holds files of withdrawn sessions and of no other session
    (the export's DICOMDIR, screenshots and notes carry the same identity but belong to no indexed session);
    a folder shared with anyone else's files is left to the harvest (the safe side).
    """
    from bidsafe.ingest import read_index
    from bidsafe.pseudonymise.consent import REASON_WITHDRAWN
    from bidsafe.pseudonymise.sessionlists import all_sessions

    if not sessions_tsv or not index_tsv or not Path(str(sessions_tsv)).is_file():
        return frozenset()
    uids = {row.study_uid for row in all_sessions(Path(str(sessions_tsv)))
            if not row.included and row.reason == REASON_WITHDRAWN}
    if not uids:
        return frozenset()
    rows = read_index(Path(str(index_tsv)))
    files = {row.relpath for row in rows if row.study_uid in uids}
    if inbox is None or not files:
        return frozenset(files)

    def folders(relpaths: Iterable[str]) -> set[str]:
        return {parent.as_posix() for rel in relpaths for parent in Path(rel).parents if parent != Path(".")}

    theirs = folders(files) - folders(row.relpath for row in rows if row.study_uid not in uids)
    top = {d for d in theirs if Path(d).parent.as_posix() not in theirs}
    root = Path(str(inbox))
    for folder in sorted(top):
        for dirpath, _dirnames, filenames in os.walk(root / folder):
            files.update((Path(dirpath) / name).relative_to(root).as_posix() for name in filenames)
    return frozenset(files)
