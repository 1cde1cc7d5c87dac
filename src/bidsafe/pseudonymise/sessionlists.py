"""The stage's private session lists: sessions.tsv (every session's decision) and each session's files.txt."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsafe.errors import BidsafeError
from bidsafe.filelist import file_list_text
from bidsafe.fsutil import write_if_changed
from bidsafe.private import FILE_MODE, ensure_private_dir

SESSIONS_COLUMNS = ("subject", "session", "study_uid", "included", "reason", "n_files")
# sessions.tsv's `included` column: this and nothing else means included (every reader goes through all_sessions)
INCLUDED_YES, INCLUDED_NO = "yes", "no"


@dataclass(frozen=True)
class SessionDecision:
    subject: str
    session: str
    included: bool
    reason: str  # "" when included; otherwise a code such as consent:none (never a real identifier)
    study_uid: str = ""  # private: the study this session is (sessions.tsv is in private_dir)


@dataclass(frozen=True)
class SessionFiles:
    """One study's labels and inbox-relative paths (private)."""

    study_uid: str
    subject: str
    session: str
    relpaths: tuple[str, ...]


def write_private_session_lists(private_dir: Path, sessions: Sequence[SessionFiles],
                                decisions: Sequence[SessionDecision],
                                withdrawn: set[str] | frozenset[str] = frozenset()) -> None:
    """private_dir/pseudonymise/sessions.tsv and private_dir/sessions/sub-S/ses-T/files.txt (each if changed)."""
    by_label: Mapping[tuple[str, str], SessionDecision] = {(d.subject, d.session): d for d in decisions}
    sessions_root = ensure_private_dir(private_dir / "sessions")
    rows = []
    for s in sessions:
        decision = by_label[(s.subject, s.session)]
        included = INCLUDED_YES if decision.included else INCLUDED_NO
        rows.append((s.subject, s.session, s.study_uid, included, decision.reason, str(len(s.relpaths))))
        if s.subject in withdrawn:
            continue  # a withdrawn participant's inbox paths are not kept (nothing reads them again)
        folder = ensure_private_dir(ensure_private_dir(sessions_root / f"sub-{s.subject}") / f"ses-{s.session}")
        # escaped (bidsafe.filelist): a name with a newline or bytes that are not UTF-8 must come back whole
        write_if_changed(folder / "files.txt", file_list_text(s.relpaths), mode=FILE_MODE)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(SESSIONS_COLUMNS)
    writer.writerows(sorted(rows))
    folder = ensure_private_dir(private_dir / "pseudonymise")
    write_if_changed(folder / "sessions.tsv", buffer.getvalue(), mode=FILE_MODE)


def all_sessions(sessions_tsv: Path) -> list[SessionDecision]:
    """Every session of the stage's private sessions.tsv, included or not: the one reader of that table (the
    workflow's per-session jobs, the consent gate, the QA and withdrawal file lists)."""
    path = Path(sessions_tsv)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in SESSIONS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BidsafeError(f"sessions table: column(s) {', '.join(missing)} missing", path)
        return [SessionDecision(r["subject"], r["session"], r["included"] == INCLUDED_YES, r["reason"],
                                r["study_uid"]) for r in reader]


def included_sessions(sessions_tsv: Path) -> list[tuple[str, str]]:
    """(subject, session) of every included session, sorted: the per-session jobs' wildcards."""
    return sorted((d.subject, d.session) for d in all_sessions(sessions_tsv) if d.included)
