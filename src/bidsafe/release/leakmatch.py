"""The leak gate's matcher: needles rendered from the raw harvested values, searched in bytes, text and names.

`Scanner` holds one automaton per needle set (decoded text, squashed identifiers, raw bytes and their
binary/voxel subsets with longer minimums), the dates and the UIDs, and applies each needle's boundary rule
(see `bidsafe.release.leakscan` for the rules). It matches; it does not read files (`leakfile`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ahocorasick_rs

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
from bidsafe.release.leakhits import VALUE_WITHHELD
from bidsafe.release.leakvocab import Vocabulary, vocabulary_from

BINARY_NEEDLE_MIN = 5
VOXEL_NEEDLE_MIN = 8
UNBOUNDED_MIN = 7  # letter-edged needles this long match inside longer words too
UID_MIN_LENGTH = 8
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+)+|[0-9]{16,}")
_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") | frozenset(range(0x80, 0x100))
_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")




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
                out += [data[position:start], VALUE_WITHHELD.encode()]
                position = end
            out.append(data[position:])
            out_text = b"".join(out).decode("utf-8", errors="replace")
        # folded, squashed and date forms have no byte spans in the original: withhold the whole name
        return VALUE_WITHHELD if self.in_text(out_text) else out_text

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
