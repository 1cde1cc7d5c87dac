"""Every form a personal value may be written in, with an edge rule per end of each search string."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from bidsafe.phi.value import MIN_NEEDLE_LENGTH, PLACEHOLDERS, RENDERERS, PersonalValue, parse_date, render_plain

# --- matching values as people write them ------------------------------------------------------------------
#
# A harvested value is searched in every form a person or a program may have written it: names after NFKC,
# case folding, diacritics removed, German umlaut spellings and `anyascii` transliteration (and UTF-8 read as
# Latin-1, as converters do); dates in every common order, separator, padding, year length and English month
# name; identifiers without separators, case or leading zeros. Each search string carries an edge rule per end
# (what may not stand next to a match there), so that "Lee" is not found in "asleep" but "Johanna" is in
# "Johanna1", and a birth date is not found inside a UID or a float. This is the cleaner's matching; the leak
# gate builds its own.

# Edge rules (one per end of a search string).
LETTER_EDGE = "L"  # letter-edged: no letter next to it (a name is bounded by letters only: "Zqxwv2", "Smith_J")
DIGIT_EDGE = "D"  # digit-edged: no digit, nor "digit." before / ".digit" after (a date inside a UID or a float)
_TOKEN_EDGE = "W"  # a whole token: neither letter nor digit next to it (1-2 letter name parts such as "Li")
_STRICT_EDGE = "S"  # institution and device text: no letter, digit or underscore ("nih" in "nih_ep2d_bold" stays)
FREE_EDGE = "N"  # ideographic edge: CJK text has no word boundaries, a name ideograph is cleaned wherever it is

# Categories whose values are places, devices and prose rather than a person: matched with strict edges, since
# vendor sequence strings embed institution-like words ("epiRT", "nih_ep2d_bold") and must survive.
_STRICT_CATEGORIES = frozenset({"institution", "device", "address", "free_text"})
# Name parts this short are cleaned only where they stand as a whole token (or joined to another part of the
# same name); a single Latin letter (an initial) identifies no one and would cut "T1 w" and the like.
_SHORT_NAME_PART = 2
# One ideograph or Hangul syllable carries a whole name part (王, 김): no minimum for ideographic strings.

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_ORDINALS = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_ID_SEPARATOR = r"[\s._/-]?"
RUNS = re.compile(r"[^\W\d_]+|[0-9]+")
BYTE_RUNS = re.compile(rb"[a-z\x80-\xff]+|[0-9]+")


def is_ideographic(char: str) -> bool:
    """CJK ideographs, kana and Hangul (and their compatibility blocks)."""
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF
            or 0x1100 <= code <= 0x11FF or code >= 0x20000)


def _char_class(char: str) -> str:
    if "0" <= char <= "9":
        return "D"
    if char == "_":
        return "U"
    return "L" if char.isalpha() else "O"


# Byte classes for text searched as bytes in any charset: bytes >= 0x80 count as letters (they are letters,
# or parts of one, in every charset DICOM allows).
_BYTE_CLASS = "".join(
    "D" if 48 <= b <= 57 else "U" if b == 95 else "L" if (65 <= b <= 90 or 97 <= b <= 122 or b >= 128) else "O"
    for b in range(256)
)


def _edge(char: str, *, strict: bool, whole: bool) -> str:
    if is_ideographic(char):
        return FREE_EDGE
    kind = _char_class(char)
    if kind == "D":
        return _STRICT_EDGE if strict else DIGIT_EDGE
    if kind == "L":
        return _STRICT_EDGE if strict else _TOKEN_EDGE if whole else LETTER_EDGE
    return FREE_EDGE


def edge_ok(kind: str, text: str | bytes, index: int, step: int) -> bool:
    """Whether the character at `index` (just outside a match; `step` points away from it) allows the match."""
    if kind == FREE_EDGE or index < 0 or index >= len(text):
        return True
    char = text[index]
    cls = _BYTE_CLASS[char] if isinstance(char, int) else _char_class(char)
    if kind == LETTER_EDGE:
        return cls != "L"
    if kind == _TOKEN_EDGE:
        return cls not in ("L", "D")
    if kind == _STRICT_EDGE:
        return cls not in ("L", "D", "U")
    if cls == "D":
        return False
    beyond = index + step
    if char in (".", 46) and 0 <= beyond < len(text):
        other = text[beyond]
        return (_BYTE_CLASS[other] if isinstance(other, int) else _char_class(other)) != "D"
    return True


def _name_variants(word: str) -> set[str]:
    """A name part as it may be written: NFKC, case-folded, without diacritics, German spellings, transliterated
    (`anyascii`), decomposed, and its UTF-8 bytes read as Latin-1."""
    from anyascii import anyascii

    normal = unicodedata.normalize("NFKC", word)
    lowered = normal.lower()
    out = {word.lower(), lowered, unicodedata.normalize("NFD", lowered)}
    bare = "".join(c for c in unicodedata.normalize("NFD", lowered) if not unicodedata.combining(c))
    out.add(bare)
    german = lowered.translate(_GERMAN)
    out.update({german, anyascii(lowered).lower(), anyascii(german).lower()})
    if any(is_ideographic(c) for c in lowered):
        out.add(" ".join(anyascii(c) for c in lowered).lower().strip())
    if lowered.isascii() and any(p in lowered for p in ("ae", "oe", "ue")):
        out.add(lowered.replace("ae", "ä").replace("oe", "ö").replace("ue", "ü"))
    for cased in {normal, normal.upper(), normal.title(), lowered}:
        if not cased.isascii():
            out.add(cased.encode("utf-8").decode("latin-1").lower())
    return {v.strip() for v in out if v.strip()}


def _name_forms(value: str) -> set[tuple[str, bool]]:
    """(form, whole-token only) of a PN value: every part, multi-word components, both orders joined."""
    forms: set[tuple[str, bool]] = set()
    for group in value.split("="):  # alphabetic, ideographic, phonetic groups
        components = [c.strip() for c in group.split("^")[:3] if c.strip()]  # family, given, middle
        for component in components:
            words = [w for w in re.split(r"[\s,.'-]+", component) if w]
            for word in (*words, component) if len(words) > 1 else words:
                short = len(word) <= _SHORT_NAME_PART and not any(is_ideographic(c) for c in word)
                forms.update((v, short) for v in _name_variants(word))
        if len(components) >= 2:
            # Parts written apart ("Smith John", "Smith_J", "Li Wei") are found part by part (letter edges, short
            # parts as whole tokens); only parts run together ("SmithJohn", "LiWei") need the joined form.
            family, given = _name_variants(components[0]), _name_variants(components[1])
            for a in family:
                for b in given:
                    forms.update({(f"{a}{b}", False), (f"{b}{a}", False)})
        if group.strip():
            forms.add((group.strip().lower(), False))
    return forms


def _date_forms(value: str) -> set[str]:
    """A date in every common written form (Y-M-D, D-M-Y, M-D-Y; separators none . / - _ space; with and
    without zero padding; two-digit years; English month names and abbreviations)."""
    forms = {value.strip().lower()}
    parsed = parse_date(value)
    if parsed is None:
        return forms
    year4 = f"{parsed.year:04d}"
    year2 = year4[2:]
    days = {f"{parsed.day:02d}", str(parsed.day)}
    months = {f"{parsed.month:02d}", str(parsed.month)}
    for sep in ("", ".", "/", "-", "_", " "):
        for year in (year4, year2):
            # Short or space-separated two-digit-year forms ("1 5 23") are runs of small numbers: too common in
            # vendor physics text to clean; padded forms and four-digit years are specific.
            if year == year2 and sep in (" ", "_"):
                continue
            for day in days:
                for month in months:
                    padded = len(day) == 2 and len(month) == 2
                    if sep == "" and not padded:
                        continue
                    forms.update({f"{year}{sep}{month}{sep}{day}", f"{day}{sep}{month}{sep}{year}",
                                  f"{month}{sep}{day}{sep}{year}"})
    name = _MONTHS[parsed.month - 1]
    for month in {name, name[:3], name[:4] if name == "september" else name[:3]}:
        for day in days:
            ordinal = day.lstrip("0") + _ORDINALS.get(parsed.day, "th")
            for year in (year4, year2):
                for sep in ("", " ", "-", ".", "/", "_"):
                    forms.update({f"{day}{sep}{month}{sep}{year}", f"{year}{sep}{month}{sep}{day}"})
                for sep in (" ", "-", ".", "/", "_"):
                    forms.add(f"{month}{sep}{day}{sep}{year}")
                forms.update({f"{month} {day}, {year}", f"{month}. {day}, {year}", f"{month}. {day} {year}",
                              f"{day}. {month} {year}", f"{day} {month}, {year}", f"{day}. {month}. {year}",
                              f"{ordinal} {month} {year}", f"{month} {ordinal}, {year}", f"{month} {ordinal} {year}",
                              f"{ordinal} of {month} {year}", f"{day}-{month}.-{year}", f"{day} {month}. {year}"})
    return forms


def id_core(value: str) -> str:
    """An identifier compared without separators, case or leading zeros ("PID 0012-3456" -> "pid123456"; the
    zeros leading any run of digits go)."""
    return _LEADING_ZEROS.sub("", re.sub(r"[^0-9a-z]", "", value.lower()))


_LEADING_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")


@dataclass(frozen=True)
class Spec:
    """One search string (lower-cased) with the edge rule at each end and the value it stands for."""

    text: str
    start: str
    end: str
    value: PersonalValue


@dataclass(frozen=True)
class IdPattern:
    """An identifier's core with an optional separator between any two characters; leading zeros may be added
    or dropped. `anchors`: a match's first letter/digit run is one of these (so the pattern is only run on text
    that has one)."""

    core: str
    value: PersonalValue

    @property
    def source(self) -> str:
        separator = _ID_SEPARATOR if len(self.core) > MIN_NEEDLE_LENGTH else ""
        parts = []
        for index, char in enumerate(self.core):
            if index and char.isdigit() and not self.core[index - 1].isdigit():
                parts.append(f"(?:0{separator})*")  # zeros may lead a digit run inside the ID too ("PID 0012")
            parts.append(re.escape(char))
        return separator.join(parts)

    @property
    def anchors(self) -> frozenset[str]:
        first = RUNS.match(self.core)
        run = first.group(0) if first else self.core
        zeros = range(7) if run[:1].isdigit() else range(1)
        return frozenset("0" * z + run[:k] for z in zeros for k in range(min(2, len(run)), len(run) + 1))


def specs_of(value: PersonalValue) -> Iterator[Spec]:
    """The search strings of one value (not UIDs: those are handled apart by the cleaner)."""
    category = value.category
    strict = category in _STRICT_CATEGORIES
    if category == "name":
        forms = _name_forms(value.value)
    elif category == "date":
        forms = {(f, False) for f in _date_forms(value.value)}
    else:
        forms = {(f.lower(), False) for f in RENDERERS.get(category, render_plain)(value.value)}
    for form, whole in forms:
        form = form.strip(" \x00")
        if not form or form in PLACEHOLDERS:
            continue
        ideographic = any(is_ideographic(c) for c in form)
        if not ideographic and len(form) < (2 if whole else MIN_NEEDLE_LENGTH):
            continue
        yield Spec(form, _edge(form[0], strict=strict, whole=whole), _edge(form[-1], strict=strict, whole=whole),
                    value)


def id_patterns_of(value: PersonalValue) -> Iterator[IdPattern]:
    if value.category not in ("id", "phone") or not value.value.isascii():
        return
    core = id_core(value.value)
    if len(core) >= MIN_NEEDLE_LENGTH and core not in PLACEHOLDERS:
        yield IdPattern(core, value)
