"""Cleaning text that is kept: free-text attributes (action C) and kept private blocks.

A study's harvested personal values (`bidsafe.phi`) are removed from

- free text (descriptions, protocol names, comments): removed outright, the rest of the text kept;
- kept private values (e.g. the Siemens CSA headers with their ASCII protocol, GE's protocol block): each
  occurrence is overwritten in place by filler of the same byte length, so the binary structure around the
  text (CSA item lengths and offsets) stays valid and converters still parse it.

Instance UIDs are treated apart: a study holds thousands of them, so instead of searching for each one, every
dotted-number token is looked up in the study's UID set, and any token shaped like a UID (five or more
components) is removed whatever its origin.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import struct
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bidsafe.phi import PersonalValue, PersonalValues

if TYPE_CHECKING:
    from bidsafe.deid.vocabulary import Vocabulary

# Filler for same-length overwrites: not a letter or digit, so filler can never spell a personal value.
FILLER = b"*"
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_UID_CHARS = frozenset(b"0123456789.")
# bytes.translate tables: ASCII letters lower-cased and everything else but letters/digits blanked (word
# tokens), or everything but digits and dots blanked (UID-like tokens). Translating and splitting runs at
# C speed; regular expressions over a 100 kB CSA header do not.
_WORD_TABLE = bytes((b | 0x20) if 65 <= b <= 90 else b if (48 <= b <= 57 or 97 <= b <= 122) else 32 for b in range(256))
_UID_TABLE = bytes(b if b in _UID_CHARS else 32 for b in range(256))
_UID_TOKEN_TEXT = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)+(?![0-9])")
# Five or more numeric components: a UID for all practical purposes (versions and IP addresses have fewer).
_MIN_UID_DOTS = 4
_GZIP_MAGIC = b"\x1f\x8b"
# Kept private blocks repeat from file to file (a Siemens CSA series header is the same in every slice).
_CACHE_MIN_BYTES = 1024
_CACHE_MAX_ENTRIES = 16


class TextCleaner:
    """Removes one study's personal values from text and bytes."""

    def __init__(self, values: Iterable[PersonalValue], vocabulary: Vocabulary | None = None) -> None:
        values = list(values)
        # The descriptor vocabulary (applied before this cleaner, in pass A): a harvested form that is one
        # vocabulary token (a patient named Bold, Field, Swan) must never cut protocol text.
        self.vocabulary = vocabulary
        self._protected: set[str] = set()
        self.uids = frozenset(v.value for v in values if v.category == "uid")
        self.values = PersonalValues(v for v in values if v.category != "uid")
        needles: set[bytes] = set()
        for form in self.values.needles():
            if vocabulary is not None and vocabulary.is_single_token(form):
                self._protected.add(form)
                continue
            for variant in {form, form.upper()}:
                for encoding in ("utf-8", "latin-1"):
                    with contextlib.suppress(UnicodeEncodeError):
                        needles.add(variant.encode(encoding).lower())
        # A word-bounded match starts at a word, and the needle's first word is that whole word of the
        # text; so only needles whose first word occurs in the data need searching.
        self._by_first_word: dict[bytes, list[bytes]] = {}
        self._unindexed: list[bytes] = []
        for needle in sorted(needles, key=len, reverse=True):
            words = needle.translate(_WORD_TABLE).split()
            if words and needle[:1] in _ALNUM_BYTES:
                self._by_first_word.setdefault(words[0], []).append(needle)
            else:
                self._unindexed.append(needle)
        self._cache: dict[bytes, bytes] = {}

    def _is_personal_uid_token(self, token: str) -> bool:
        return token.count(".") >= _MIN_UID_DOTS or token in self.uids

    def clean_text(self, text: str) -> str:
        """Free text without any personal value of the study (removed; separators tidied)."""
        masked: list[str] = []
        if self._protected and self.vocabulary is not None:
            text, masked = self.vocabulary.protect(text, self._protected)
        cleaned = self.values.redact(text)
        if "." in cleaned:
            cleaned = _UID_TOKEN_TEXT.sub(self._uid_replacement, cleaned)
            if cleaned != text:
                cleaned = cleaned.strip(" _^,;:-")
        return self.vocabulary.unprotect(cleaned, masked) if masked else cleaned

    def _uid_replacement(self, match: re.Match[str]) -> str:
        return "" if self._is_personal_uid_token(match.group(0)) else match.group(0)

    def clean_bytes(self, data: bytes) -> bytes:
        """`data` with every personal value overwritten by same-length filler (length never changes)."""
        if not data:
            return data
        if len(data) >= _CACHE_MIN_BYTES:
            cached = self._cache.get(data)
            if cached is not None:
                return cached
        lowered = data.lower()  # ASCII letters only, one byte each: positions stay aligned
        hits: list[tuple[int, int]] = []
        words = set(data.translate(_WORD_TABLE).split())
        candidates = [n for word in words for n in self._by_first_word.get(word, ())] + self._unindexed
        for needle in candidates:
            _find_bounded(lowered, needle, _ALNUM, _ALNUM, hits)
        if b"." in data:
            for token in set(data.translate(_UID_TABLE).split()):
                token = token.strip(b".")
                if b"." in token and self._is_personal_uid_token(token.decode("ascii")):
                    _find_bounded(data, token, _UID_CHARS, _DIGITS, hits)
        result = data
        if hits:
            out = bytearray(data)
            for start, end in hits:
                out[start:end] = FILLER * (end - start)
            result = bytes(out)
        if len(data) >= _CACHE_MIN_BYTES:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[data] = result
        return result

    def clean_private_value(self, data: bytes) -> bytes:
        """A kept private value cleaned in place; a GE protocol block (length + gzip) is cleaned inside."""
        unpacked = _unpack_length_prefixed_gzip(data)
        if unpacked is not None:
            cleaned = self.clean_bytes(unpacked)
            if cleaned == unpacked:
                return data
            return _pack_length_prefixed_gzip(cleaned)
        return self.clean_bytes(data)


_ALNUM_BYTES = frozenset(bytes([b]) for b in _ALNUM)
_DIGITS = frozenset(b"0123456789")


def _find_bounded(
    data: bytes, needle: bytes, before: frozenset[int], after: frozenset[int], hits: list[tuple[int, int]]
) -> None:
    """Append the spans of `needle` in `data` not preceded by a byte in `before` nor followed by one in `after`."""
    size = len(data)
    start = data.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or data[start - 1] not in before) and (end == size or data[end] not in after):
            hits.append((start, end))
        start = data.find(needle, start + 1)


def _unpack_length_prefixed_gzip(data: bytes) -> bytes | None:
    """The text of a GE protocol data block (uint32 length, then a gzip stream), or None if it is not one."""
    if len(data) < 24 or data[4:6] != _GZIP_MAGIC:
        return None
    (length,) = struct.unpack("<I", data[:4])
    if not len(data) - 5 <= length <= len(data) - 4:
        return None
    try:
        return gzip.decompress(data[4 : 4 + length])
    except (OSError, EOFError, zlib.error):
        return None


def _pack_length_prefixed_gzip(text: bytes) -> bytes:
    # mtime 0 and no file name in the gzip header: nothing in the header may identify the source.
    compressed = gzip.compress(text, mtime=0)
    packed = struct.pack("<I", len(compressed)) + compressed
    return packed + b"\x00" if len(packed) % 2 else packed
