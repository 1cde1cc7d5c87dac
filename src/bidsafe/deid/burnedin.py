"""Burned-in text policy: which images may carry text in their pixels, and so are withheld unless allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from bidsafe.deid.elements import (
    TAG_BURNED_IN,
    TAG_DIRECTORY_RECORDS,
    TAG_IMAGE_TYPE,
    TAG_MODALITY,
    TAG_SOP_CLASS,
    TAG_VISUAL_FEATURES,
    element_text,
    text_of,
)

MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


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

TAG_PHOTOMETRIC = 0x00280004
TAG_ROWS = 0x00280010
TAG_IMAGE_POSITION = 0x00200032
TAG_IMAGE_ORIENTATION = 0x00200037
TAG_SHARED_GROUPS = 0x52009229
TAG_PER_FRAME_GROUPS = 0x52009230
TAG_PLANE_POSITION_SEQ = 0x00209113
TAG_PLANE_ORIENTATION_SEQ = 0x00209116
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def burned_in_findings(ds: Dataset) -> list[tuple[str, str]]:
    """Every burned-in class (see BURNED_IN_CLASSES) the file belongs to, each with why: [(class, reason)].

    Classes are judged independently, so allowing one class (rule file) never lets through an image that
    another class withholds. Pixel classes (colour, no_geometry) apply to images only (Rows or pixel data
    present): spectroscopy and vendor non-image objects have no pixels to carry text.
    """
    elements: Any = ds._dict

    def text(tag: int) -> str:
        elem = elements.get(tag)
        return element_text(elem).upper() if elem is not None else ""

    sop_class = _sop_class(ds)
    modality = text(TAG_MODALITY)
    image_type = {part.strip().replace(" ", "").replace("_", "") for part in text(TAG_IMAGE_TYPE).split("\\")}
    found: list[tuple[str, str]] = []
    if text(TAG_BURNED_IN) == "YES":
        found.append(("burned_in_annotation", "BurnedInAnnotation is YES: text burned into the pixels"))
    if text(TAG_VISUAL_FEATURES) == "YES":
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
    if TAG_ROWS in elements or any(tag in elements for tag in _PIXEL_TAGS):
        photometric = text(TAG_PHOTOMETRIC)
        if photometric not in MONOCHROME:
            found.append(("colour", f"PhotometricInterpretation {photometric or 'absent'}: not a monochrome scan, "
                          "a colour picture may carry burned-in text"))
        if not has_patient_geometry(ds):
            found.append(("no_geometry", "no ImagePositionPatient/ImageOrientationPatient (top level or functional "
                          "groups): not a slice of a volume, a screen capture may carry burned-in text"))
    return found


def _sop_class(ds: Dataset) -> str:
    sop_class = text_of(ds, TAG_SOP_CLASS)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None and 0x00020002 in meta._dict:
        sop_class = element_text(meta._dict[0x00020002])
    return sop_class.strip()


def has_patient_geometry(ds: Dataset) -> bool:
    """Position and orientation in the patient, at the top level or in the functional groups (enhanced MR:
    orientation usually shared, position per frame). The first per-frame item is enough: a frame that has them
    places the image in the patient."""
    elements: Any = ds._dict
    position = TAG_IMAGE_POSITION in elements
    orientation = TAG_IMAGE_ORIENTATION in elements
    if position and orientation:
        return True
    for groups_tag in (TAG_SHARED_GROUPS, TAG_PER_FRAME_GROUPS):
        groups = elements.get(groups_tag)
        items = ds[groups_tag].value if groups is not None else None
        if not items:
            continue
        first = items[0]
        position = position or _in_sequence(first, TAG_PLANE_POSITION_SEQ, TAG_IMAGE_POSITION)
        orientation = orientation or _in_sequence(first, TAG_PLANE_ORIENTATION_SEQ, TAG_IMAGE_ORIENTATION)
    return position and orientation


def _in_sequence(item: Dataset, sequence_tag: int, tag: int) -> bool:
    if sequence_tag not in item._dict:
        return False
    inner = item[sequence_tag].value
    return bool(inner) and tag in inner[0]._dict and bool(element_text(inner[0][tag]))


def withhold_reason(ds: Dataset, allow: Iterable[str] = ()) -> str | None:
    """Why a file must not be released as is (burned-in text, a face, a screenshot), or None.

    `allow` names burned-in classes the rule file allows (each with a reason there); a DICOMDIR is never
    allowed (it lists patients and holds no image).
    """
    sop_class = _sop_class(ds).upper()
    if sop_class == MEDIA_DIRECTORY_SOP_CLASS or TAG_DIRECTORY_RECORDS in ds._dict:
        return "DICOMDIR: a media directory (lists patients), not an image"
    allowed = set(allow)
    for name, reason in burned_in_findings(ds):
        if name not in allowed:
            return f"{reason} [burned_in class {name}]"
    return None
