"""The private area: the only place that holds anything identifying (0700 folders, 0600 files)."""

from __future__ import annotations

import os
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
            if pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa):
                raise ConfigError(
                    f"config: '{a}' ({pa}) and '{b}' ({pb}) overlap; the data areas must be separate folders"
                )
