"""What counts as personal data: the one vocabulary used by de-identification, scrub and the leak scan.

Harvest every personal value a raw DICOM file carries (names, IDs, dates, addresses, phone numbers,
institutions, device identity, identifying free text, instance UIDs), whatever the VR it was stored with, then
search for each value the ways people write it (`PersonalValues.find` / `redact`, and the byte cleaner in
`bidsafe.deid.private`): names transliterated and in any script, dates in every common written form, IDs
without separators or leading zeros, each with edge rules that keep ordinary words intact. `renderings()` keeps
the classic short list of forms (pseudonym checks). This is the cleaner's matching: the leak gate must build its
own. Values never leave the private area: nothing here prints them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# Standard attributes whose values identify a person, a visit, a place or a device, by category.
# PN attributes are harvested whatever their keyword (see `harvest_dataset`).
IDENTITY_KEYWORDS: dict[str, str] = {
    # who
    "PatientID": "id",
    "OtherPatientIDs": "id",
    "IssuerOfPatientID": "id",
    "PatientBirthName": "name",
    "PatientMotherBirthName": "name",
    "ResponsiblePerson": "name",
    "ResponsibleOrganization": "institution",
    "PatientInsurancePlanCodeSequence": "id",
    "MedicalRecordLocator": "id",
    "MilitaryRank": "free_text",
    "BranchOfService": "free_text",
    "Occupation": "free_text",
    "CountryOfResidence": "address",
    "RegionOfResidence": "address",
    "PatientAddress": "address",
    "PatientTelephoneNumbers": "phone",
    "PatientTelecomInformation": "phone",
    "PersonAddress": "address",
    "PersonTelephoneNumbers": "phone",
    "PersonTelecomInformation": "phone",
    # when (dates that pin a person or a visit)
    "PatientBirthDate": "date",
    "PatientBirthTime": "time",
    "StudyDate": "date",
    "SeriesDate": "date",
    "AcquisitionDate": "date",
    "ContentDate": "date",
    # visit and order identifiers
    "AccessionNumber": "id",
    "StudyID": "id",
    "AdmissionID": "id",
    "RequestedProcedureID": "id",
    "ScheduledProcedureStepID": "id",
    "PerformedProcedureStepID": "id",
    "FillerOrderNumberImagingServiceRequest": "id",
    "PlacerOrderNumberImagingServiceRequest": "id",
    "ServiceEpisodeID": "id",
    "VisitComments": "free_text",
    # free text written about the patient
    "PatientComments": "free_text",
    "AdditionalPatientHistory": "free_text",
    "MedicalAlerts": "free_text",
    "Allergies": "free_text",
    "PatientState": "free_text",
    "ImageComments": "free_text",
    "StudyComments": "free_text",
    "InterpretationText": "free_text",
    "ReasonForTheRequestedProcedure": "free_text",
    "RequestedProcedureComments": "free_text",
    # where
    "InstitutionName": "institution",
    "InstitutionAddress": "address",
    "InstitutionalDepartmentName": "institution",
    # device identity
    "StationName": "device",
    "DeviceSerialNumber": "device",
    "DeviceUID": "uid",
}

# Instance UIDs are identifying too: an original UID found in a release links it back to the source archive.
# Registered UIDs (SOP classes, transfer syntaxes) start with the DICOM root and are never personal.
DICOM_ROOT_UID = "1.2.840.10008."

# Needles shorter than this are not scanned for or cleaned: two letters match everywhere by chance.
MIN_NEEDLE_LENGTH = 3

# Values that say "nothing here": not personal, present in every dataset, never searched for or cleaned.
PLACEHOLDERS = frozenset(
    {
        "none", "null", "nil", "n/a", "na", "unknown", "anonymous", "anonymized", "anonymised", "anon",
        "removed", "deidentified", "de-identified", "not available", "not applicable", "empty", "blank",
        "redacted", "nobody", "patient", "research", "test", "phantom", "yes", "no",
    }
)

_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d-%m-%Y", "%d %b %Y")
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]+")


@dataclass(frozen=True, order=True)
class PersonalValue:
    """One personal value and where it was found (`field` is a keyword path, safe to print; `value` is not)."""

    category: str
    field: str
    value: str

    def renderings(self) -> set[str]:
        """The forms in which this value may appear elsewhere, lower-cased, at least MIN_NEEDLE_LENGTH long."""
        forms = _RENDERERS.get(self.category, _render_plain)(self.value)
        lowered = {f.lower() for f in forms if len(f.strip()) >= MIN_NEEDLE_LENGTH}
        return {f for f in lowered if f.strip() not in PLACEHOLDERS}


def _render_plain(value: str) -> set[str]:
    value = value.strip()
    squashed = _NON_ALNUM.sub("", value)
    return {value, squashed} if len(squashed) >= MIN_NEEDLE_LENGTH + 1 else {value}


def _render_name(value: str) -> set[str]:
    """A PN value: every given/family/middle component, and the common orderings and joinings."""
    forms: set[str] = set()
    for group in value.split("="):  # alphabetic, ideographic, phonetic groups
        parts = group.split("^")
        components = [c.strip() for c in parts[:3] if c.strip()]  # family, given, middle (not prefix/suffix)
        words = [w for c in components for w in re.split(r"[\s,.'-]+", c) if w]
        forms.update(words)
        if len(components) >= 2:
            family, given = components[0], components[1]
            for a, b in ((family, given), (given, family)):
                forms.update({f"{a} {b}", f"{a}{b}", f"{a}_{b}", f"{a}^{b}", f"{a}, {b}", f"{a}.{b}"})
        if group.strip():
            forms.add(group.strip())
    return forms


def _render_date(value: str) -> set[str]:
    value = value.strip()
    forms = {value}
    parsed = _parse_date(value)
    if parsed is not None:
        forms.update(parsed.strftime(fmt) for fmt in _DATE_FORMATS)
    return forms


def _render_phone(value: str) -> set[str]:
    forms = {value.strip()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 6:
        forms.add(digits)
    return forms


def _render_address(value: str) -> set[str]:
    forms = {value.strip()}
    for part in re.split(r"[\^,;\n]+", value):
        part = part.strip()
        if len(part) >= 5:
            forms.add(part)
    return forms


_RENDERERS = {
    "name": _render_name,
    "date": _render_date,
    "phone": _render_phone,
    "address": _render_address,
}


def _parse_date(value: str) -> date | None:
    digits = value.strip()[:8]
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def _values_of(element_value: object) -> Iterator[str]:
    """Plain strings of an element's value (multi-valued elements give one string each)."""
    if element_value is None:
        return
    if isinstance(element_value, (bytes, bytearray)):  # a text attribute stored as OB/UN: its bytes are text
        yield from _private_text(element_value)
        return
    if isinstance(element_value, (list, tuple, pydicom.multival.MultiValue)):
        for item in element_value:
            yield from _values_of(item)
        return
    text = str(element_value).strip()
    if text:
        yield text


