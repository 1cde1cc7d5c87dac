"""The cleaner's search: an index of a study's search strings, and the set of harvested values that finds
and redacts them in free text (the byte cleaner in `bidsafe.deid.textclean` uses the same index)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bidsafe.phi.forms import (
    BYTE_RUNS,
    DIGIT_EDGE,
    FREE_EDGE,
    LETTER_EDGE,
    RUNS,
    IdPattern,
    Spec,
    edge_ok,
    id_patterns_of,
    specs_of,
)
from bidsafe.phi.value import PersonalValue


def _lower_aligned(text: str) -> str:
    """`text` lower-cased with every character staying one character (so match positions map back)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


class SearchIndex:
    """Search strings of one kind of text (str, or bytes in given charsets) indexed by their first run.

    A match's first letter run (or digit run) is a whole run of the searched text, because the edge rule forbids
    a letter (digit) before it; so only the strings whose first run occurs in the text are searched, found by a
    set intersection, and an identifier pattern only runs on text holding one of its anchors. Strings that cannot
    be indexed that way (ideographic or punctuation edges) are always searched (there are few).
    """

    def __init__(self, specs: Iterable[tuple[Any, str, str, PersonalValue]], ids: Iterable[IdPattern],
                 *, binary: bool) -> None:
        self.binary = binary
        runs = BYTE_RUNS if binary else RUNS
        self.by_anchor: dict[Any, list[tuple[Any, str, str, PersonalValue, Any]]] = {}
        self.unindexed: list[tuple[Any, str, str, PersonalValue]] = []
        for needle, start, end, value in sorted(set(specs), key=lambda s: (-len(s[0]), s[0], s[1], s[2], s[3])):
            found = runs.findall(needle)
            first = found[0] if found and needle.startswith(found[0]) and start != FREE_EDGE else None
            if first is not None and len(first) == len(needle) and end == FREE_EDGE:
                first = None
            if first is None:
                self.unindexed.append((needle, start, end, value))
                continue
            last = found[-1] if needle.endswith(found[-1]) and end != FREE_EDGE else None
            self.by_anchor.setdefault(first, []).append((needle, start, end, value, last))
        self.anchor_keys = frozenset(self.by_anchor)
        self.ids: list[tuple[re.Pattern[Any], frozenset[Any], bool, str, PersonalValue]] = []
        for pattern in ids:
            source = pattern.source
            anchors = pattern.anchors
            compiled = re.compile(source.encode("ascii")) if binary else re.compile(source)
            keys = frozenset(a.encode("ascii") for a in anchors) if binary else anchors
            last = pattern.core[-1]
            self.ids.append((compiled, keys, pattern.core[0].isdigit(), DIGIT_EDGE if last.isdigit() else
                             LETTER_EDGE, pattern.value))

    def tokens(self, lowered: Any) -> set[Any]:
        if self.binary:
            return set(lowered.translate(_BYTE_LETTERS).split()) | set(lowered.translate(_BYTE_DIGITS).split())
        return set(RUNS.findall(lowered))

    def spans(self, lowered: Any) -> list[tuple[int, int, PersonalValue]]:
        """(start, end, value) of every match in `lowered` (already lower-cased, positions aligned)."""
        hits: list[tuple[int, int, PersonalValue]] = []
        tokens = self.tokens(lowered)
        candidates: list[tuple[Any, str, str, PersonalValue]] = list(self.unindexed)
        for anchor in self.anchor_keys & tokens:
            candidates.extend(n[:4] for n in self.by_anchor[anchor] if n[4] is None or n[4] in tokens)
        for needle, start, end, value in candidates:
            position = lowered.find(needle)
            while position != -1:
                stop = position + len(needle)
                if edge_ok(start, lowered, position - 1, -1) and edge_ok(end, lowered, stop, 1):
                    hits.append((position, stop, value))
                position = lowered.find(needle, position + 1)
        for compiled, anchors, digit_first, end, value in self.ids:
            if anchors.isdisjoint(tokens):
                continue
            split = _BYTE_ID_SPLIT if self.binary else _ID_SPLIT
            for match in compiled.finditer(lowered):
                if min(len(group) for group in split.split(match.group(0))) < 2:
                    continue  # "1 1 1 1 1 1": a list of small numbers (vendor arrays), not an ID in groups
                begin = _with_leading_zeros(lowered, match.start()) if digit_first else match.start()
                if edge_ok(DIGIT_EDGE if digit_first else LETTER_EDGE, lowered, begin - 1, -1) and edge_ok(
                    end, lowered, match.end(), 1
                ):
                    hits.append((begin, match.end(), value))
        return hits


