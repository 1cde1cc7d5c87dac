"""Gate `leak scan`: look for every raw harvested personal value anywhere in a dataset, independently.

The gate shares no matching code with the stages it checks. It reads only the raw harvested rows
{category, field, value} (a saved harvest, or one it runs itself on the raw DICOM with
`bidsafe.phi.harvest_files`, which collects and does not match), renders them itself (`leakforms`: names in
every joining, transliterated, in ASCII spelling and as mojibake; identifiers without separators and with
leading zeros added or dropped; dates in every written form) and reads the descriptor vocabulary with its own
loader (`leakvocab`). `tests/unit/test_leakscan.py` fails if these modules import anything else from
`bidsafe.phi`, `bidsafe.deid` or `bidsafe.scrub`.

Two kinds of rule. Personal values, in every file and every path of the target and of `also` folders (logs):

| where            | what is scanned                                        | needles                          |
|------------------|--------------------------------------------------------|----------------------------------|
| `path`           | every path component (and symlink targets)             | all                              |
| `json:<key>`     | JSON keys and values, decoded (so `\\u00fc` escapes count) | all                              |
| `tsv:<column>`   | TSV cells; `tsv-header` for column names               | all                              |
| `text`           | any text file, decoded and as bytes (also JSON/TSV)    | all                              |
| `gzip-header`    | gzip FNAME/FCOMMENT/FEXTRA (pigz stores input names)   | all                              |
| `nifti-header:<field>` | NIfTI text fields (descrip, aux_file, ...)       | all                              |
| `nifti-extension`| NIfTI header extensions                                | all                              |
| `nifti-data`     | NIfTI voxel bytes (decompressed)                       | long only (>= VOXEL_NEEDLE_MIN)  |
| `bytes`          | any other binary file, and gzip members that are not text | >= BINARY_NEEDLE_MIN          |

Decoded text is compared `fold`ed (NFKC, case folding, diacritics removed) with folded forms; identifiers
also with separators removed on both sides; dates by recognising every written date and comparing the day.
Raw bytes are compared ASCII-lower-cased with the byte encodings (UTF-8, Latin-1, cp1252) of every form.

Structural rules, in released metadata (the target, not the logs): any text that is not ASCII is a finding
(`non-ascii`: JSON keys and string values, TSV cells and headers, NIfTI header text fields and extensions,
gzip header names, file and folder names); and in JSON sidecars under sub-*/ every string value may hold
vocabulary tokens only (`non-vocabulary token`; values naming a released file, as IntendedFor does, are path
tokens and checked as paths). Single-token forms of a harvested value that are vocabulary words (a patient
named Bold) are not searched: vocabulary text is allowed by construction. The report counts them.

Why voxel data gets long needles only: voxel bytes are close to random, so a short needle matches by chance
(a 5-letter needle, case-insensitive, matches ~1.5 times per 50 GB of random bytes, per needle; a release of
500 sessions holds ~10^11 voxel bytes and ~10^4 needles). At 8 characters chance hits drop below 10^-1 for
such a release, while a header or text block pasted into voxel data is still found.

Boundary rules per match: a digit may not continue a number on either side (nor a decimal point followed by
a digit: "0.19800417" is not a birth date; but a date may run on into a time, "20220627125713", and an
identifier may carry extra leading zeros), and a letter may not continue a short word (< UNBOUNDED_MIN
characters, ideographic forms excepted), so "Lee" is not found in "asleep" while "Quillfeather" is found in
"xQuillfeatherx"; digits and underscores are boundaries ("Johanna1", "Zqxwv_2"). UIDs are found by
tokenising dotted numbers and looking each component-aligned piece up in a set.

A hit names the file (the parts of path components that carry a value, and any non-ASCII run, are replaced
by `<withheld>`), where, the DICOM field (or `-` for a structural rule) and the category or rule, never the
value. Any hit fails the gate, unless the site's allow-list (`leakallow`, `release.leak_scan.allow`) allows
every value it found: then it is counted as allowed, not as a finding.

Triage: the private findings file (`write_findings`, 0600, in the private area) gives, for every finding and
every allowed hit, the values found, the sessions each value was harvested from (pseudonymous labels, when
the harvest was made per session: `harvest_sessions`) and the entry that allowed it. Only it holds values.

Values that are technical placeholders as a whole (`leakforms.PLACEHOLDER_VALUES`: PatientID `dicom`,
PatientName `QA^Phantom`, ...) are not searched: they name no one, and they match README text and log lines.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick_rs

from bidsafe.errors import ConfigError
from bidsafe.filelist import read_file_list
from bidsafe.fsutil import atomic_write_json
from bidsafe.ingest import regular_files
from bidsafe.phi import harvest_files  # collection only: the raw rows; matching is this package's own
from bidsafe.private import private_write_text
from bidsafe.progress import Progress, info
from bidsafe.release.leakallow import AllowList, load_allow
from bidsafe.release.leakcache import (
    FileFindings,
    HarvestMemory,
    ScanMemory,
    file_identity,
    scan_settings_key,
    still_wanted,
)
from bidsafe.release.leakforms import (
    ID_CATEGORIES,
    MIN_LENGTH,
    SQUASHED_MIN,
    RawValue,
    byte_variants,
    find_dates,
    fold,
    is_ideographic,
    raw_values,
    render,
)
from bidsafe.release.leakvocab import Vocabulary, vocabulary_from

BINARY_NEEDLE_MIN = 5
VOXEL_NEEDLE_MIN = 8
UNBOUNDED_MIN = 7  # letter-edged needles this long match inside longer words too
UID_MIN_LENGTH = 8
CHUNK_BYTES = 8 << 20
JSON_STRUCTURED_LIMIT = 64 << 20
TEXT_SNIFF_BYTES = 1 << 16
WITHHELD = "<withheld>"
STRUCTURE = "-"  # the `field` of a structural finding (no DICOM field: the text itself is the problem)
NON_ASCII = "non-ascii"
NON_VOCABULARY = "non-vocabulary token"

TEXT_SUFFIXES = frozenset(
    {
        ".json", ".tsv", ".txt", ".bval", ".bvec", ".md", ".rst", ".log", ".html", ".htm", ".csv", ".yaml",
        ".yml", ".sha256", ".xdlm", ".bidsignore", ".cff", ".tex", ".xml", ".svg", ".py", ".sh", ".smk",
    }
)
TEXT_NAMES = frozenset({"README", "CHANGES", "LICENSE", "MANIFEST.sha256"})

_NIFTI1_TEXT_FIELDS = {"data_type": (4, 10), "db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24),
                       "intent_name": (328, 16), "magic": (344, 4)}
_NIFTI2_TEXT_FIELDS = {"magic": (4, 8), "descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+)+|[0-9]{16,}")
_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") | frozenset(range(0x80, 0x100))
_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")


# ---------------------------------------------------------------------------------------------- results


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


# ---------------------------------------------------------------------------------------------- needles


@dataclass(frozen=True)
class _Pattern:
    owner: RawValue
    unbounded: bool  # letter-edged, yet matched inside longer words (long or ideographic forms)
    open_right: bool  # a date may run on into a time ("20220627125713", DICOM DT, dcm2niix %t)
    zeros_left: bool  # an identifier may be written with more leading zeros ("0012345678" for 12345678)


def _pattern(form: str, owner: RawValue) -> _Pattern:
    return _Pattern(
        owner,
        unbounded=len(form) >= UNBOUNDED_MIN or is_ideographic(form),
        open_right=owner.category == "date",
        zeros_left=owner.category in ID_CATEGORIES and form[:1].isdigit(),
    )


class _Needles:
    """One automaton over byte needles, with the boundary rule of each."""

    def __init__(self, patterns: dict[bytes, _Pattern], min_length: int) -> None:
        kept = {p: rule for p, rule in patterns.items() if len(p) >= min_length}
        self.patterns = sorted(kept)
        self.rules = [kept[p] for p in self.patterns]
        self.max_length = max((len(p) for p in self.patterns), default=0)
        self._automaton = (
            ahocorasick_rs.BytesAhoCorasick(self.patterns, implementation=ahocorasick_rs.Implementation.DFA)
            if self.patterns
            else None
        )

    def __len__(self) -> int:
        return len(self.patterns)

    def find(self, data: bytes | memoryview, final: bool = True,
             cuts: frozenset[int] = frozenset()) -> Iterator[tuple[int, int, RawValue]]:
        """(start, end, value) of every match in `data` that passes its boundary rule.

        With `final` False the buffer continues in the next window: matches touching its end are left for it.
        `cuts` are offsets where separators were removed (squashed text): a boundary, whatever the neighbours.
        """
        if self._automaton is None:
            return
        size = len(data)
        for index, start, end in self._automaton.find_matches_as_indexes(data, overlapping=True):
            if not final and end >= size - 1:
                continue
            rule = self.rules[index]
            if _bounded_ok(data, start, end, self.patterns[index], rule, cuts):
                yield start, end, rule.owner


def _bounded_ok(data: bytes | memoryview, start: int, end: int, pattern: bytes, rule: _Pattern,
                cuts: frozenset[int] = frozenset()) -> bool:
    first, last = pattern[0], pattern[-1]
    before = data[start - 1] if start > 0 and start not in cuts else None
    after = data[end] if end < len(data) and end not in cuts else None
    if first in _DIGITS:
        position = start
        if rule.zeros_left:
            while position > 0 and data[position - 1] == 0x30 and position not in cuts:
                position -= 1
            before = data[position - 1] if position > 0 and position not in cuts else None
        if before is not None and (
            before in _DIGITS or (before == 0x2E and position >= 2 and data[position - 2] in _DIGITS)
        ):
            return False
    elif first in _LETTERS and not rule.unbounded and before is not None and before in _LETTERS:
        return False
    if rule.open_right:
        return True
    if last in _DIGITS:
        if after is not None and (
            after in _DIGITS or (after == 0x2E and end + 1 < len(data) and data[end + 1] in _DIGITS)
        ):
            return False
    elif last in _LETTERS and not rule.unbounded and after is not None and after in _LETTERS:
        return False
    return True


# Separators an identifier may be written with ("PID 8842 QX", "0012-345-678"); a decimal point between
# digits is no separator ("1234.5678" is a number, not the ID 12345678).
_ID_SEPARATORS = re.compile(r"(?:[\s\-_/:,;^+()#'\"*~|\\]|\.(?![0-9])|(?<![0-9])\.)+")


def _squashed(folded: str) -> tuple[bytes, frozenset[int]]:
    """`folded` without identifier separators, and the byte offsets where separators were cut."""
    pieces = [p.encode("utf-8") for p in _ID_SEPARATORS.split(folded)]
    cuts: set[int] = set()
    offset = 0
    for piece in pieces:
        if offset:
            cuts.add(offset)
        offset += len(piece)
    return b"".join(pieces), frozenset(cuts)


class Scanner:
    """The gate's search for a set of raw harvested values, ready to scan bytes, text, names and file trees.

    `values`: anything `leakforms.raw_values` reads (rows {category, field, value}, or a saved harvest's
    path). `vocabulary`: a `leakvocab.Vocabulary` (or its file paths); single-token forms that are
    vocabulary words are not searched, and the structural vocabulary rule runs only with one.
    """

    def __init__(self, values: Any, *, scan_voxels: bool = True, vocabulary: Any = None) -> None:
        self.values = raw_values(values)
        self.vocabulary: Vocabulary | None = vocabulary_from(vocabulary)
        rendering = render(self.values, self.vocabulary.is_word if self.vocabulary else None)
        self.vocabulary_skipped = rendering.vocabulary_skipped
        self.placeholders_skipped = rendering.placeholders_skipped
        folded = {form.encode("utf-8"): _pattern(form, v) for form, v in rendering.text.items()}
        self.text = _Needles(folded, 1)  # forms were filtered by `searchable` (any script, own minimums)
        self.squashed = _Needles(
            {form.encode("utf-8"): _pattern(form, v) for form, v in rendering.squashed.items()}, SQUASHED_MIN
        )
        raw: dict[bytes, _Pattern] = {}
        for form, value in [*rendering.raw.items(), *rendering.text.items()]:
            rule = _pattern(form, value)
            for variant in byte_variants(form):
                raw.setdefault(variant, rule)
        self.raw = _Needles(raw, MIN_LENGTH)
        self.binary = _Needles(raw, BINARY_NEEDLE_MIN)
        self.voxel = _Needles(raw, VOXEL_NEEDLE_MIN)
        self.dates = rendering.dates
        self.uids = {form.encode("ascii", "ignore"): v for form, v in rendering.uids.items()
                     if len(form) >= UID_MIN_LENGTH}
        self.scan_voxels = scan_voxels
        self._withheld: dict[str, str] = {}
        self.overlap = max(self.raw.max_length, 66) + 4

    @property
    def needle_count(self) -> int:
        return len(self.text) + len(self.squashed) + len(self.raw) + len(self.dates) + len(self.uids)

    # -- primitives -----------------------------------------------------------------------------------

    def in_bytes(self, data: bytes | memoryview, needles: _Needles, *, uids: bool = True,
                 final: bool = True) -> set[RawValue]:
        """Values in raw bytes (ASCII lower-cased; non-ASCII needles in their byte encodings)."""
        lowered = bytes(data).lower()
        found = {value for _, _, value in needles.find(lowered, final=final)}
        if uids and self.uids:
            found.update(value for _, _, value in self._uids_in(lowered, final))
        return found

    def in_text(self, text: str, *, numeric: bool = False) -> set[RawValue]:
        """Values in decoded text: folded forms, identifiers without separators, dates in any written form
        and UIDs. `numeric`: the text is a bare number (only long date forms count there)."""
        folded = fold(text)
        data = folded.encode("utf-8")
        found = {value for _, _, value in self.text.find(data)}
        if len(self.squashed):
            squashed, cuts = _squashed(folded)
            found.update(value for _, _, value in self.squashed.find(squashed, cuts=cuts))
        found |= find_dates(folded, self.dates, numeric=numeric)
        if self.uids:
            found.update(value for _, _, value in self._uids_in(data, True))
        return found

    def _uids_in(self, data: bytes, final: bool) -> Iterator[tuple[int, int, RawValue]]:
        size = len(data)
        for match in _UID_TOKEN.finditer(data):
            if not final and match.end() >= size - 1:
                continue
            token = match.group(0)
            if len(token) < UID_MIN_LENGTH:
                continue
            if b"." not in token:
                if token in self.uids:
                    yield match.start(), match.end(), self.uids[token]
                continue
            parts = token.split(b".")
            offsets = [0]
            for part in parts:
                offsets.append(offsets[-1] + len(part) + 1)
            for i in range(len(parts)):
                for j in range(i + 2, len(parts) + 1):
                    piece = b".".join(parts[i:j])
                    if len(piece) >= UID_MIN_LENGTH and piece in self.uids:
                        start = match.start() + offsets[i]
                        yield start, start + len(piece), self.uids[piece]

    def withhold(self, name: str) -> str:
        """`name` with every personal value and every non-ASCII run in it replaced by `<withheld>` (labels:
        paths, keys). A name in which a value is still found after that is withheld whole."""
        known = self._withheld.get(name)
        if known is None:
            known = self._withheld[name] = self._withhold(name)  # keys repeat in every sidecar of a release
        return known

    def _withhold(self, name: str) -> str:
        data = name.encode("utf-8")
        lowered = data.lower()
        spans = sorted(
            [(start, end) for start, end, _ in self.raw.find(lowered)]
            + [(start, end) for start, end, _ in self._uids_in(lowered, True)]
            + [(m.start(), m.end()) for m in _NON_ASCII_RUN.finditer(data)]
        )
        out_text = name
        if spans:
            merged: list[list[int]] = []
            for start, end in spans:  # overlapping renderings ("smith", "smith_john") become one span
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            out, position = [], 0
            for start, end in merged:
                out += [data[position:start], WITHHELD.encode()]
                position = end
            out.append(data[position:])
            out_text = b"".join(out).decode("utf-8", errors="replace")
        # folded, squashed and date forms have no byte spans in the original: withhold the whole name
        return WITHHELD if self.in_text(out_text) else out_text

    def in_chunks(self, chunks: Iterable[bytes], needles: _Needles, *, uids: bool) -> set[RawValue]:
        """Scan a stream in windows that overlap by the longest needle, so nothing is lost at the seams."""
        found: set[RawValue] = set()
        tail = b""
        pending: bytes | None = None
        for chunk in chunks:
            if not chunk:
                continue
            if pending is not None:
                window = tail + pending
                found |= self.in_bytes(window, needles, uids=uids, final=False)
                tail = window[-self.overlap :]
            pending = chunk
        if pending is not None:
            found |= self.in_bytes(tail + pending, needles, uids=uids, final=True)
        return found


# ---------------------------------------------------------------------------------------------- files


class _FileScan:
    """Scan one file and report its hits under a sanitised label.

    `structural`: the file is released metadata (not a log in an `also` folder): non-ASCII text in it is a
    finding. `descriptors`: a sidecar under sub-*/, whose string values may hold vocabulary text only
    (checked when the scanner has a vocabulary). `names_file(text)`: the text names a released file (an
    IntendedFor path), whose tokens are path tokens, checked as paths.
    """

    def __init__(self, scanner: Scanner, label: str, *, structural: bool = False, descriptors: bool = False,
                 names_file: Callable[[str], bool] | None = None) -> None:
        self.scanner = scanner
        self.label = label
        self.structural = structural
        self.descriptors = descriptors and scanner.vocabulary is not None
        self.names_file = names_file
        self.hits: set[LeakHit] = set()
        self.values: dict[LeakHit, set[RawValue]] = {}  # the values behind each hit (private findings)
        self.bytes = 0

    def add(self, where: str, found: Iterable[RawValue]) -> None:
        for value in found:
            hit = LeakHit(self.label, where, value.field, value.category)
            self.hits.add(hit)
            self.values.setdefault(hit, set()).add(value)

    def flag(self, where: str, rule: str) -> None:
        self.hits.add(LeakHit(self.label, where, STRUCTURE, rule))

    def non_ascii(self, where: str, text: str | bytes) -> None:
        if self.structural and not text.isascii():
            self.flag(where, NON_ASCII)

    def fields(self) -> set[str]:
        return {h.field for h in self.hits}

    def add_new(self, where: str, found: Iterable[RawValue]) -> None:
        """Add only values not yet reported for this file (the raw pass after a structured one)."""
        known = self.fields()
        self.add(where, (v for v in found if v.field not in known))

    def descriptor(self, where: str, text: str) -> None:
        vocabulary = self.scanner.vocabulary
        if not self.descriptors or vocabulary is None or not vocabulary.outside(text):
            return
        if self.names_file is not None and self.names_file(text):
            return
        self.flag(where, NON_VOCABULARY)

    # -- dispatch -------------------------------------------------------------------------------------

    def scan_path(self, path: Path) -> None:
        size = path.stat().st_size
        self.bytes += size
        if size == 0:
            return
        with open(path, "rb") as handle:
            head = handle.read(TEXT_SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            self.scan_gzip(path)
        elif _is_nifti(head):
            self.scan_nifti(_file_chunks(path))
        elif _looks_text(path.name, head):
            self.scan_text(path.name, path.read_bytes())
        else:
            self.add("bytes", self.scanner.in_chunks(_file_chunks(path), self.scanner.binary, uids=True))

    def scan_gzip(self, path: Path) -> None:
        with open(path, "rb") as handle:
            header = _gzip_header_text(handle.read(1 << 16))
        self.add("gzip-header", self.scanner.in_bytes(header, self.scanner.raw))
        self.add("gzip-header", self.scanner.in_text(header.decode("latin-1")))
        self.non_ascii("gzip-header", header)
        inner_name = path.name[:-3] if path.name.endswith(".gz") else path.name
        chunks = _gunzip_chunks(path)
        head = b""
        for chunk in chunks:  # gather enough to tell what the member holds
            head += chunk
            if len(head) >= TEXT_SNIFF_BYTES:
                break
        rest = _prepend(head, chunks)
        if _is_nifti(head):
            self.scan_nifti(rest)
        elif _looks_text(inner_name, head):
            self.scan_text(inner_name, b"".join(rest))
        else:
            self.add("bytes", self.scanner.in_chunks(rest, self.scanner.binary, uids=True))

    def scan_nifti(self, chunks: Iterator[bytes]) -> None:
        buffer = b""
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= 544:
                break
        version, size = _nifti_version(buffer)
        fields = _NIFTI1_TEXT_FIELDS if version == 1 else _NIFTI2_TEXT_FIELDS
        order = "little" if int.from_bytes(buffer[:4], "little") == size else "big"
        raw_offset = _float32(buffer[108:112], order) if version == 1 else int.from_bytes(buffer[168:176], order)
        # A broken offset must not make the whole image "extension" text: bounded to what real files use.
        vox_offset = int(raw_offset) if raw_offset == raw_offset and 0 <= raw_offset < 1 << 26 else size
        vox_offset = max(vox_offset, size)
        while len(buffer) < vox_offset:
            chunk = next(chunks, b"")
            if not chunk:
                break
            buffer += chunk
        scanner = self.scanner
        for name, (offset, length) in fields.items():
            text = buffer[offset : offset + length].split(b"\x00", 1)[0]
            self.add(f"nifti-header:{name}", scanner.in_bytes(text, scanner.raw))
            self.add(f"nifti-header:{name}", scanner.in_text(text.decode("utf-8", errors="replace")))
            self.non_ascii(f"nifti-header:{name}", text)
        # Numeric header fields can only hold text by accident: long needles only, like voxels.
        self.add("nifti-header", scanner.in_bytes(buffer[:size], scanner.voxel, uids=False))
        if vox_offset > size + 4:
            extension = buffer[size + 4 : vox_offset]
            self.add("nifti-extension", scanner.in_bytes(extension, scanner.raw))
            self.add("nifti-extension", scanner.in_text(extension.decode("utf-8", errors="replace")))
            self.non_ascii("nifti-extension", extension)
        if scanner.scan_voxels:
            voxels = _prepend(buffer[vox_offset:], chunks)
            self.add("nifti-data", scanner.in_chunks(voxels, scanner.voxel, uids=False))

    def scan_text(self, name: str, data: bytes) -> None:
        scanner = self.scanner
        lowered_name = name.lower()
        structured = False
        if lowered_name.endswith(".json") and len(data) <= JSON_STRUCTURED_LIMIT:
            try:
                document = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                document = _UNREADABLE
            if document is not _UNREADABLE:
                structured = True
                for where, text, kind in _json_items(document, scanner):
                    self.add(where, scanner.in_text(text, numeric=kind == "number"))
                    if kind != "number":
                        self.non_ascii(where, text)
                    if kind == "string":
                        self.descriptor(where, text)
        elif lowered_name.endswith(".tsv"):
            structured = True
            text = data.decode("utf-8", errors="replace")
            for where, cell in _tsv_cells(text, scanner):
                self.add(where, scanner.in_text(cell, numeric=_NUMBER.fullmatch(cell.strip()) is not None))
                self.non_ascii(where, cell)
        if not structured:
            self.add("text", scanner.in_text(data.decode("utf-8", errors="replace")))
            if not data.isascii() and lowered_name.endswith((".json", ".tsv")):
                self.non_ascii("text", data)  # metadata that could not be parsed: its bytes, then
        self.add_new("text", scanner.in_chunks(_split(data), scanner.raw, uids=True))


_UNREADABLE = object()
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _split(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for start in range(0, len(mapped), CHUNK_BYTES):
                yield mapped[start : start + CHUNK_BYTES]


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every gzip member in `path`, in chunks (a truncated stream ends quietly)."""
    with open(path, "rb") as handle:
        decompressor = zlib.decompressobj(wbits=31)
        # Small first blocks, growing: telling a NIfTI from text and reading its header needs ~64 KB, not
        # 8 MB of voxels (a headers-only scan stops there).
        size = TEXT_SNIFF_BYTES // 4
        while True:
            block = handle.read(size)
            size = min(size * 4, CHUNK_BYTES // 2)
            if not block:
                break
            while block:
                try:
                    yield decompressor.decompress(block)
                except zlib.error:
                    return
                if decompressor.eof:
                    block = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                else:
                    block = b""
        try:
            yield decompressor.flush()
        except zlib.error:
            return


def _gzip_header_text(data: bytes) -> bytes:
    """FEXTRA, FNAME and FCOMMENT of the first gzip member (where pigz and gzip -N store the input name)."""
    if len(data) < 10:
        return b""
    flags = data[3]
    position = 10
    parts: list[bytes] = []
    if flags & 0x04 and len(data) >= position + 2:
        extra_length = int.from_bytes(data[position : position + 2], "little")
        parts.append(data[position + 2 : position + 2 + extra_length])
        position += 2 + extra_length
    for flag in (0x08, 0x10):
        if flags & flag:
            end = data.find(b"\x00", position)
            end = len(data) if end < 0 else end
            parts.append(data[position:end])
            position = end + 1
    return b"\n".join(parts)


def _nifti_version(head: bytes) -> tuple[int, int]:
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return 1, 348
        if size == 540:
            return 2, 540
    return 1, 348


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _float32(data: bytes, order: str) -> float:
    return struct.unpack("<f" if order == "little" else ">f", data)[0]


def _looks_text(name: str, head: bytes) -> bool:
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a multi-byte character cut by the sniff window
    return True


def _safe_component(text: str, scanner: Scanner) -> str:
    return scanner.withhold(text)


def _json_items(document: Any, scanner: Scanner, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, text, kind) for every key and scalar of a JSON document (kind: key, string or number);
    keys carrying a value are withheld in `where`."""
    if isinstance(document, dict):
        for key, value in document.items():
            shown = _safe_component(str(key), scanner)
            child = f"{path}.{shown}" if path else shown
            yield f"json:{child}", str(key), "key"
            yield from _json_items(value, scanner, child)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from _json_items(item, scanner, f"{path}[{index}]")
    elif isinstance(document, str):
        yield f"json:{path or '<root>'}", document, "string"
    elif document is not None and not isinstance(document, bool):
        yield f"json:{path or '<root>'}", json.dumps(document), "number"


def _tsv_cells(text: str, scanner: Scanner) -> Iterator[tuple[str, str]]:
    lines = text.splitlines()
    if not lines:
        return
    header = lines[0].split("\t")
    for cell in header:
        yield "tsv-header", cell
    columns = [_safe_component(c, scanner) for c in header]
    for line in lines[1:]:
        for index, cell in enumerate(line.split("\t")):
            column = columns[index] if index < len(columns) else f"column {index + 1}"
            yield f"tsv:{column}", cell


# ---------------------------------------------------------------------------------------------- trees


def _walk(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every entry under `root` (folders too, symlinks not followed), with its relative path parts."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        relative = base.relative_to(root).parts
        for name in dirnames + sorted(filenames):
            yield base / name, (*relative, name)


def _names_file(root: Path, parts: Sequence[str]) -> Callable[[str], bool]:
    """Whether a sidecar string names a released file: `bids::sub-01/...`, or relative to the subject folder
    (IntendedFor). Those tokens are path tokens, checked as paths (needles, non-ASCII)."""

    def names(text: str) -> bool:
        relative = text.removeprefix("bids::")
        if not relative or relative.startswith("/") or ".." in relative.split("/") or "\\" in relative:
            return False
        return any((base / relative).is_file() for base in (root, root / parts[0]))

    return names


def scan_tree(root: Path, scanner: Scanner, label_prefix: str = "", *, structural: bool = True,
              found: dict[LeakHit, set[RawValue]] | None = None,
              progress: Progress | None = None, memory: _Memory | None = None,
              memory_prefix: str = "") -> tuple[set[LeakHit], int, int]:
    """(hits, files scanned, bytes scanned) for every path and file under `root`.

    `structural`: `root` is released metadata (the structural rules apply); False for logs (`also`).
    `found`, when given, receives the values behind each hit (for the private findings). `progress` counts
    the files scanned (a count only, never a name). `memory`: the last run's findings per file (see
    `leakcache`); a file it remembers unchanged is searched only for the values new since (`bytes scanned`
    counts what was read).
    """
    root = Path(root)
    hits: set[LeakHit] = set()
    found = {} if found is None else found
    files = total = 0
    safe: dict[str, str] = {}

    def sanitised(parts: Sequence[str]) -> str:
        shown = []
        for part in parts:
            if part not in safe:
                safe[part] = _safe_component(part, scanner)
            shown.append(safe[part])
        return label_prefix + "/".join(shown)

    for path, parts in _walk(root):
        label = sanitised(parts)
        for value in scanner.in_text(parts[-1]):
            hit = LeakHit(label, "path", value.field, value.category)
            hits.add(hit)
            found.setdefault(hit, set()).add(value)
        if structural and not parts[-1].isascii():
            hits.add(LeakHit(label, "path", STRUCTURE, NON_ASCII))
        if path.is_symlink():
            for value in scanner.in_text(os.readlink(path)):
                hit = LeakHit(label, "path", value.field, value.category)
                hits.add(hit)
                found.setdefault(hit, set()).add(value)
            continue
        if not path.is_file():
            continue
        # Image sidecars (inside a datatype folder) hold scanner text: vocabulary only. The sessions/scans
        # data dictionaries beside sub-/ses- folders are written by bidsafe from its configuration.
        descriptors = (
            structural and parts[0].startswith("sub-") and parts[-1].lower().endswith(".json")
            and len(parts) >= 3 and not parts[-2].startswith(("sub-", "ses-"))
        )
        one = _FileScan(scanner, label, structural=structural, descriptors=descriptors,
                        names_file=_names_file(root, parts) if descriptors else None)
        if memory is None:
            one.scan_path(path)
        else:
            _scan_remembered(one, path, memory_prefix + "/".join(parts), memory)
        hits |= one.hits
        for hit, values in one.values.items():
            found.setdefault(hit, set()).update(values)
        files += 1
        total += one.bytes
        if progress is not None:
            progress.advance()
    return hits, files, total


@dataclass
class _Memory:
    """A `leakcache.ScanMemory` with the scanners of this run: all values, and those new since it was saved."""

    saved: ScanMemory
    values: frozenset[RawValue]
    delta: Scanner | None


def _scan_remembered(one: _FileScan, path: Path, key: str, memory: _Memory) -> None:
    """Scan one file, or replay what it held (for the values still searched) and search it only for the new
    values when the memory knows it unchanged; then remember it for the next run."""
    identity = file_identity(path)
    entry = memory.saved.recall(key, identity)
    if entry is None:
        one.scan_path(path)
    else:
        for where, value in still_wanted(entry.found, memory.values):
            one.add(where, (value,))
        for where, rule in entry.flags:
            one.flag(where, rule)
        if memory.delta is not None:
            extra = _FileScan(memory.delta, one.label)  # values only: the structural rules were applied
            extra.scan_path(path)
            for hit, values in extra.values.items():
                one.add(hit.where, values)
            one.bytes += extra.bytes
    memory.saved.remember(key, FileFindings(
        identity=identity,
        found=sorted((hit.where, value) for hit, values in one.values.items() for value in values),
        flags=sorted((hit.where, hit.category) for hit in one.hits if hit.field == STRUCTURE),
    ))


def _open_memory(path: Path | None, scanner: Scanner) -> _Memory | None:
    if path is None:
        return None
    vocabulary = scanner.vocabulary
    settings = scan_settings_key(sorted(vocabulary.words) if vocabulary else [],
                                 [p.pattern for p in vocabulary.patterns] if vocabulary else [],
                                 scanner.scan_voxels)
    saved = ScanMemory.load(path, settings)
    new = saved.new_values(scanner.values)
    # a remembered file is searched again for the new values in its text, names and headers; a NIfTI image's
    # voxel data only when the image itself is new or changed
    delta = Scanner(new, scan_voxels=False, vocabulary=vocabulary) if new and saved.files else None
    return _Memory(saved, frozenset(scanner.values), delta)


def leak_scan(
    target: Path, values: Any, *, also: Sequence[Path] = (), scan_voxels: bool = True, vocabulary: Any = None,
    allow: Any = None, origins: Mapping[RawValue, Iterable[str]] | None = None, progress: Progress | None = None,
    memory: Path | None = None,
) -> LeakReport:
    """Scan `target` (and each `also` folder) for every raw harvested value; hits never hold values.

    `values`: raw harvested rows (see `leakforms.raw_values`). `vocabulary`: the vocabulary file paths (or a
    loaded `Vocabulary`); without one the non-vocabulary rule does not run (the report says so). Files under
    `also` folders are labelled `<folder name>/<relative path>` and get the value search only (they are logs,
    not released metadata). `allow`: the site allow-list (`leakallow.load_allow` input); a hit whose every
    value it allows moves to `allowed`. `origins`: value -> session labels it was harvested from (private
    findings only). `memory`: a private file (`leakcache.ScanMemory`) remembering each file's findings
    between runs, so that unchanged files are searched only for new values. Raises ConfigError when there is
    nothing to look for or a folder is missing: an empty scan must never pass for a clean one.
    """
    target = Path(target)
    for folder in (target, *also):
        if not Path(folder).is_dir():
            raise ConfigError("leak scan: not a folder", folder)
    allow_list = load_allow(allow)
    started = time.perf_counter()
    scanner = Scanner(values, scan_voxels=scan_voxels, vocabulary=vocabulary)
    if not scanner.values:
        raise ConfigError("leak scan: no personal values to look for (was the source harvested?)")
    found: dict[LeakHit, set[RawValue]] = {}
    remembered = _open_memory(memory, scanner)
    hits, files, total = scan_tree(target, scanner, found=found, progress=progress, memory=remembered,
                                   memory_prefix="0/")
    for number, folder in enumerate(also, start=1):
        prefix = _safe_component(Path(folder).name, scanner) + "/"
        more_hits, more_files, more_bytes = scan_tree(Path(folder), scanner, label_prefix=prefix, structural=False,
                                                      found=found, progress=progress, memory=remembered,
                                                      memory_prefix=f"{number}:{Path(folder).name}/")
        hits |= more_hits
        files += more_files
        total += more_bytes
    if remembered is not None:
        remembered.saved.save(scanner.values)
    rules = ["personal values", NON_ASCII] + ([NON_VOCABULARY] if scanner.vocabulary else [])
    findings, allowed, allowed_by = _triage(hits, found, allow_list)
    wanted = {v for h in hits for v in found.get(h, ())}
    return LeakReport(
        target=_safe_component(target.name, scanner),
        also=[_safe_component(Path(f).name, scanner) for f in also],
        values=len(scanner.values),
        needles=scanner.needle_count,
        files=files,
        bytes=total,
        seconds=time.perf_counter() - started,
        hits=findings,
        rules=rules,
        vocabulary=list(scanner.vocabulary.files) if scanner.vocabulary else [],
        vocabulary_words_not_searched=scanner.vocabulary_skipped,
        placeholder_values_not_searched=scanner.placeholders_skipped,
        allowed=allowed,
        allow=allow_list.summary(),
        found={h: sorted(found.get(h, ())) for h in sorted(hits)},
        allowed_by=allowed_by,
        origins={v: sorted(set(origins.get(v, ()))) for v in wanted} if origins else {},
    )


def _triage(hits: Iterable[LeakHit], found: Mapping[LeakHit, set[RawValue]],
            allow: AllowList) -> tuple[list[LeakHit], list[LeakHit], dict[RawValue, dict[str, Any]]]:
    """(findings, allowed hits, value -> the entry that allowed it). A hit is allowed when it has values and
    the allow-list allows every one of them; structural hits (no value) always stay findings."""
    findings: list[LeakHit] = []
    allowed: list[LeakHit] = []
    allowed_by: dict[RawValue, dict[str, Any]] = {}
    for hit in sorted(hits):
        values = found.get(hit, set())
        entries = {value: allow.match(value.value) for value in values} if allow.entries else {}
        for value, entry in entries.items():
            if entry is not None:
                allowed_by[value] = {"entry": entry.index, **entry.to_dict()}
        if values and entries and all(entry is not None for entry in entries.values()):
            allowed.append(hit)
        else:
            findings.append(hit)
    return findings, allowed, allowed_by


def harvest_source(raw_dir: Path, skip: Collection[str] = (), progress: bool = False) -> Any:
    """Every personal value of every readable DICOM file under `raw_dir` (header only), including strings
    of identity private blocks. Collection only (`bidsafe.phi.harvest_files`): the gate reads the rows
    {category, field, value} and renders and matches them itself. `skip`: paths relative to `raw_dir` not
    read (the files of QA/phantom sessions, which are never released)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError("leak scan: --source is not a folder", raw_dir)
    skipped = {Path(rel).as_posix() for rel in skip}
    # ingest's walk: no link followed, no FIFO opened, unreadable entries passed over, any file name
    paths = [raw_dir / rel for rel in regular_files(raw_dir) if rel not in skipped]
    if not progress:
        return harvest_files(paths, private_text=True)
    with Progress("bidsafe leak-scan: reading source headers", len(paths)) as meter:
        return harvest_files(meter.iterate(paths), private_text=True)


