"""The inbox walk: every entry under the inbox, no link followed, no special file opened, any file name."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bidsafe.errors import ConfigError
from bidsafe.filelist import escape_name
from bidsafe.handoff import MANIFEST_NAME as HANDOFF_MANIFEST
from bidsafe.handoff import PART_RE as HANDOFF_PART_RE
from bidsafe.ingest.records import (
    REASON_SPECIAL,
    REASON_SYMLINK_BROKEN,
    REASON_SYMLINK_DIR,
    REASON_SYMLINK_FILE,
    REASON_SYMLINK_OUT,
    REASON_TRUNCATED,
    REASON_UNREADABLE,
    REASON_UNREADABLE_FOLDER,
    TSV_ENCODING,
    TSV_ERRORS,
)


@dataclass(frozen=True)
class InboxEntry:
    """A file found by the walk: where to read it, its stat, or why it is not read at all."""

    relpath: str
    path: str
    size: int = 0
    mtime_ns: int = 0
    skip_reason: str = ""


def walk_inbox(inbox: Path) -> Iterator[InboxEntry]:
    """Yield every file under `inbox`, depth first, following no symbolic link below the inbox itself.

    The inbox path is resolved once (it may be a link). Below it, every link is reported, never entered nor
    read (see the module docstring for why). Special files (FIFOs, sockets, devices) are reported, never
    opened: reading a FIFO would block forever. A file without read permission and a folder that cannot be
    listed are reported too. Nothing here raises for an odd entry (a link loop, a name with a newline or bytes
    that are not UTF-8): each becomes an entry with its reason, and no message names it.
    """
    root = resolve_inbox(inbox)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            yield InboxEntry(_relpath(folder, root), str(folder), skip_reason=REASON_UNREADABLE_FOLDER)
            continue
        subfolders = []
        for entry in entries:
            relpath = _relpath(Path(entry.path), root)
            try:
                if entry.is_symlink():
                    yield InboxEntry(relpath, entry.path, skip_reason=_symlink_reason(Path(entry.path), root))
                elif entry.is_dir(follow_symlinks=False):
                    # a folder named '.xxx' is being built (a study handed over by the receiver or a drop
                    # is renamed into place whole), so a half-moved study is never indexed
                    if not entry.name.startswith("."):
                        subfolders.append(Path(entry.path))
                elif _is_handoff_manifest(entry.name, folder):
                    continue  # the handoff's own record (bidsafe.handoff), not raw input
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    # checked here, not only on open: a cached row would otherwise be reused for a file that
                    # can no longer be read (chmod changes no mtime)
                    readable = os.access(entry.path, os.R_OK)
                    yield InboxEntry(relpath, entry.path, st.st_size, st.st_mtime_ns,
                                 skip_reason="" if readable else REASON_UNREADABLE)
                else:
                    yield InboxEntry(relpath, entry.path, skip_reason=_special_reason(entry))
            except OSError as exc:  # vanished or unreadable between listing and stat
                yield InboxEntry(relpath, entry.path, skip_reason=f"{REASON_TRUNCATED}: {exc.strerror}")
        stack.extend(reversed(subfolders))


def _is_handoff_manifest(name: str, folder: Path) -> bool:
    """`manifest.json` directly inside a `part-NNN` folder is written by `bidsafe.handoff`, not received."""
    return name == HANDOFF_MANIFEST and HANDOFF_PART_RE.match(folder.name) is not None


_INBOX_KEY = "inbox (config key 'inbox', or INBOX; its path is not shown: it may name a patient)"


def resolve_inbox(inbox: str | Path) -> Path:
    """The configured inbox as a real folder (it may be a link, resolved once); the error never names it.

    The inbox path can itself name a patient (an export folder): a loop or a missing folder is reported by
    the configuration key only.
    """
    try:
        root = Path(inbox).resolve(strict=True)
    except RuntimeError:  # a symbolic link loop before Python 3.13
        raise ConfigError(f"{_INBOX_KEY}: cannot be resolved (a symbolic link loop)") from None
    except OSError as exc:
        raise ConfigError(f"{_INBOX_KEY}: cannot be opened ({exc.strerror})") from None
    if not root.is_dir():
        raise ConfigError(f"{_INBOX_KEY}: is not a folder")
    return root


def regular_files(folder: Path) -> list[str]:
    """The '/'-separated relative paths of the readable regular files under `folder`, by ingest's walk (no link
    followed, no special file, any file name), for every other reader of the inbox (the leak scan's harvest).
    """
    return [entry.relpath for entry in walk_inbox(Path(folder)) if not entry.skip_reason]


def _special_reason(entry: os.DirEntry[str]) -> str:
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISFIFO(mode):
        kind = "FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "device"
    else:
        kind = "unknown kind"
    return f"{REASON_SPECIAL}: {kind}"


def _symlink_reason(link: Path, root: Path) -> str:
    """Why a link is not followed, from where it points (resolving reads no file content)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError before Python 3.13)
        return REASON_SYMLINK_BROKEN
    if not target.is_relative_to(root):
        return REASON_SYMLINK_OUT
    return REASON_SYMLINK_DIR if target.is_dir() else REASON_SYMLINK_FILE


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def inbox_fingerprint(inbox: Path) -> str:
    """A cheap hash of every file's (relpath, size, mtime_ns), from stat() only.

    Passed to Snakemake as a rule parameter so that ingest re-runs whenever a file is added, removed or
    replaced in the inbox. The hash hides the paths (they may name patients).
    """
    digest = hashlib.sha256()
    for entry in sorted(walk_inbox(Path(inbox)), key=lambda e: e.relpath):
        # escaped: a name holding a tab or newline cannot pass for another entry (ordinary names unchanged)
        line = f"{escape_name(entry.relpath)}\t{entry.size}\t{entry.mtime_ns}\t{entry.skip_reason}\n"
        digest.update(line.encode(TSV_ENCODING, TSV_ERRORS))
    return digest.hexdigest()
