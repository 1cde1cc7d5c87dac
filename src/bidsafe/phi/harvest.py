"""Harvest every personal value a DICOM header carries, whatever the VR it was stored with, at every level."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom._dicom_dict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsafe.phi.dicomtext import PRIVATE_TEXT_VRS, private_category, private_text, resolved_vr, values_of
from bidsafe.phi.matching import PersonalValues
from bidsafe.phi.privateblocks import harvest_private_identity, near_identity
from bidsafe.phi.value import DICOM_ROOT_UID, PersonalValue

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

# Standard attributes defined as PN: names whatever VR a file gave them (a PatientName stored as LO or UN).
_PN_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "PN")
_NAMED_OR_IDENTITY_TAGS = _IDENTITY_TAGS | _PN_TAGS


def _is_pn_tag(tag: int) -> bool:
    return tag in _PN_TAGS


def _may_be_personal(tag: int, vr: str | None) -> bool:
    """False only when the element certainly yields nothing in `_harvest_into` (checked before decoding)."""
    if tag in _NAMED_OR_IDENTITY_TAGS:
        return True
    resolved = resolved_vr(tag, vr)
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


# What `_harvest_into` does with an undecoded element, by (tag, VR as read): None (nothing personal: skipped),
# _DECODE (decode it first: sequences, unknown VRs), or (category, field name, single-valued) for plain bytes.
# A header holds ~500 elements per item and thousands of items; deciding once per kind keeps the walk cheap.
_DECODE = ("", "", False)
_UNPLANNED = object()
_RAW_PLANS: dict[tuple[int, str | None], tuple[str, str, bool] | None] = {}


def _raw_plan(tag: int, vr_read: str | None) -> tuple[str, str, bool] | None:
    if not _may_be_personal(tag, vr_read):
        return None
    vr = vr_read if vr_read not in (None, "UN") else resolved_vr(tag, vr_read)
    if vr in (None, "UN", "SQ"):
        return _DECODE
    category = _category_of(tag, vr)
    if category is None or category == "time":
        return None
    return category, _keyword(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})", vr in _SINGLE_VALUED_TEXT


def _harvest_into(ds: Dataset, prefix: str, found: set[PersonalValue], private_identity: bool = False) -> None:
    blocks: dict[int, bool] = {}
    for key, raw in list(ds._dict.items()):
        tag: int = key
        element: Any = raw
        if (
            private_identity
            and tag >> 16 & 1
            and tag & 0xFFFF >= 0x1000
            and blocks.get((tag & 0xFFFF0000) | (tag & 0xFFFF) >> 8) is not False  # known-far blocks: no call
            and near_identity(ds, int(tag), blocks)
        ):
            element = _harvest_near_identity(ds, tag, raw, prefix, found)
            if element is None:
                continue
        if getattr(element, "is_raw", False):
            tag = int(tag)  # plain int: dictionary lookups with pydicom's BaseTag run Python-level __eq__
            if _harvest_plain(tag, element, prefix, found):
                continue
        _harvest_decoded(ds, tag, prefix, found, private_identity)


def _harvest_near_identity(ds: Dataset, tag: int, raw: Any, prefix: str, found: set[PersonalValue]) -> Any:
    """Harvest a private element of a block near identity data; returns None when done, else the element for
    the general path (PN and sequences)."""
    if getattr(raw, "is_raw", False) and raw.VR in _PRIVATE_PLAIN_VRS and (raw.value or b"").isascii():
        # An explicit text VR with plain ASCII bytes reads the same in every character set: split as
        # pydicom would, without decoding the element in place (a near-identity block holds dozens).
        data = raw.value or b""
        if b"\x1b" not in data:
            field = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
            text = data.decode("ascii")
            for item in [text] if raw.VR in _SINGLE_VALUED_TEXT else text.split("\\"):
                for value in private_text(item):
                    found.add(PersonalValue(private_category(value), field, value))
            return None
    elem = ds[tag]  # decoding resolves implicit VRs (private dictionary) and sequences
    if elem.VR not in ("PN", "SQ"):
        if elem.VR in PRIVATE_TEXT_VRS:
            field = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
            for text in private_text(elem.value, ds._character_set):
                found.add(PersonalValue(private_category(text), field, text))
        return None
    return elem  # PN and sequences: the general path


def _harvest_plain(tag: int, raw: Any, prefix: str, found: set[PersonalValue]) -> bool:
    """Harvest an undecoded element when its plan allows it without decoding; False: decode it first."""
    plan: Any = _RAW_PLANS.get((tag, raw.VR), _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _RAW_PLANS[(tag, raw.VR)] = _raw_plan(tag, raw.VR)
    if plan is None:
        return True
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
        return True
    return False


def _harvest_decoded(ds: Dataset, tag: int, prefix: str, found: set[PersonalValue], private_identity: bool) -> None:
    elem = ds[tag]
    keyword = _keyword(int(tag))
    name = keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    path = f"{prefix}{name}"
    if elem.VR == "SQ":
        for item in elem.value or ():
            _harvest_into(item, f"{path}>", found, private_identity)
        return
    if elem.VR == "PN" or _is_pn_tag(int(elem.tag)):
        category = "name"
    elif keyword in IDENTITY_KEYWORDS:
        category = IDENTITY_KEYWORDS[keyword]
    elif elem.VR == "UI" and not elem.tag.is_private:
        category = "uid"
    else:
        return
    for text in values_of(elem.value):
        if category == "uid" and text.startswith(DICOM_ROOT_UID):
            continue
        if category == "time":
            continue  # a time of day alone identifies no one; kept for completeness of the vocabulary
        found.add(PersonalValue(category, path, text))


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
