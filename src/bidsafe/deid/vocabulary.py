"""The descriptor vocabulary: text that stays in de-identified DICOM and in sidecars keeps only allowed tokens.

PS3.15's Clean Descriptors option done as an allow-list. Every text value that stays (series and protocol
descriptions, keep-list text such as SequenceName or coil names, the string values of kept private blocks, every
kept sidecar string) is split into tokens; a token stays only when the vocabulary allows it (a listed word, or a
pattern for short numbers and unit forms that cannot be a date, a time or an identifier). Every other token
becomes the placeholder (text) or same-length filler (bytes, where a binary structure must keep its length).

Token: a maximal run of characters that are neither ASCII whitespace, nor ASCII punctuation
(`string.punctuation`), nor control characters. Non-ASCII letters are token characters, so `Müller` and `山田`
are single tokens (and never in the vocabulary, which is ASCII). The leak gate implements the same definition
on its own; keep the two in step by the definition, not by sharing this code.

The vocabulary is data (`config/deid/vocabulary.yaml`, one reason per group), extendable by a site with files
of the same shape. Nothing here prints a value.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bidsafe import resources
from bidsafe.errors import ConfigError

DEFAULT_VOCABULARY = resources.path("config/deid/vocabulary.yaml")
KIND = "vocabulary"

# Filler for same-length overwrites (the same byte as `bidsafe.deid.textclean.FILLER`, repeated here so this
# module stays importable by the rule checker without the cleaner; a test keeps the two equal).
FILLER = b"*"

_SEPARATORS = " " + string.punctuation
# Characters that end a token: ASCII space and punctuation, and every control character (C0, DEL, C1; ASCII
# whitespace other than the space is C0).
_TOKEN_TEXT = re.compile("[^" + re.escape(_SEPARATORS) + "\x00-\x1f\x7f-\x9f]+")
# In bytes every byte from 0x80 up is a token byte (UTF-8 and Latin-1 letters; in UTF-8 the C1 range holds
# continuation bytes), so a non-ASCII word is one token whatever its encoding.
_TOKEN_BYTES = re.compile(b"[^" + re.escape(_SEPARATORS.encode("ascii")) + b"\x00-\x1f\x7f]+")
# A quoted string value inside a vendor text block (Siemens CSA protocol, GE protocol block): one or two
# quotes each side (the CSA protocol doubles them), not preceded by "." (XProtocol parameter names,
# `<ParamString."tProtocolName">`, are structure, not values).
_QUOTED = re.compile(rb'(?<![.\w"])("{1,2})([^"\x00-\x08\x0a-\x1f]*)\1(?!")')
# A value that is only numbers (backslash- or semicolon-separated): physics, bitmasks, b-values. Left to the
# harvested-values layer, because its digits are data a converter reads (a GE b-value of 1000, a bitmask).
_NUMERIC_VALUE = re.compile(
    rb"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*([\\;]\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*)*;?"
)
_C1_CONTROLS = re.compile("[\x7f-\x9f]")
_CACHE_MIN_BYTES = 512
_CACHE_MAX_ENTRIES = 32


def tokens(text: str) -> list[str]:
    """The tokens of `text`, in order."""
    return _TOKEN_TEXT.findall(text)


def token_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN_TEXT.finditer(text)]


@dataclass
class Vocabulary:
    """Allowed tokens (lower-cased) and full-match patterns; `placeholder` replaces every other token."""

    placeholder: str
    words: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    sources: tuple[Path, ...] = ()
    _decided: dict[str, bool] = field(default_factory=dict, repr=False)
    _byte_cache: dict[bytes, tuple[bytes, Counter[str]]] = field(default_factory=dict, repr=False)

    def allows(self, token: str) -> bool:
        """Whether one token may stay (case-insensitive)."""
        decided = self._decided.get(token)
        if decided is None:
            lowered = token.lower()
            decided = token.isascii() and (lowered in self.words or any(p.fullmatch(token) for p in self.patterns))
            if len(self._decided) < 100_000:
                self._decided[token] = decided
        return decided

    def is_single_token(self, text: str) -> bool:
        """True when `text` is exactly one allowed token (such a harvested value must never cut protocol text)."""
        found = tokens(text)
        return len(found) == 1 and found[0] == text.strip() and self.allows(found[0])

    def clean(self, text: str) -> tuple[str, Counter[str]]:
        """`text` with every token the vocabulary does not allow replaced by the placeholder (separators kept),
        and the replaced tokens with their counts (private: they may be personal)."""
        replaced: Counter[str] = Counter()

        def replace(match: re.Match[str]) -> str:
            token = match.group(0)
            if self.allows(token):
                return token
            replaced[token] += 1
            return self.placeholder

        cleaned = _TOKEN_TEXT.sub(replace, text)
        if _C1_CONTROLS.search(cleaned):
            # DEL and C1 controls separate tokens but are not ASCII text (UTF-8 read as Latin-1 leaves them):
            # a space keeps the placeholders around them apart.
            cleaned = _C1_CONTROLS.sub(" ", cleaned)
        return cleaned, replaced

    def clean_bytes(self, data: bytes) -> tuple[bytes, Counter[str]]:
        """Same length: every token not allowed is overwritten by filler of its byte length."""
        replaced: Counter[str] = Counter()
        out: bytearray | None = None
        for match in _TOKEN_BYTES.finditer(data):
            raw = match.group(0)
            token = raw.decode("ascii") if raw.isascii() else None
            if token is not None and self.allows(token):
                continue
            if out is None:
                out = bytearray(data)
            start, end = match.span()
            out[start:end] = FILLER * (end - start)
            replaced[token if token is not None else raw.decode("utf-8", "replace")] += 1
        return (bytes(out) if out is not None else data), replaced

    def clean_value_bytes(self, data: bytes) -> tuple[bytes, Counter[str]]:
        """A kept private text value, same length; a value made only of numbers is left to the second layer."""
        if _NUMERIC_VALUE.fullmatch(data.rstrip(b"\x00 ")):
            return data, Counter()
        return self.clean_bytes(data)

    def clean_quoted(self, block: bytes) -> tuple[bytes, Counter[str]]:
        """A vendor text block (Siemens CSA protocol, GE protocol text) with its quoted string values cleaned
        in place (same length); everything outside quotes (keys, numbers, binary structure) untouched."""
        if len(block) >= _CACHE_MIN_BYTES:
            cached = self._byte_cache.get(block)
            if cached is not None:
                return cached[0], Counter(cached[1])
        replaced: Counter[str] = Counter()
        out: bytearray | None = None
        for match in _QUOTED.finditer(block):
            value = match.group(2)
            if not value:
                continue
            cleaned, found = self.clean_value_bytes(value)
            if cleaned is not value and cleaned != value:
                if out is None:
                    out = bytearray(block)
                out[match.start(2) : match.end(2)] = cleaned
                replaced.update(found)
        result = bytes(out) if out is not None else block
        if len(block) >= _CACHE_MIN_BYTES:
            if len(self._byte_cache) >= _CACHE_MAX_ENTRIES:
                self._byte_cache.pop(next(iter(self._byte_cache)))
            self._byte_cache[block] = (result, Counter(replaced))
        return result, replaced

    def protect(self, text: str, forms: Iterable[str]) -> tuple[str, list[str]]:
        """`text` with every whole token that is an allowed token AND one of `forms` (harvested renderings that
        are one vocabulary token, lower-cased; see `is_single_token`) masked by a private-use character, so a
        harvested-value cleaner cannot cut a vocabulary word because a patient shares its spelling.
        `unprotect` restores them."""
        wanted = forms if isinstance(forms, (set, frozenset)) else set(forms)
        if not wanted:
            return text, []
        masked: list[str] = []
        parts: list[str] = []
        position = 0
        for start, end in token_spans(text):
            token = text[start:end]
            if token.lower() in wanted and self.allows(token) and len(masked) < 6000:
                parts.append(text[position:start])
                parts.append(chr(0xE000 + len(masked)))
                masked.append(token)
                position = end
        if not masked:
            return text, []
        parts.append(text[position:])
        return "".join(parts), masked

    @staticmethod
    def unprotect(text: str, masked: Sequence[str]) -> str:
        if not masked:
            return text
        return re.sub("[\ue000-\uf770]", lambda m: masked[ord(m.group(0)) - 0xE000], text)


# --- loading and checking -----------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    try:
        # libyaml's safe loader when built in: the same documents, read several times faster (every deid start)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    except OSError as exc:
        raise ConfigError(f"cannot read the vocabulary ({exc.strerror})", path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the vocabulary is not valid YAML ({type(exc).__name__})", path) from exc


def is_vocabulary_file(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == KIND


@dataclass
class VocabularyFile:
    """One file's content as parsed, with the problems found (entry named, never a personal value)."""

    path: Path
    placeholder: str | None
    groups: dict[str, list[str]]
    patterns: dict[str, str]
    problems: list[str]


