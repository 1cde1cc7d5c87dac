"""Reading an element's text without trusting its VR: plain strings of any value, private bytes decoded in
the data set's character sets, and the VR an element will have once decoded (known without decoding)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator

import pydicom

from bidsafe.phi.value import MIN_NEEDLE_LENGTH, parse_date

PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "OB", "UN", "CS", "DA", "DT"})
_PRINTABLE = re.compile(r"^[^\x00-\x08\x0e-\x1f\x7f]+$")
_STANDARD_VR: dict[int, str] = {}


def values_of(element_value: object) -> Iterator[str]:
    """Plain strings of an element's value (multi-valued elements give one string each)."""
    if element_value is None:
        return
    if isinstance(element_value, (bytes, bytearray)):  # a text attribute stored as OB/UN: its bytes are text
        yield from private_text(element_value)
        return
    if isinstance(element_value, (list, tuple, pydicom.multival.MultiValue)):
        for item in element_value:
            yield from values_of(item)
        return
    text = str(element_value).strip()
    if text:
        yield text


def resolved_vr(tag: int, vr: str | None) -> str | None:
    """The VR an element will have once decoded, when that is known without decoding (else None)."""
    if vr is not None and vr != "UN":
        return vr
    if tag >> 16 & 1:
        return None  # private: the VR is only known after decoding (private dictionary, sequence detection)
    known = _STANDARD_VR.get(tag)
    if known is None:
        try:
            known = pydicom.datadict.dictionary_VR(tag)
        except KeyError:
            known = "UN"
        _STANDARD_VR[tag] = known
    return known


def _decode_text(raw: bytes, encodings: Iterable[str] = ()) -> str:
    """Bytes of text in the data set's declared character sets (pydicom's codec names), else UTF-8, else
    Latin-1 (which always decodes)."""
    declared = [e for e in encodings if e not in ("iso8859", "latin_1", "iso-8859-1")]
    if declared:
        from pydicom.charset import decode_bytes

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return decode_bytes(raw, list(encodings), set())
        except (UnicodeError, LookupError, UserWarning, ValueError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def private_text(value: object, encodings: Iterable[str] = ()) -> Iterator[str]:
    """Printable strings of a private element's value (bytes decoded in the declared character set, else as
    UTF-8, else Latin-1)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).strip(b" \x00")
        if not raw:
            return
        items: Iterable[object] = _decode_text(raw, encodings).split("\\")
    else:
        items = values_of(value)
    for item in items:
        text = str(item).strip(" \x00")
        if len(text) >= MIN_NEEDLE_LENGTH and _PRINTABLE.match(text):
            yield text


def private_category(text: str) -> str:
    if "^" in text:
        return "name"
    if re.fullmatch(r"\d{8}", text) and parse_date(text) is not None:
        return "date"
    return "private"
