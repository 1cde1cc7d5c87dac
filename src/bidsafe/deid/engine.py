"""The de-identification engine: apply a rule set to every DICOM file of a tree (PS3.15 Annex E).

Each file is parsed once. Pass A, per file (in parallel): read; harvest its personal values
(`bidsafe.phi`); apply the resolved action of every standard element at every nesting level; keep only
safe private elements; remap UIDs with the key; shift dates by the subject's offset; add the
de-identification attributes; write the result to a staging file under a name built only from
de-identified values. Free text (action C) and kept private values cannot be cleaned yet: they must lose
every personal value found in *any* file of the patient (every study of theirs in the run: another study may
spell the name or ID otherwise), known only once every file was read; files are grouped by `patient_key` (the
pipeline's subject, else the PatientID without separators, case or leading zeros) and `patient_pools`. Pass A
notes where those elements sit in the staged file. Pass B, per file: clean them with the patient's values (kept
private values are overwritten by same-length filler in place, so binary structures such as Siemens CSA
headers stay valid) and move the file to its final name. The output folder appears whole at the end.

Speed comes from never decoding what is kept or removed unchanged: pydicom reads elements as raw bytes,
only the elements an action changes are decoded, and the output is encoded straight from the raw bytes.
Nothing identifying is printed or logged; the report (which names input paths) is private.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import multiprocessing
import os
import re
import shutil
import stat
import struct
import sys
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from bidsafe import __version__
from bidsafe.deid.dates import SHIFTED_BEFORE, shift_da, shift_days_for, shift_dt
from bidsafe.deid.private import TextCleaner, _pack_length_prefixed_gzip, _unpack_length_prefixed_gzip
from bidsafe.deid.uids import UidMapper
from bidsafe.deid.vocabulary import Vocabulary, merge_counts, vocabulary_for
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_dir, move_dir_into_place
from bidsafe.phi import (
    PersonalValue,
    PersonalValues,
    harvest_dataset,
    id_core,
    quiet_pydicom,
)
from bidsafe.progress import Progress
from bidsafe.testhooks import text_cleaning_disabled

if TYPE_CHECKING:
    from bidsafe.deid.rules import RuleSet

# --- vocabulary -------------------------------------------------------------------------------------------

PROCESSED = "processed"
WITHHELD = "withheld"
FAILED = "failed"
NOT_DICOM = "not_dicom"
DUPLICATE = "duplicate"
STATUSES: tuple[str, ...] = (PROCESSED, WITHHELD, FAILED, NOT_DICOM, DUPLICATE)

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
# A fixed UID naming this writer in the file meta (2.25 + a UUID-derived integer: no registered root needed).
IMPLEMENTATION_CLASS_UID = "2.25.100587432469113350717338396520358221157"
IMPLEMENTATION_VERSION_NAME = f"BIDSAFE_{__version__}"[:16]

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
# VRs whose ASCII text encodes the same in every character set (PN objects and numbers go through pydicom).
_ASCII_SAFE_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
# A kept (K) element is left alone unless it is a UID (remapped) or a date (shifted), or text: keep-list text
# (SequenceName, coil names, CodeMeaning, ImageType, Modality ...) keeps only vocabulary tokens. Numbers (DS,
# IS), dates and times are not text; names (PN) are never on the keep-list.
_KEEP_NEEDS_LOOK = frozenset({"UI", "DA", "DT"})
_UNKNOWN = object()  # a cache miss, distinct from every VR (None included)
_VALID_VRS = frozenset(vr.value for vr in pydicom.valuerep.VR if len(vr.value) == 2)
# Value shapes of the numeric-string VRs (PS3.5 6.2, with their maximum lengths): a value of this shape
# holds digits, a sign, a point and an exponent only.
_VALUE_SHAPES = {
    "DS": re.compile(r"(?=.{1,16}$)[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"),
    "IS": re.compile(r"(?=.{1,12}$)[+-]?\d+"),
    "TM": re.compile(r"\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?"),  # ACR-NEMA colons too
}
_VOCABULARY_VRS = frozenset({"CS", "LO", "SH", "LT", "ST", "UC", "UT"})
_KEEP_CLEAN_MAX = 65536
_SMALL_VALUE = 256  # bytes: kept private values up to this size are cached once cleaned
_PRIVATE_CACHE_MAX = 65536
# Keep-list text the vocabulary leaves alone: the character set (its terms, e.g. "ISO 2022 IR 87", are defined
# by the standard and the decoder needs them exactly) and coded values, whose values come from a coding scheme
# (SNOMED, DCM, LOINC codes are digit runs by design) and reach no sidecar.
_VOCABULARY_EXEMPT = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080100,  # CodeValue
        0x00080102,  # CodingSchemeDesignator
        0x00080103,  # CodingSchemeVersion
        0x00080119,  # LongCodeValue
        0x00080120,  # URNCodeValue
        0x0008010F,  # ContextIdentifier
        0x0008010B,  # ContextGroupExtensionFlag
        0x00080105,  # MappingResource
    }
)
# Kept private values the vocabulary cleans as a whole (text VRs; UN/OB only when the bytes are text).
_PRIVATE_TEXT_VRS = frozenset({"CS", "LO", "SH", "LT", "ST", "UC", "UT"})
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f]")
_SIEMENS_CSA_MAGIC = b"SV10"
_ASCCONV = b"### ASCCONV BEGIN"
_BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV", "OF", "OD", "OL", "OV"})
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_DUMMY_BY_VR: dict[str, bytes] = {
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"), b"ANONYMOUS "),
    "AS": b"000Y",
    "DA": b"19000101",
    "DT": b"19000101000000",
    "TM": b"000000",
    "IS": b"0 ",
    "DS": b"0 ",
    **dict.fromkeys(("US", "SS"), b"\x00" * 2),
    **dict.fromkeys(("UL", "SL", "FL", "AT"), b"\x00" * 4),
    **dict.fromkeys(("FD", "SV", "UV"), b"\x00" * 8),
    **dict.fromkeys(("OB", "OW", "UN", "OF", "OD", "OL", "OV"), b"\x00" * 8),
}
_TAG_SOP_CLASS = 0x00080016
_TAG_SOP_INSTANCE = 0x00080018
_TAG_STUDY_UID = 0x0020000D
_TAG_SERIES_UID = 0x0020000E
_TAG_PATIENT_ID = 0x00100020
_TAG_IMAGE_TYPE = 0x00080008
_TAG_MODALITY = 0x00080060
_TAG_SERIES_NUMBER = 0x00200011
_TAG_INSTANCE_NUMBER = 0x00200013
_TAG_BURNED_IN = 0x00280301
_TAG_VISUAL_FEATURES = 0x00280302
_TAG_CHARSET = 0x00080005
_TAG_DIRECTORY_RECORDS = 0x00041220
_TAG_SPECTROSCOPY_DATA = 0x56000020
# PixelData, FloatPixelData, DoubleFloatPixelData: an image needs one of them
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)

# UIDs that name a class or an encoding, never an instance: left alone even when not under the DICOM root
# (a vendor's private SOP class must keep naming that class).
_CLASS_UID_TAGS = frozenset(
    tag
    for tag, entry in pydicom.datadict.DicomDictionary.items()
    if entry[0] == "UI" and entry[4].endswith(("ClassUID", "TransferSyntaxUID", "ClassUIDInFile"))
)


# --- report -----------------------------------------------------------------------------------------------


@dataclass
class FileEntry:
    """One input file's fate. `input` is an input path: private, never printed."""

    input: str
    status: str
    output: str | None = None  # path relative to DST, built from de-identified values only
    reason: str = ""
    series: str = ""  # SeriesNumber (kept as is by the rules): says which series lost a withheld/failed file


