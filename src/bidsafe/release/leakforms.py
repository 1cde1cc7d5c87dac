"""The leak gate's own renderings of raw harvested values: how people and programs write them.

The gate shares no matching code with the cleaner it checks (`bidsafe.phi` renders and matches for
de-identification and scrub): it reads only the raw harvested rows `{category, field, value}` and renders them
here, more broadly, so that what the cleaner misses the gate still sees:

- text (names, addresses, institutions, free text, devices, private strings): the value, its words, and the
  family/given pairs in the usual joinings; each also transliterated (`anyascii`: Ørsted -> Orsted, 山田 ->
  ShanTian), in the German/Nordic ASCII spelling (Müller -> Mueller, Jürgen -> Juergen, Ørsted -> Oersted) and
  as UTF-8 read as Latin-1 or cp1252 (mojibake: Ørsted -> Ã\\x98rsted, what dcm2niix writes for a mis-declared
  character set). Matching is on `fold`ed text (NFKC, case folding, diacritics removed), so case and accents
  never hide a value.
- identifiers and phone numbers: the value, and the value without separators and case (`squash`), with leading
  zeros dropped (and any number of zeros allowed in front when matching).
- dates: a few exact byte forms for binary data; in text every written form is recognised (`find_dates`):
  orders Y-M-D, D-M-Y, M-D-Y; separators none . / - _ space (and ", "); no zero padding; two-digit years;
  English month names and abbreviations; a date running on into a time (`20240315101500`).
- UIDs: exact.

Nothing here prints or logs a value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from anyascii import anyascii

from bidsafe.errors import ConfigError

# Values that say "nothing here": present in every dataset, never searched for. The gate's own list (the
# cleaner keeps another): a value the gate skips must be one no release could be blocked for.
PLACEHOLDERS = frozenset(
    {
        "none", "null", "nil", "n/a", "na", "unknown", "anonymous", "anonymized", "anonymised", "anon",
        "removed", "deidentified", "de-identified", "not available", "not applicable", "empty", "blank",
        "redacted", "nobody", "patient", "research", "test", "phantom", "yes", "no", "other", "unk",
    }
)

# Whole values that are technical placeholders, never a person's: what scanners, test exports and QA or phantom
# sessions carry as PatientName/PatientID (measured in the corpus: PatientID `dicom`, `DEV`, `phantom`;
# PatientName `dicom`, `Development`, `phantom`). A harvested value (not a date or UID) made only of these
# words and PLACEHOLDERS (case-insensitive, the whole value: `QA^Phantom`, `TEST`, `dev`) is not searched at
# all; as a word inside a longer value ("Dev^Anand") it still is. The words are common in README text, log
# lines and sequence names ("DEV" in `/dev/null`, "dicom" in every log), so searching them fails every release
# and finds no one. Anything more specific (a site's own QA patient name) belongs in the site allow-list.
PLACEHOLDER_VALUES = PLACEHOLDERS | frozenset(
    {
        "dicom", "dcm", "dev", "devel", "development", "qa", "qc", "test", "tests", "testing", "demo",
        "service", "phantom", "phantoms", "anonymous", "unknown", "dummy", "sample", "default", "noname",
        "no name", "xxx",
    }
)
_PLACEHOLDER_SPLIT = re.compile(r"[\s^=_,.;:/\\-]+")

MIN_LENGTH = 3  # characters of a folded form; two Latin letters match everywhere by chance
MIN_IDEOGRAPHIC = 2  # 山田: CJK, kana and hangul carry a name in two characters
NUMERIC_MIN = 4  # "123" as a study ID is no identifier worth failing a release on; "1234" is
SQUASHED_MIN = 4

TEXT_CATEGORIES = frozenset({"name", "address", "institution", "free_text", "private", "device"})
ID_CATEGORIES = frozenset({"id", "phone"})

# German and Nordic ASCII spellings that anyascii does not give (it drops the diacritic instead).
_ASCII_SPELLING = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss", "ø": "oe", "Ø": "Oe",
     "å": "aa", "Å": "Aa", "æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe"}
)
# Words of a name component as people separate them (an underscore joins: "XAtest_sub" is one word, and
# splitting it would search "sub" in every BIDS path).
_WORD_SPLIT = re.compile(r"[\s,.'\-]+")
_NOT_ALNUM = re.compile(r"[\W_]+")


class RawValue(NamedTuple):
    """One harvested value as the gate reads it (`field` is a keyword path, safe to print; `value` is not).
    A named tuple: a big harvest holds 10^5-10^6 rows, and tuples are built and sorted in C."""

    category: str
    field: str
    value: str


# ---------------------------------------------------------------------------------------------- reading


def raw_values(source: Any) -> list[RawValue]:
    """Rows {category, field, value} from a saved harvest (JSON path), a list of mappings, or any iterable of
    objects with `category`, `field` and `value` attributes (a harvest in memory). Nothing else is used."""
    if isinstance(source, str | Path):
        try:
            rows = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"leak scan: cannot read the harvested values ({type(exc).__name__})", source) from exc
    else:
        # a harvest in memory may keep its rows in a `values` collection (iterating it may sort it first)
        inner = getattr(source, "values", None)
        rows = inner if isinstance(inner, set | frozenset | list | tuple) else source
    out: set[RawValue] = set()
    for row in rows:
        if isinstance(row, dict):
            category, field, value = row.get("category"), row.get("field"), row.get("value")
        else:
            try:
                category, field, value = row.category, row.field, row.value
            except AttributeError:
                category = field = value = None
        if type(category) is not str or type(field) is not str or type(value) is not str:
            raise ConfigError("leak scan: a harvested value is not a {category, field, value} row of strings")
        if value.strip():
            out.add(RawValue(category, field, value))
    return sorted(out)


# ---------------------------------------------------------------------------------------------- normalising


def fold(text: str) -> str:
    """NFKC, case folding, diacritics removed: the form in which text is compared (needles and haystacks)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFD", folded)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _cp1252_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)  # undefined in cp1252: Windows and most readers pass the C1 code point through