def harvest_dataset(ds: Dataset, prefix: str = "", *, private_identity: bool = False) -> set[PersonalValue]:
    """Every personal value in `ds`, at every nesting level, including identity text in private elements.

    With `private_identity`, the strings of private blocks near identity data are taken too, in the same walk
    (what `harvest_private_identity` gives; one walk instead of two matters for headers with thousands of items).
    """
    found: set[PersonalValue] = set()
    _harvest_into(ds, prefix, found, private_identity)
    return found


# Tags of IDENTITY_KEYWORDS, and the dictionary VR of standard tags, so harvesting can skip elements that
# cannot be personal without decoding them (decoding every element of a header costs more than reading it).
_IDENTITY_TAGS = frozenset(
    tag for tag in (pydicom.datadict.tag_for_keyword(k) for k in IDENTITY_KEYWORDS) if tag is not None
)
_STANDARD_VR: dict[int, str] = {}


def _resolved_vr(tag: int, vr: str | None) -> str | None:
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


# Standard attributes defined as PN: names whatever VR a file gave them (a PatientName stored as LO or UN).
_PN_TAGS = frozenset(tag for tag, entry in pydicom.datadict.DicomDictionary.items() if entry[0] == "PN")
_NAMED_OR_IDENTITY_TAGS = _IDENTITY_TAGS | _PN_TAGS


def _is_pn_tag(tag: int) -> bool:
    return tag in _PN_TAGS


def _may_be_personal(tag: int, vr: str | None) -> bool:
    """False only when the element certainly yields nothing in `_harvest_into` (checked before decoding)."""
    if tag in _NAMED_OR_IDENTITY_TAGS:
        return True
    resolved = _resolved_vr(tag, vr)
    if resolved is None:
        return True
    return resolved in ("SQ", "PN") or (resolved == "UI" and not tag >> 16 & 1)


_KEYWORDS: dict[int, str] = {}


def _keyword(tag: int) -> str:
    keyword = _KEYWORDS.get(tag)
    if keyword is None:
        keyword = _KEYWORDS[tag] = pydicom.datadict.keyword_for_tag(tag)
    return keyword


# Single-valued text VRs: a backslash in them is text, not a value separator.
_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})
# Explicit private text VRs whose ASCII bytes are taken without decoding (OB, UN and PN go the general way).
_PRIVATE_PLAIN_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "DA", "DT"})


def _category_of(tag: int, vr: str) -> str | None:
    """The category `_harvest_into` gives a non-sequence element of this tag and VR, or None."""
    if vr == "PN" or _is_pn_tag(tag):
        return "name"
    is_private = bool(tag >> 16 & 1)
    if not is_private and tag in _IDENTITY_TAGS:
        return IDENTITY_KEYWORDS[_keyword(tag)]
    if vr == "UI" and not is_private:
        return "uid"
    return None


_NEAR_IDENTITY_CREATORS: dict[object, bool] = {}