def parse_file(raw: Any, path: Path) -> VocabularyFile:
    """Parse one vocabulary file; shape problems are listed (the file and entry named)."""
    problems: list[str] = []
    result = VocabularyFile(path, None, {}, {}, problems)
    if not is_vocabulary_file(raw):
        problems.append("not a vocabulary file (expected a mapping with 'kind: vocabulary')")
        return result
    unknown = set(raw) - {"kind", "placeholder", "groups", "patterns"}
    if unknown:
        problems.append(f"unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    placeholder = raw.get("placeholder")
    if placeholder is not None:
        if not isinstance(placeholder, str) or len(tokens(placeholder)) != 1 or tokens(placeholder)[0] != placeholder:
            problems.append("placeholder: must be one ASCII token (letters/digits, no separators)")
        elif not placeholder.isascii():
            problems.append("placeholder: must be ASCII")
        else:
            result.placeholder = placeholder
    for section in ("groups", "patterns"):
        value = raw.get(section, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append(f"{section}: must be a mapping of name -> {{reason, ...}}")
            continue
        for name, entry in value.items():
            where = f"{section}.{name}"
            if not isinstance(entry, dict):
                problems.append(
                    f"{where}: must be a mapping with 'reason' and '{'tokens' if section == 'groups' else 'regex'}'"
                )
                continue
            reason = entry.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                problems.append(f"{where}: every {section[:-1]} needs a 'reason' (why these are safe)")
            if section == "groups":
                words = entry.get("tokens")
                if not isinstance(words, list) or not words:
                    problems.append(f"{where}: 'tokens' must be a non-empty list")
                    continue
                kept: list[str] = []
                for word in words:
                    word = str(word) if isinstance(word, (int, float)) and not isinstance(word, bool) else word
                    if not isinstance(word, str) or tokens(word) != [word] or not word.isascii():
                        problems.append(f"{where}: entry {word!r} is not one ASCII token")
                        continue
                    kept.append(word)
                result.groups[str(name)] = kept
            else:
                regex = entry.get("regex")
                if not isinstance(regex, str) or not regex:
                    problems.append(f"{where}: 'regex' must be a non-empty string")
                    continue
                try:
                    re.compile(regex, re.IGNORECASE)
                except re.error as exc:
                    problems.append(f"{where}: invalid regex ({exc})")
                    continue
                result.patterns[str(name)] = regex
    return result


def load_vocabulary(extra: Iterable[str | Path] = (), *, default: str | Path | None = DEFAULT_VOCABULARY) -> Vocabulary:
    """The default vocabulary plus a site's extension files (same format; a placeholder there overrides).

    Every file is checked like `bidsafe check-rules` does (shape, reasons, no date- or ID-shaped entry):
    a broken file raises ConfigError naming the file and the entry.
    """
    paths = ([Path(default)] if default is not None else []) + [Path(p) for p in extra]
    if not paths:
        raise ConfigError("no vocabulary file given")
    words: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    placeholder: str | None = None
    for path in paths:
        parsed = parse_file(_read(path), path)
        problems = check_vocabulary_file(parsed)
        if problems:
            raise ConfigError(
                f"vocabulary: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), path
            )
        for group in parsed.groups.values():
            words.update(w.lower() for w in group)
        patterns.extend(re.compile(r, re.IGNORECASE) for r in parsed.patterns.values())
        if parsed.placeholder is not None:
            placeholder = parsed.placeholder
    if placeholder is None:
        raise ConfigError("vocabulary: no placeholder defined", paths[0])
    vocabulary = Vocabulary(placeholder, frozenset(words), tuple(patterns), tuple(paths))
    if not vocabulary.allows(placeholder):
        raise ConfigError("vocabulary: the placeholder is not itself allowed by the vocabulary", paths[-1])
    return vocabulary


# --- shape checks: nothing in a vocabulary may look like a date, a time or an identifier -----------------------

_MONTHS = (
    "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
    "|january|february|march|april|june|july|august|september|october|november|december"
)
_YEAR = re.compile(r"(?<!\d)(19|20)\d\d(?!\d)")
_DATE_TOKEN = re.compile(rf"\d{{1,4}}({_MONTHS})\d{{2,4}}|({_MONTHS})\d{{2,4}}|\d{{1,2}}({_MONTHS})", re.IGNORECASE)
# Synthetic date, time and identifier tokens (one token each: separators split the written forms, so each
# token of "17.3.1971" or "PID 8842 QX" must be harmless alone). A pattern must reject every one of them.
DATE_ID_SAMPLES: tuple[str, ...] = (
    "1971",
    "1965",
    "2023",
    "2099",
    "1900",
    "19710317",
    "17031971",
    "03171971",
    "710317",
    "170371",
    "650704",
    "04jul1965",
    "4jul65",
    "17mar1971",
    "jul1965",
    "mar71",
    "1may2023",
    "2023y",
    "y2023",
    "123045",
    "093000",
    "0930",
    "1230h",
    "235959",
    "12345678",
    "0012345678",
    "8842",
    "45160",
    "12345",
    "1234567890",
    "PID8842",
    "QX8842",
    "A1234567",
    "AB12345",
    "ID12345",
    "MRN0012345",
    "8842QX",
    "P0012345678",
    "Mueller",
    "Juergen",
    "Johanna1",
    "Zqxwv2",
    "Orsted2",
    "Smith",
    "Li",
    "Wang",
    "QX",
    "Anna",
    "Müller",
    "Ørsted2",
    "山田",
    "王",
)


def date_or_id_shape(token: str) -> str | None:
    """Why a vocabulary token looks like a date, a time or an identifier, or None."""
    runs = re.findall(r"\d+", token)
    if _YEAR.search(token):
        return "holds a 4-digit year (1900-2099)"
    if _DATE_TOKEN.search(token):
        return "is shaped like a written date (day/month name/year)"
    if token.isdigit() and len(token) >= 4:
        return "is a number of 4 or more digits (a date, time or identifier shape)"
    if any(len(r) >= 5 for r in runs):
        return "holds a run of 5 or more digits (an identifier or date shape)"
    if sum(len(r) for r in runs) >= 5:
        return "mixes letters with 5 or more digits (an identifier shape)"
    return None


def check_vocabulary_file(parsed: VocabularyFile) -> list[str]:
    """Every problem of one parsed vocabulary file, each naming the entry (never a personal value)."""
    problems = list(parsed.problems)
    for group, words in parsed.groups.items():
        for word in words:
            why = date_or_id_shape(word)
            if why is not None:
                problems.append(f"groups.{group}: token {word!r} {why}")
    for name, regex in parsed.patterns.items():
        compiled = re.compile(regex, re.IGNORECASE)
        passed = [s for s in DATE_ID_SAMPLES if compiled.fullmatch(s)]
        if passed:
            problems.append(
                f"patterns.{name}: allows date/ID-shaped sample(s) {', '.join(passed[:5])}"
                + (f" and {len(passed) - 5} more" if len(passed) > 5 else "")
            )
    if parsed.placeholder is not None:
        allowed = {w.lower() for words in parsed.groups.values() for w in words}
        if parsed.placeholder.lower() not in allowed and not any(
            re.fullmatch(r, parsed.placeholder, re.IGNORECASE) for r in parsed.patterns.values()
        ):
            problems.append("placeholder: not allowed by the file's own groups or patterns")
    return problems


def check_vocabulary(path: str | Path) -> list[str]:
    """`bidsafe check-rules` on one vocabulary file: the problems found (empty when fine)."""
    path = Path(path)
    return check_vocabulary_file(parse_file(_read(path), path))


_LOADED: dict[tuple[str, ...], Vocabulary] = {}


def vocabulary_for(extra: Sequence[str | Path] = ()) -> Vocabulary:
    """`load_vocabulary(extra)`, loaded once per process for the same files."""
    key = tuple(str(Path(p).resolve()) for p in extra)
    found = _LOADED.get(key)
    if found is None:
        found = _LOADED[key] = load_vocabulary(extra)
    return found


def merge_counts(total: dict[str, int], counts: Counter[str] | dict[str, int]) -> None:
    for token, count in counts.items():
        total[token] = total.get(token, 0) + count