def mojibake(text: str) -> set[str]:
    """`text` as UTF-8 bytes read as Latin-1 and as cp1252 (empty for ASCII: it reads the same)."""
    if text.isascii():
        return set()
    data = text.encode("utf-8")
    return {data.decode("latin-1"), "".join(_cp1252_char(b) for b in data)}


def spellings(text: str) -> set[str]:
    """`text`, transliterated, in German/Nordic ASCII spelling, and each of those as mojibake."""
    forms = {text}
    if not text.isascii():
        forms.add(anyascii(text))
        forms.add(anyascii(text.translate(_ASCII_SPELLING)))
        forms |= mojibake(text)
    return forms


def is_ideographic(text: str) -> bool:
    return any(ord(c) >= 0x2E80 for c in text)


def searchable(folded: str) -> bool:
    """Whether a folded form is worth looking for anywhere (long enough, not a placeholder, not one repeated
    character). Any script: no ASCII requirement."""
    stripped = folded.strip()
    if stripped in PLACEHOLDERS or len(set(stripped)) <= 1:
        return False
    if not any(c.isalnum() for c in stripped):
        return False
    if stripped.isdigit():
        return len(stripped) >= NUMERIC_MIN
    return len(stripped) >= (MIN_IDEOGRAPHIC if is_ideographic(stripped) else MIN_LENGTH)


def is_placeholder_value(value: str) -> bool:
    """Whether a whole harvested value is a technical placeholder (PLACEHOLDER_VALUES): `dicom`, `DEV`,
    `QA^Phantom`, `Test^Test`; not `Dev^Anand`, not `Test^Regression`."""
    folded = fold(value).strip()
    if folded in PLACEHOLDER_VALUES:
        return True
    words = [w for w in _PLACEHOLDER_SPLIT.split(folded) if w]
    return bool(words) and all(w in PLACEHOLDER_VALUES for w in words)


def squash(folded: str) -> str:
    """Letters and digits only (identifier comparison without separators)."""
    return _NOT_ALNUM.sub("", folded)


# ---------------------------------------------------------------------------------------------- rendering


def name_forms(value: str) -> set[str]:
    """A PN value (or any name-like text): every component and word, and family/given in common joinings."""
    forms: set[str] = set()
    for group in value.split("="):  # alphabetic, ideographic, phonetic groups
        parts = group.split("^")
        components = [c.strip() for c in parts[:3] if c.strip()]
        forms.update(components)
        forms.update(w for c in components for w in _WORD_SPLIT.split(c) if w)
        if len(components) >= 2:
            family, given = components[0], components[1]
            for a, b in ((family, given), (given, family)):
                forms.update(f"{a}{sep}{b}" for sep in (" ", "", "_", "^", ", ", ".", "-"))
        if group.strip():
            forms.add(group.strip())
    return forms


def text_forms(value: str) -> set[str]:
    """Free text, addresses, institutions: the value and its comma/line parts of five or more characters."""
    value = value.strip()
    forms = {value}
    forms.update(p.strip() for p in re.split(r"[\^,;\n\\]+", value) if len(p.strip()) >= 5)
    return forms


def id_forms(value: str) -> tuple[set[str], set[str]]:
    """(exact forms, squashed forms) of an identifier or phone number; leading zeros dropped as well."""
    value = value.strip()
    exact = {value}
    squashed = {squash(fold(value))}
    for form in list(squashed):
        if form[:1] == "0":
            squashed.add(form.lstrip("0"))
    if value.isdigit():
        exact.add(value.lstrip("0"))
    return exact, {s for s in squashed if len(s) >= SQUASHED_MIN and searchable(s)}