def _near_identity(ds: Dataset, tag: int, blocks: dict[int, bool]) -> bool:
    """Whether a private element's block holds identity data (IDENTITY_PRIVATE_GROUPS/CREATORS); cached per block
    and per creator value (enhanced headers repeat the same private blocks in thousands of items)."""
    block = (tag & 0xFFFF0000) | (tag & 0xFFFF) >> 8
    near = blocks.get(block)
    if near is None:
        if tag >> 16 in IDENTITY_PRIVATE_GROUPS:
            near = True
        else:
            elem = ds._dict.get(block)
            creator = elem.value if elem is not None else ""
            key = creator if isinstance(creator, (str, bytes)) else str(creator)
            near = _NEAR_IDENTITY_CREATORS.get(key)
            if near is None:
                text = key.decode("latin-1") if isinstance(key, bytes) else key
                near = _NEAR_IDENTITY_CREATORS[key] = any(m in text.upper() for m in IDENTITY_PRIVATE_CREATORS)
        blocks[block] = near
    return near


# What `_harvest_into` does with an undecoded element, by (tag, VR as read): None (nothing personal: skipped),
# _DECODE (decode it first: sequences, unknown VRs), or (category, field name, single-valued) for plain bytes.
# A header holds ~500 elements per item and thousands of items; deciding once per kind keeps the walk cheap.
_DECODE = ("", "", False)
_UNPLANNED = object()
_RAW_PLANS: dict[tuple[int, str | None], tuple[str, str, bool] | None] = {}


def _raw_plan(tag: int, vr_read: str | None) -> tuple[str, str, bool] | None:
    if not _may_be_personal(tag, vr_read):
        return None
    vr = vr_read if vr_read not in (None, "UN") else _resolved_vr(tag, vr_read)
    if vr in (None, "UN", "SQ"):
        return _DECODE
    category = _category_of(tag, vr)
    if category is None or category == "time":
        return None
    return category, _keyword(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})", vr in _SINGLE_VALUED_TEXT


def _harvest_into(ds: Dataset, prefix: str, found: set[PersonalValue], private_identity: bool = False) -> None:
    blocks: dict[int, bool] = {}
    for tag, raw in list(ds._dict.items()):
        if (
            private_identity
            and tag >> 16 & 1
            and tag & 0xFFFF >= 0x1000
            and blocks.get((tag & 0xFFFF0000) | (tag & 0xFFFF) >> 8) is not False  # known-far blocks: no call
            and _near_identity(ds, int(tag), blocks)
        ):
            if getattr(raw, "is_raw", False) and raw.VR in _PRIVATE_PLAIN_VRS and (raw.value or b"").isascii():
                # An explicit text VR with plain ASCII bytes reads the same in every character set: split as
                # pydicom would, without decoding the element in place (a near-identity block holds dozens).
                data = raw.value or b""
                if b"\x1b" not in data:
                    field = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
                    text = data.decode("ascii")
                    for item in [text] if raw.VR in _SINGLE_VALUED_TEXT else text.split("\\"):
                        for value in _private_text(item):
                            found.add(PersonalValue(_private_category(value), field, value))
                    continue
            elem = ds[tag]  # decoding resolves implicit VRs (private dictionary) and sequences
            if elem.VR not in ("PN", "SQ"):
                if elem.VR in _PRIVATE_TEXT_VRS:
                    field = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
                    for text in _private_text(elem.value, ds._character_set):
                        found.add(PersonalValue(_private_category(text), field, text))
                continue
            raw = elem  # PN and sequences: the general path below
        if getattr(raw, "is_raw", False):
            tag = int(tag)  # plain int: dictionary lookups with pydicom's BaseTag run Python-level __eq__
            plan = _RAW_PLANS.get((tag, raw.VR), _UNPLANNED)
            if plan is _UNPLANNED:
                plan = _RAW_PLANS[(tag, raw.VR)] = _raw_plan(tag, raw.VR)
            if plan is None:
                continue
            data = raw.value or b""
            if plan is not _DECODE and data.isascii() and b"\x1b" not in data:
                # Plain ASCII (no ISO 2022 escapes) reads the same in every character set: split and strip
                # the bytes as pydicom would, without decoding the element in place (a header holds dozens,
                # and undecoded elements are written back faster).
                category, name, single_valued = plan
                text = data.decode("ascii").rstrip(" \x00")
                for item in [text] if single_valued else text.split("\\"):
                    item = item.strip()
                    if item and not (category == "uid" and item.startswith(DICOM_ROOT_UID)):
                        found.add(PersonalValue(category, f"{prefix}{name}", item))
                continue
        elem = ds[tag]
        keyword = _keyword(int(tag))
        name = keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        path = f"{prefix}{name}"
        if elem.VR == "SQ":
            for item in elem.value or ():
                _harvest_into(item, f"{path}>", found, private_identity)
            continue
        if elem.VR == "PN" or _is_pn_tag(int(elem.tag)):
            category = "name"
        elif keyword in IDENTITY_KEYWORDS:
            category = IDENTITY_KEYWORDS[keyword]
        elif elem.VR == "UI" and not elem.tag.is_private:
            category = "uid"
        else:
            continue
        for text in _values_of(elem.value):
            if category == "uid" and text.startswith(DICOM_ROOT_UID):
                continue
            if category == "time":
                continue  # a time of day alone identifies no one; kept for completeness of the vocabulary
            found.add(PersonalValue(category, path, text))


