"""The byte encoder: writes a de-identified dataset straight from its raw element bytes, notes where pending
elements land, cleans them in place in pass B, and names the output file from de-identified values only.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element

from bidsafe import __version__
from bidsafe.deid.elements import (
    PRIVATE,
    TAG_CHARSET,
    TAG_INSTANCE_NUMBER,
    TAG_MODALITY,
    TAG_SERIES_NUMBER,
    TAG_SERIES_UID,
    TEXT,
    Pending,
    ascii_value,
    element_text,
    text_of,
)
from bidsafe.deid.textclean import TextCleaner
from bidsafe.testhooks import text_cleaning_disabled

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"


# A fixed UID naming this writer in the file meta (2.25 + a UUID-derived integer: no registered root needed).
IMPLEMENTATION_CLASS_UID = "2.25.100587432469113350717338396520358221157"
IMPLEMENTATION_VERSION_NAME = f"BIDSAFE_{__version__}"[:16]


# VRs whose ASCII text encodes the same in every character set (PN objects and numbers go through pydicom).
_ASCII_SAFE_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})


# tag -> (VR, header bytes before the length, whether the length takes four bytes), per (implicit, little):
# shared by every writer of the process, since the same tags recur in every file.
_HEADER_PREFIXES: dict[tuple[bool, bool], dict[int, tuple[str | None, bytes, bool]]] = {}


class DatasetWriter:
    """Encodes a dataset straight from its raw element bytes (pydicom only for the few decoded elements),
    noting where pending elements land."""

    def __init__(self, implicit: bool, little: bool, pending: dict[int, Pending], base: int) -> None:
        self.implicit = implicit
        self.little = little
        self.pending = pending
        self.placed: list[Pending] = []
        self.chunks: list[bytes] = []
        self.size = base  # bytes before the first chunk (preamble and file meta)
        self._tag = struct.Struct("<HH" if little else ">HH").pack
        self._u16 = struct.Struct("<H" if little else ">H").pack
        self._u32 = struct.Struct("<I" if little else ">I").pack
        self._item_start = self._tag(0xFFFE, 0xE000) + self._u32(0xFFFFFFFF)
        self._item_end = self._tag(0xFFFE, 0xE00D) + self._u32(0)
        self._seq_end = self._tag(0xFFFE, 0xE0DD) + self._u32(0)
        self._prefixes = _HEADER_PREFIXES.setdefault((implicit, little), {})

    def _add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def header(self, tag: int, vr: str | None, length: int) -> bytes:
        # The bytes before the length depend on tag and VR only: built once per pair (a header repeats the
        # same elements in thousands of sequence items).
        cached = self._prefixes.get(int(tag))
        if cached is None or cached[0] != vr:
            cached = self._prefixes[int(tag)] = (vr, *self._prefix(int(tag), vr))
        _, prefix, long_length = cached
        if long_length:
            return prefix + self._u32(length)
        if length > 0xFFFF:
            raise ValueError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) too long for VR {vr}")
        return prefix + self._u16(length)

    def _prefix(self, tag: int, vr: str | None) -> tuple[bytes, bool]:
        """Tag (and VR) bytes of an element header, and whether its length takes four bytes."""
        tag_bytes = self._tag(tag >> 16, tag & 0xFFFF)
        if self.implicit:
            return tag_bytes, True
        if vr is None or len(vr) != 2:
            vr = "UN"
        if vr in _LONG_LENGTH_VRS:
            return tag_bytes + vr.encode("ascii") + b"\x00\x00", True
        return tag_bytes + vr.encode("ascii"), False

    def encode_element(self, elem: Any, encodings: Any) -> bytes:
        """One non-sequence element: plain ASCII text and small integers directly, the rest by pydicom
        (value representation rules, character sets)."""
        vr = elem.VR
        value = elem.value
        if vr in _ASCII_SAFE_VRS:
            if value is None:
                text = ""
            elif isinstance(value, str):
                text = value
            elif isinstance(value, (list, pydicom.multival.MultiValue)) and all(isinstance(v, str) for v in value):
                text = "\\".join(value)
            else:
                text = None
            if text is not None and text.isascii():
                data = text.encode("ascii")
                if len(data) % 2:
                    data += b"\x00" if vr == "UI" else b" "
                return self.header(elem.tag, vr, len(data)) + data
        elif vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
            return self.header(elem.tag, vr, 2) + self._u16(value)
        buffer = DicomBytesIO()
        buffer.is_little_endian = self.little
        buffer.is_implicit_VR = self.implicit
        write_data_element(buffer, elem, encodings)
        return buffer.getvalue()

    def dataset(self, ds: Dataset, encodings: Any) -> None:
        elements: Any = ds._dict
        if TAG_CHARSET in elements:
            encodings = ds._character_set
        append = self.chunks.append
        pending = self.pending
        header_of = self.header
        # sorted by the plain int: BaseTag's comparisons run in Python
        for tag in sorted(elements, key=int):
            elem = elements[tag]
            record = pending.get(id(elem)) if pending else None
            start = self.size
            if elem.is_raw:
                # raw elements are the bulk of a header: appended here without `_add` (same bookkeeping)
                value = elem.value or b""
                vr = elem.VR
                if vr is None and not self.implicit:
                    vr = fallback_vr(tag)
                if elem.length == 0xFFFFFFFF:
                    head = header_of(tag, vr, 0xFFFFFFFF)
                    append(head)
                    append(value)
                    append(self._seq_end)
                    self.size = start + len(head) + len(value) + len(self._seq_end)
                else:
                    head = header_of(tag, vr, len(value))
                    append(head)
                    append(value)
                    self.size = start + len(head) + len(value)
                    if record is not None:
                        self._place(record, start, len(head), encodings)
            elif elem.VR == "SQ":
                self._add(self.header(tag, "SQ", 0xFFFFFFFF))
                for item in elem.value or ():
                    self._add(self._item_start)
                    self.dataset(item, encodings)
                    self._add(self._item_end)
                self._add(self._seq_end)
            else:
                if len(elem.VR) != 2:  # "US or SS", "OB or OW": only in datasets built in memory
                    elem = correct_ambiguous_vr_element(elem, ds, self.little)
                encoded = self.encode_element(elem, encodings)
                self._add(encoded)
                if record is not None:
                    header = 8 if self.implicit else _explicit_header_size(elem.VR)
                    self._place(record, start, header, encodings)

    def _place(self, record: Pending, start: int, header: int, encodings: Any) -> None:
        record.offset = start
        record.size = self.size - start
        record.header = header
        record.encodings = encodings
        self.placed.append(record)


def _explicit_header_size(vr: str) -> int:
    return 12 if vr in _LONG_LENGTH_VRS else 8


def fallback_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr if len(vr) == 2 else vr[:2]


def _meta_element(tag: int, vr: str, value: bytes) -> bytes:
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_LENGTH_VRS:
        return header + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return header + struct.pack("<H", len(value)) + value


@dataclass
class Encoded:
    """A de-identified file before its pending elements are cleaned (the dataset body never deflated yet)."""

    data: bytes
    pending: list[Pending]
    implicit: bool
    little: bool
    deflate: bool
    body_offset: int


def encode_file(
    ds: Dataset,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    pending: dict[int, Pending] | None = None,
) -> Encoded:
    """The whole file: preamble, a fresh file meta group (nothing copied from the input's), the dataset."""
    meta = b"".join(
        (
            _meta_element(0x00020001, "OB", b"\x00\x01"),
            _meta_element(0x00020002, "UI", ascii_value(sop_class_uid, "UI")),
            _meta_element(0x00020003, "UI", ascii_value(sop_instance_uid, "UI")),
            _meta_element(0x00020010, "UI", ascii_value(transfer_syntax, "UI")),
            _meta_element(0x00020012, "UI", ascii_value(IMPLEMENTATION_CLASS_UID, "UI")),
            _meta_element(0x00020013, "SH", ascii_value(IMPLEMENTATION_VERSION_NAME, "SH")),
        )
    )
    head = b"\x00" * 128 + b"DICM" + _meta_element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    writer = DatasetWriter(implicit, little, pending or {}, base=len(head))
    writer.dataset(ds, ds._character_set)
    return Encoded(
        data=head + b"".join(writer.chunks),
        pending=writer.placed,
        implicit=implicit,
        little=little,
        deflate=transfer_syntax == DEFLATED_EXPLICIT_VR_LE,
        body_offset=len(head),
    )


def _deflated(data: bytes, body_offset: int) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data[body_offset:]) + compressor.flush()
    if len(body) % 2:
        body += b"\x00"
    return data[:body_offset] + body


