"""The per-dataset de-identifier: applies the resolved action of every element (PS3.15 Annex E), keeps only
safe private elements, remaps UIDs, shifts dates and adds the de-identification attributes.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from bidsafe.deid.dates import SHIFTED_BEFORE, shift_da, shift_dt
from bidsafe.deid.elements import (
    PRIVATE,
    TAG_CHARSET,
    TEXT,
    Encoding,
    Pending,
    ascii_value,
    element_text,
    holds_items,
    lo_values,
    plain_value,
    raw_element,
    un_as_sequence,
)
from bidsafe.deid.textclean import _pack_length_prefixed_gzip, _unpack_length_prefixed_gzip
from bidsafe.deid.uids import UidMapper
from bidsafe.deid.vocabulary import Vocabulary
from bidsafe.deid.writer import DatasetWriter, fallback_vr
from bidsafe.testhooks import text_cleaning_disabled

if TYPE_CHECKING:
    from bidsafe.deid.ruleset import RuleSet


_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})

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

# UIDs that name a class or an encoding, never an instance: left alone even when not under the DICOM root
# (a vendor's private SOP class must keep naming that class).
_CLASS_UID_TAGS = frozenset(
    tag
    for tag, entry in DicomDictionary.items()
    if entry[0] == "UI" and entry[4].endswith(("ClassUID", "TransferSyntaxUID", "ClassUIDInFile"))
)


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
        self._added: dict[Encoding, dict[BaseTag, RawDataElement]] = {}
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
                value = plain_value(convert_raw_data_element(elem, encoding=ds._character_set, ds=ds).value)
        else:
            if elem.value in (None, ""):
                return
            value = plain_value(elem.value)
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
                value = plain_value(elem.value)
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
        vr: str = elem.VR
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
        vr: str = elem.VR
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

    def _dummy(self, tag: int, vr: str, elem: Any, shift_days: int | None, enc: Encoding) -> RawDataElement:
        if vr == "UI":
            original = element_text(elem) or f"bidsafe-dummy-{tag:08X}"
            return raw_element(tag, vr, ascii_value(self.uids.remap_multi(original), vr), enc.implicit, enc.little)
        if vr in ("DA", "DT"):
            shifted = self._shifted(element_text(elem), vr, shift_days)
            if shifted:
                return raw_element(tag, vr, ascii_value(shifted, vr), enc.implicit, enc.little)
        data = _DUMMY_BY_VR.get(vr, b"\x00\x00")
        return raw_element(tag, vr, data, enc.implicit, enc.little)

    def deidentify(self, ds: Dataset, *, shift_days: int | None) -> dict[int, Pending]:
        """De-identify `ds` in place: every element at every level, then the added attributes.

        Cleaning free text (C) and kept private values needs every personal value of the study, which is
        only known once all its files are read; those elements are left as they are and returned as
        pending (keyed by the element object's id) for `finish_bytes` / `finish_file` to clean once written.
        """
        implicit, little = ds.original_encoding
        enc = Encoding(bool(implicit) if implicit is not None else False, little is not False)
        pending: dict[int, Pending] = {}
        self._clean_dataset(ds, shift_days, enc, pending)
        self._add_deidentification_attributes(ds, enc)
        return pending

    def _clean_dataset(self, ds: Dataset, shift_days: int | None, enc: Encoding, pending: dict[int, Pending]) -> None:
        elements = ds._dict  # raw elements stay undecoded unless an action needs their value
        private_tags: list[Any] = []
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
            action = "K" if tag == TAG_CHARSET else self._actions.get(tag) or self.action(tag)
            if action == "X":
                del elements[key]
                continue
            self._clean_standard(ds, key, tag, action, shift_days, enc, pending)
        if private_tags:
            self._clean_private(ds, private_tags, shift_days, enc, pending)

    def _clean_standard(
        self, ds: Dataset, key: Any, tag: int, action: str, shift_days: int | None, enc: Encoding,
        pending: dict[int, Pending],
    ) -> None:
        """Apply `action` (not X) to the standard element `key` of `ds`."""
        elements: Any = ds._dict
        elem = elements[key]
        vr = self._standard_vr(tag, elem)
        if vr == "SQ" or (not elem.is_raw and elem.VR == "SQ"):
            if action == "Z":
                elements[key] = DataElement(tag, "SQ", DicomSequence())
                return
            for item in ds[key].value or ():
                self._clean_dataset(item, shift_days, enc, pending)
            return
        if action == "K" and vr not in _KEEP_NEEDS_LOOK:
            if self.vocabulary is not None and vr in _VOCABULARY_VRS and tag not in _VOCABULARY_EXEMPT:
                if not (elem.is_raw and elem.value in self._keep_clean):  # seen clean in an earlier file
                    self._vocabulary_keep(ds, key, elem, tag, vr)
            else:
                self._untouched[tag] = elem.VR
            return
        if action == "Z":
            elements[key] = raw_element(tag, vr, b"", enc.implicit, enc.little)
        elif action == "D" or (action == "C" and vr == "PN"):
            elements[key] = self._dummy(tag, vr, elem, shift_days, enc)
        elif vr == "UI":
            if action in ("U", "U*") or tag not in _CLASS_UID_TAGS:
                text = element_text(elem)
                # a class tag under U keeps whatever the DICOM root names (registered classes and
                # syntaxes, newer ones too); an instance UID under the root is remapped like any other
                new = self.uids.remap_multi(text, names_class=tag in _CLASS_UID_TAGS)
                if new != text:
                    elements[key] = raw_element(tag, vr, ascii_value(new, vr), enc.implicit, enc.little)
        elif action in ("U", "U*"):
            elements[key] = self._dummy(tag, vr, elem, shift_days, enc)  # U on a non-UID: replace
        elif vr in ("DA", "DT"):
            text = element_text(elem)
            if text:
                shifted = self._shifted(text, vr, shift_days)
                data = ascii_value(shifted, vr) if shifted else b""
                elements[key] = raw_element(tag, vr, data, enc.implicit, enc.little)
        elif action == "C" and vr in _TEXT_VRS:
            self._pend_text(ds, key, elem, tag, vr, pending)
        elif action == "C":
            self._clean_descriptor(ds, key, tag, vr, enc, pending)

    def _pend_text(self, ds: Dataset, key: Any, elem: Any, tag: int, vr: str, pending: dict[int, Pending]) -> None:
        """Free text (action C): vocabulary now, the study's harvested values in pass B (noted in `pending`)."""
        # Decoded for cleaning but left raw in the dataset: unchanged text is written as it came.
        decoded = convert_raw_data_element(elem, encoding=ds._character_set, ds=ds) if elem.is_raw else elem
        if decoded.value not in (None, ""):
            value = plain_value(decoded.value)
            if self.vocabulary is not None:
                # Vocabulary first (needs nothing from other files); the harvested values of the
                # whole study are removed in pass B from what is left.
                cleaned = self._vocabulary_text(value)
                if cleaned != value:
                    elem = ds._dict[key] = DataElement(tag, vr, cleaned)
                    value = cleaned
            pending[id(elem)] = Pending(TEXT, tag, vr, value=value)

    def _clean_descriptor(
        self, ds: Dataset, key: Any, tag: int, vr: str, enc: Encoding, pending: dict[int, Pending]
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
        standard = fallback_vr(tag)
        if vr not in _VALID_VRS or (standard != "UN" and vr != standard):
            if standard == "UN":
                del elements[key]
                return
            vr = standard
            if vr in _TEXT_VRS:
                raw: Any = elem if elem.is_raw else None
                if raw is None:
                    value: Any = elem.value
                else:
                    value = convert_raw_data_element(raw._replace(VR=vr), encoding=ds._character_set, ds=ds).value
                retyped = DataElement(tag, vr, value)
                elements[key] = retyped
                if value not in (None, ""):
                    pending[id(retyped)] = Pending(TEXT, tag, vr, value=plain_value(value))
                return
        if vr in _VALUE_SHAPES:
            text = element_text(elem)
            if all(_VALUE_SHAPES[vr].fullmatch(part.strip(" ")) for part in text.split("\\")) or not text:
                if vr != elem.VR:
                    elements[key] = raw_element(tag, vr, ascii_value(text, vr), enc.implicit, enc.little)
                return
        elements[key] = raw_element(tag, vr, _DUMMY_BY_VR.get(vr, b"\x00\x00"), enc.implicit, enc.little)

    def _clean_private(
        self,
        ds: Dataset,
        private_tags: list[int],
        shift_days: int | None,
        enc: Encoding,
        pending: dict[int, Pending],
    ) -> None:
        elements: Any = ds._dict
        creators: dict[int, str] = {}  # creator tag -> creator text
        for key in private_tags:
            if 0x10 <= key & 0xFFFF <= 0xFF:
                creators[int(key)] = element_text(elements[key]).strip()
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
            kept_creators.add(creator_tag)
            self._clean_kept_private(ds, key, tag, creators[creator_tag], shift_days, enc, pending)
        for key in private_tags:
            if key & 0xFFFF < 0x1000 and int(key) not in kept_creators:
                del elements[key]

    def _clean_kept_private(
        self, ds: Dataset, key: Any, tag: int, creator: str, shift_days: int | None, enc: Encoding,
        pending: dict[int, Pending],
    ) -> None:
        """Clean one kept private element: sequences item by item, dates shifted, UIDs remapped, text noted."""
        elements: Any = ds._dict
        elem = elements[key]
        vr = self._private_element_vr(tag, elem, creator)
        if vr == "UN" and holds_items(elem.value):
            # A private sequence whose VR the writer did not know (a PACS re-encodes Siemens XA's
            # SDS/SDI sequences as UN): read it as the sequence it is, so its items are filtered by the
            # same rules instead of being kept whole (weights, dates, UUIDs inside).
            sequence = un_as_sequence(elem) if enc.little else None
            if sequence is None:
                # items that cannot be read cannot be checked; in a big endian file the items' raw
                # little endian values could not be written back as they are read
                del elements[key]
                return
            elements[key] = sequence
            elem, vr = sequence, "SQ"
        if vr == "SQ" or (not elem.is_raw and elem.VR == "SQ"):
            for item in ds[key].value or ():
                self._clean_dataset(item, shift_days, enc, pending)
        elif vr in ("DA", "DT"):
            text = element_text(elem)
            shifted = self._shifted(text, vr, shift_days) if text else ""
            data = ascii_value(shifted, vr) if shifted else b""
            elements[key] = raw_element(tag, vr, data, enc.implicit, enc.little)
        elif vr == "UI":
            text = element_text(elem)
            new = self.uids.remap_multi(text)
            if new != text:
                elements[key] = raw_element(tag, vr, ascii_value(new, vr), enc.implicit, enc.little)
        elif vr not in _BINARY_NUMBER_VRS:
            if self.vocabulary is not None:
                elem = self._vocabulary_private(elements, key, elem, vr)
            # Cleaned as the bytes written (same length), whatever the element's decoded form.
            pending[id(elem)] = Pending(PRIVATE, tag, vr)

    def _add_deidentification_attributes(self, ds: Dataset, enc: Encoding) -> None:
        added = self._added.get(enc)
        if added is None:
            added = self._added[enc] = self._encode_added(enc)
        ds._dict.update(added)

    def _encode_added(self, enc: Encoding) -> dict[BaseTag, RawDataElement]:
        """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), LongitudinalTemporalInformationModified:
        the same in every file, so encoded once per transfer syntax."""
        method = lo_values(self.rules.method)
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
        writer = DatasetWriter(enc.implicit, enc.little, {}, 0)
        writer.dataset(codes, ["iso8859"])
        sequence = b"".join(writer.chunks)
        header = len(writer.header(0x00120064, "SQ", 0xFFFFFFFF))
        modified = "MODIFIED" if self.shift_mode else "REMOVED"
        removed = "YES" if self.rules.identity_removed else "NO"
        added = {
            BaseTag(0x00120062): raw_element(0x00120062, "CS", ascii_value(removed, "CS"), enc.implicit, enc.little),
            BaseTag(0x00120063): raw_element(
                0x00120063, "LO", ascii_value(method_text, "LO"), enc.implicit, enc.little
            ),
            # the sequence re-read from its own encoding: items with undefined length, then the delimiter
            BaseTag(0x00120064): RawDataElement(
                BaseTag(0x00120064), "SQ", 0xFFFFFFFF, sequence[header:-8], 0, enc.implicit, enc.little
            ),
            BaseTag(0x00280303): raw_element(0x00280303, "CS", ascii_value(modified, "CS"), enc.implicit, enc.little),
        }
        if not self.rules.identity_removed:
            # a rule set check-rules rejects claims no de-identification method (no Basic Profile code)
            del added[BaseTag(0x00120064)]
        return added