@dataclass
class DeidReport:
    entries: list[FileEntry]
    personal_values: PersonalValues
    key_path: Path | None = None
    rules_profile: str = ""
    # de-identified StudyInstanceUID -> token the vocabulary replaced -> count: private (tokens may be personal),
    # written to the private report so a site knows what to add to its vocabulary; never printed.
    replaced_tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    # check-rules gaps of a rule set applied anyway (allow_weaker_rules): the output is not shareable
    weaker_rules: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.entries:
            counts[entry.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when no file failed (processed, withheld, duplicate and non-DICOM files are all accounted for)."""
        return not any(entry.status == FAILED for entry in self.entries)


def write_report(report: DeidReport, path: str | Path) -> Path:
    """Write the report as JSON, 0600: it names input paths, so it belongs in the private area."""
    import json

    from bidsafe.fsutil import atomic_write_text
    from bidsafe.private import FILE_MODE, private_write_text

    payload = {
        "tool": "bidsafe deid",
        "version": __version__,
        "rules_profile": report.rules_profile,
        "key_path": str(report.key_path) if report.key_path else None,
        "counts": report.counts,
        "shareable": not report.weaker_rules,
        "weaker_rules": list(report.weaker_rules),
        "replaced_tokens": {
            study: dict(sorted(tokens.items(), key=lambda item: (-item[1], item[0])))
            for study, tokens in sorted(report.replaced_tokens.items())
        },
        "files": [
            {"input": e.input, "output": e.output, "status": e.status, "reason": e.reason, "series": e.series}
            for e in report.entries
        ],
    }
    text = json.dumps(payload, indent=1) + "\n"
    path = Path(path)
    if path.parent.is_dir():
        # An existing folder is left as it is (it may be the user's working folder); the file is 0600.
        return atomic_write_text(path, text, mode=FILE_MODE)
    return private_write_text(path, text)  # new folders are made 0700


# --- pydicom noise ----------------------------------------------------------------------------------------


# --- element helpers --------------------------------------------------------------------------------------


def _element_text(elem: Any) -> str:
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


def _ascii_value(text: str, vr: str) -> bytes:
    data = text.encode("ascii", "replace")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _raw(tag: int, vr: str, data: bytes, implicit: bool, little: bool) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, little)


@dataclass(frozen=True)
class _Encoding:
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


def _plain_value(value: Any) -> str | list[str]:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return str(value)


# --- the per-dataset de-identifier ------------------------------------------------------------------------


class Deidentifier:
    """Applies one rule set under one key; caches resolved actions and UID mappings across files."""

    def __init__(self, rules: RuleSet, key: bytes, vocabulary: Vocabulary | None = None) -> None:
        self.rules = rules
        self.key = key
        # Descriptor vocabulary (None: the test hook switched text cleaning off). Tokens it replaced, counted
        # until the caller takes them (`take_replaced`): private, they may be personal.
        self.vocabulary = None if text_cleaning_disabled() else vocabulary
        self.replaced: Counter[str] = Counter()
        self.uids = UidMapper(key)
        self._actions: dict[int, str] = dict(getattr(rules, "resolved", {}) or {})
        self._std_vr: dict[int, str] = {}
        self._safe_private: dict[tuple[str, int], frozenset[int]] = {}
        # standard tag -> the VR (as read) with which its element is kept untouched: K, no value to look at
        self._untouched: dict[int, str | None] = {}
        self._private_vr: dict[tuple[str, int], str] = {}
        self.shift_mode = rules.date_mode == "shift"
        self._added: dict[_Encoding, dict[BaseTag, RawDataElement]] = {}
        # raw ASCII keep-list values found to be vocabulary text (bounded: a header has a few hundred)
        self._keep_clean: set[bytes] = set()
        self._private_cache: dict[tuple[str, bytes], tuple[bytes, Counter[str]]] = {}

    def take_replaced(self) -> Counter[str]:
        replaced, self.replaced = self.replaced, Counter()
        return replaced

    # descriptor vocabulary
    def _vocabulary_text(self, value: Any) -> Any:
        """A decoded text value (or list of values) with every token outside the vocabulary replaced."""
        assert self.vocabulary is not None
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            return [self._vocabulary_text(v) for v in value]
        if not isinstance(value, str):
            return value
        cleaned, replaced = self.vocabulary.clean(value)
        if replaced:
            self.replaced.update(replaced)
        return cleaned

    def _vocabulary_keep(self, ds: Dataset, key: Any, elem: Any, tag: int, vr: str) -> None:
        """Keep-list text: only vocabulary tokens stay (decoded in the data set's character set if needed)."""
        if elem.is_raw:
            data = elem.value
            if not data:
                return
            if data in self._keep_clean:  # the same value in every file of a series: checked once
                return
            if data.isascii():
                text = data.decode("ascii").rstrip(" \x00")
                value: Any = text.split("\\") if "\\" in text else text
            else:
                value = _plain_value(convert_raw_data_element(elem, encoding=ds._character_set, ds=ds).value)
        else:
            if elem.value in (None, ""):
                return
            value = _plain_value(elem.value)
        cleaned = self._vocabulary_text(value)
        if cleaned != value:
            ds._dict[key] = DataElement(tag, vr, cleaned)
        elif elem.is_raw and elem.value.isascii() and len(self._keep_clean) < _KEEP_CLEAN_MAX:
            self._keep_clean.add(elem.value)

    def _vocabulary_private(self, elements: Any, key: Any, elem: Any, vr: str) -> Any:
        """A kept private value with the vocabulary applied (same length, except GE's compressed block, which
        is cleaned inside and re-packed); returns the element now in the data set."""
        assert self.vocabulary is not None
        if not elem.is_raw:  # built in memory (or decoded): text cleaned as text, bytes as bytes
            if isinstance(elem.value, bytes) and elem.value:
                new = self._vocabulary_private_bytes(elem.value, vr)
                if new != elem.value:
                    elem.value = new
            elif isinstance(elem.value, (str, list, pydicom.multival.MultiValue)) and vr in _PRIVATE_TEXT_VRS:
                value = _plain_value(elem.value)
                cleaned = (
                    [self._same_length_text(v) for v in value]
                    if isinstance(value, list)
                    else self._same_length_text(value)
                )
                if cleaned != value:
                    elem.value = cleaned
            return elem
        data = elem.value
        if not data:
            return elem
        new = self._vocabulary_private_bytes(data, vr)
        if new is data or new == data:
            return elem
        replacement = elem._replace(value=new, length=len(new))
        elements[key] = replacement
        return replacement

    def _same_length_text(self, text: str) -> str:
        assert self.vocabulary is not None
        cleaned, replaced = self.vocabulary.clean_value_bytes(text.encode("utf-8"))
        self.replaced.update(replaced)
        return cleaned.decode("utf-8", "replace")

    def _vocabulary_private_bytes(self, data: bytes, vr: str) -> bytes:
        # Kept private values repeat in every file of a series (codes, numbers, sequence names): each distinct
        # small value is cleaned once; the replaced tokens are still counted per file for the report.
        if len(data) <= _SMALL_VALUE and (vr, data) in self._private_cache:
            cleaned, replaced = self._private_cache[(vr, data)]
            if replaced:
                self.replaced.update(replaced)
            return cleaned
        before = Counter(self.replaced)
        cleaned = self._vocabulary_private_bytes_uncached(data, vr)
        if len(data) <= _SMALL_VALUE and len(self._private_cache) < _PRIVATE_CACHE_MAX:
            self._private_cache[(vr, data)] = (cleaned, self.replaced - before)
        return cleaned

    def _vocabulary_private_bytes_uncached(self, data: bytes, vr: str) -> bytes:
        assert self.vocabulary is not None
        vocabulary = self.vocabulary
        unpacked = _unpack_length_prefixed_gzip(data)
        if unpacked is not None:  # GE protocol block: `KEY "value"` lines, the values cleaned
            cleaned, replaced = vocabulary.clean_quoted(unpacked)
            self.replaced.update(replaced)
            return data if cleaned == unpacked else _pack_length_prefixed_gzip(cleaned)
        if data.startswith(_SIEMENS_CSA_MAGIC) or _ASCCONV in data:
            # Siemens CSA header: binary items around a text protocol; only its quoted string values are text
            # a person may have typed (tProtocolName, tSequenceFileName, coil IDs, XProtocol values).
            cleaned, replaced = vocabulary.clean_quoted(data)
        elif vr in _PRIVATE_TEXT_VRS or (vr in ("UN", "OB") and not _CONTROL_BYTES.search(data.rstrip(b"\x00 "))):
            cleaned, replaced = vocabulary.clean_value_bytes(data)
        else:
            return data
        self.replaced.update(replaced)
        return cleaned

    # rules, cached
    def action(self, tag: int) -> str:
        action = self._actions.get(tag)
        if action is None:
            action = self.rules.resolved_action_for(tag)
            self._actions[tag] = action
        return action

    def _standard_vr(self, tag: int, elem: Any) -> str:
        vr = elem.VR
        if vr and vr != "UN" and len(vr) == 2:
            return vr
        known = self._std_vr.get(tag)
        if known is None:
            try:
                known = dictionary_VR(tag)
            except KeyError:
                known = vr or "UN"
            self._std_vr[tag] = known
        return known if len(known) == 2 else (vr or known[:2])

    def _kept_offsets(self, creator: str, group: int) -> frozenset[int]:
        """The element offsets the rules keep in a private block of `creator` in `group` (asked once per
        block kind: a header holds thousands of private elements, most of them in blocks that keep nothing)."""
        block_key = (creator, group)
        offsets = self._safe_private.get(block_key)
        if offsets is None:
            offsets = frozenset(o for o in range(0x100) if self.rules.is_safe_private(creator, group, o))
            self._safe_private[block_key] = offsets
        return offsets

    def _private_element_vr(self, tag: int, elem: Any, creator: str) -> str:
        vr = elem.VR
        if vr and vr != "UN" and len(vr) == 2:
            return vr
        cache_key = (creator, tag & 0xFFFF00FF)
        known = self._private_vr.get(cache_key)
        if known is None:
            try:
                known = private_dictionary_VR(tag, creator)
            except KeyError:
                known = "UN"
            if len(known) != 2:
                known = "UN"
            self._private_vr[cache_key] = known
        return known

    # values
    def _shifted(self, text: str, vr: str, shift_days: int | None) -> str | None:
        if shift_days is None:
            return None
        # A real date that would not land before SHIFTED_BEFORE (later than dates.REAL_UNTIL) is not written.
        if vr == "DA":
            return shift_da(text, shift_days, SHIFTED_BEFORE)
        return shift_dt(text, shift_days, SHIFTED_BEFORE)

    def _dummy(self, tag: int, vr: str, elem: Any, shift_days: int | None, enc: _Encoding) -> RawDataElement:
        if vr == "UI":
            original = _element_text(elem) or f"bidsafe-dummy-{tag:08X}"
            return _raw(tag, vr, _ascii_value(self.uids.remap_multi(original), vr), enc.implicit, enc.little)
        if vr in ("DA", "DT"):
            shifted = self._shifted(_element_text(elem), vr, shift_days)
            if shifted:
                return _raw(tag, vr, _ascii_value(shifted, vr), enc.implicit, enc.little)
        data = _DUMMY_BY_VR.get(vr, b"\x00\x00")
        return _raw(tag, vr, data, enc.implicit, enc.little)

    def deidentify(self, ds: Dataset, *, shift_days: int | None) -> dict[int, Pending]:
        """De-identify `ds` in place: every element at every level, then the added attributes.

        Cleaning free text (C) and kept private values needs every personal value of the study, which is
        only known once all its files are read; those elements are left as they are and returned as
        pending (keyed by the element object's id) for `finish_bytes` / `finish_file` to clean once written.
        """
        implicit, little = ds.original_encoding
        enc = _Encoding(bool(implicit) if implicit is not None else False, little is not False)
        pending: dict[int, Pending] = {}
        self._clean_dataset(ds, shift_days, enc, pending)
        self._add_deidentification_attributes(ds, enc)
        return pending

    def _clean_dataset(self, ds: Dataset, shift_days: int | None, enc: _Encoding, pending: dict[int, Pending]) -> None:
        elements = ds._dict  # raw elements stay undecoded unless an action needs their value
        private_tags: list[Any] = []
        charset: Any = None
        # `key` is pydicom's BaseTag (dict operations on `elements` by identity); `tag` the plain int for our
        # own tables (a BaseTag lookup would run its Python-level __eq__).
        untouched = self._untouched
        for key in list(elements):
            tag = int(key)
            if untouched.get(tag, _UNKNOWN) == elements[key].VR:
                continue  # kept as it is (decided by tag and VR the first time: most of a header)
            if tag >> 16 & 1:
                private_tags.append(key)
                continue
            if not tag & 0xFFFF or tag >> 16 in (0x0000, 0x0002):
                # group lengths go stale once elements go (and are retired); command and file meta elements
                # do not belong in a stored data set (the file meta is rebuilt by `encode_file`)
                del elements[key]
                continue
            action = "K" if tag == _TAG_CHARSET else self._actions.get(tag) or self.action(tag)
            if action == "X":
                del elements[key]
                continue
            elem = elements[key]
            vr = self._standard_vr(tag, elem)
            if vr == "SQ" or (not elem.is_raw and elem.VR == "SQ"):
                if action == "Z":
                    elements[key] = DataElement(tag, "SQ", DicomSequence())
                    continue
                for item in ds[key].value or ():
                    self._clean_dataset(item, shift_days, enc, pending)
                continue
            if action == "K" and vr not in _KEEP_NEEDS_LOOK:
                if self.vocabulary is not None and vr in _VOCABULARY_VRS and tag not in _VOCABULARY_EXEMPT:
                    if not (elem.is_raw and elem.value in self._keep_clean):  # seen clean in an earlier file
                        self._vocabulary_keep(ds, key, elem, tag, vr)
                else:
                    untouched[tag] = elem.VR
                continue
            if action == "Z":
                elements[key] = _raw(tag, vr, b"", enc.implicit, enc.little)
            elif action == "D" or (action == "C" and vr == "PN"):
                elements[key] = self._dummy(tag, vr, elem, shift_days, enc)
            elif vr == "UI":
                if action in ("U", "U*") or tag not in _CLASS_UID_TAGS:
                    text = _element_text(elem)
                    # a class tag under U keeps whatever the DICOM root names (registered classes and
                    # syntaxes, newer ones too); an instance UID under the root is remapped like any other
                    new = self.uids.remap_multi(text, names_class=tag in _CLASS_UID_TAGS)
                    if new != text:
                        elements[key] = _raw(tag, vr, _ascii_value(new, vr), enc.implicit, enc.little)
            elif action in ("U", "U*"):
                elements[key] = self._dummy(tag, vr, elem, shift_days, enc)  # U on a non-UID: replace
            elif vr in ("DA", "DT"):
                text = _element_text(elem)
                if text:
                    shifted = self._shifted(text, vr, shift_days)
                    data = _ascii_value(shifted, vr) if shifted else b""
                    elements[key] = _raw(tag, vr, data, enc.implicit, enc.little)
            elif action == "C" and vr in _TEXT_VRS:
                if elem.is_raw:
                    # Decoded for cleaning but left raw in the dataset: unchanged text is written as it came.
                    if charset is None:
                        charset = ds._character_set
                    decoded = convert_raw_data_element(elem, encoding=charset, ds=ds)
                else:
                    decoded = elem
                if decoded.value not in (None, ""):
                    value = _plain_value(decoded.value)
                    if self.vocabulary is not None:
                        # Vocabulary first (needs nothing from other files); the harvested values of the
                        # whole study are removed in pass B from what is left.
                        cleaned = self._vocabulary_text(value)
                        if cleaned != value:
                            elem = elements[key] = DataElement(tag, vr, cleaned)
                            value = cleaned
                    pending[id(elem)] = Pending(TEXT, tag, vr, value=value)
            elif action == "C":
                self._clean_descriptor(ds, key, tag, vr, enc, pending)
        if private_tags:
            self._clean_private(ds, private_tags, shift_days, enc, pending)

    def _clean_descriptor(
        self, ds: Dataset, key: Any, tag: int, vr: str, enc: _Encoding, pending: dict[int, Pending]
    ) -> None:
        """C (clean) on an element whose VR is not a text VR, or not a VR at all.

        Nothing may pass uninspected: a VR the file declares but the standard does not define, or a numeric
        or binary VR where the standard defines text, cannot be trusted, so the element is re-typed to its
        dictionary VR (never propagated). Text is then cleaned as text; a DS/IS/TM value is kept only when
        every value is a well-formed number or time of its VR (digits, sign, point, exponent: no room for a
        name) and otherwise becomes the VR's dummy; binary values cannot be inspected and become the dummy;
        an element with no dictionary VR is removed.
        """
        elements = ds._dict
        elem = elements[key]
        standard = _fallback_vr(tag)
        if vr not in _VALID_VRS or (standard != "UN" and vr != standard):
            if standard == "UN":
                del elements[key]
                return
            vr = standard
            if vr in _TEXT_VRS:
                raw = elem if elem.is_raw else None
                if raw is None:
                    value: Any = elem.value
                else:
                    value = convert_raw_data_element(raw._replace(VR=vr), encoding=ds._character_set, ds=ds).value
                retyped = DataElement(tag, vr, value)
                elements[key] = retyped
                if value not in (None, ""):
                    pending[id(retyped)] = Pending(TEXT, tag, vr, value=_plain_value(value))
                return
        if vr in _VALUE_SHAPES:
            text = _element_text(elem)
            if all(_VALUE_SHAPES[vr].fullmatch(part.strip(" ")) for part in text.split("\\")) or not text:
                if vr != elem.VR:
                    elements[key] = _raw(tag, vr, _ascii_value(text, vr), enc.implicit, enc.little)
                return
        elements[key] = _raw(tag, vr, _DUMMY_BY_VR.get(vr, b"\x00\x00"), enc.implicit, enc.little)

    def _clean_private(
        self,
        ds: Dataset,
        private_tags: list[int],
        shift_days: int | None,
        enc: _Encoding,
        pending: dict[int, Pending],
    ) -> None:
        elements = ds._dict
        creators: dict[int, str] = {}  # creator tag -> creator text
        for key in private_tags:
            if 0x10 <= key & 0xFFFF <= 0xFF:
                creators[int(key)] = _element_text(elements[key]).strip()
        kept_creators: set[int] = set()
        kept_in_block: dict[int, frozenset[int]] = {}  # creator tag -> offsets kept in its block
        for key in private_tags:
            tag = int(key)
            element = tag & 0xFFFF
            if element < 0x1000:
                continue  # creators decided below; (gggg,0000-000F) are never kept
            creator_tag = (tag & 0xFFFF0000) | (element >> 8)
            kept = kept_in_block.get(creator_tag)
            if kept is None:
                creator = creators.get(creator_tag)
                kept = kept_in_block[creator_tag] = self._kept_offsets(creator, tag >> 16) if creator else frozenset()
            if element & 0xFF not in kept:
                del elements[key]
                continue
            creator = creators[creator_tag]
            kept_creators.add(creator_tag)
            elem = elements[key]
            vr = self._private_element_vr(tag, elem, creator)
            if vr == "UN" and _holds_items(elem.value):
                # A private sequence whose VR the writer did not know (a PACS re-encodes Siemens XA's
                # SDS/SDI sequences as UN): read it as the sequence it is, so its items are filtered by the
                # same rules instead of being kept whole (weights, dates, UUIDs inside).
                sequence = _un_as_sequence(elem) if enc.little else None
                if sequence is None:
                    # items that cannot be read cannot be checked; in a big endian file the items' raw
                    # little endian values could not be written back as they are read
                    del elements[key]
                    continue
                elements[key] = sequence
                elem, vr = sequence, "SQ"
            if vr == "SQ" or (not elem.is_raw and elem.VR == "SQ"):
                for item in ds[key].value or ():
                    self._clean_dataset(item, shift_days, enc, pending)
            elif vr in ("DA", "DT"):
                text = _element_text(elem)
                shifted = self._shifted(text, vr, shift_days) if text else ""
                data = _ascii_value(shifted, vr) if shifted else b""
                elements[key] = _raw(tag, vr, data, enc.implicit, enc.little)
            elif vr == "UI":
                text = _element_text(elem)
                new = self.uids.remap_multi(text)
                if new != text:
                    elements[key] = _raw(tag, vr, _ascii_value(new, vr), enc.implicit, enc.little)
            elif vr not in _BINARY_NUMBER_VRS:
                if self.vocabulary is not None:
                    elem = self._vocabulary_private(elements, key, elem, vr)
                # Cleaned as the bytes written (same length), whatever the element's decoded form.
                pending[id(elem)] = Pending(PRIVATE, tag, vr)
        for key in private_tags:
            if key & 0xFFFF < 0x1000 and int(key) not in kept_creators:
                del elements[key]

    def _add_deidentification_attributes(self, ds: Dataset, enc: _Encoding) -> None:
        added = self._added.get(enc)
        if added is None:
            added = self._added[enc] = self._encode_added(enc)
        ds._dict.update(added)

    def _encode_added(self, enc: _Encoding) -> dict[BaseTag, RawDataElement]:
        """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), LongitudinalTemporalInformationModified:
        the same in every file, so encoded once per transfer syntax."""
        method = _lo_values(self.rules.method)
        method_text = "\\".join(method) if isinstance(method, list) else method
        codes = Dataset()
        items = []
        for value, meaning in self.rules.codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning[:64]
            items.append(item)
        codes.DeidentificationMethodCodeSequence = items
        writer = _Writer(enc.implicit, enc.little, {}, 0)
        writer.dataset(codes, ["iso8859"])
        sequence = b"".join(writer.chunks)
        header = len(writer.header(0x00120064, "SQ", 0xFFFFFFFF))
        modified = "MODIFIED" if self.shift_mode else "REMOVED"
        removed = "YES" if self.rules.identity_removed else "NO"
        added = {
            BaseTag(0x00120062): _raw(0x00120062, "CS", _ascii_value(removed, "CS"), enc.implicit, enc.little),
            BaseTag(0x00120063): _raw(0x00120063, "LO", _ascii_value(method_text, "LO"), enc.implicit, enc.little),
            # the sequence re-read from its own encoding: items with undefined length, then the delimiter
            BaseTag(0x00120064): RawDataElement(
                BaseTag(0x00120064), "SQ", 0xFFFFFFFF, sequence[header:-8], 0, enc.implicit, enc.little
            ),
            BaseTag(0x00280303): _raw(0x00280303, "CS", _ascii_value(modified, "CS"), enc.implicit, enc.little),
        }
        if not self.rules.identity_removed:
            # a rule set check-rules rejects claims no de-identification method (no Basic Profile code)
            del added[BaseTag(0x00120064)]
        return added


_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: an item starts here


def _holds_items(value: object) -> bool:
    """True when an unknown (UN) value is the body of a sequence: it starts with an item tag."""
    return isinstance(value, bytes) and len(value) >= 8 and value[:4] == _ITEM_TAG_LE


def _un_as_sequence(elem: Any) -> DataElement | None:
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


def _lo_values(text: str) -> str | list[str]:
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


# --- burned-in text ---------------------------------------------------------------------------------------


# SOP classes by exact UID (PS3.4 B.5): a prefix test on ".7" would also take the VL family (".77.x").
SECONDARY_CAPTURE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
})
ULTRASOUND_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (Retired)
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (Retired)
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.6.3",  # Photoacoustic Image (acquired with an ultrasound probe and display)
})
ULTRASOUND_MODALITIES = frozenset({"US", "IVUS"})
VISIBLE_LIGHT_PREFIX = "1.2.840.10008.5.1.4.1.1.77."  # VL endoscopic, microscopic, photographic, ophthalmic ...
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# ImageType values (spaces and underscores dropped) naming a picture of a screen or of a report: consoles write
# "SCREEN SAVE" or "SCREENSAVE"; GE writes "DOSE_INFO" on dose screens; Siemens and Philips "...REPORT" values.
_SCREEN_SAVE_TYPES = frozenset({"SCREENSAVE"})
_REPORT_TYPES = frozenset({"DOSEINFO", "DOSEREPORT", "REPORT"})