def parse_date(value: str) -> date | None:
    """A DICOM DA (or the date part of DT): YYYYMMDD, also with separators."""
    digits = re.sub(r"[^0-9]", "", value.strip())[:8]
    if len(digits) != 8:
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def date_byte_forms(day: date) -> set[str]:
    """Exact forms for binary data (voxels, unknown files): zero-padded, four-digit years, every order and
    separator, and day-month-name-year. Text gets every written form through `leakdates` instead."""
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    month = _MONTH_NAMES[day.month - 1][:3]
    forms: set[str] = set()
    for sep in ("", "-", ".", "/", "_", " "):
        forms.update({sep.join((y, m, d)), sep.join((d, m, y)), sep.join((m, d, y))})
        forms.add(sep.join((d, month, y)))
    return forms


@dataclass(frozen=True)
class Rendering:
    """Everything the gate looks for, per value: folded text forms, squashed ID forms, dates, UIDs."""

    text: dict[str, RawValue]  # folded form -> value
    raw: dict[str, RawValue]  # lower-cased unfolded spellings (with their diacritics) for raw bytes
    squashed: dict[str, RawValue]  # squashed folded form -> identifier value
    dates: dict[date, RawValue]
    uids: dict[str, RawValue]
    vocabulary_skipped: int  # single-token forms that are vocabulary words, not searched
    placeholders_skipped: int = 0  # whole values that are technical placeholders, not searched


def render(values: Iterable[RawValue], is_vocabulary_word: Callable[[str], bool] | None = None) -> Rendering:
    """The gate's search for `values`. `is_vocabulary_word(form) -> bool` names forms that are one vocabulary
    token (a patient called Bold): those are allowed text by construction and are not searched."""
    text: dict[str, RawValue] = {}
    raw: dict[str, RawValue] = {}
    squashed: dict[str, RawValue] = {}
    dates: dict[date, RawValue] = {}
    uids: dict[str, RawValue] = {}
    skipped: set[str] = set()
    placeholders = 0
    for value in sorted(values):
        category = value.category
        if category not in ("uid", "date", "time") and is_placeholder_value(value.value):
            placeholders += 1
            continue
        if category == "uid":
            uids.setdefault(value.value.strip(), value)
            uids.setdefault(value.value.strip().replace(".", ""), value)  # digits alone (a UID as a file name)
            continue
        if category in ("date", "time"):
            parsed = parse_date(value.value) if category == "date" else None
            if parsed is not None:
                dates.setdefault(parsed, value)
                for form in date_byte_forms(parsed):
                    text.setdefault(form, value)
            continue
        if category == "name":
            bases = name_forms(value.value)
        elif category in ID_CATEGORIES:
            bases, squashed_forms = id_forms(value.value)
            bases |= squashed_forms  # as written without separators, also in raw bytes
            for form in squashed_forms:
                if is_vocabulary_word is not None and is_vocabulary_word(form):
                    skipped.add(form)  # a PatientID "BOLD" would match every `_bold.nii` without separators
                else:
                    squashed.setdefault(form, value)
        else:
            # (a private string with "^" is harvested as a name already; its words alone would be noise)
            bases = text_forms(value.value)
            joined = squash(value.value)  # "HarrowgateImagingCentre"
            if len(joined) >= SQUASHED_MIN:
                bases.add(joined)
            private_date = parse_date(value.value) if value.value.strip().isdigit() else None
            if category == "private" and private_date is not None:  # a birth date in a PACS block
                dates.setdefault(private_date, value)
        for base in bases:
            if is_vocabulary_word is not None and is_vocabulary_word(base):
                skipped.add(fold(base))
                continue
            for spelling in spellings(base):
                folded = fold(spelling).strip()
                if searchable(folded) and not (is_vocabulary_word is not None and is_vocabulary_word(folded)):
                    text.setdefault(folded, value)
                    raw.setdefault(spelling.strip().lower(), value)
    return Rendering(text, raw, squashed, dates, uids, len(skipped), placeholders)


# ---------------------------------------------------------------------------------------------- dates in text

_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                "october", "november", "december")
MONTHS = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)} | {
    name[:3]: i + 1 for i, name in enumerate(_MONTH_NAMES)} | {"sept": 9}
