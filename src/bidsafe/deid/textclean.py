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

import gzip
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bidsafe.phi import PersonalValue, PersonalValues, SearchIndex

if TYPE_CHECKING:
    from bidsafe.deid.vocabulary import Vocabulary

# Filler for same-length overwrites: not a letter or digit, so filler can never spell a personal value.
FILLER = b"*"
_UID_CHARS = frozenset(b"0123456789.")
# bytes.translate table: everything but digits and dots blanked (UID-like tokens). Translating and splitting
# runs at C speed; regular expressions over a 100 kB CSA header do not (personal values are found through the
# run index of `bidsafe.phi.SearchIndex` for the same reason).
_UID_TABLE = bytes(b if b in _UID_CHARS else 32 for b in range(256))
_UID_TOKEN_TEXT = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)+(?![0-9])")
# Five or more numeric components: a UID for all practical purposes (versions and IP addresses have fewer).
_MIN_UID_DOTS = 4
_GZIP_MAGIC = b"\x1f\x8b"
# Kept private blocks repeat from file to file (a Siemens CSA series header is the same in every slice).
_CACHE_MIN_BYTES = 1024
_CACHE_MAX_ENTRIES = 16
# Small kept values (numbers, codes, sequence names) repeat in every file of a series too: many entries, small.
_SMALL_CACHE_MAX_ENTRIES = 4096