_TAG_PHOTOMETRIC = 0x00280004
_TAG_ROWS = 0x00280010
_TAG_IMAGE_POSITION = 0x00200032
_TAG_IMAGE_ORIENTATION = 0x00200037
_TAG_SHARED_GROUPS = 0x52009229
_TAG_PER_FRAME_GROUPS = 0x52009230
_TAG_PLANE_POSITION_SEQ = 0x00209113
_TAG_PLANE_ORIENTATION_SEQ = 0x00209116
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def burned_in_findings(ds: Dataset) -> list[tuple[str, str]]:
    """Every burned-in class (see BURNED_IN_CLASSES) the file belongs to, each with why: [(class, reason)].

    Classes are judged independently, so allowing one class (rule file) never lets through an image that
    another class withholds. Pixel classes (colour, no_geometry) apply to images only (Rows or pixel data
    present): spectroscopy and vendor non-image objects have no pixels to carry text.
    """
    elements = ds._dict

    def text(tag: int) -> str:
        elem = elements.get(tag)
        return _element_text(elem).upper() if elem is not None else ""

    sop_class = _sop_class(ds)
    modality = text(_TAG_MODALITY)
    image_type = {part.strip().replace(" ", "").replace("_", "") for part in text(_TAG_IMAGE_TYPE).split("\\")}
    found: list[tuple[str, str]] = []
    if text(_TAG_BURNED_IN) == "YES":
        found.append(("burned_in_annotation", "BurnedInAnnotation is YES: text burned into the pixels"))
    if text(_TAG_VISUAL_FEATURES) == "YES":
        found.append(("recognizable_visual_features", "RecognizableVisualFeatures is YES: the pixels may show a face"))
    if sop_class in ULTRASOUND_SOP_CLASSES or modality in ULTRASOUND_MODALITIES:
        found.append(("ultrasound", "ultrasound: the scanner burns patient and exam text into the image"))
    if sop_class.startswith(VISIBLE_LIGHT_PREFIX):
        found.append(("visible_light", "visible-light SOP class: a photograph may show a face or a label"))
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        found.append(("secondary_capture", "Secondary Capture SOP class: a screenshot may carry burned-in text"))
    elif "SECONDARY" in image_type and modality in ("OT", "SC"):
        found.append(("secondary_capture", "ImageType SECONDARY with Modality OT/SC: a derived picture may carry "
                      "burned-in text"))
    if image_type & _SCREEN_SAVE_TYPES:
        found.append(("screen_save", "ImageType SCREEN SAVE: a screenshot may carry burned-in text"))
    if image_type & _REPORT_TYPES or any(part.endswith("REPORT") for part in image_type):
        found.append(("report", "ImageType names a report or dose screen: a picture of text"))
    if _TAG_ROWS in elements or any(tag in elements for tag in _PIXEL_TAGS):
        photometric = text(_TAG_PHOTOMETRIC)
        if photometric not in MONOCHROME:
            found.append(("colour", f"PhotometricInterpretation {photometric or 'absent'}: not a monochrome scan, "
                          "a colour picture may carry burned-in text"))
        if not has_patient_geometry(ds):
            found.append(("no_geometry", "no ImagePositionPatient/ImageOrientationPatient (top level or functional "
                          "groups): not a slice of a volume, a screen capture may carry burned-in text"))
    return found