_ID_SPLIT = re.compile(r"[\s._/-]")
_BYTE_ID_SPLIT = re.compile(rb"[\s._/-]")
_BYTE_LETTERS = bytes(b if (97 <= b <= 122 or b >= 128) else 32 for b in range(256))
_BYTE_DIGITS = bytes(b if 48 <= b <= 57 else 32 for b in range(256))
_ID_SEPARATORS = frozenset(" \t._/-") | frozenset(b" \t._/-")
_ZERO = frozenset({"0", 48})


def _with_leading_zeros(text: Any, start: int) -> int:
    """Where an identifier found at `start` really begins when zeros (possibly separated) precede it."""
    begin = start
    index = start - 1
    while index >= 0:
        char = text[index]
        if char in _ZERO:
            begin = index
            index -= 1
        elif char in _ID_SEPARATORS and index > 0 and text[index - 1] in _ZERO:
            index -= 1
        else:
            break
    return begin


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined, in order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class PersonalValues:
    """A set of harvested values with the needles to scan for and a cleaner for free text."""

    def __init__(self, values: Iterable[PersonalValue] = (), protected: Iterable[str] = ()) -> None:
        """`protected`: words never cut because a value shares their spelling (the descriptor vocabulary's
        tokens, e.g. "bold" for a patient named Bold); a match is kept only when it is exactly such a word."""
        self.values: set[PersonalValue] = set(values)
        self.protected = frozenset(w.lower() for w in protected)
        self._index: SearchIndex | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[PersonalValue]:
        return iter(sorted(self.values))

    def update(self, values: Iterable[PersonalValue]) -> None:
        self.values.update(values)
        self._index = None

    def needles(self, categories: Iterable[str] | None = None) -> dict[str, PersonalValue]:
        """Lower-cased classic renderings -> the value they come from (first by sort order wins)."""
        wanted = set(categories) if categories is not None else None
        out: dict[str, PersonalValue] = {}
        for value in sorted(self.values):
            if wanted is not None and value.category not in wanted:
                continue
            for form in value.renderings():
                out.setdefault(form, value)
        return out

    def specs(self) -> list[Spec]:
        """Every search string of every value (names, dates and IDs in every written form), UIDs excepted."""
        return [spec for value in sorted(self.values) if value.category != "uid" for spec in specs_of(value)]

    def id_patterns(self) -> list[IdPattern]:
        return [p for value in sorted(self.values) for p in id_patterns_of(value)]

    def _text_index(self) -> SearchIndex:
        if self._index is None:
            self._index = SearchIndex(((s.text, s.start, s.end, s.value) for s in self.specs()), self.id_patterns(),
                                 binary=False)
        return self._index

    def spans(self, text: str) -> list[tuple[int, int, PersonalValue]]:
        """(start, end, value) of every occurrence of a value in `text`, any form, case-insensitive."""
        lowered = _lower_aligned(text)
        spans = self._text_index().spans(lowered)
        if self.protected:
            spans = [(s, e, v) for s, e, v in spans if lowered[s:e] not in self.protected]
        return spans

    def find(self, text: str) -> list[PersonalValue]:
        """The values that occur in `text` (in any form they are written in; see the edge rules above)."""
        return sorted({value for _, _, value in self.spans(text)})

    def redact(self, text: str, replacement: str = "") -> str:
        """`text` with every form of every value removed (then separators tidied)."""
        spans = merge_spans((s, e) for s, e, _ in self.spans(text))
        if not spans:
            return text
        parts: list[str] = []
        position = 0
        for start, end in spans:
            parts.append(text[position:start])
            parts.append(replacement)
            position = end
        parts.append(text[position:])
        cleaned = re.sub(r"([\s_^,;:-])\1+", r"\1", "".join(parts))
        return cleaned.strip(" _^,;:-")

    def to_json(self) -> str:
        rows = [{"category": v.category, "field": v.field, "value": v.value} for v in sorted(self.values)]
        return json.dumps(rows, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PersonalValues:
        return cls(PersonalValue(r["category"], r["field"], r["value"]) for r in json.loads(text))


def save_values(values: PersonalValues, path: str | Path) -> Path:
    """Store harvested values in the private area (0600)."""
    from bidsafe.private import private_write_text

    return private_write_text(path, values.to_json())


def load_values(path: str | Path) -> PersonalValues:
    return PersonalValues.from_json(Path(path).read_text(encoding="utf-8"))