class TextCleaner:
    """Removes one patient's personal values from text and bytes."""

    def __init__(
        self, values: Iterable[PersonalValue], vocabulary: Vocabulary | None = None, protected: Iterable[str] = ()
    ) -> None:
        """`vocabulary`: the descriptor vocabulary, applied before this cleaner; its words (and `protected`) are
        never cut because a value shares their spelling (a patient named Bold keeps `ep2d_bold`)."""
        values = list(values)
        self.vocabulary = vocabulary
        words = set(protected) | (set(vocabulary.words) if vocabulary is not None else set())
        self.uids = frozenset(v.value for v in values if v.category == "uid")
        self.values = PersonalValues((v for v in values if v.category != "uid"), words)
        self._protected = frozenset(w.lower().encode("utf-8") for w in self.values.protected)
        self._specs: list[tuple[str, str, str, PersonalValue]] | None = None
        self._indexes: dict[tuple[str, ...], SearchIndex] = {}
        self._jis: dict[tuple[str, ...], list[bytes]] = {}
        self._cache: dict[tuple[tuple[str, ...], bytes], bytes] = {}
        self._small: dict[tuple[tuple[str, ...], bytes], bytes] = {}
        self._ascii: dict[bytes, bytes] = {}  # small plain-ASCII private values, cleaned

    def _index_for(self, encodings: tuple[str, ...]) -> SearchIndex:
        """The byte search strings: every text search string encoded in UTF-8, Latin-1 and the data set's own
        character sets (so a same-length overwrite finds a name stored in ISO-8859-5 or GB18030)."""
        index = self._indexes.get(encodings)
        if index is None:
            if self._specs is None:
                self._specs = [(s.text, s.start, s.end, s.value) for s in self.values.specs()]
            codecs = list(dict.fromkeys(("utf-8", "latin-1", *(_python_codec(e) for e in encodings))))
            needles: set[tuple[bytes, str, str, PersonalValue]] = set()
            for text, start, end, value in self._specs:
                variants = {text} if text.isascii() else {text, text.upper(), text.title()}
                for codec in codecs:
                    for variant in variants:
                        try:
                            encoded = variant.encode(codec).lower()  # ASCII letters only: lengths stay
                        except (UnicodeEncodeError, LookupError):
                            continue
                        if b"\x1b" in encoded:
                            # ISO 2022: the escape sequences make the edges; no edge rule applies. A name
                            # inside a longer run of kanji has no escape of its own: see `_jis_hits`.
                            needles.add((encoded, "N", "N", value))
                            needles.add((encoded.rsplit(b"\x1b", 1)[0], "N", "N", value))
                            codes = _JIS_RUN.fullmatch(encoded.rsplit(b"\x1b", 1)[0])
                            if codes is not None and len(encoded) > 3:
                                self._jis.setdefault(encodings, []).append(codes.group(1))
                        else:
                            needles.add((encoded, start, end, value))
            index = self._indexes[encodings] = SearchIndex(needles, self.values.id_patterns(), binary=True)
        return index

    def _is_personal_uid_token(self, token: str) -> bool:
        return token.count(".") >= _MIN_UID_DOTS or token in self.uids

    def clean_text(self, text: str) -> str:
        """Free text without any personal value of the patient (removed; separators tidied)."""
        cleaned = self.values.redact(text)
        if "." in cleaned:
            cleaned = _UID_TOKEN_TEXT.sub(self._uid_replacement, cleaned)
            if cleaned != text:
                cleaned = cleaned.strip(" _^,;:-")
        return cleaned

    def _uid_replacement(self, match: re.Match[str]) -> str:
        return "" if self._is_personal_uid_token(match.group(0)) else match.group(0)

    def clean_bytes(self, data: bytes, encodings: Sequence[str] = ()) -> bytes:
        """`data` with every personal value overwritten by same-length filler (length never changes).

        `encodings`: the character sets in force where `data` sits (pydicom's Python codec names or DICOM
        defined terms); UTF-8 and Latin-1 are always searched too."""
        if not data:
            return data
        key = tuple(encodings)
        cached = self._cache.get((key, data)) if len(data) >= _CACHE_MIN_BYTES else self._small.get((key, data))
        if cached is not None:
            return cached
        lowered = data.lower()  # ASCII letters only, one byte each: positions stay aligned
        hits = [(start, end) for start, end, _ in self._index_for(key).spans(lowered)
                if not self._protected or lowered[start:end] not in self._protected]
        if b"\x1b$" in data and self._jis.get(key):
            hits.extend(_jis_hits(lowered, self._jis[key]))
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
            self._cache[(key, data)] = result
        else:
            if len(self._small) >= _SMALL_CACHE_MAX_ENTRIES:
                self._small.pop(next(iter(self._small)))
            self._small[(key, data)] = result
        return result

    def clean_private_value(self, data: bytes, encodings: Sequence[str] = ()) -> bytes:
        """A kept private value cleaned in place; a GE protocol block (length + gzip) is cleaned inside."""
        if len(data) < _CACHE_MIN_BYTES and data.isascii() and b"\x1b" not in data:
            # Plain ASCII reads the same in every character set (a needle in another set holds a byte above
            # 0x7F or an escape): one answer per value, whatever the file's encodings (kept values repeat in
            # every file of a series).
            cleaned = self._ascii.get(data)
            if cleaned is None:
                cleaned = self.clean_bytes(data, encodings)
                if len(self._ascii) >= _SMALL_CACHE_MAX_ENTRIES:
                    self._ascii.pop(next(iter(self._ascii)))
                self._ascii[data] = cleaned
            return cleaned
        unpacked = _unpack_length_prefixed_gzip(data)
        if unpacked is not None:
            cleaned = self.clean_bytes(unpacked, encodings)
            if cleaned == unpacked:
                return data
            return _pack_length_prefixed_gzip(cleaned)
        return self.clean_bytes(data, encodings)


# A run of JIS X 0208 two-byte codes after its escape (lower-cased like the data: "ESC $ B" reads "ESC $ b").
_JIS_RUN = re.compile(rb"\x1b\$[@b]((?:[\x21-\x7e]{2})+)")


def _jis_hits(lowered: bytes, codes: list[bytes]) -> list[tuple[int, int]]:
    """Spans of a name's JIS codes inside any two-byte run (ISO 2022 IR 87), on character boundaries only:
    the codes are printable ASCII bytes, so they are searched nowhere else."""
    hits: list[tuple[int, int]] = []
    for run in _JIS_RUN.finditer(lowered):
        segment, base = run.group(1), run.start(1)
        for code in codes:
            position = segment.find(code)
            while position != -1:
                if position % 2 == 0:
                    hits.append((base + position, base + position + len(code)))
                position = segment.find(code, position + 1)
    return hits


def _python_codec(encoding: str) -> str:
    """A Python codec name for a DICOM character set term (pydicom's names pass through)."""
    from pydicom.charset import python_encoding

    return python_encoding.get(encoding, encoding)


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