def _sop_class(ds: Dataset) -> str:
    sop_class = _text_of(ds, _TAG_SOP_CLASS)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None and 0x00020002 in meta._dict:
        sop_class = _element_text(meta._dict[0x00020002])
    return sop_class.strip()


def has_patient_geometry(ds: Dataset) -> bool:
    """Position and orientation in the patient, at the top level or in the functional groups (enhanced MR:
    orientation usually shared, position per frame). The first per-frame item is enough: a frame that has them
    places the image in the patient."""
    elements = ds._dict
    position = _TAG_IMAGE_POSITION in elements
    orientation = _TAG_IMAGE_ORIENTATION in elements
    if position and orientation:
        return True
    for groups_tag in (_TAG_SHARED_GROUPS, _TAG_PER_FRAME_GROUPS):
        groups = elements.get(groups_tag)
        items = ds[groups_tag].value if groups is not None else None
        if not items:
            continue
        first = items[0]
        position = position or _in_sequence(first, _TAG_PLANE_POSITION_SEQ, _TAG_IMAGE_POSITION)
        orientation = orientation or _in_sequence(first, _TAG_PLANE_ORIENTATION_SEQ, _TAG_IMAGE_ORIENTATION)
    return position and orientation


def _in_sequence(item: Dataset, sequence_tag: int, tag: int) -> bool:
    if sequence_tag not in item._dict:
        return False
    inner = item[sequence_tag].value
    return bool(inner) and tag in inner[0]._dict and bool(_element_text(inner[0][tag]))