def harvest_sessions(
    raw_dir: Path, sessions_dir: Path | None, skip: Collection[str] = (), memory: Path | None = None
) -> tuple[list[RawValue], dict[RawValue, list[str]]]:
    """`harvest_source`, made per session so that each value can be tied to the sessions it came from:
    (rows, value -> pseudonymous session labels `sub-S_ses-T`).

    `sessions_dir`: the pseudonymise stage's private `sessions/` folder (sub-S/ses-T/files.txt: each session's
    inbox-relative paths). Every other inbox file is harvested too, labelled `inbox (no session)`: a value
    must never go unsearched because ingest set its file aside. `skip`: inbox-relative paths not read (the
    files of QA/phantom sessions, which are never released). `memory`: a private folder keeping each
    session's rows between runs (`leakcache.HarvestMemory`): a session whose files are unchanged is not read
    again.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError("leak scan: --source is not a folder", raw_dir)
    skipped = {raw_dir / rel for rel in skip}
    everything = [p for p in (raw_dir / rel for rel in regular_files(raw_dir)) if p not in skipped]
    groups: dict[str, list[Path]] = {}
    listed: set[Path] = set()
    if sessions_dir is not None and Path(sessions_dir).is_dir():
        for files_txt in sorted(Path(sessions_dir).glob("sub-*/ses-*/files.txt")):
            label = f"{files_txt.parent.parent.name}_{files_txt.parent.name}"
            paths = [raw_dir / rel for rel in read_file_list(files_txt)]
            groups[label] = [p for p in paths if p.is_file() and not p.is_symlink() and p not in skipped]
            listed.update(groups[label])
    rest = [p for p in everything if p not in listed]
    if rest:
        groups[UNASSIGNED] = rest
    origins: dict[RawValue, set[str]] = {}
    kept = HarvestMemory(Path(memory)) if memory is not None else None
    for label, paths in groups.items():
        for value in _harvest_group(label, paths, kept):
            origins.setdefault(value, set()).add(label)
    if kept is not None:
        kept.forget_others()
    return sorted(origins), {value: sorted(labels) for value, labels in origins.items()}


def _harvest_group(label: str, paths: list[Path], memory: HarvestMemory | None) -> list[RawValue]:
    if memory is None:
        return raw_values(harvest_files(paths, private_text=True))
    key = memory.key(paths)
    rows = memory.recall(label, key)
    if rows is None:
        rows = raw_values(harvest_files(paths, private_text=True))
        memory.remember(label, key, rows)
    return rows


UNASSIGNED = "inbox (no session)"


def save_harvest(rows: Iterable[RawValue], origins: Mapping[RawValue, Iterable[str]], path: Path) -> Path:
    """The gate's harvest, privately (0600, atomic): rows {category, field, value, sessions}."""
    data = [{**value._asdict(), "sessions": sorted(origins.get(value, ()))} for value in rows]
    return private_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def load_origins(path: Path) -> dict[RawValue, list[str]]:
    """value -> session labels, from a harvest saved by `save_harvest` (rows without `sessions`: none)."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return {RawValue(r["category"], r["field"], r["value"]): list(r.get("sessions") or [])
            for r in rows if isinstance(r, dict) and {"category", "field", "value"} <= r.keys()}


def write_report(report: LeakReport, path: Path) -> Path:
    return atomic_write_json(path, report.to_dict())


def write_findings(report: LeakReport, path: Path) -> Path:
    """The private findings (values, sessions, allowing entries): 0600, atomic, in a 0700 folder."""
    return private_write_text(path, json.dumps(report.private_findings(), ensure_ascii=False, indent=1) + "\n")


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe leak-scan DIR (--source RAW_DIR | --values FILE.json) [--vocabulary FILE.yaml ...]
    [--report FILE.json] [--also DIR ...]`: 0 clean, 1 hits."""
    if bool(getattr(args, "source", None)) == bool(getattr(args, "values", None)):
        raise ConfigError("leak scan: give exactly one of --source RAW_DIR and --values FILE.json")
    origins: dict[RawValue, list[str]] = {}
    if args.source:
        values = raw_values(harvest_source(Path(args.source), progress=True))
        if not values:
            raise ConfigError("leak scan: no readable DICOM with personal values under --source", args.source)
    else:
        values = raw_values(Path(args.values))
        origins = load_origins(Path(args.values))
    with Progress("bidsafe leak-scan: scanning", unit="files") as meter:
        report = leak_scan(Path(args.dir), values, also=[Path(a) for a in args.also],
                           vocabulary=[Path(v) for v in getattr(args, "vocabulary", None) or []] or None,
                           allow=read_allow_file(getattr(args, "allow", None)), origins=origins, progress=meter)
    for hit in report.hits:
        print(hit.line())
    if args.report:
        write_report(report, Path(args.report))
    if getattr(args, "findings", None):
        write_findings(report, Path(args.findings))
    verdict = "clean" if report.clean else f"{len(report.hits)} hits"
    info(f"leak scan: {verdict}; {len(report.allowed)} allowed by {report.allow['entries']} allow-list entries; "
          f"{report.values} values, {report.needles} needles, {report.vocabulary_words_not_searched} vocabulary "
          f"words not searched, {report.placeholder_values_not_searched} placeholder values not searched; "
          f"{report.speed()}")
    return 0 if report.clean else 1


def read_allow_file(path: str | Path | None) -> AllowList:
    """An allow-list from a YAML or JSON file: a list of entries, or a mapping with an `allow` list."""
    if not path:
        return AllowList()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"leak scan: cannot read the allow-list ({type(exc).__name__})", path) from exc
    return load_allow(data.get("allow") if isinstance(data, dict) else data)


__all__ = [
    "NON_ASCII",
    "NON_VOCABULARY",
    "LeakHit",
    "LeakReport",
    "Scanner",
    "cli_main",
    "UNASSIGNED",
    "harvest_sessions",
    "harvest_source",
    "leak_scan",
    "load_origins",
    "read_allow_file",
    "save_harvest",
    "scan_tree",
    "write_findings",
    "write_report",
]