def _cleaned_pending(record: Pending, value_bytes: bytes, cleaner: TextCleaner, writer: DatasetWriter) -> bytes | None:
    """The new bytes of a pending element (whole element for TEXT; value only if same length for PRIVATE),
    or None when cleaning changes nothing."""
    if record.kind == TEXT:
        value = record.value
        cleaned: Any = [cleaner.clean_text(v) for v in value] if isinstance(value, list) else cleaner.clean_text(value)
        if cleaned == value:
            return None
        return writer.encode_element(DataElement(record.tag, record.vr, cleaned), record.encodings)
    cleaned_bytes = cleaner.clean_private_value(value_bytes, _codecs(record.encodings))
    if cleaned_bytes == value_bytes:
        return None
    if len(cleaned_bytes) == len(value_bytes):
        return cleaned_bytes
    return writer.header(record.tag, record.vr, len(cleaned_bytes)) + cleaned_bytes


def _codecs(encodings: Any) -> tuple[str, ...]:
    """The character sets in force at a pending element, as a tuple of Python codec names."""
    if not encodings:
        return ()
    if isinstance(encodings, str):
        return (encodings,)
    return tuple(str(e) for e in encodings)


def finish_bytes(encoded: Encoded, cleaner: TextCleaner) -> bytes:
    """The final file bytes: pending elements cleaned with the study's values, then deflated if needed."""
    data = encoded.data
    writer = DatasetWriter(encoded.implicit, encoded.little, {}, 0)
    parts: list[bytes] = []
    position = 0
    records = () if text_cleaning_disabled() else encoded.pending
    for record in sorted(records, key=lambda r: r.offset):
        value_start = record.offset + record.header
        end = record.offset + record.size
        new = _cleaned_pending(record, data[value_start:end], cleaner, writer)
        if new is None:
            continue
        same_length_value = record.kind == PRIVATE and len(new) == end - value_start
        parts.append(data[position : value_start if same_length_value else record.offset])
        parts.append(new)
        position = end
    if parts:
        parts.append(data[position:])
        data = b"".join(parts)
    return _deflated(data, encoded.body_offset) if encoded.deflate else data


