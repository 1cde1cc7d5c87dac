"""Helpers shared by the de-identification tests: a stand-in rule set and small DICOM builders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    assert found is not None, keyword
    return found


# What every stand-in profile keeps so that an output is a valid MR image at all.
_STRUCTURE = {
    "SpecificCharacterSet": "K",
    "SOPClassUID": "K",
    "SOPInstanceUID": "U",
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "Modality": "K",
    "SeriesNumber": "K",
    "InstanceNumber": "K",
    "ImageType": "K",
    "Rows": "K",
    "Columns": "K",
    "SamplesPerPixel": "K",
    "PhotometricInterpretation": "K",
    "BitsAllocated": "K",
    "BitsStored": "K",
    "HighBit": "K",
    "PixelRepresentation": "K",
    "PixelData": "K",
    "PatientIdentityRemoved": "K",
    "DeidentificationMethod": "K",
    "DeidentificationMethodCodeSequence": "K",
    "LongitudinalTemporalInformationModified": "K",
    "CodeValue": "K",
    "CodingSchemeDesignator": "K",
    "CodeMeaning": "K",
}


@dataclass
class StubRules:
    """A tiny rule set with the RuleSet interface the engine uses: actions given by keyword."""

    actions: Mapping[str, str] = field(default_factory=dict)
    safe_private: set[tuple[str, int, int]] = field(default_factory=set)
    date_mode: str = "shift"
    max_shift_days: int = 30
    burned_in: Mapping[str, str] = field(default_factory=dict)  # burned-in classes allowed -> reason
    method: str = "stand-in profile for tests"
    codes: tuple[tuple[str, str], ...] = (("113100", "Basic Application Confidentiality Profile"),)
    profile: str = "stub"
    options: tuple[str, ...] = ()
    identity_removed: bool = True

    def __post_init__(self) -> None:
        merged = {**_STRUCTURE, **self.actions}
        self._by_tag = {tag(k): v for k, v in merged.items()}

    def resolved_action_for(self, tag_int: int) -> str:
        if tag_int >> 16 & 1:
            return "X"
        return self._by_tag.get(tag_int, "X")

    def is_safe_private(self, creator: str, group: int, element_offset: int) -> bool:
        return (creator.strip().lower(), group, element_offset & 0xFF) in self.safe_private


def mr_dataset(
    *,
    study_uid: str = "1.2.826.0.1.3680043.9.7777.1",
    series_uid: str = "1.2.826.0.1.3680043.9.7777.1.2",
    sop_uid: str = "1.2.826.0.1.3680043.9.7777.1.2.3",
    patient_id: str = "PID-99812",
    patient_name: str = "Quillfeather^Marisol",
    instance_number: int = 1,
    series_number: int = 3,
    study_date: str = "20210309",
    rows: int = 4,
    columns: int = 4,
) -> Dataset:
    """A small but complete MR image dataset with file meta and some personal data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "SCANNER_AE_7"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = study_uid + ".9"
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800417"
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "093015"
    ds.AccessionNumber = "ACC778812"
    ds.InstitutionName = "Harrowgate Imaging Centre"
    ds.SeriesDescription = "T1 MPRAGE"
    ds.Rows = rows
    ds.Columns = columns
    # geometry: an image without it is withheld as a possible screen capture
    ds.ImagePositionPatient = [-100.0, -100.0, 10.0 * instance_number]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 10.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(rows * columns, dtype="<u2") * 37 + instance_number).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def allow_all_vocabulary():
    """A vocabulary that keeps every ASCII token: de-identification's harvested-values layer alone (the second
    layer, under test apart from the vocabulary that runs before it)."""
    import re

    from bidsafe.deid.vocabulary import Vocabulary

    return Vocabulary(placeholder="ANON", words=frozenset(), patterns=(re.compile(r".+"),))
