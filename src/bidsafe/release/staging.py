"""What goes into a release's staging tree from the work area: the included session trees (hard-linked or
copied), the participants files restricted to them, and their QC outputs under derivatives/bidsafe-qc.

Only named files and the included sessions' folders are read: private lists in the work area cannot ship.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsafe.bidsnames import is_label, session_of
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_text
from bidsafe.release.manifest import TOOL_DROPPINGS

log = logging.getLogger("bidsafe")



@dataclass(frozen=True)
class SessionInput:
    """One included session: `bids_dir` holds `sub-<subject>/ses-<session>/...` (defaced, scrubbed)."""

    subject: str
    session: str
    bids_dir: Path


# --------------------------------------------------------------------------------------------- copying
def link_or_copy(src: Path, dst: Path, mode: str = "hardlink") -> str:
    """Hard-link `src` to `dst` when allowed and on the same filesystem, else copy; returns what was done."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink" and not src.is_symlink():
        try:
            os.link(src, dst)
            return "link"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copy2(src, dst)  # follows a symlink: the release gets the content, never a link
    return "copy"


def copy_tree(src: Path, dst: Path, mode: str = "hardlink", *, keep: Any = None) -> int:
    """Copy every file under `src` into `dst` (same relative paths); `keep(rel)` may veto files."""
    count = 0
    for dirpath, _dirnames, filenames in os.walk(src, followlinks=False):
        for name in sorted(filenames):
            if name in TOOL_DROPPINGS:
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(src)
            if keep is not None and not keep(rel):
                continue
            link_or_copy(path, dst / rel, mode)
            count += 1
    return count


# --------------------------------------------------------------------------------------------- TSVs
def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def _tsv_text(header: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(header), delimiter="\t", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("n/a" if row.get(k) in (None, "") else row[k]) for k in header})
    return out.getvalue()


def _filtered_tsv(src: Path, column: str, keep: set[str], prefix: str) -> str:
    header, rows = _read_tsv(src)
    if column not in header:
        raise BidsafeError(f"lacks the '{column}' column", src.name)
    kept = [row for row in rows if _with_prefix(row.get(column, ""), prefix) in keep]
    return _tsv_text(header, kept)


def _with_prefix(label: str, prefix: str) -> str:
    label = (label or "").strip()
    return label if label.startswith(prefix) else prefix + label


def check_sessions(sessions: Sequence[SessionInput]) -> list[SessionInput]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in sessions:
        subject = item.subject.removeprefix("sub-")
        session = item.session.removeprefix("ses-")
        if not (is_label(subject) and is_label(session)):
            raise BidsafeError(f"session labels must be letters and digits: sub-{subject} ses-{session}")
        if (subject, session) in seen:
            raise BidsafeError(f"sub-{subject} ses-{session} is listed twice")
        seen.add((subject, session))
        out.append(SessionInput(subject, session, Path(item.bids_dir)))
    return sorted(out, key=lambda s: (s.subject, s.session))



def copy_sessions(wanted: Sequence[SessionInput], dataset: Path, mode: str) -> int:
    """Each included session's `sub-S/ses-T` tree into `dataset`; returns the files placed."""
    links = 0
    for item in wanted:
        src = Path(item.bids_dir) / f"sub-{item.subject}" / f"ses-{item.session}"
        if not src.is_dir():
            raise BidsafeError(f"holds no sub-{item.subject}/ses-{item.session} folder", item.bids_dir)
        links += copy_tree(src, dataset / f"sub-{item.subject}" / f"ses-{item.session}", mode)
    return links

def copy_participants(participants_dir: Path, dataset: Path, current: set[tuple[str, str]]) -> None:
    """participants.tsv/json and per-subject sessions files, restricted to the included subjects/sessions.

    Only these named files are read: the pseudonymise work folder holds other lists that must not ship.
    """
    subjects = {s for s, _ in current}
    participants = participants_dir / "participants.tsv"
    if not participants.is_file():
        raise BidsafeError("participants.tsv is missing", participants_dir)
    table = _filtered_tsv(participants, "participant_id", {f"sub-{s}" for s in subjects}, "sub-")
    listed = {row["participant_id"] for row in csv.DictReader(io.StringIO(table), delimiter="\t")}
    unlisted = sorted(f"sub-{s}" for s in subjects if f"sub-{s}" not in listed)
    if unlisted:
        raise BidsafeError(f"participants.tsv has no row for {', '.join(unlisted)}", participants_dir)
    atomic_write_text(dataset / "participants.tsv", table)
    for name in ("participants.json", "sessions.json"):
        if (participants_dir / name).is_file():
            shutil.copyfile(participants_dir / name, dataset / name)
    for subject in sorted(subjects):
        sessions_tsv = participants_dir / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
        if sessions_tsv.is_file():
            keep = {f"ses-{t}" for s, t in current if s == subject}
            atomic_write_text(
                dataset / f"sub-{subject}" / sessions_tsv.name, _filtered_tsv(sessions_tsv, "session_id", keep, "ses-")
            )
        else:
            log.warning("sub-%s: no sessions file in the participants folder", subject)
        sidecar = sessions_tsv.with_suffix(".json")
        if sidecar.is_file():
            shutil.copyfile(sidecar, dataset / f"sub-{subject}" / sidecar.name)


def copy_qc(
    qc_dirs: Sequence[Path], out: Path, current: set[tuple[str, str]], mode: str, versions: Mapping[str, str]
) -> None:
    """QC outputs of the included sessions under derivatives/bidsafe-qc, in the same sub-/ses- layout.

    A folder that names a session (`.../sub-S/ses-T`) lands at `sub-S/ses-T/`; any other folder is taken as
    a derivatives root whose files are copied when they name no session or an included one.
    """
    copied = 0
    for qc_dir in map(Path, qc_dirs):
        if not qc_dir.is_dir():
            raise BidsafeError("QC folder is missing", qc_dir)
        named = session_of(qc_dir)
        if named is not None:
            if named in current:
                copied += copy_tree(qc_dir, out / f"sub-{named[0]}" / f"ses-{named[1]}", mode)
            continue

        def keep(rel: Path) -> bool:
            from bidsafe.release.gates import path_entities

            subjects, sessions = path_entities(rel.as_posix())
            return all((s, t) in current for s in subjects for t in sessions) and (
                bool(sessions) or all(any(s == c for c, _ in current) for s in subjects)
            )

        copied += copy_tree(qc_dir, out, mode, keep=keep)
    if copied and not (out / "dataset_description.json").exists():
        from bidsafe.imageqc import write_qc_dataset_description

        write_qc_dataset_description(out, versions)