# --- matching values as people write them ------------------------------------------------------------------
#
# A harvested value is searched in every form a person or a program may have written it: names after NFKC,
# case folding, diacritics removed, German umlaut spellings and `anyascii` transliteration (and UTF-8 read as
# Latin-1, as converters do); dates in every common order, separator, padding, year length and English month
# name; identifiers without separators, case or leading zeros. Each search string carries an edge rule per end
# (what may not stand next to a match there), so that "Lee" is not found in "asleep" but "Johanna" is in
# "Johanna1", and a birth date is not found inside a UID or a float. This is the cleaner's matching; the leak
# gate builds its own.

# Edge rules (one per end of a search string).
_LETTER_EDGE = "L"  # letter-edged: no letter next to it (a name is bounded by letters only: "Zqxwv2", "Smith_J")
_DIGIT_EDGE = "D"  # digit-edged: no digit, nor "digit." before / ".digit" after (a date inside a UID or a float)
_TOKEN_EDGE = "W"  # a whole token: neither letter nor digit next to it (1-2 letter name parts such as "Li")
_STRICT_EDGE = "S"  # institution and device text: no letter, digit or underscore ("nih" in "nih_ep2d_bold" stays)
_FREE_EDGE = "N"  # ideographic edge: CJK text has no word boundaries, a name ideograph is cleaned wherever it is

# Categories whose values are places, devices and prose rather than a person: matched with strict edges, since
# vendor sequence strings embed institution-like words ("epiRT", "nih_ep2d_bold") and must survive.
_STRICT_CATEGORIES = frozenset({"institution", "device", "address", "free_text"})
# Name parts this short are cleaned only where they stand as a whole token (or joined to another part of the
# same name); a single Latin letter (an initial) identifies no one and would cut "T1 w" and the like.
_SHORT_NAME_PART = 2
# One ideograph or Hangul syllable carries a whole name part (王, 김): no minimum for ideographic strings.

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_ORDINALS = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_ID_SEPARATOR = r"[\s._/-]?"
_RUNS = re.compile(r"[^\W\d_]+|[0-9]+")
_BYTE_RUNS = re.compile(rb"[a-z\x80-\xff]+|[0-9]+")


def _is_ideographic(char: str) -> bool:
    """CJK ideographs, kana and Hangul (and their compatibility blocks)."""
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF
            or 0x1100 <= code <= 0x11FF or code >= 0x20000)


def _char_class(char: str) -> str:
    if "0" <= char <= "9":
        return "D"
    if char == "_":
        return "U"
    return "L" if char.isalpha() else "O"


# Byte classes for text searched as bytes in any charset: bytes >= 0x80 count as letters (they are letters,
# or parts of one, in every charset DICOM allows).
_BYTE_CLASS = "".join(
    "D" if 48 <= b <= 57 else "U" if b == 95 else "L" if (65 <= b <= 90 or 97 <= b <= 122 or b >= 128) else "O"
    for b in range(256)
)


def _edge(char: str, *, strict: bool, whole: bool) -> str:
    if _is_ideographic(char):
        return _FREE_EDGE
    kind = _char_class(char)
    if kind == "D":
        return _STRICT_EDGE if strict else _DIGIT_EDGE
    if kind == "L":
        return _STRICT_EDGE if strict else _TOKEN_EDGE if whole else _LETTER_EDGE
    return _FREE_EDGE


def _edge_ok(kind: str, text: str | bytes, index: int, step: int) -> bool:
    """Whether the character at `index` (just outside a match; `step` points away from it) allows the match."""
    if kind == _FREE_EDGE or index < 0 or index >= len(text):
        return True
    char = text[index]
    cls = _BYTE_CLASS[char] if isinstance(char, int) else _char_class(char)
    if kind == _LETTER_EDGE:
        return cls != "L"
    if kind == _TOKEN_EDGE:
        return cls not in ("L", "D")
    if kind == _STRICT_EDGE:
        return cls not in ("L", "D", "U")
    if cls == "D":
        return False
    beyond = index + step
    if char in (".", 46) and 0 <= beyond < len(text):
        other = text[beyond]
        return (_BYTE_CLASS[other] if isinstance(other, int) else _char_class(other)) != "D"
    return True


