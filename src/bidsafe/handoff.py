"""Hand a complete study to the inbox: a new `inbox/<study_key>/part-NNN/` that appears whole, manifest included.

PROVISIONAL (wp-sched): the minimal version of the shared interface the receiver's branch (wp-recv) owns, with
exactly its signature, written because that branch had not committed it yet. The lead keeps wp-recv's version.

The part is built under `inbox/.incoming-<random>/` (same filesystem, so the final step is a rename) with
`manifest.json` written last, then renamed to the next free part number. A reader of the inbox therefore sees
a part either whole or not at all; a folder whose name starts with a dot is never a part.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from bidsafe.fsutil import atomic_write_json
from bidsafe.keys import keyed_digest

MANIFEST = "manifest.json"
INCOMING_PREFIX = ".incoming-"


def study_key(key: bytes, study_uid: str) -> str:
    """A study's name in the inbox and in logs: a keyed short hash, never the UID itself."""
    return "st-" + keyed_digest(key, "study-key", study_uid).hex()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hand_over_study(files: Sequence[Path], inbox: Path, study_key: str, info: Mapping[str, object]) -> Path:
    """Move `files` into a new `inbox/<study_key>/part-<NNN>/` (next free number) with `manifest.json`
    (instance count, per-file sha256, plus `info`); returns the part folder."""
    inbox = Path(inbox)
    incoming = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=inbox))
    try:
        entries = []
        for number, source in enumerate(files, start=1):
            name = f"{number:06d}{Path(source).suffix or '.dcm'}"
            target = incoming / name
            shutil.move(os.fspath(source), target)
            entries.append({"name": name, "size": target.stat().st_size, "sha256": _sha256(target)})
        atomic_write_json(incoming / MANIFEST, {"study_key": study_key, "instances": len(entries),
                                                "files": entries, **dict(info)})
        study_dir = inbox / study_key
        study_dir.mkdir(exist_ok=True)
        number = 1 + max((int(p.name[5:]) for p in study_dir.glob("part-[0-9][0-9][0-9]")), default=0)
        while True:
            part = study_dir / f"part-{number:03d}"
            try:
                os.mkdir(part)  # claims the number (a concurrent hand-over takes the next one)
            except FileExistsError:
                number += 1
                continue
            os.replace(incoming, part)  # onto the empty folder just claimed: atomic
            return part
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


__all__ = ["INCOMING_PREFIX", "MANIFEST", "hand_over_study", "study_key"]
