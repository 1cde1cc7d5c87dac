"""The leak gate's results: a finding never holds a value; the private findings hold the values behind them.

`LeakHit` names a file, where in it, the DICOM field and the category (or structural rule); `LeakReport` is a
whole scan's outcome, whose `to_dict` is the shareable report and `private_findings` the private triage file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.fsutil import atomic_write_json
from bidsafe.private import private_write_text
from bidsafe.release.leakallow import AllowList
from bidsafe.release.leakforms import RawValue

VALUE_WITHHELD = "<withheld>"
STRUCTURE = "-"  # the `field` of a structural finding (no DICOM field: the text itself is the problem)
NON_ASCII = "non-ascii"
NON_VOCABULARY = "non-vocabulary token"


@dataclass(frozen=True, order=True)
class LeakHit:
    """One finding: file (relative, sanitised), where in it, the DICOM field (`-` for a structural rule) and
    the category (or the structural rule). Never a value."""

    file: str
    where: str
    field: str
    category: str

    def line(self) -> str:
        return f"{self.file}: {self.where}: {self.field} ({self.category})"


@dataclass
class LeakReport:
    target: str
    also: list[str] = field(default_factory=list)
    values: int = 0
    needles: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    hits: list[LeakHit] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)  # file names of the vocabulary read
    vocabulary_words_not_searched: int = 0
    placeholder_values_not_searched: int = 0
    allowed: list[LeakHit] = field(default_factory=list)  # hits whose every value the site allow-list allows
    allow: dict[str, Any] = field(default_factory=lambda: AllowList().summary())  # entries, sha256
    # Private: the values behind each hit (and behind each allowed hit), for `write_findings` only; never in
    # `to_dict`, never printed.
    found: dict[LeakHit, list[RawValue]] = field(default_factory=dict, repr=False)
    allowed_by: dict[RawValue, dict[str, Any]] = field(default_factory=dict, repr=False)
    origins: dict[RawValue, list[str]] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return not self.hits

    def speed(self) -> str:
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.files / seconds:.0f} files/s, {self.bytes / 1e6 / seconds:.1f} MB/s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "target": self.target,
            "also": self.also,
            "values": self.values,
            "needles": self.needles,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rules": self.rules,
            "vocabulary": self.vocabulary,
            "vocabulary_words_not_searched": self.vocabulary_words_not_searched,
            "placeholder_values_not_searched": self.placeholder_values_not_searched,
            "allow": dict(self.allow),
            "allowed": len(self.allowed),
            "hits": [vars(h) for h in self.hits],
        }

    def private_findings(self) -> dict[str, Any]:
        """Every finding and every allowed hit with its values, their sessions and the allowing entry.
        PRIVATE: holds personal values; written only by `write_findings` into the private area."""

        def value_row(value: RawValue) -> dict[str, Any]:
            row: dict[str, Any] = {"value": value.value, "field": value.field, "category": value.category,
                                   "sessions": list(self.origins.get(value, []))}
            if value in self.allowed_by:
                row["allowed_by"] = self.allowed_by[value]
            return row

        def hit_row(hit: LeakHit) -> dict[str, Any]:
            return {**vars(hit), "values": [value_row(v) for v in self.found.get(hit, [])]}

        return {
            "private": "personal values: keep in the private area, never share",
            "target": self.target,
            "allow": dict(self.allow),
            "findings": [hit_row(h) for h in self.hits],
            "allowed": [hit_row(h) for h in self.allowed],
        }


def write_leak_report(report: LeakReport, path: Path) -> Path:
    return atomic_write_json(path, report.to_dict())


def write_findings(report: LeakReport, path: Path) -> Path:
    """The private findings (values, sessions, allowing entries): 0600, atomic, in a 0700 folder."""
    return private_write_text(path, json.dumps(report.private_findings(), ensure_ascii=False, indent=1) + "\n")
