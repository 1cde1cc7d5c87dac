"""Handing a complete study over to the inbox: one atomic step, with a manifest, never overwriting.

Both routes that fill a receiver-fed inbox use this: the DICOM receiver (`bidsafe receive`) and folder drops.
A study appears in the inbox only whole: its files are gathered under `inbox/.incoming-<random>/` (ingest skips
folders whose name starts with '.') and that folder is renamed to `inbox/<study_key>/part-<NNN>/` in one step,
with `manifest.json` already inside. Instances that arrive after a handoff form the next part (part-002, ...)
of the same study folder; nothing already handed over is touched again.

Names carry no personal data: `study_key` is a keyed short hash of the StudyInstanceUID (`study_key`), and the
callers name series folders and files by keyed hashes too (`series_dirname`, `instance_filename`). A file keeps
its own name and its parent folder's name inside the part (`<series folder>/<file name>`).

Moving is crash-safe: on the same file system each file is hard-linked into the incoming folder (a rename that
leaves the source until the part is in place), elsewhere it is copied and fsynced; the sources are deleted only
after the part folder has been renamed into place. A crash therefore leaves either the sources (and a stale
incoming folder, removed by the next handoff) or the complete part, never neither.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bidsafe.keys import keyed_digest

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
INCOMING_PREFIX = ".incoming-"
PART_RE = re.compile(r"^part-(\d{3,})$")
DIR_MODE = 0o700  # raw studies name patients: readable by the receiving user only
FILE_MODE = 0o600
_HASH_CHARS = 16  # 64 bits of a keyed HMAC: no collision in any site's lifetime of studies


def study_key(key: bytes, study_uid: str) -> str:
    """The keyed short hash naming a study in the inbox and in log lines (never the UID itself)."""
    return keyed_digest(key, "handoff-study", study_uid).hex()[:_HASH_CHARS]


def series_dirname(key: bytes, series_uid: str) -> str:
    """The folder name of a series inside a part (a keyed hash of the SeriesInstanceUID)."""
    return keyed_digest(key, "handoff-series", series_uid).hex()[:_HASH_CHARS]


def instance_filename(key: bytes, sop_uid: str) -> str:
    """The file name of an instance (a keyed hash of the SOPInstanceUID, full length: names must not collide)."""
    return keyed_digest(key, "handoff-instance", sop_uid).hex() + ".dcm"


def hand_over_study(files: Sequence[Path], inbox: Path, study_key: str, info: Mapping[str, object]) -> Path:
    """Move a ready study's `files` into a new `inbox/<study_key>/part-<NNN>/`, atomically; return that folder.

    Each file lands at `<its parent folder's name>/<its name>` inside the part. `info` (e.g. source "receiver" or
    "drop", calling AE, first and last receipt times) is stored in `manifest.json` next to the instance count
    and each file's size and sha256. Refuses (ValueError) an empty list, an unsafe `study_key` or two files
    that would land on the same name, before anything moves. Never overwrites: the part number is the next
    free one, chosen under an exclusive lock on the inbox folder.
    """
    inbox = Path(inbox)
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("hand_over_study: no files to hand over")
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", study_key):
        raise ValueError("hand_over_study: study_key must be a short hash (letters, digits, '-', '_')")
    relpaths = [f"{f.parent.name}/{f.name}" for f in files]
    if len(set(relpaths)) != len(relpaths):
        raise ValueError("hand_over_study: two files would land on the same name in the part folder")
    info_json = json.loads(json.dumps(dict(info), default=str))  # fail before moving anything if not JSON
    inbox.mkdir(parents=True, exist_ok=True)
    with _inbox_lock(inbox):
        _remove_stale_incoming(inbox)
        incoming = inbox / f"{INCOMING_PREFIX}{secrets.token_hex(8)}"
        os.mkdir(incoming, DIR_MODE)
        try:
            entries = [_place(src, incoming / rel, rel) for src, rel in zip(files, relpaths, strict=True)]
            manifest = {
                "format": MANIFEST_FORMAT,
                "study_key": study_key,
                "instances": len(entries),
                "files": entries,
                "info": info_json,
            }
            _write_synced(incoming / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
            for folder in {(incoming / rel).parent for rel in relpaths}:
                _fsync_dir(folder)
            _fsync_dir(incoming)
            study_dir = inbox / study_key
            study_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            part = study_dir / f"part-{next_part_number(study_dir):03d}"
            # os.rename would silently replace an empty folder of that name; the lock and the free-number
            # choice make that impossible, and the check says so if anything else ever made one
            if part.exists():
                raise FileExistsError(errno.EEXIST, "part folder already exists", str(part))
            os.rename(incoming, part)
            _fsync_dir(study_dir)
            _fsync_dir(inbox)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)  # sources are untouched until the rename succeeded
            raise
    for src in files:  # the part is in place: now, and only now, the sources go
        with contextlib.suppress(FileNotFoundError):
            src.unlink()
    return part


def next_part_number(study_dir: Path) -> int:
    """1 + the highest part number in `study_dir` (1 when there is none)."""
    numbers = [int(m.group(1)) for p in _listdir(study_dir) if (m := PART_RE.match(p))]
    return max(numbers, default=0) + 1


def read_manifest(part: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((Path(part) / MANIFEST_NAME).read_text(encoding="utf-8"))
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _place(src: Path, dest: Path, rel: str) -> dict[str, object]:
    """Hard-link (same file system) or copy+fsync `src` to `dest`; return its manifest entry."""
    if not dest.parent.exists():
        os.mkdir(dest.parent, DIR_MODE)
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP):
            raise
        with open(src, "rb") as fin, open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE),
                                          "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    else:
        os.chmod(dest, FILE_MODE)
        with open(dest, "rb") as handle:  # the spool file was fsynced when written; this covers drop files
            os.fsync(handle.fileno())
    return {"path": rel, "size": dest.stat().st_size, "sha256": sha256_file(dest)}


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _remove_stale_incoming(inbox: Path) -> None:
    """An incoming folder seen under the lock was left by a crash; its sources still exist, so it can go."""
    for name in _listdir(inbox):
        if name.startswith(INCOMING_PREFIX):
            shutil.rmtree(inbox / name, ignore_errors=True)


@contextlib.contextmanager
def _inbox_lock(inbox: Path) -> Iterator[None]:
    """Serialise handoffs into one inbox (the receiver and a drop watcher may run side by side)."""
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