def withhold_reason(ds: Dataset, allow: Iterable[str] = ()) -> str | None:
    """Why a file must not be released as is (burned-in text, a face, a screenshot), or None.

    `allow` names burned-in classes the rule file allows (each with a reason there); a DICOMDIR is never
    allowed (it lists patients and holds no image).
    """
    sop_class = _sop_class(ds).upper()
    if sop_class == MEDIA_DIRECTORY_SOP_CLASS or _TAG_DIRECTORY_RECORDS in ds._dict:
        return "DICOMDIR: a media directory (lists patients), not an image"
    allowed = set(allow)
    for name, reason in burned_in_findings(ds):
        if name not in allowed:
            return f"{reason} [burned_in class {name}]"
    return None


# --- writing ----------------------------------------------------------------------------------------------


# tag -> (VR, header bytes before the length, whether the length takes four bytes), per (implicit, little):
# shared by every writer of the process, since the same tags recur in every file.
_HEADER_PREFIXES: dict[tuple[bool, bool], dict[int, tuple[str | None, bytes, bool]]] = {}


class _Writer:
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
        elements = ds._dict
        if _TAG_CHARSET in elements:
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
                    vr = _fallback_vr(tag)
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


def _fallback_vr(tag: int) -> str:
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
            _meta_element(0x00020002, "UI", _ascii_value(sop_class_uid, "UI")),
            _meta_element(0x00020003, "UI", _ascii_value(sop_instance_uid, "UI")),
            _meta_element(0x00020010, "UI", _ascii_value(transfer_syntax, "UI")),
            _meta_element(0x00020012, "UI", _ascii_value(IMPLEMENTATION_CLASS_UID, "UI")),
            _meta_element(0x00020013, "SH", _ascii_value(IMPLEMENTATION_VERSION_NAME, "SH")),
        )
    )
    head = b"\x00" * 128 + b"DICM" + _meta_element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    writer = _Writer(implicit, little, pending or {}, base=len(head))
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


def _cleaned_pending(record: Pending, value_bytes: bytes, cleaner: TextCleaner, writer: _Writer) -> bytes | None:
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
    writer = _Writer(encoded.implicit, encoded.little, {}, 0)
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
    writer = _Writer(stub.implicit, stub.little, {}, 0)
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


def _output_transfer_syntax(ds: Dataset) -> str:
    """The input's transfer syntax, corrected when the dataset is really encoded otherwise."""
    meta = getattr(ds, "file_meta", None)
    declared = ""
    if meta is not None and 0x00020010 in meta._dict:
        declared = _element_text(meta._dict[0x00020010])
    implicit, little = ds.original_encoding
    actual = IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little is not False else EXPLICIT_VR_BE)
    if declared in ("", IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE):
        return actual
    if declared == DEFLATED_EXPLICIT_VR_LE:
        return declared if not implicit else actual
    return declared if not implicit and little is not False else actual


# --- reading ----------------------------------------------------------------------------------------------


class _NotDicom(Exception):
    """Not DICOM, or DICOM that cannot be read whole: listed with the reason, never copied."""


class _Incomplete(Exception):
    """DICOM that reads, but an image without its pixels: listed as failed with the reason, never written."""


class _UnsupportedCharset(_Incomplete):
    """A SpecificCharacterSet term pydicom does not know: the file's text cannot be decoded, so its personal
    values could be neither harvested nor cleaned reliably (fail closed: the file fails, and a session of
    such files is withheld by the deid stage)."""


