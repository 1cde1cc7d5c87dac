"""Atomic writes: every output appears whole or not at all (temp name in the same folder, then rename)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically; `mode` sets permissions before the file becomes visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | Path, obj: Any, mode: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", mode=mode)


def write_if_changed(path: str | Path, text: str, mode: int | None = None) -> bool:
    """Write only when the content differs, so an unchanged file keeps its mtime (no needless reruns)."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text, mode=mode)
    return True


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` whole, on error it is removed.

    An existing `path` is moved aside first and deleted only after the new folder is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def move_dir_into_place(src: str | Path, dst: str | Path) -> Path:
    """Move the finished folder `src` to `dst` whole (replacing an existing `dst`), across file systems too.

    On one file system this is a rename. Otherwise `src` is copied into a temporary sibling of `dst` (same
    file system as `dst`), renamed into place and only then removed, so `dst` never appears half-copied.
    """
    src, dst = Path(src), Path(dst)
    with atomic_dir(dst) as tmp:
        tmp.rmdir()  # the rename below takes its (still unique) name
        try:
            os.rename(src, tmp)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copytree(src, tmp, symlinks=True)
            shutil.rmtree(src, ignore_errors=True)
    return dst


# What the helpers above leave when a process is killed between creating and renaming: `.name.XXXX.tmp` files
# and folders (atomic_write_*, atomic_dir) and `.name.old-PID` folders (atomic_dir's replaced original).
_LEFTOVER = re.compile(r"^\..+\.(?:[A-Za-z0-9_]+\.tmp|old-\d+)$")


def leftover_temps(root: str | Path) -> list[Path]:
    """The temporary siblings under `root` that a killed process left (see `_LEFTOVER`); outermost only."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if _LEFTOVER.match(name):
                found.append(Path(folder) / name)
        dirs[:] = [d for d in dirs if not _LEFTOVER.match(d)]
    return sorted(found)


def remove_path(path: str | Path) -> None:
    """Remove a file, link or folder tree; nothing when it is already gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