def _name_variants(word: str) -> set[str]:
    """A name part as it may be written: NFKC, case-folded, without diacritics, German spellings, transliterated
    (`anyascii`), decomposed, and its UTF-8 bytes read as Latin-1."""
    from anyascii import anyascii

    normal = unicodedata.normalize("NFKC", word)
    lowered = normal.lower()
    out = {word.lower(), lowered, unicodedata.normalize("NFD", lowered)}
    bare = "".join(c for c in unicodedata.normalize("NFD", lowered) if not unicodedata.combining(c))
    out.add(bare)
    german = lowered.translate(_GERMAN)
    out.update({german, anyascii(lowered).lower(), anyascii(german).lower()})
    if any(_is_ideographic(c) for c in lowered):
        out.add(" ".join(anyascii(c) for c in lowered).lower().strip())
    if lowered.isascii() and any(p in lowered for p in ("ae", "oe", "ue")):
        out.add(lowered.replace("ae", "ä").replace("oe", "ö").replace("ue", "ü"))
    for cased in {normal, normal.upper(), normal.title(), lowered}:
        if not cased.isascii():
            out.add(cased.encode("utf-8").decode("latin-1").lower())
    return {v.strip() for v in out if v.strip()}


def _name_forms(value: str) -> set[tuple[str, bool]]:
    """(form, whole-token only) of a PN value: every part, multi-word components, both orders joined."""
    forms: set[tuple[str, bool]] = set()
    for group in value.split("="):  # alphabetic, ideographic, phonetic groups
        components = [c.strip() for c in group.split("^")[:3] if c.strip()]  # family, given, middle
        for component in components:
            words = [w for w in re.split(r"[\s,.'-]+", component) if w]
            for word in (*words, component) if len(words) > 1 else words:
                short = len(word) <= _SHORT_NAME_PART and not any(_is_ideographic(c) for c in word)
                forms.update((v, short) for v in _name_variants(word))
        if len(components) >= 2:
            # Parts written apart ("Smith John", "Smith_J", "Li Wei") are found part by part (letter edges, short
            # parts as whole tokens); only parts run together ("SmithJohn", "LiWei") need the joined form.
            family, given = _name_variants(components[0]), _name_variants(components[1])
            for a in family:
                for b in given:
                    forms.update({(f"{a}{b}", False), (f"{b}{a}", False)})
        if group.strip():
            forms.add((group.strip().lower(), False))
    return forms


def _date_forms(value: str) -> set[str]:
    """A date in every common written form (Y-M-D, D-M-Y, M-D-Y; separators none . / - _ space; with and
    without zero padding; two-digit years; English month names and abbreviations)."""
    forms = {value.strip().lower()}
    parsed = _parse_date(value)
    if parsed is None:
        return forms
    year4 = f"{parsed.year:04d}"
    year2 = year4[2:]
    days = {f"{parsed.day:02d}", str(parsed.day)}
    months = {f"{parsed.month:02d}", str(parsed.month)}
    for sep in ("", ".", "/", "-", "_", " "):
        for year in (year4, year2):
            # Short or space-separated two-digit-year forms ("1 5 23") are runs of small numbers: too common in
            # vendor physics text to clean; padded forms and four-digit years are specific.
            if year == year2 and sep in (" ", "_"):
                continue
            for day in days:
                for month in months:
                    padded = len(day) == 2 and len(month) == 2
                    if sep == "" and not padded:
                        continue
                    forms.update({f"{year}{sep}{month}{sep}{day}", f"{day}{sep}{month}{sep}{year}",
                                  f"{month}{sep}{day}{sep}{year}"})
    name = _MONTHS[parsed.month - 1]
    for month in {name, name[:3], name[:4] if name == "september" else name[:3]}:
        for day in days:
            ordinal = day.lstrip("0") + _ORDINALS.get(parsed.day, "th")
            for year in (year4, year2):
                for sep in ("", " ", "-", ".", "/", "_"):
                    forms.update({f"{day}{sep}{month}{sep}{year}", f"{year}{sep}{month}{sep}{day}"})
                for sep in (" ", "-", ".", "/", "_"):
                    forms.add(f"{month}{sep}{day}{sep}{year}")
                forms.update({f"{month} {day}, {year}", f"{month}. {day}, {year}", f"{month}. {day} {year}",
                              f"{day}. {month} {year}", f"{day} {month}, {year}", f"{day}. {month}. {year}",
                              f"{ordinal} {month} {year}", f"{month} {ordinal}, {year}", f"{month} {ordinal} {year}",
                              f"{ordinal} of {month} {year}", f"{day}-{month}.-{year}", f"{day} {month}. {year}"})
    return forms


def id_core(value: str) -> str:
    """An identifier compared without separators, case or leading zeros ("PID 0012-3456" -> "pid123456"; the
    zeros leading any run of digits go)."""
    return _LEADING_ZEROS.sub("", re.sub(r"[^0-9a-z]", "", value.lower()))


_LEADING_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")


@dataclass(frozen=True)
class _Spec:
    """One search string (lower-cased) with the edge rule at each end and the value it stands for."""

    text: str
    start: str
    end: str
    value: PersonalValue


