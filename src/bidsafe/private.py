"""The private area: the only place that holds anything identifying (0700 folders, 0600 files)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bidsafe.errors import ConfigError
from bidsafe.fsutil import atomic_write_bytes, atomic_write_text

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents, each 0700: `mkdir(parents=True)` gives parents the umask's mode) with
    mode 0700 and tighten it if it already exists."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_write_text(path: str | Path, text: str) -> Path:
    """Write a file inside the private area atomically with mode 0600 (its folder made 0700)."""
    path = Path(path)
    ensure_private_dir(path.parent)
    return atomic_write_text(path, text, mode=FILE_MODE)


def private_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    ensure_private_dir(path.parent)
    return atomic_write_bytes(path, data, mode=FILE_MODE)


def areas_overlap(a: str | Path, b: str | Path) -> bool:
    """True when two folders are the same or one holds the other (symbolic links resolved): the one test of
    "data areas must be separate" (config areas, the drop folder, a stage's output beside private_dir)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


def check_areas(
    inbox: str | Path, private_dir: str | Path, work_dir: str | Path, release_dir: str | Path
) -> None:
    """Refuse overlapping data areas: private data must never sit inside what gets released or processed."""
    areas = {
        "inbox": Path(inbox).resolve(),
        "private_dir": Path(private_dir).resolve(),
        "work_dir": Path(work_dir).resolve(),
        "release_dir": Path(release_dir).resolve(),
    }
    names = list(areas)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = areas[a], areas[b]
            if areas_overlap(pa, pb):
                raise ConfigError(
                    f"config: '{a}' ({pa}) and '{b}' ({pb}) overlap; the data areas must be separate folders"
                )


def check_writable_area(path: str | Path, key: str) -> None:
    """Refuse a data area this user cannot create files in, before any job runs (publish is the last job:
    an unwritable `release_dir` found there costs a whole run). A missing folder is judged by its nearest
    existing parent, which the stage would create it in. The probe is an unnamed temporary file (O_TMPFILE
    where the filesystem has it), so nothing is left behind, and it answers as the real write would: ACLs,
    read-only mounts and root's privileges included."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"config: '{key}' ({target}) cannot be created: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "" if existing == target else f" (its parent {existing}, where it would be created)"
        raise ConfigError(
            f"config: '{key}' ({target}) is not writable{where}: {exc.strerror}; make it writable for the user "
            f"running the pipeline, or set '{key}' to a folder that is"
        ) from None
