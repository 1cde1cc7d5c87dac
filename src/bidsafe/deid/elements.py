"""Raw DICOM element primitives shared by the actions, the reader and the writer: tags, text of an element,
raw elements built from bytes, and where a pending (study-dependent) element sits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

TAG_SOP_CLASS = 0x00080016
TAG_SOP_INSTANCE = 0x00080018
TAG_STUDY_UID = 0x0020000D
TAG_SERIES_UID = 0x0020000E
TAG_PATIENT_ID = 0x00100020
TAG_IMAGE_TYPE = 0x00080008
TAG_MODALITY = 0x00080060
TAG_SERIES_NUMBER = 0x00200011
TAG_INSTANCE_NUMBER = 0x00200013
TAG_BURNED_IN = 0x00280301
TAG_VISUAL_FEATURES = 0x00280302
TAG_CHARSET = 0x00080005
TAG_DIRECTORY_RECORDS = 0x00041220
TAG_SPECTROSCOPY_DATA = 0x56000020
# PixelData, FloatPixelData, DoubleFloatPixelData: an image needs one of them


# --- element helpers --------------------------------------------------------------------------------------


def element_text(elem: Any) -> str:
    """The value of an element as DICOM text (multi-values joined by backslash), decoded leniently."""
    if getattr(elem, "is_raw", False):
        value = elem.value
        return value.decode("latin-1").strip(" \x00") if value else ""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def text_of(ds: Dataset, tag: int) -> str:
    elements: Any = ds._dict  # keyed by BaseTag, an int: a plain int finds the element
    elem = elements.get(tag)
    return element_text(elem) if elem is not None else ""


def ascii_value(text: str, vr: str) -> bytes:
    data = text.encode("ascii", "replace")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def raw_element(tag: int, vr: str, data: bytes, implicit: bool, little: bool) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, little)


@dataclass(frozen=True)
class Encoding:
    implicit: bool
    little: bool


TEXT = "text"
PRIVATE = "private"


@dataclass
class Pending:
    """An element whose cleaning waits for the study's personal values, and where it sits once written.

    TEXT: a free-text element (action C); `value` is its decoded text. PRIVATE: a kept private element,
    cleaned as the bytes written, in place (same length). `offset`/`header`/`size` locate the whole element
    (header + value) in the written file; `encodings` is the character set in force there.
    """

    kind: str
    tag: int
    vr: str
    value: Any = None
    encodings: Any = None
    offset: int = -1
    header: int = 0
    size: int = 0


def plain_value(value: Any) -> str | list[str]:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return str(value)


_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: an item starts here


def holds_items(value: object) -> bool:
    """True when an unknown (UN) value is the body of a sequence: it starts with an item tag."""
    return isinstance(value, bytes) and len(value) >= 8 and value[:4] == _ITEM_TAG_LE


def un_as_sequence(elem: Any) -> DataElement | None:
    """A UN element holding items (raw, or already decoded to bytes by an earlier read of the dataset),
    decoded as a sequence (PS3.5 6.2.2: the value of UN is implicit VR little endian whatever the transfer
    syntax), or None when the items do not parse."""
    value = elem.value
    raw = RawDataElement(BaseTag(elem.tag), "SQ", len(value), value, 0, True, True)
    try:
        decoded = convert_raw_data_element(raw)
        for item in decoded.value:
            list(item.keys())  # items parse lazily: an error must surface here, not when written
    except Exception:  # noqa: BLE001 - any parse failure means the content cannot be checked
        return None
    return decoded


def lo_values(text: str) -> str | list[str]:
    """A long text as LO values of at most 64 characters, split at spaces."""
    text = " ".join(text.split())
    if len(text) <= 64:
        return text
    values, current = [], ""
    for word in text.split(" "):
        while len(word) > 64:
            if current:
                values.append(current)
                current = ""
            values.append(word[:64])
            word = word[64:]
        candidate = f"{current} {word}".strip()
        if len(candidate) > 64:
            values.append(current)
            current = word
        else:
            current = candidate
    if current:
        values.append(current)
    return values