@dataclass(frozen=True)
class _IdPattern:
    """An identifier's core with an optional separator between any two characters; leading zeros may be added
    or dropped. `anchors`: a match's first letter/digit run is one of these (so the pattern is only run on text
    that has one)."""

    core: str
    value: PersonalValue

    @property
    def source(self) -> str:
        separator = _ID_SEPARATOR if len(self.core) > MIN_NEEDLE_LENGTH else ""
        parts = []
        for index, char in enumerate(self.core):
            if index and char.isdigit() and not self.core[index - 1].isdigit():
                parts.append(f"(?:0{separator})*")  # zeros may lead a digit run inside the ID too ("PID 0012")
            parts.append(re.escape(char))
        return separator.join(parts)

    @property
    def anchors(self) -> frozenset[str]:
        first = _RUNS.match(self.core)
        run = first.group(0) if first else self.core
        zeros = range(7) if run[:1].isdigit() else range(1)
        return frozenset("0" * z + run[:k] for z in zeros for k in range(min(2, len(run)), len(run) + 1))


def _specs_of(value: PersonalValue) -> Iterator[_Spec]:
    """The search strings of one value (not UIDs: those are handled apart by the cleaner)."""
    category = value.category
    strict = category in _STRICT_CATEGORIES
    if category == "name":
        forms = _name_forms(value.value)
    elif category == "date":
        forms = {(f, False) for f in _date_forms(value.value)}
    else:
        forms = {(f.lower(), False) for f in _RENDERERS.get(category, _render_plain)(value.value)}
    for form, whole in forms:
        form = form.strip(" \x00")
        if not form or form in PLACEHOLDERS:
            continue
        ideographic = any(_is_ideographic(c) for c in form)
        if not ideographic and len(form) < (2 if whole else MIN_NEEDLE_LENGTH):
            continue
        yield _Spec(form, _edge(form[0], strict=strict, whole=whole), _edge(form[-1], strict=strict, whole=whole),
                    value)


def _id_patterns_of(value: PersonalValue) -> Iterator[_IdPattern]:
    if value.category not in ("id", "phone") or not value.value.isascii():
        return
    core = id_core(value.value)
    if len(core) >= MIN_NEEDLE_LENGTH and core not in PLACEHOLDERS:
        yield _IdPattern(core, value)