def finish_file(temp: Path, final: Path, stub: Encoded, cleaner: TextCleaner) -> None:
    """Clean a staged file's pending elements and move it to its final name.

    The staged file is changed in place (it sits in the run's staging folder, which is published whole
    or not at all): same-length private patches are written over their bytes; a changed text or a deflated
    body rewrites the file. `stub` is the staged file's `Encoded` without its data (offsets and encoding).
    """
    writer = DatasetWriter(stub.implicit, stub.little, {}, 0)
    patches: list[tuple[int, bytes]] = []
    rewrite = stub.deflate
    with open(temp, "r+b") as handle:
        fd = handle.fileno()
        for record in () if text_cleaning_disabled() else stub.pending:
            value_start = record.offset + record.header
            value_bytes = os.pread(fd, record.size - record.header, value_start)
            new = _cleaned_pending(record, value_bytes, cleaner, writer)
            if new is None:
                continue
            if record.kind == PRIVATE and len(new) == len(value_bytes):
                patches.append((value_start, new))
            else:
                rewrite = True
        if rewrite:
            staged = Encoded(handle.read(), stub.pending, stub.implicit, stub.little, stub.deflate, stub.body_offset)
            data = finish_bytes(staged, cleaner)
            handle.seek(0)
            handle.write(data)
            handle.truncate()
        else:
            for offset, new in patches:
                os.pwrite(fd, new, offset)
    os.replace(temp, final)


def output_transfer_syntax(ds: Dataset) -> str:
    """The input's transfer syntax, corrected when the dataset is really encoded otherwise."""
    meta = getattr(ds, "file_meta", None)
    declared = ""
    if meta is not None and 0x00020010 in meta._dict:
        declared = element_text(meta._dict[0x00020010])
    implicit, little = ds.original_encoding
    actual = IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little is not False else EXPLICIT_VR_BE)
    if declared in ("", IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE):
        return actual
    if declared == DEFLATED_EXPLICIT_VR_LE:
        return declared if not implicit else actual
    return declared if not implicit and little is not False else actual


def _safe_component(text: str, fallback: str = "x") -> str:
    cleaned = re.sub(r"[^0-9A-Za-z]", "", text)[:16]
    return cleaned or fallback


def _number_component(text: str, width: int) -> str:
    try:
        number = int(float(text.split("\\")[0]))
    except (ValueError, IndexError, OverflowError):
        return "x"
    return f"{number:0{width}d}" if number >= 0 else f"m{-number}"


# Hashes in file names are written in 16 consonants, not hex: a hex hash holds runs of digits, and across
# thousands of files some run equals another session's 5-digit study ID or accession number by chance (the
# leak gate, which searches work_dir too, rightly cannot tell). Without digits and vowels no number and no
# name can appear by chance.
_HASH_LETTERS = str.maketrans("0123456789abcdef", "bcdfghjklmnpqrst")


def _name_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length].translate(_HASH_LETTERS)


def output_relpath(ds: Dataset, new_sop_instance: str) -> str:
    """`<SeriesNumber>_<Modality>_<hash of new series UID>/<InstanceNumber>_<hash of new SOP UID>.dcm`:
    only de-identified values, read from the de-identified dataset."""
    series_uid = text_of(ds, TAG_SERIES_UID) or "no-series"
    series = "_".join(
        (
            _number_component(text_of(ds, TAG_SERIES_NUMBER), 4),
            _safe_component(text_of(ds, TAG_MODALITY)),
            _name_hash(series_uid, 10),
        )
    )
    instance = "_".join(
        (
            _number_component(text_of(ds, TAG_INSTANCE_NUMBER), 5),
            _name_hash(new_sop_instance, 16),
        )
    )
    return f"{series}/{instance}.dcm"