_MON = "|".join(sorted(MONTHS, key=len, reverse=True))
_SEP = r"(?:, ?|[-./_ ])"
_NOT_AFTER_NUMBER = r"(?![0-9])(?!\.[0-9])"
_NOT_BEFORE_NUMBER = r"(?<![0-9])(?<![0-9]\.)"
# Three numbers with separators: 17.3.1971, 2023_05_01, 4/7/65 (the order is decided by `_candidates`).
_NUMERIC = re.compile(rf"{_NOT_BEFORE_NUMBER}([0-9]{{1,4}}){_SEP}([0-9]{{1,2}}){_SEP}([0-9]{{1,4}}){_NOT_AFTER_NUMBER}")
_DAY_MONTH_YEAR = re.compile(
    rf"{_NOT_BEFORE_NUMBER}([0-9]{{1,2}})(?:st|nd|rd|th)?{_SEP}?({_MON})(?![a-z]){_SEP}*([0-9]{{4}}|[0-9]{{2}})"
    rf"{_NOT_AFTER_NUMBER}"
)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<![a-z])({_MON})(?![a-z]){_SEP}?([0-9]{{1,2}})(?:st|nd|rd|th)?{_SEP}*([0-9]{{4}}|[0-9]{{2}}){_NOT_AFTER_NUMBER}"
)
_YEAR_MONTH_DAY = re.compile(
    rf"{_NOT_BEFORE_NUMBER}([0-9]{{4}}){_SEP}?({_MON})(?![a-z]){_SEP}?([0-9]{{1,2}}){_NOT_AFTER_NUMBER}"
)
# Digits without separators, zero-padded: 6 (two-digit year), 8, or 12+ (a date running on into a time).
_COMPACT = re.compile(rf"{_NOT_BEFORE_NUMBER}([0-9]{{6}}|[0-9]{{8}}|[0-9]{{12,}}){_NOT_AFTER_NUMBER}")


def _years(text: str) -> tuple[int, ...]:
    year = int(text)
    if len(text) == 4:
        return (year,)
    if len(text) == 2:
        return (1900 + year, 2000 + year)
    return ()


def _day(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _candidates(a: str, b: str, c: str) -> Iterator[date | None]:
    """Every reading of three numbers as a date: Y-M-D, D-M-Y, M-D-Y (years of two or four digits)."""
    if len(b) <= 2:
        if len(c) <= 2:
            for year in _years(a):
                yield _day(year, int(b), int(c))
        if len(a) <= 2:
            for year in _years(c):
                yield _day(year, int(b), int(a))
                yield _day(year, int(a), int(b))


def _compact(run: str, numeric: bool) -> Iterator[date | None]:
    if len(run) >= 12:  # DICOM DT, dcm2niix %t: the date leads
        run = run[:8]
        yield _day(int(run[:4]), int(run[4:6]), int(run[6:8]))
        return
    if len(run) == 8:
        yield from _candidates(run[:4], run[4:6], run[6:8])
        yield from _candidates(run[:2], run[2:4], run[4:8])
    elif not numeric:  # six digits: only inside text (a bare six-digit number is too often something else)
        yield from _candidates(run[:2], run[2:4], run[4:6])


def find_dates(text: str, dates: Mapping[date, RawValue], *, numeric: bool = False) -> set[RawValue]:
    """The harvested dates written anywhere in (folded) `text`, in any form listed in the module docstring.

    `numeric`: the text is a bare number (a JSON number, a numeric TSV cell): only 8+ digit forms count.
    """
    if not dates or not any(ch.isdigit() for ch in text):
        return set()
    found: set[RawValue] = set()

    def keep(candidates: Iterable[date | None]) -> None:
        for candidate in candidates:
            if candidate is not None and candidate in dates:
                found.add(dates[candidate])

    for match in _COMPACT.finditer(text):
        keep(_compact(match.group(1), numeric))
    if numeric:
        return found
    for match in _NUMERIC.finditer(text):
        keep(_candidates(*match.groups()))
    for match in _DAY_MONTH_YEAR.finditer(text):
        d, mon, y = match.groups()
        keep(_day(year, MONTHS[mon], int(d)) for year in _years(y))
    for match in _MONTH_DAY_YEAR.finditer(text):
        mon, d, y = match.groups()
        keep(_day(year, MONTHS[mon], int(d)) for year in _years(y))
    for match in _YEAR_MONTH_DAY.finditer(text):
        y, mon, d = match.groups()
        keep(_day(year, MONTHS[mon], int(d)) for year in _years(y))
    return found


def byte_variants(form: str) -> Iterator[bytes]:
    """Byte forms of a (folded) form as they may appear in ASCII-lower-cased raw data."""
    if form.isascii():
        yield form.encode("ascii")
        return
    for cased in {form, form.upper(), form.title()}:
        for encoding in ("utf-8", "latin-1", "cp1252"):
            try:
                yield cased.encode(encoding).lower()
            except UnicodeEncodeError:
                continue


__all__ = [
    "PLACEHOLDERS",
    "PLACEHOLDER_VALUES",
    "RawValue",
    "Rendering",
    "byte_variants",
    "find_dates",
    "fold",
    "is_placeholder_value",
    "mojibake",
    "raw_values",
    "render",
    "searchable",
    "spellings",
    "squash",
]
