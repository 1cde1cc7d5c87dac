"""One inbox file's header read (never its pixels) into an index row, or the reason it is quarantined."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from bidsafe.ingest.records import (
    REASON_DICOMDIR,
    REASON_EMPTY,
    REASON_NO_FILE_META,
    REASON_NO_SERIES,
    REASON_NO_SOP,
    REASON_NO_STUDY,
    REASON_NON_IMAGE,
    REASON_NOT_DICOM,
    REASON_TRUNCATED,
    IndexRow,
)
from bidsafe.phi import quiet_pydicom

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# The header attributes the index keeps. PatientID is personal data: it is here so the pseudonymise stage
# can link sessions of one person; the index therefore lives in the private area only.
HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "SeriesNumber",
    "Modality",
    "SOPClassUID",
)

# Pixel data elements that end a header-only read, and value representations with a 4-byte length.
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM_TAG = 0xFFFEE000
_SEQ_DELIMITER_TAG = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF


class Unusable(Exception):
    """This file goes to quarantine with the given reason (a fixed phrase, never a value from the file)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TrackedFile:
    """A read-only file that notices a read returning fewer bytes than asked for: the file was cut off.

    pydicom stops quietly at the end of a file, even inside a value. The one clean ending is an 8-byte
    element header read that returns nothing. The name is a placeholder so that nothing pydicom might
    print names the patient's folder.
    """

    name = "<inbox file>"

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.cut_short = False

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(size)
        if size is not None and size > 0 and len(data) < size and not (size == 8 and not data):
            self.cut_short = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def read_header(path: str | Path, relpath: str, size: int, mtime_ns: int) -> IndexRow:
    """Read one file's header (never its pixels) into an index row, or raise Unusable with the reason."""
    if size == 0:
        raise Unusable(REASON_EMPTY)
    try:
        with open(path, "rb") as raw, quiet_pydicom():
            fp = _TrackedFile(raw)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
            except InvalidDicomError:
                fp.seek(0)
                raise Unusable(
                    REASON_NO_FILE_META if _looks_like_raw_dataset(fp.read(8)) else REASON_NOT_DICOM
                ) from None
            media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
            if media_class == DICOMDIR_SOP_CLASS:
                raise Unusable(REASON_DICOMDIR)
            values = {kw: _text(ds.get(kw)) for kw in HEADER_KEYWORDS}
            sop_class = values["SOPClassUID"] or media_class
            transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
            # Pixels first: a file cut inside its header also lacks the attributes checked below, and
            # "truncated" is the true reason then.
            if transfer_syntax != DeflatedExplicitVRLittleEndian:
                # Deflated files are inflated whole in memory by pydicom, so the offset check cannot apply;
                # the inflate itself fails on a truncated stream.
                implicit_vr, little_endian = ds.original_encoding
                _check_pixel_data(fp, size, bool(implicit_vr), little_endian is not False, sop_class)
    except Unusable:
        raise
    except OSError as exc:
        raise Unusable(f"{REASON_TRUNCATED}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of arbitrary inbox junk means "unreadable"
        # The exception's kind names the failure; its message may quote header bytes, so it is dropped.
        raise Unusable(f"{REASON_TRUNCATED}: {_failure_kind(exc)}") from None
    if not values["StudyInstanceUID"]:
        raise Unusable(REASON_NO_STUDY)
    if not values["SeriesInstanceUID"]:
        raise Unusable(REASON_NO_SERIES)
    if not values["SOPInstanceUID"]:
        raise Unusable(REASON_NO_SOP)
    return IndexRow(
        relpath=relpath,
        size=size,
        mtime_ns=mtime_ns,
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_uid=values["SOPInstanceUID"],
        patient_id=values["PatientID"],
        study_date=values["StudyDate"],
        study_time=values["StudyTime"],
        series_number=values["SeriesNumber"],
        modality=values["Modality"],
        sop_class_uid=values["SOPClassUID"],
    )


def _check_pixel_data(fp: _TrackedFile, size: int, implicit_vr: bool, little_endian: bool, sop_class: str) -> None:
    """After a header-only read `fp` sits on the pixel data element (or at the end): check it is whole."""
    start = fp.tell()
    cut_in_header = fp.cut_short
    head = fp._raw.read(12)  # untracked: a short read here is judged below
    endian = "<" if little_endian else ">"
    if len(head) < 8 or _tag(head[:4], endian) not in _PIXEL_TAGS:
        # No pixel data: an object without an image, or a file cut inside its header (a short read, or a
        # cut exactly between two elements of an image, whose storage class promises pixel data).
        if cut_in_header or (sop_class and "Image Storage" in UID(sop_class).name):
            raise Unusable(f"{REASON_TRUNCATED}: file ends before the pixel data")
        raise Unusable(REASON_NON_IMAGE)
    if implicit_vr:
        (length,) = struct.unpack(f"{endian}I", head[4:8])
        value_start = start + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise Unusable(f"{REASON_TRUNCATED}: file ends inside the pixel data element")
        (length,) = struct.unpack(f"{endian}I", head[8:12])
        value_start = start + 12
    else:
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        value_start = start + 8
    if length == _UNDEFINED_LENGTH:
        _check_encapsulated(fp, value_start, size)
    elif value_start + length > size:
        raise Unusable(f"{REASON_TRUNCATED}: pixel data runs past the end of the file")


def _check_encapsulated(fp: _TrackedFile, position: int, size: int) -> None:
    """Walk the fragment items of compressed pixel data (seeks only) up to the sequence delimiter."""
    while True:
        if position + 8 > size:
            raise Unusable(f"{REASON_TRUNCATED}: compressed pixel data ends before its delimiter")
        fp.seek(position)
        head = fp.read(8)
        tag, (length,) = _tag(head[:4], "<"), struct.unpack("<I", head[4:8])
        if tag == _SEQ_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG or length == _UNDEFINED_LENGTH:
            raise Unusable(f"{REASON_TRUNCATED}: malformed compressed pixel data")
        position += 8 + length
        if position > size:
            raise Unusable(f"{REASON_TRUNCATED}: compressed pixel data runs past the end of the file")


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "unexpected end of file"
    if isinstance(exc, struct.error):
        return "malformed data element"
    if isinstance(exc, UnicodeError):
        return "undecodable text"
    return type(exc).__name__


def _tag(raw: bytes, endian: str) -> int:
    """A tag is stored as two 16-bit halves (group, element) in the data set's byte order."""
    group, element = struct.unpack(f"{endian}HH", raw)
    return int(group) << 16 | int(element)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without 'DICM' starts like a bare data set (group 0008 little endian)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return bool(group == 0x0008 and element < 0x0100)


def _text(element_value: object) -> str:
    """A header value as one clean line of text (TSV-safe; multi-values joined with a backslash)."""
    if element_value is None:
        return ""
    if isinstance(element_value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in element_value)
    else:
        text = str(element_value)
    return " ".join(text.replace("\x00", " ").split())
