"""Small MR image instances as a scanner sends them, for the ingest, hand-off and receiver tests, and the key
the hand-off tests name studies, series and instances with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
HANDOFF_KEY = bytes(range(32))


def empty_mr(transfer_syntax: str = ExplicitVRLittleEndian, sop_class: str = MR_IMAGE) -> Dataset:
    """A data set of `sop_class` (MR Image Storage unless given) with its file meta and a new SOP instance UID,
    nothing else yet."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray) -> Dataset:
    """A square 16-bit unsigned MONOCHROME2 image of `pixels` (uint16, side x side)."""
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def mr_instance(study: str, series: str, number: int, patient_id: str, instance: int,
                implicit: bool = False) -> Dataset:
    """An 8x8 MR image of patient DOE^JOHN as a scanner exports it (explicit VR unless `implicit`)."""
    ds = empty_mr(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = "20240115"
    ds.StudyTime = "093000"
    ds.SeriesNumber = number
    ds.InstanceNumber = instance
    ds.Modality = "MR"
    return set_pixels(ds, (np.arange(64, dtype=np.uint16) * (instance + 1)).reshape(8, 8))


def save_dicom(ds: Dataset, path: Path) -> Path:
    """`ds` written as a DICOM file at `path` (parent folders made); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def tiny_mr(study: str, series: str, instance: int) -> Dataset:
    """A 4x4 MR image of patient PID-X, pixel values offset by `instance`."""
    ds = empty_mr()
    ds.PatientID = "PID-X"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    return set_pixels(ds, (np.arange(16, dtype=np.uint16) + instance).reshape(4, 4))
