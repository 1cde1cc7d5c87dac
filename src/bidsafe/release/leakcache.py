"""The leak gate's private memory between runs, so that one new session does not cost a scan of the whole
release and a harvest of the whole inbox again.

Both parts hold personal values: they live in `private_dir` (0600 files in 0700 folders) and belong to the
gate alone (no stage reads or writes them; the gate's independence is unchanged).

- `ScanMemory`: per scanned file (keyed by its path under the scanned folder), the identity it had when it
  was scanned - device, inode, size and modification time in ns; the release's files are hard links to the
  stages' outputs, so a session that was not reprocessed keeps them - and what the scan found in it: the
  (where, value) pairs and the structural flags. Every entry was checked against the same value set. In the
  next run a file with the same identity is not read again for those values: values that left the set drop
  out of its findings, values new to the set are searched in it again (text, names and headers; a NIfTI
  file's voxel data only when the file itself is new or changed). A file with another identity, another
  vocabulary or another version of the gate's code is scanned in full.
- `HarvestMemory`: per session label, the raw rows the gate harvested from its inbox files, keyed by those
  files' paths and identities (raw input is never modified; a changed or added file changes the key).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.private import private_write_text
from bidsafe.release.leakforms import RawValue
from bidsafe.resources import package_file

# Raise when the meaning of a stored entry changes; the gate's own source is part of the key too.
FORMAT = 1
_GATE_SOURCES = ("leakscan.py", "leaktree.py", "leakfile.py", "leakread.py", "leakmatch.py", "leakhits.py",
                 "leakforms.py", "leakvocab.py", "leakcache.py")

Identity = tuple[int, int, int, int]


def file_identity(path: Path) -> Identity:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.cache
def gate_code_digest() -> str:
    """The gate's matching code: a new version of it rescans everything (its renderings may differ). Read once
    per process: every session's harvest key includes it."""
    digest = hashlib.sha256(str(FORMAT).encode())
    for name in _GATE_SOURCES:
        digest.update(package_file(f"release/{name}").read_bytes())
    return digest.hexdigest()


def scan_settings_key(vocabulary_words: Iterable[str], vocabulary_patterns: Iterable[str], scan_voxels: bool) -> str:
    """What, besides the values, decides a file's findings: the gate's code, its vocabulary, voxel scanning."""
    digest = hashlib.sha256(gate_code_digest().encode())
    digest.update(json.dumps([sorted(vocabulary_words), sorted(vocabulary_patterns), scan_voxels]).encode())
    return digest.hexdigest()


@dataclass
class FileFindings:
    """What one file held: (where, value) pairs and structural flags (where, rule)."""

    identity: Identity
    found: list[tuple[str, RawValue]] = field(default_factory=list)
    flags: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"identity": list(self.identity), "found": [[w, *v] for w, v in self.found],
                "flags": [list(f) for f in self.flags]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileFindings:
        return cls(identity=tuple(data["identity"]),
                   found=[(row[0], RawValue(*row[1:4])) for row in data["found"]],
                   flags=[(row[0], row[1]) for row in data["flags"]])


@dataclass
class ScanMemory:
    """The findings of every file of the last scan, all checked against `values` (see the module docstring)."""

    path: Path
    settings: str
    values: frozenset[RawValue] = frozenset()
    files: dict[str, FileFindings] = field(default_factory=dict)
    seen: dict[str, FileFindings] = field(default_factory=dict)  # this run's entries (saved ones)

    @classmethod
    def load(cls, path: Path, settings: str) -> ScanMemory:
        """The memory saved at `path`, or an empty one when it is missing, unreadable or made with other
        settings (then every file is scanned in full)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("settings") != settings:
                return cls(path, settings)
            values = frozenset(RawValue(*row) for row in data["values"])
            files = {key: FileFindings.from_json(entry) for key, entry in data["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return cls(path, settings)
        return cls(path, settings, values, files)

    def new_values(self, current: Iterable[RawValue]) -> list[RawValue]:
        """The values no remembered file was checked against yet."""
        return sorted(set(current) - self.values)

    def recall(self, key: str, identity: Identity) -> FileFindings | None:
        entry = self.files.get(key)
        return entry if entry is not None and entry.identity == identity else None

    def remember(self, key: str, findings: FileFindings) -> None:
        self.seen[key] = findings

    def save(self, values: Iterable[RawValue]) -> Path:
        """Keep this run's entries (files gone since are forgotten), all now checked against `values`."""
        data = {
            "private": "personal values: keep in the private area, never share",
            "settings": self.settings,
            "values": [list(v) for v in sorted(set(values))],
            "files": {key: entry.to_json() for key, entry in sorted(self.seen.items())},
        }
        return private_write_text(self.path, json.dumps(data, ensure_ascii=False) + "\n")


def still_wanted(found: Sequence[tuple[str, RawValue]],
                 values: frozenset[RawValue] | set[RawValue]) -> list[tuple[str, RawValue]]:
    """A remembered file's findings for the values still searched (a withdrawn session's values drop out)."""
    return [(where, value) for where, value in found if value in values]


@dataclass
class HarvestMemory:
    """Each session's harvested rows, keyed by its files' paths and identities (see the module docstring)."""

    folder: Path
    kept: set[str] = field(default_factory=set)

    @staticmethod
    def key(paths: Sequence[Path]) -> str:
        digest = hashlib.sha256(str(FORMAT).encode())
        digest.update(gate_code_digest().encode())
        for path in sorted(paths):
            try:
                identity = file_identity(path)
            except OSError:
                identity = (0, 0, -1, 0)
            digest.update(os.fsencode(path) + b"\0" + repr(identity).encode() + b"\n")
        return digest.hexdigest()

    def _file(self, label: str) -> Path:
        # the label is a pseudonymous session label (or the unassigned group); hashed all the same, so no
        # file name is ever made from text that could be personal
        return self.folder / (hashlib.sha256(label.encode("utf-8")).hexdigest()[:32] + ".json")

    def recall(self, label: str, key: str) -> list[RawValue] | None:
        path = self._file(label)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") != key:
                return None
            rows = [RawValue(*row) for row in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.kept.add(path.name)
        return rows

    def remember(self, label: str, key: str, rows: Iterable[RawValue]) -> None:
        path = self._file(label)
        data = {"key": key, "rows": [list(v) for v in sorted(set(rows))]}
        private_write_text(path, json.dumps(data, ensure_ascii=False) + "\n")
        self.kept.add(path.name)

    def forget_others(self) -> int:
        """Remove the entries of sessions not harvested in this run (withdrawn, excluded, renamed)."""
        removed = 0
        if self.folder.is_dir():
            for entry in self.folder.glob("*.json"):
                if entry.name not in self.kept:
                    entry.unlink()
                    removed += 1
        return removed
