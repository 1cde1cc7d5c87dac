"""Reading one input file once, and the checks that fail or skip it before any de-identification.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsafe.deid.elements import TAG_SOP_CLASS, TAG_SOP_INSTANCE, TAG_SPECTROSCOPY_DATA, element_text

# PixelData, FloatPixelData, DoubleFloatPixelData: an image needs one of them
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class NotDicom(Exception):
    """Not DICOM, or DICOM that cannot be read whole: listed with the reason, never copied."""


class Incomplete(Exception):
    """DICOM that reads, but an image without its pixels: listed as failed with the reason, never written."""


class UnsupportedCharset(Incomplete):
    """A SpecificCharacterSet term pydicom does not know: the file's text cannot be decoded, so its personal
    values could be neither harvested nor cleaned reliably (fail closed: the file fails, and a session of
    such files is withheld by the deid stage)."""


def check_charset(ds: Dataset) -> None:
    import warnings

    from pydicom.charset import convert_encodings

    value = ds.get("SpecificCharacterSet", None)
    terms = [value] if isinstance(value, str) else list(value or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_encodings([str(t) for t in terms] or [""])
    if any("Unknown encoding" in str(w.message) for w in caught):
        # the term is a defined-term lookalike, never personal: safe to name in the report
        raise UnsupportedCharset(f"unsupported character set: {' '.join(str(t) for t in terms)[:64]}")


def check_complete(ds: Dataset) -> None:
    """pydicom stops quietly at the end of a file, even inside a value or just before the pixels: refuse a
    file that was cut short."""
    elements: Any = ds._dict
    if not elements:
        raise NotDicom("unreadable DICOM: no data set after the file meta (cut short?)")
    for elem in elements.values():
        if elem.is_raw and elem.value is not None and elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
            raise NotDicom("unreadable DICOM: the file is cut short inside a value")
    if _is_image(ds) and not any(tag in elements for tag in PIXEL_DATA_TAGS):
        # A file cut just before (7FE0,0010) parses cleanly: only the missing pixels tell.
        raise Incomplete("image without pixel data (file cut short before (7FE0,0010)?)")


def _is_image(ds: Dataset) -> bool:
    """Carries the Image Pixel module's Rows and Columns, so its pixels must follow (spectroscopy, whose
    Rows/Columns describe its own data, excepted). Group 0028 precedes (7FE0,xxxx): a file cut just before
    its pixels always has them. A pixel-less stub with an image SOP class but no Rows (pydicom's DICOMDIR
    test files) is not called cut short: it never claimed to hold an image."""
    elements = ds._dict
    return 0x00280010 in elements and 0x00280011 in elements and TAG_SPECTROSCOPY_DATA not in elements


_UID_SHAPE = re.compile(r"[0-9]+(\.[0-9]+)+")


# Files up to this size are read into memory first and parsed from there: pydicom makes several small reads
# and a tell() per element, which cost ~25 % less on an in-memory buffer than on a file. A whole image file is
# read anyway (its pixels are copied out); bigger files (enhanced multi-frame) are parsed from disk, so memory
# stays near one copy of the file.
_READ_IN_MEMORY_MAX = 64 * 1024 * 1024


def _source(path: str | Path, header_only: bool) -> Any:
    if not header_only:
        try:
            info = os.stat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size <= _READ_IN_MEMORY_MAX:
                with open(path, "rb") as handle:
                    return io.BytesIO(handle.read())
        except OSError:
            pass  # pydicom names the problem below
    return path


def read_dicom(path: str | Path, *, header_only: bool = False) -> Dataset:
    """Read a DICOM file; raise NotDicom when it is not one (a raw dataset without preamble is accepted
    only when it parses and names its SOP class and instance)."""
    source = _source(path, header_only)
    try:
        return pydicom.dcmread(source, stop_before_pixels=header_only)
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - DICOM that pydicom cannot parse: unreadable, not a failure of ours
        raise NotDicom(f"unreadable DICOM: {type(exc).__name__}") from exc
    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        ds = pydicom.dcmread(source, stop_before_pixels=header_only, force=True)
        elements: Any = ds._dict
        sop_class = element_text(elements[TAG_SOP_CLASS]) if TAG_SOP_CLASS in elements else ""
        sop_instance = element_text(elements[TAG_SOP_INSTANCE]) if TAG_SOP_INSTANCE in elements else ""
    except Exception as exc:  # noqa: BLE001 - anything that does not parse is not DICOM
        raise NotDicom("not a DICOM file") from exc
    if not (_UID_SHAPE.fullmatch(sop_class) and _UID_SHAPE.fullmatch(sop_instance)):
        raise NotDicom("not a DICOM file")
    return ds