def _check_charset(ds: Dataset) -> None:
    import warnings

    from pydicom.charset import convert_encodings

    value = ds.get("SpecificCharacterSet", None)
    terms = [value] if isinstance(value, str) else list(value or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_encodings([str(t) for t in terms] or [""])
    if any("Unknown encoding" in str(w.message) for w in caught):
        # the term is a defined-term lookalike, never personal: safe to name in the report
        raise _UnsupportedCharset(f"unsupported character set: {' '.join(str(t) for t in terms)[:64]}")


def _check_complete(ds: Dataset) -> None:
    """pydicom stops quietly at the end of a file, even inside a value or just before the pixels: refuse a
    file that was cut short."""
    elements = ds._dict
    if not elements:
        raise _NotDicom("unreadable DICOM: no data set after the file meta (cut short?)")
    for elem in elements.values():
        if elem.is_raw and elem.value is not None and elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
            raise _NotDicom("unreadable DICOM: the file is cut short inside a value")
    if _is_image(ds) and not any(tag in elements for tag in _PIXEL_DATA_TAGS):
        # A file cut just before (7FE0,0010) parses cleanly: only the missing pixels tell.
        raise _Incomplete("image without pixel data (file cut short before (7FE0,0010)?)")


def _is_image(ds: Dataset) -> bool:
    """Carries the Image Pixel module's Rows and Columns, so its pixels must follow (spectroscopy, whose
    Rows/Columns describe its own data, excepted). Group 0028 precedes (7FE0,xxxx): a file cut just before
    its pixels always has them. A pixel-less stub with an image SOP class but no Rows (pydicom's DICOMDIR
    test files) is not called cut short: it never claimed to hold an image."""
    elements = ds._dict
    return 0x00280010 in elements and 0x00280011 in elements and _TAG_SPECTROSCOPY_DATA not in elements


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
    """Read a DICOM file; raise _NotDicom when it is not one (a raw dataset without preamble is accepted
    only when it parses and names its SOP class and instance)."""
    source = _source(path, header_only)
    try:
        return pydicom.dcmread(source, stop_before_pixels=header_only)
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - DICOM that pydicom cannot parse: unreadable, not a failure of ours
        raise _NotDicom(f"unreadable DICOM: {type(exc).__name__}") from exc
    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        ds = pydicom.dcmread(source, stop_before_pixels=header_only, force=True)
        sop_class = _element_text(ds._dict[_TAG_SOP_CLASS]) if _TAG_SOP_CLASS in ds._dict else ""
        sop_instance = _element_text(ds._dict[_TAG_SOP_INSTANCE]) if _TAG_SOP_INSTANCE in ds._dict else ""
    except Exception as exc:  # noqa: BLE001 - anything that does not parse is not DICOM
        raise _NotDicom("not a DICOM file") from exc
    if not (_UID_SHAPE.fullmatch(sop_class) and _UID_SHAPE.fullmatch(sop_instance)):
        raise _NotDicom("not a DICOM file")
    return ds


# --- one dataset, in memory -------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A de-identified dataset encoded, before its study-dependent cleaning."""

    encoded: Encoded
    relpath: str
    sop_instance_uid: str


def _text_of(ds: Dataset, tag: int) -> str:
    elem = ds._dict.get(tag)
    return _element_text(elem) if elem is not None else ""


def _prepare(deidentifier: Deidentifier, ds: Dataset, shift_days: int | None, source: Path | None = None) -> _Prepared:
    """De-identify and encode `ds` (everything except the study-dependent cleaning).

    An instance named nowhere (no SOPInstanceUID, empty file meta) is named after the bytes of its
    `source` file, through the key like any UID: the same file always gets the same new UID.
    """
    meta = getattr(ds, "file_meta", None)
    meta_elements = meta._dict if meta is not None else {}
    original_sop = _text_of(ds, _TAG_SOP_INSTANCE)
    if not original_sop and 0x00020003 in meta_elements:
        original_sop = _element_text(meta_elements[0x00020003])
    if not original_sop and source is not None:
        original_sop = "bidsafe-unnamed-instance-" + hashlib.sha256(source.read_bytes()).hexdigest()
    if not original_sop:
        raise BidsafeError("no SOPInstanceUID: cannot name the de-identified instance")
    sop_class = _text_of(ds, _TAG_SOP_CLASS)
    if not sop_class and 0x00020002 in meta_elements:
        sop_class = _element_text(meta_elements[0x00020002])
    transfer_syntax = _output_transfer_syntax(ds)
    pending = deidentifier.deidentify(ds, shift_days=shift_days)
    new_sop = _text_of(ds, _TAG_SOP_INSTANCE) or deidentifier.uids.remap(original_sop)
    # SOP Common is Type 1: an instance named only by its file meta gets its (new) UIDs in the data set too
    implicit, little = ds.original_encoding
    implicit, little = bool(implicit), little is not False
    if _TAG_SOP_INSTANCE not in ds._dict:
        ds._dict[BaseTag(_TAG_SOP_INSTANCE)] = _raw(
            _TAG_SOP_INSTANCE, "UI", _ascii_value(new_sop, "UI"), implicit, little
        )
    if _TAG_SOP_CLASS not in ds._dict and sop_class:
        ds._dict[BaseTag(_TAG_SOP_CLASS)] = _raw(_TAG_SOP_CLASS, "UI", _ascii_value(sop_class, "UI"), implicit, little)
    relpath = _output_relpath(ds, new_sop)
    return _Prepared(encode_file(ds, sop_class, new_sop, transfer_syntax, pending), relpath, new_sop)


def deidentify_dataset(
    ds: Dataset,
    *,
    rules: RuleSet,
    key: bytes,
    shift_days: int | None,
    values: Iterable[PersonalValue] = (),
    vocabulary: Vocabulary | None = None,
) -> Dataset:
    """De-identify one dataset exactly as `deidentify_tree` does a file, and return the result read back.

    `ds` is changed in place on the way (do not reuse it). `values` are the study's personal values;
    `vocabulary` the descriptor vocabulary (default: the shipped one).
    """
    data = deidentify_bytes(ds, rules=rules, key=key, shift_days=shift_days, values=values, vocabulary=vocabulary)
    with quiet_pydicom():
        return pydicom.dcmread(DicomBytesIO(data))


def deidentify_bytes(
    ds: Dataset,
    *,
    rules: RuleSet,
    key: bytes,
    shift_days: int | None,
    values: Iterable[PersonalValue] = (),
    vocabulary: Vocabulary | None = None,
) -> bytes:
    """Like `deidentify_dataset`, but the file's bytes."""
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    with quiet_pydicom():
        prepared = _prepare(Deidentifier(rules, key, vocabulary), ds, shift_days)
        return finish_bytes(prepared.encoded, TextCleaner(values, vocabulary))


# --- output names -----------------------------------------------------------------------------------------


def _safe_component(text: str, fallback: str = "x") -> str:
    cleaned = re.sub(r"[^0-9A-Za-z]", "", text)[:16]
    return cleaned or fallback


def _number_component(text: str, width: int) -> str:
    try:
        number = int(float(text.split("\\")[0]))
    except (ValueError, IndexError, OverflowError):
        return "x"
    return f"{number:0{width}d}" if number >= 0 else f"m{-number}"


def _output_relpath(ds: Dataset, new_sop_instance: str) -> str:
    """`<SeriesNumber>_<Modality>_<hash of new series UID>/<InstanceNumber>_<hash of new SOP UID>.dcm`:
    only de-identified values, read from the de-identified dataset."""
    series_uid = _text_of(ds, _TAG_SERIES_UID) or "no-series"
    series = "_".join(
        (
            _number_component(_text_of(ds, _TAG_SERIES_NUMBER), 4),
            _safe_component(_text_of(ds, _TAG_MODALITY)),
            hashlib.sha256(series_uid.encode()).hexdigest()[:10],
        )
    )
    instance = "_".join(
        (
            _number_component(_text_of(ds, _TAG_INSTANCE_NUMBER), 5),
            hashlib.sha256(new_sop_instance.encode()).hexdigest()[:16],
        )
    )
    return f"{series}/{instance}.dcm"


# --- the two passes over files ----------------------------------------------------------------------------


@dataclass
class _Staged:
    """Pass A's result for one file: harvest, and the staged de-identified file awaiting its cleaning."""

    index: int
    status: str
    study: str = ""
    values: frozenset[PersonalValue] = frozenset()
    patient: str = ""
    output: str | None = None
    temp: str | None = None
    stub: Encoded | None = None
    reason: str = ""
    series: str = ""
    shift: int | None = None  # the date shift applied (one per study: see `_one_shift_per_study`)
    replaced: dict[str, int] | None = None  # vocabulary tokens replaced in this file (private)
    deid_study: str = ""  # the de-identified StudyInstanceUID


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


class _StageWorker:
    """Pass A in one process: read once, harvest, de-identify, write a staged file."""

    def __init__(
        self, rules: RuleSet, key: bytes, subject_key: str | None, temp_root: Path, vocabulary: Vocabulary
    ) -> None:
        self.deidentifier = Deidentifier(rules, key, vocabulary)
        self.rules = rules
        self.key = key
        self.subject_key = subject_key
        self.temp_root = temp_root
        self._count = 0
        self._sent: dict[str, set[PersonalValue]] = {}

    def run(self, index: int, path: str, shift_override: int | None = None) -> _Staged:
        values: frozenset[PersonalValue] = frozenset()
        study = series = patient = ""
        try:
            with quiet_pydicom():
                ds = read_dicom(path)
                series = _text_of(ds, _TAG_SERIES_NUMBER)
                _check_complete(ds)
                study = _text_of(ds, _TAG_STUDY_UID)
                _check_charset(ds)
                patient = patient_key(_text_of(ds, _TAG_PATIENT_ID), self.subject_key)
                harvested = set(harvest_dataset(ds, private_identity=True))
                if getattr(ds, "file_meta", None) is not None:
                    harvested.update(harvest_dataset(ds.file_meta, prefix="meta>"))
                # Only values this process has not reported for this study yet: a study repeats the same
                # values in every file, and shipping them back once per file costs more than finding them.
                sent = self._sent.setdefault(study, set())
                values = frozenset(harvested - sent)
                sent.update(values)
                reason = withhold_reason(ds, self.rules.burned_in)
                if reason is not None:
                    return _Staged(index, WITHHELD, study, values, patient, reason=reason, series=series)
                if self.subject_key is not None:
                    subject = self.subject_key
                else:
                    subject = shift_subject_key(_text_of(ds, _TAG_PATIENT_ID))
                shift_days = study_shift_days(self.rules, self.key, subject)
                if shift_override is not None and shift_days is not None:
                    shift_days = shift_override
                self.deidentifier.take_replaced()  # nothing of an earlier, failed file
                prepared = _prepare(self.deidentifier, ds, shift_days, source=Path(path))
                replaced = dict(self.deidentifier.take_replaced())
                deid_study = _text_of(ds, _TAG_STUDY_UID)  # remapped: names the study in the private report
        except _NotDicom as exc:
            return _Staged(index, NOT_DICOM, reason=str(exc))
        except _Incomplete as exc:
            return _Staged(index, FAILED, study, values, reason=str(exc), series=series)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            return _Staged(
                index, FAILED, study, values, patient, reason=f"{type(exc).__name__}: {_short(exc)}", series=series
            )
        self._count += 1
        temp = self.temp_root / f"{os.getpid()}-{self._count}.tmp"
        temp.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as handle:
            handle.write(prepared.encoded.data)
        encoded = prepared.encoded
        stub = Encoded(b"", encoded.pending, encoded.implicit, encoded.little, encoded.deflate, encoded.body_offset)
        return _Staged(
            index, PROCESSED, study, values, patient, prepared.relpath, str(temp), stub, series=series,
            shift=shift_days, replaced=replaced, deid_study=deid_study,
        )


class _FinishWorker:
    """Pass B in one process: clean pending elements with the patient's values, move to the final name.

    `studies` maps a pool (see `patient_pools`) to its values; each file names its pool."""

    def __init__(self, studies: dict[str, tuple[PersonalValue, ...]], staging: Path, vocabulary: Vocabulary) -> None:
        self.studies = studies
        self.staging = staging
        self.vocabulary = vocabulary
        self._cleaners: dict[str, TextCleaner] = {}

    def cleaner_for(self, study: str) -> TextCleaner:
        cleaner = self._cleaners.get(study)
        if cleaner is None:
            cleaner = TextCleaner(self.studies.get(study, ()), self.vocabulary)
            self._cleaners[study] = cleaner
        return cleaner

    def run(self, index: int, temp: str, output: str, study: str, stub: Encoded) -> tuple[int, str, str]:
        try:
            final = self.staging / output
            final.parent.mkdir(parents=True, exist_ok=True)
            with quiet_pydicom():
                finish_file(Path(temp), final, stub, self.cleaner_for(study))
        except Exception as exc:  # noqa: BLE001
            Path(temp).unlink(missing_ok=True)
            return index, FAILED, f"{type(exc).__name__}: {_short(exc)}"
        return index, PROCESSED, ""


_STAGE_WORKER: _StageWorker | None = None
_FINISH_WORKER: _FinishWorker | None = None


def _init_stage(rules: RuleSet, key: bytes, subject_key: str | None, temp_root: Path, vocabulary: Vocabulary) -> None:
    global _STAGE_WORKER
    _STAGE_WORKER = _StageWorker(rules, key, subject_key, temp_root, vocabulary)


def _init_finish(studies: dict[str, tuple[PersonalValue, ...]], staging: Path, vocabulary: Vocabulary) -> None:
    global _FINISH_WORKER
    _FINISH_WORKER = _FinishWorker(studies, staging, vocabulary)


def _stage_task(task: tuple[int, str] | tuple[int, str, int | None]) -> _Staged:
    assert _STAGE_WORKER is not None
    return _STAGE_WORKER.run(*task)


def _finish_task(task: tuple[int, str, str, str, Encoded]) -> tuple[int, str, str]:
    assert _FINISH_WORKER is not None
    return _FINISH_WORKER.run(*task)


def _run_tasks(
    function: Callable[[Any], Any],
    tasks: list[Any],
    jobs: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> Iterator[Any]:
    """Results in task order; in this process for one job, else a process pool fed in chunks."""
    if jobs <= 1 or len(tasks) <= 1:
        initializer(*initargs)
        for task in tasks:
            yield function(task)
        return
    chunk = max(1, min(32, len(tasks) // (jobs * 8)))
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(jobs, initializer=initializer, initargs=initargs) as pool:
        yield from pool.imap(function, tasks, chunksize=chunk)


# --- the tree ---------------------------------------------------------------------------------------------


def _list_files(src: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file():
                found.append(path)
    return found


def shift_subject_key(patient_id: str) -> str:
    """The subject key of the date shift when no pseudonym is given: the PatientID as compared, not as
    typed (Unicode NFKC, case folded, separators and blanks dropped, leading zeros dropped), so that
    `0012345`, `12345` and ` 12345` shift alike."""
    folded = unicodedata.normalize("NFKC", patient_id).casefold()
    return "".join(c for c in folded if c.isalnum()).lstrip("0")


def _one_shift_per_study(
    results: list[_Staged], paths: Sequence[Path], jobs: int, stage_args: tuple[Any, ...]
) -> list[_Staged]:
    """One date shift per study and run: the study's first file (in input order) decides for every file of
    the study. Files whose PatientID normalises differently from it (a rare, malformed export) are staged
    again with that shift, so a study or series never carries two shifts; in the common case nothing is
    redone."""
    decided: dict[str, int | None] = {}
    for result in results:
        if result.status == PROCESSED:
            decided.setdefault(result.study, result.shift)
    redo = [r for r in results if r.status == PROCESSED and r.shift != decided[r.study]]
    if not redo:
        return results
    for result in redo:
        Path(result.temp or "").unlink(missing_ok=True)
    tasks = [(r.index, str(paths[r.index]), decided[r.study]) for r in redo]
    rules, key, subject_key, temp_root, vocabulary = stage_args
    again_args = (rules, key, subject_key, Path(temp_root) / "again", vocabulary)  # new workers: names of their own
    again = {r.index: r for r in _run_tasks(_stage_task, tasks, jobs, _init_stage, again_args)}
    return [again.get(r.index, r) for r in results]
def patient_key(patient_id: str, subject: str | None = None) -> str:
    """The key under which a file's harvested values are pooled: the pipeline's subject when given (it has
    already told its participants apart), else the PatientID compared without separators, case or leading
    zeros ("PID 0012-345678" and "pid12345678" are one patient); empty when neither is known."""
    if subject is not None:
        return f"subject:{subject}"
    core = id_core(patient_id)
    return f"id:{core}" if core else ""


def patient_pools(studies: Iterable[str], patients: dict[str, set[str]]) -> dict[str, str]:
    """Study -> pool: studies sharing a patient key are one pool, and a study whose files carry two keys (one
    patient, two spellings) joins both; a study with no key is a pool of its own. Pools are named by their
    smallest study UID, so the grouping does not depend on file order."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for study in studies:
        root(f"study:{study}")
        for key in patients.get(study, ()):
            a, b = root(f"study:{study}"), root(f"patient:{key}")
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for node in list(parent):
        if node.startswith("study:"):
            members.setdefault(root(node), []).append(node[len("study:"):])
    return {study: min(group) for group in members.values() for study in group}


def study_shift_days(rules: RuleSet, key: bytes, subject: str) -> int | None:
    """The per-subject shift in days (None when dates are removed instead)."""
    if rules.date_mode != "shift":
        return None
    return shift_days_for(key, subject, int(rules.max_shift_days))


def deidentify_tree(
    src: Path,
    dst: Path,
    *,
    rules: RuleSet | None = None,
    key: bytes,
    jobs: int = 1,
    files: Sequence[Path] | None = None,
    subject_key: str | None = None,
    report: Path | None = None,
    progress: bool = False,
    vocabulary: Vocabulary | None = None,
    pooled: Iterable[PersonalValue] = (),
    scratch: Path | None = None,
) -> DeidReport:
    """De-identify every file under `src` (or `files`) into the new folder `dst` (which appears whole).

    `dst` must not exist or be an empty folder; it must not overlap `src`. `subject_key` (the subject's
    pseudonym) sets the date shift; default: each file's PatientID as `shift_subject_key` normalises it,
    with one shift per study (its first file decides, see `_one_shift_per_study`). Returns the report; writes
    it (private, 0600) to `report` when given. `vocabulary`: the descriptor vocabulary (default: shipped).
    `pooled`: values of the same patient harvested elsewhere (the pipeline passes those of the subject's other
    sessions), removed from this tree's text too: another visit's spelling of a name must not survive here.
    `scratch`: the folder to build the tree in (default: a temporary sibling of `dst`). Files there still hold
    text not yet cleaned of the harvested values, so the pipeline passes a private folder; only the finished
    tree is moved to `dst` (a rename, or a copy into a sibling of `dst` then a rename across file systems).
    """
    src = Path(src)
    dst = Path(dst)
    if rules is None:
        from bidsafe.deid.rules import load_rules

        rules = load_rules()
    _check_tree_arguments(src, dst, jobs)
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    paths = _list_files(src) if files is None else [Path(p) if Path(p).is_absolute() else src / p for p in files]
    entries = [FileEntry(input=str(p), status=FAILED, reason="not processed") for p in paths]
    meter = Progress("bidsafe deid: de-identifying", len(paths), enabled=progress)
    studies: dict[str, set[PersonalValue]] = {}
    replaced: dict[str, dict[str, int]] = {}  # de-identified study UID -> vocabulary token -> count
    patients: dict[str, set[str]] = {}
    with _staging_dir(dst, scratch) as staging, _fewer_collections():
        temp_root = staging / ".bidsafe-staging"
        # Pass A: read each file once; harvest; de-identify; stage.
        staged: list[_Staged] = []
        claimed: set[str] = set()
        tasks = [(i, str(p)) for i, p in enumerate(paths)]
        stage_args = (rules, key, subject_key, temp_root, vocabulary)
        results: list[_Staged] = []
        for done, result in enumerate(_run_tasks(_stage_task, tasks, jobs, _init_stage, stage_args), 1):
            meter.update(done)
            results.append(result)
        results = _one_shift_per_study(results, paths, jobs, stage_args)
        for result in results:
            if result.values:
                studies.setdefault(result.study, set()).update(result.values)
            if result.replaced:
                merge_counts(replaced.setdefault(result.deid_study, {}), result.replaced)
            if result.patient:
                patients.setdefault(result.study, set()).add(result.patient)
            path = str(paths[result.index])
            if result.status != PROCESSED:
                entries[result.index] = FileEntry(path, result.status, reason=result.reason, series=result.series)
                continue
            if result.output in claimed:  # same de-identified name: same SOPInstanceUID
                Path(result.temp or "").unlink(missing_ok=True)
                entries[result.index] = FileEntry(
                    path,
                    DUPLICATE,
                    output=result.output,
                    reason="same SOPInstanceUID as an earlier file; the earlier one was kept",
                    series=result.series,
                )
                continue
            claimed.add(result.output or "")
            staged.append(result)
        # Pass B: clean free text and kept private text with every value of the patient (all their studies).
        pool_of = patient_pools(set(studies) | {s.study for s in staged}, patients)
        elsewhere = frozenset(pooled)
        pools: dict[str, set[PersonalValue]] = {}
        for study, values in studies.items():
            pools.setdefault(pool_of[study], set(elsewhere)).update(values)
        for study in {s.study for s in staged}:
            pools.setdefault(pool_of[study], set(elsewhere))
        contexts = {pool: tuple(sorted(values)) for pool, values in pools.items()}
        finish = [(s.index, s.temp, s.output, pool_of[s.study], s.stub) for s in staged]
        outputs = {s.index: s.output for s in staged}
        series_of = {s.index: s.series for s in staged}
        meter.done()
        meter = Progress("bidsafe deid: cleaning text", len(finish), enabled=progress)
        for done, (index, status, reason) in enumerate(
            _run_tasks(_finish_task, finish, jobs, _init_finish, (contexts, staging, vocabulary)), 1
        ):
            meter.update(done)
            output = outputs[index] if status == PROCESSED else None
            entries[index] = FileEntry(str(paths[index]), status, output=output, reason=reason, series=series_of[index])
        shutil.rmtree(temp_root, ignore_errors=True)
    meter.done()
    all_values = PersonalValues(v for values in studies.values() for v in values)
    result_report = DeidReport(
        entries, all_values, rules_profile=getattr(rules, "profile", ""), replaced_tokens=replaced
    )
    if report is not None:
        write_report(result_report, report)
    return result_report


# Python's cyclic collector runs after every 700 new container objects by default; reading a header makes tens
# of thousands (a Dataset per sequence item), so it ran ~3000 times over the corpus and took 7 % of `bidsafe
# deid`. Every file's objects are dropped once it is written, so collecting less often keeps memory flat.
_GC_THRESHOLD_DURING_DEID = 10_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the collector less often while files are processed (pool workers forked inside inherit it)."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], _GC_THRESHOLD_DURING_DEID), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextlib.contextmanager
def _staging_dir(dst: Path, scratch: Path | None) -> Iterator[Path]:
    """Where `deidentify_tree` builds `dst`: a temporary sibling (`atomic_dir`), or a new folder under `scratch`
    moved to `dst` once finished; removed on error either way."""
    if scratch is None:
        with atomic_dir(dst) as staging:
            yield staging
        return
    import tempfile

    Path(scratch).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"deid-{dst.name}-", dir=scratch))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_dir_into_place(staging, dst)


def _check_tree_arguments(src: Path, dst: Path, jobs: int) -> None:
    if not src.is_dir():
        raise ConfigError("SRC does not exist or is not a folder")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    src_resolved, dst_resolved = src.resolve(), dst.resolve()
    if dst_resolved == src_resolved or dst_resolved.is_relative_to(src_resolved):
        raise ConfigError("DST must not be inside SRC (the raw input is never written to)")
    if src_resolved.is_relative_to(dst_resolved):
        raise ConfigError("SRC must not be inside DST")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError("DST exists and is not an empty folder; bidsafe deid only writes a new folder")


# --- command line -----------------------------------------------------------------------------------------


def cli_key(args: argparse.Namespace) -> tuple[Path, bytes, bool]:
    """(path, key, created) by `bidsafe.keys.resolve_key_path`, the rule the pipeline follows: --key FILE (must
    exist), else the pipeline's PRIVATE_DIR/secret.key from --private-dir or --configfile (created there, under
    the pipeline's linkage lock, only when no linkage table depends on an old key), else refused."""
    from bidsafe.keys import load_key, load_or_create_key, resolve_key_path

    key_path = resolve_key_path(getattr(args, "key", None), getattr(args, "private_dir", None),
                                getattr(args, "configfile", None))
    if getattr(args, "key", None):
        if not key_path.exists():
            raise ConfigError("--key: the key file does not exist (refusing to create one silently)")
        return key_path, load_key(key_path), False
    from bidsafe.pseudonym import LINKAGE_FILENAME, linkage_lock

    private_dir = key_path.parent
    with linkage_lock(private_dir):
        created = not key_path.exists()
        key = load_or_create_key(key_path, dependents=[private_dir / LINKAGE_FILENAME])
    return key_path, key, created


def cli_main(args: argparse.Namespace) -> int:
    from bidsafe.deid.rules import default_rules_path, load_rules, require_checked_rules, weakened
    from bidsafe.progress import info, progress_enabled

    src, dst = Path(args.src), Path(args.dst)
    jobs = int(args.jobs) if getattr(args, "jobs", None) is not None else 1
    _check_tree_arguments(src, dst, jobs)
    rules_path = Path(args.rules) if args.rules else default_rules_path()
    # the check `bidsafe check-rules` runs, before anything is written: a rejected set stops here
    gaps = require_checked_rules(rules_path, allow_weaker=bool(getattr(args, "allow_weaker_rules", False)))
    rules = load_rules(rules_path)
    if gaps:
        rules = weakened(rules)
        print(
            f"bidsafe deid: WARNING: {rules_path}: {len(gaps)} gap(s) against PS3.15 Table E.1-1 (see `bidsafe "
            "check-rules`); applied because of --allow-weaker-rules: the output is NOT de-identified and not "
            "shareable (PatientIdentityRemoved NO)",
            file=sys.stderr,
        )
    vocabulary = vocabulary_for(getattr(args, "vocabulary", None) or ())
    key_path, key, created = cli_key(args)
    info(f"bidsafe deid: secret key {'created at' if created else 'read from'} {key_path}")
    report = deidentify_tree(
        src, dst, rules=rules, key=key, jobs=jobs, progress=progress_enabled(), vocabulary=vocabulary
    )
    report.key_path = key_path
    report.weaker_rules = tuple(gaps)
    if args.report:
        write_report(report, Path(args.report))
    counts = report.counts
    info(
        "bidsafe deid: "
        + ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES)
        + (" (reasons in the report)" if args.report and (counts[FAILED] or counts[WITHHELD]) else "")
    )
    return 0 if report.ok else 1


__all__ = [
    "DeidReport",
    "Deidentifier",
    "FileEntry",
    "cli_main",
    "deidentify_dataset",
    "deidentify_tree",
    "encode_file",
    "withhold_reason",
    "write_report",
]