def _lower_aligned(text: str) -> str:
    """`text` lower-cased with every character staying one character (so match positions map back)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


class SearchIndex:
    """Search strings of one kind of text (str, or bytes in given charsets) indexed by their first run.

    A match's first letter run (or digit run) is a whole run of the searched text, because the edge rule forbids
    a letter (digit) before it; so only the strings whose first run occurs in the text are searched, found by a
    set intersection, and an identifier pattern only runs on text holding one of its anchors. Strings that cannot
    be indexed that way (ideographic or punctuation edges) are always searched (there are few).
    """

    def __init__(self, specs: Iterable[tuple[Any, str, str, PersonalValue]], ids: Iterable[_IdPattern],
                 *, binary: bool) -> None:
        self.binary = binary
        runs = _BYTE_RUNS if binary else _RUNS
        self.by_anchor: dict[Any, list[tuple[Any, str, str, PersonalValue, Any]]] = {}
        self.unindexed: list[tuple[Any, str, str, PersonalValue]] = []
        for needle, start, end, value in sorted(set(specs), key=lambda s: (-len(s[0]), s[0], s[1], s[2], s[3])):
            found = runs.findall(needle)
            first = found[0] if found and needle.startswith(found[0]) and start != _FREE_EDGE else None
            if first is not None and len(first) == len(needle) and end == _FREE_EDGE:
                first = None
            if first is None:
                self.unindexed.append((needle, start, end, value))
                continue
            last = found[-1] if needle.endswith(found[-1]) and end != _FREE_EDGE else None
            self.by_anchor.setdefault(first, []).append((needle, start, end, value, last))
        self.anchor_keys = frozenset(self.by_anchor)
        self.ids: list[tuple[re.Pattern[Any], frozenset[Any], bool, str, PersonalValue]] = []
        for pattern in ids:
            source = pattern.source
            anchors = pattern.anchors
            compiled = re.compile(source.encode("ascii")) if binary else re.compile(source)
            keys = frozenset(a.encode("ascii") for a in anchors) if binary else anchors
            last = pattern.core[-1]
            self.ids.append((compiled, keys, pattern.core[0].isdigit(), _DIGIT_EDGE if last.isdigit() else
                             _LETTER_EDGE, pattern.value))

    def tokens(self, lowered: Any) -> set[Any]:
        if self.binary:
            return set(lowered.translate(_BYTE_LETTERS).split()) | set(lowered.translate(_BYTE_DIGITS).split())
        return set(_RUNS.findall(lowered))

    def spans(self, lowered: Any) -> list[tuple[int, int, PersonalValue]]:
        """(start, end, value) of every match in `lowered` (already lower-cased, positions aligned)."""
        hits: list[tuple[int, int, PersonalValue]] = []
        tokens = self.tokens(lowered)
        candidates: list[tuple[Any, str, str, PersonalValue]] = list(self.unindexed)
        for anchor in self.anchor_keys & tokens:
            candidates.extend(n[:4] for n in self.by_anchor[anchor] if n[4] is None or n[4] in tokens)
        for needle, start, end, value in candidates:
            position = lowered.find(needle)
            while position != -1:
                stop = position + len(needle)
                if _edge_ok(start, lowered, position - 1, -1) and _edge_ok(end, lowered, stop, 1):
                    hits.append((position, stop, value))
                position = lowered.find(needle, position + 1)
        for compiled, anchors, digit_first, end, value in self.ids:
            if anchors.isdisjoint(tokens):
                continue
            split = _BYTE_ID_SPLIT if self.binary else _ID_SPLIT
            for match in compiled.finditer(lowered):
                if min(len(group) for group in split.split(match.group(0))) < 2:
                    continue  # "1 1 1 1 1 1": a list of small numbers (vendor arrays), not an ID in groups
                begin = _with_leading_zeros(lowered, match.start()) if digit_first else match.start()
                if _edge_ok(_DIGIT_EDGE if digit_first else _LETTER_EDGE, lowered, begin - 1, -1) and _edge_ok(
                    end, lowered, match.end(), 1
                ):
                    hits.append((begin, match.end(), value))
        return hits


_ID_SPLIT = re.compile(r"[\s._/-]")
_BYTE_ID_SPLIT = re.compile(rb"[\s._/-]")
_BYTE_LETTERS = bytes(b if (97 <= b <= 122 or b >= 128) else 32 for b in range(256))
_BYTE_DIGITS = bytes(b if 48 <= b <= 57 else 32 for b in range(256))
_ID_SEPARATORS = frozenset(" \t._/-") | frozenset(b" \t._/-")
_ZERO = frozenset({"0", 48})


def _with_leading_zeros(text: Any, start: int) -> int:
    """Where an identifier found at `start` really begins when zeros (possibly separated) precede it."""
    begin = start
    index = start - 1
    while index >= 0:
        char = text[index]
        if char in _ZERO:
            begin = index
            index -= 1
        elif char in _ID_SEPARATORS and index > 0 and text[index - 1] in _ZERO:
            index -= 1
        else:
            break
    return begin


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined, in order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class PersonalValues:
    """A set of harvested values with the needles to scan for and a cleaner for free text."""

    def __init__(self, values: Iterable[PersonalValue] = (), protected: Iterable[str] = ()) -> None:
        """`protected`: words never cut because a value shares their spelling (the descriptor vocabulary's
        tokens, e.g. "bold" for a patient named Bold); a match is kept only when it is exactly such a word."""
        self.values: set[PersonalValue] = set(values)
        self.protected = frozenset(w.lower() for w in protected)
        self._index: SearchIndex | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[PersonalValue]:
        return iter(sorted(self.values))

    def update(self, values: Iterable[PersonalValue]) -> None:
        self.values.update(values)
        self._index = None

    def needles(self, categories: Iterable[str] | None = None) -> dict[str, PersonalValue]:
        """Lower-cased classic renderings -> the value they come from (first by sort order wins)."""
        wanted = set(categories) if categories is not None else None
        out: dict[str, PersonalValue] = {}
        for value in sorted(self.values):
            if wanted is not None and value.category not in wanted:
                continue
            for form in value.renderings():
                out.setdefault(form, value)
        return out

    def specs(self) -> list[_Spec]:
        """Every search string of every value (names, dates and IDs in every written form), UIDs excepted."""
        return [spec for value in sorted(self.values) if value.category != "uid" for spec in _specs_of(value)]

    def id_patterns(self) -> list[_IdPattern]:
        return [p for value in sorted(self.values) for p in _id_patterns_of(value)]

    def _text_index(self) -> SearchIndex:
        if self._index is None:
            self._index = SearchIndex(((s.text, s.start, s.end, s.value) for s in self.specs()), self.id_patterns(),
                                 binary=False)
        return self._index

    def spans(self, text: str) -> list[tuple[int, int, PersonalValue]]:
        """(start, end, value) of every occurrence of a value in `text`, any form, case-insensitive."""
        lowered = _lower_aligned(text)
        spans = self._text_index().spans(lowered)
        if self.protected:
            spans = [(s, e, v) for s, e, v in spans if lowered[s:e] not in self.protected]
        return spans

    def find(self, text: str) -> list[PersonalValue]:
        """The values that occur in `text` (in any form they are written in; see the edge rules above)."""
        return sorted({value for _, _, value in self.spans(text)})

    def redact(self, text: str, replacement: str = "") -> str:
        """`text` with every form of every value removed (then separators tidied)."""
        spans = merge_spans((s, e) for s, e, _ in self.spans(text))
        if not spans:
            return text
        parts: list[str] = []
        position = 0
        for start, end in spans:
            parts.append(text[position:start])
            parts.append(replacement)
            position = end
        parts.append(text[position:])
        cleaned = re.sub(r"([\s_^,;:-])\1+", r"\1", "".join(parts))
        return cleaned.strip(" _^,;:-")

    def to_json(self) -> str:
        rows = [{"category": v.category, "field": v.field, "value": v.value} for v in sorted(self.values)]
        return json.dumps(rows, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PersonalValues:
        return cls(PersonalValue(r["category"], r["field"], r["value"]) for r in json.loads(text))


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records can quote header values and file names: none may reach a log."""
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was_disabled


