"""What counts as personal data: the one vocabulary used by de-identification, scrub and the leak scan.

Harvest every personal value a raw DICOM file carries (names, IDs, dates, addresses, phone numbers,
institutions, device identity, identifying free text, instance UIDs), then render each value the ways it
shows up elsewhere (names in any order and case, dates in common formats, phone numbers as digits) so a
scanner can find it and a cleaner can remove it. Values never leave the private area: nothing here prints them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

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
    if isinstance(element_value, (list, tuple, pydicom.multival.MultiValue)):
        for item in element_value:
            yield from _values_of(item)
        return
    text = str(element_value).strip()
    if text:
        yield text


def harvest_dataset(ds: Dataset, prefix: str = "") -> set[PersonalValue]:
    """Every personal value in `ds`, at every nesting level, including identity text in private elements."""
    found: set[PersonalValue] = set()
    _harvest_into(ds, prefix, found)
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


def _may_be_personal(tag: int, vr: str | None) -> bool:
    """False only when the element certainly yields nothing in `_harvest_into` (checked before decoding)."""
    if tag in _IDENTITY_TAGS:
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


def _category_of(tag: int, vr: str) -> str | None:
    """The category `_harvest_into` gives a non-sequence element of this tag and VR, or None."""
    if vr == "PN":
        return "name"
    is_private = bool(tag >> 16 & 1)
    if not is_private and tag in _IDENTITY_TAGS:
        return IDENTITY_KEYWORDS[_keyword(tag)]
    if vr == "UI" and not is_private:
        return "uid"
    return None


def _harvest_into(ds: Dataset, prefix: str, found: set[PersonalValue]) -> None:
    for tag, raw in list(ds._dict.items()):
        if getattr(raw, "is_raw", False):
            tag = int(tag)  # plain int: dictionary lookups with pydicom's BaseTag run Python-level __eq__
            if not _may_be_personal(tag, raw.VR):
                continue
            vr = raw.VR if raw.VR not in (None, "UN") else _resolved_vr(tag, raw.VR)
            data = raw.value or b""
            if vr not in (None, "UN", "SQ") and data.isascii() and b"\x1b" not in data:
                # Plain ASCII (no ISO 2022 escapes) reads the same in every character set: split and strip
                # the bytes as pydicom would, without decoding the element in place (a header holds dozens,
                # and undecoded elements are written back faster).
                category = _category_of(tag, vr)
                if category is None or category == "time":
                    continue
                name = _keyword(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
                text = data.decode("ascii").rstrip(" \x00")
                for item in [text] if vr in _SINGLE_VALUED_TEXT else text.split("\\"):
                    item = item.strip()
                    if item and not (category == "uid" and item.startswith(DICOM_ROOT_UID)):
                        found.add(PersonalValue(category, f"{prefix}{name}", item))
                continue
        elem = ds[tag]
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        path = f"{prefix}{name}"
        if elem.VR == "SQ":
            for item in elem.value or ():
                _harvest_into(item, f"{path}>", found)
            continue
        if elem.VR == "PN":
            category = "name"
        elif elem.keyword in IDENTITY_KEYWORDS:
            category = IDENTITY_KEYWORDS[elem.keyword]
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


class PersonalValues:
    """A set of harvested values with the needles to scan for and a cleaner for free text."""

    def __init__(self, values: Iterable[PersonalValue] = ()) -> None:
        self.values: set[PersonalValue] = set(values)
        self._pattern: re.Pattern[str] | None = None
        self._all_needles: dict[str, PersonalValue] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[PersonalValue]:
        return iter(sorted(self.values))

    def update(self, values: Iterable[PersonalValue]) -> None:
        self.values.update(values)
        self._pattern = None
        self._all_needles = None

    def needles(self, categories: Iterable[str] | None = None) -> dict[str, PersonalValue]:
        """Lower-cased renderings -> the value they come from (first by sort order wins)."""
        wanted = set(categories) if categories is not None else None
        out: dict[str, PersonalValue] = {}
        for value in sorted(self.values):
            if wanted is not None and value.category not in wanted:
                continue
            for form in value.renderings():
                out.setdefault(form, value)
        return out

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            forms = sorted(self.needles(), key=len, reverse=True)
            if not forms:
                self._pattern = re.compile(r"(?!x)x")  # matches nothing
            else:
                alternatives = "|".join(re.escape(f) for f in forms)
                # Letters may not continue a match on either side: "Lee" is cleaned from "Lee^Ann" but not
                # from "asleep"; digits are bounded the same way so an ID is not found inside a longer number.
                self._pattern = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)
        return self._pattern

    def find(self, text: str) -> list[PersonalValue]:
        """The values whose renderings occur in `text` (word-bounded, case-insensitive)."""
        if self._all_needles is None:  # rendering every value per call made find() slow on long lists
            self._all_needles = self.needles()
        needles = self._all_needles
        return sorted({needles[m.group(0).lower()] for m in self._compiled().finditer(text)})

    def redact(self, text: str, replacement: str = "") -> str:
        """`text` with every rendering of every value removed (then separators tidied)."""
        cleaned = self._compiled().sub(replacement, text)
        if cleaned == text:
            return text
        cleaned = re.sub(r"([\s_^,;:-])\1+", r"\1", cleaned)
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


def _private_text(value: object) -> Iterator[str]:
    """Printable strings of a private element's value (bytes decoded as UTF-8, else Latin-1)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).strip(b" \x00")
        if not raw:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        items: Iterable[object] = text.split("\\")
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
        for text in _private_text(elem.value):
            found.add(PersonalValue(_private_category(text), f"{prefix}({group:04X},{element:04X})", text))


def save_values(values: PersonalValues, path: str | Path) -> Path:
    """Store harvested values in the private area (0600)."""
    from bidsafe.private import private_write_text

    return private_write_text(path, values.to_json())


def load_values(path: str | Path) -> PersonalValues:
    return PersonalValues.from_json(Path(path).read_text(encoding="utf-8"))