def harvest_files(paths: Iterable[str | Path], *, private_text: bool = False) -> PersonalValues:
    """Harvest every readable DICOM file (header only); unreadable files are skipped (ingest reports them).

    With `private_text`, strings of identity private blocks are harvested too (`harvest_private_identity`).
    """
    values = PersonalValues()
    with quiet_pydicom():
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
                continue
            values.update(harvest_dataset(ds))
            values.update(harvest_dataset(ds.file_meta, prefix="meta>") if ds.file_meta else ())
            if private_text:
                values.update(harvest_private_identity(ds))
    return values


# Private blocks that hold patient or visit identity, whatever their elements are called: PACS gateways and
# worklist brokers repeat the patient's name, ID and birth date there (often as OB, so the PN rule above misses
# them), and vendors keep patient data in the private group right after the patient group (0011). Matched on
# the private creator, case-insensitively. Device and protocol blocks (CSA, GEMS_IDEN's product ID) are not
# listed: their strings are physics or model names, and harvesting them would flag every release.
IDENTITY_PRIVATE_CREATORS = ("PATI", "PERSON", "UTF8 ATTRIBUTES", "LINKED ATTRIBUTES", "CTP", "IDENTITY")
IDENTITY_PRIVATE_GROUPS = frozenset({0x0011})
_PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "OB", "UN", "CS", "DA", "DT"})
_PRINTABLE = re.compile(r"^[^\x00-\x08\x0e-\x1f\x7f]+$")


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


def _private_text(value: object, encodings: Iterable[str] = ()) -> Iterator[str]:
    """Printable strings of a private element's value (bytes decoded in the declared character set, else as
    UTF-8, else Latin-1)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).strip(b" \x00")
        if not raw:
            return
        items: Iterable[object] = _decode_text(raw, encodings).split("\\")
    else:
        items = _values_of(value)
    for item in items:
        text = str(item).strip(" \x00")
        if len(text) >= MIN_NEEDLE_LENGTH and _PRINTABLE.match(text):
            yield text


def _private_category(text: str) -> str:
    if "^" in text:
        return "name"
    if re.fullmatch(r"\d{8}", text) and _parse_date(text) is not None:
        return "date"
    return "private"


def harvest_private_identity(ds: Dataset, prefix: str = "") -> set[PersonalValue]:
    """Strings in private blocks near identity data (see IDENTITY_PRIVATE_CREATORS/GROUPS), at every level.

    An addition to `harvest_dataset` (which takes private PN elements only): the leak scan uses both.
    """
    found: set[PersonalValue] = set()
    _harvest_private_into(ds, prefix, found)
    return found


def _harvest_private_into(ds: Dataset, prefix: str, found: set[PersonalValue]) -> None:
    # Looks at tags and VRs before decoding anything: a header's big private blocks (CSA, vendor physics)
    # are skipped without being parsed, as in `_harvest_into`.
    creators: dict[int, str] = {}
    for tag, raw in list(ds._dict.items()):
        tag = int(tag)
        group, element = tag >> 16, tag & 0xFFFF
        vr = raw.VR
        if not group & 1:
            if (vr if vr not in (None, "UN") else _resolved_vr(tag, None)) == "SQ":
                elem = ds[tag]
                name = elem.keyword or f"({group:04X},{element:04X})"
                for item in elem.value or ():
                    _harvest_private_into(item, f"{prefix}{name}>", found)
            continue
        if element < 0x1000:
            continue  # private creator elements name a block; they are not its content
        block = (group << 16) | (element >> 8)
        if block not in creators:
            creators[block] = str(ds[block].value).upper() if block in ds._dict else ""
        creator = creators[block]
        near_identity = group in IDENTITY_PRIVATE_GROUPS or any(m in creator for m in IDENTITY_PRIVATE_CREATORS)
        if vr == "SQ" or (near_identity and vr in (None, "UN")):
            elem = ds[tag]  # decoding resolves implicit VRs (private dictionary) and sequences
            vr = elem.VR
            if vr == "SQ":
                for item in elem.value or ():
                    _harvest_private_into(item, f"{prefix}({group:04X},{element:04X})>", found)
                continue
        if not near_identity or vr not in _PRIVATE_TEXT_VRS:
            continue
        elem = ds[tag]
        for text in _private_text(elem.value, ds._character_set):
            found.add(PersonalValue(_private_category(text), f"{prefix}({group:04X},{element:04X})", text))


def save_values(values: PersonalValues, path: str | Path) -> Path:
    """Store harvested values in the private area (0600)."""
    from bidsafe.private import private_write_text

    return private_write_text(path, values.to_json())


def load_values(path: str | Path) -> PersonalValues:
    return PersonalValues.from_json(Path(path).read_text(encoding="utf-8"))
