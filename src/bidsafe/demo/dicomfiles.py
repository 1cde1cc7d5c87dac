"""DICOM datasets of the demo export: the identity planted in every file, MR images (with a Siemens CSA image
header) and the secondary-capture screen save."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from bidsafe.demo.anatomy import Geometry
from bidsafe.demo.people import (
    DEPARTMENT,
    DEVICE_SERIAL,
    INSTITUTION,
    INSTITUTION_ADDRESS,
    ISSUER_OF_PATIENT_ID,
    STATION,
    Patient,
    age,
)
from bidsafe.demo.protocol import (
    MANUFACTURER,
    MODEL,
    MR_FIXED_ATTRIBUTES,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    SOFTWARE,
    MRSeries,
    ScreenSpec,
)

DETACHED_PATIENT_MANAGEMENT = "1.2.840.10008.3.1.2.1.1"

# Siemens keeps what the standard lacks (phase-encoding polarity, bandwidth per pixel in the phase
# direction) in the CSA image header, a private binary element that dcm2niix parses.
SIEMENS_CSA_CREATOR = "SIEMENS CSA HEADER"
SIEMENS_CSA_GROUP = 0x0029
SIEMENS_CSA_IMAGE_ELEMENT = 0x10  # (0029,1010) with the creator in (0029,0010)

# A PACS gateway private block seen in real exports: it repeats the patient's name (UTF-8, as OB).
PACS_PRIVATE_CREATOR = "MITRA OBJECT UTF8 ATTRIBUTES 1.0"
PACS_PRIVATE_GROUP = 0x0033

Diffusion = tuple[float, tuple[float, float, float] | None]  # b-value and gradient direction (None: b0)


@dataclass
class Context:
    """Everything one session's files share."""

    patient: Patient
    session_index: int
    seed: int
    study_date: date
    study_time: datetime
    accession: str
    study_id: str
    study_uid: str
    frame_uid: str
    operator: str
    performing: str
    requested_procedure_id: str
    step_id: str

    def uid(self, *parts: object) -> UID:
        return generate_uid(
            entropy_srcs=["bidsafe-demo", str(self.seed), str(self.patient.index), str(self.session_index)]
            + [str(p) for p in parts]
        )

    @property
    def patient_name(self) -> str:
        return f"{self.patient.family}^{self.patient.given}"


@dataclass(frozen=True)
class Slice:
    """Where one MR image file sits in its series: slice, instance, time and (for 4D series) volume."""

    index: int
    instance: int
    acquired: datetime
    temporal: tuple[int, int] | None = None  # (volume, volumes)
    trigger_time_ms: float | None = None
    diffusion: Diffusion | None = None


def da(d: date) -> str:
    return d.strftime("%Y%m%d")


def tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def set_identity(ds: Dataset, ctx: Context) -> None:
    """Patient, visit, staff, site and device identity, where real exports carry it."""
    p = ctx.patient
    name = ctx.patient_name
    ds.AccessionNumber = ctx.accession
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = INSTITUTION_ADDRESS
    ds.InstitutionalDepartmentName = DEPARTMENT
    ds.ReferringPhysicianName = p.referring
    ds.StationName = STATION
    ds.StudyDescription = f"MRI BRAIN RESEARCH {p.family} {p.given}"
    ds.PerformingPhysicianName = ctx.performing
    ds.OperatorsName = ctx.operator
    ref_patient = Dataset()
    ref_patient.ReferencedSOPClassUID = DETACHED_PATIENT_MANAGEMENT
    ref_patient.ReferencedSOPInstanceUID = ctx.uid("patient-record")
    ref_patient.PatientID = p.patient_id
    ref_patient.PatientName = name
    ds.ReferencedPatientSequence = [ref_patient]
    ds.PatientName = name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = ISSUER_OF_PATIENT_ID
    ds.PatientBirthDate = da(p.birth)
    ds.PatientSex = p.sex
    other = Dataset()
    other.PatientID = p.other_id
    other.IssuerOfPatientID = "NATIONAL HEALTH NUMBER"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientAge = age(p.birth, ctx.study_date)
    ds.PatientSize = f"{p.size:.2f}"
    ds.PatientWeight = f"{p.weight:.1f}"
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ds.AdditionalPatientHistory = f"Follow-up for {p.given.title()} {p.family.title()}, MRN {p.patient_id}"
    ds.PatientComments = f"{name} prefers morning slots; call {p.phone}"
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.StudyID = ctx.study_id
    ds.RequestAttributesSequence = [_request(ctx)]
    ds.ImageComments = f"{p.family} {p.given} {p.patient_id}"
    block = ds.private_block(PACS_PRIVATE_GROUP, PACS_PRIVATE_CREATOR, create=True)
    block.add_new(0x13, "OB", name.encode("utf-8"))
    block.add_new(0x15, "OB", p.patient_id.encode("utf-8"))
    block.add_new(0x17, "OB", da(p.birth).encode("utf-8"))


def _request(ctx: Context) -> Dataset:
    request = Dataset()
    request.AccessionNumber = ctx.accession
    request.RequestedProcedureID = ctx.requested_procedure_id
    request.ScheduledProcedureStepID = ctx.step_id
    request.RequestedProcedureDescription = "MRI BRAIN RESEARCH"
    request.ScheduledProcedureStepDescription = f"Research brain MRI {ctx.patient.family}"
    request.StudyInstanceUID = ctx.study_uid
    # Not in the standard's item, but real worklist brokers copy the name in (dcm2niix then reads it).
    request.PatientName = ctx.patient_name
    return request


def planted_values(ctx: Context, patient_folder: str) -> dict[str, str]:
    """Every distinctive personal value planted in the export (field -> value).

    Short values that occur by chance anywhere (sex, weight, size) are left out on purpose: they are the
    session's attributes but a substring scan for them means nothing.
    """
    p = ctx.patient
    ds = Dataset()
    set_identity(ds, ctx)
    return {
        "PatientName": ctx.patient_name,
        "PatientFamilyName": p.family,
        "PatientGivenName": p.given,
        "PatientID": p.patient_id,
        "IssuerOfPatientID": ISSUER_OF_PATIENT_ID,
        "OtherPatientIDs": p.other_id,
        "PatientBirthDate": da(p.birth),
        "PatientAge": ds.PatientAge,
        "PatientAddress": p.address,
        "PatientTelephoneNumbers": p.phone,
        "ReferringPhysicianName": p.referring,
        "PerformingPhysicianName": ctx.performing,
        "OperatorsName": ctx.operator,
        "InstitutionName": INSTITUTION,
        "InstitutionAddress": INSTITUTION_ADDRESS,
        "InstitutionalDepartmentName": DEPARTMENT,
        "StationName": STATION,
        "DeviceSerialNumber": DEVICE_SERIAL,
        "AccessionNumber": ctx.accession,
        "StudyID": ctx.study_id,
        "RequestedProcedureID": ctx.requested_procedure_id,
        "ScheduledProcedureStepID": ctx.step_id,
        "StudyDate": da(ctx.study_date),
        "StudyDescription": ds.StudyDescription,
        "AdditionalPatientHistory": ds.AdditionalPatientHistory,
        "PatientComments": ds.PatientComments,
        "ImageComments": ds.ImageComments,
        "PatientFolder": patient_folder,
    }


def _base(ctx: Context, sop_class: str, sop_uid: str, when: datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = da(when)
    ds.InstanceCreationTime = tm(when)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = da(ctx.study_date)
    ds.StudyTime = tm(ctx.study_time)
    return ds


def write_dataset(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def mr_file(ctx: Context, series: MRSeries, series_uid: str, pixels: np.ndarray, where: Slice) -> Dataset:
    """One MR image (one slice) of `series`, with the session's identity."""
    series_start = ctx.study_time + timedelta(seconds=series.start_offset_s)
    ds = _base(ctx, MR_IMAGE_STORAGE, ctx.uid(series.key, "sop", where.instance), series_start)
    ds.ImageType = list(series.image_type)
    ds.SeriesDate = da(ctx.study_date)
    ds.AcquisitionDate = da(ctx.study_date)
    ds.ContentDate = da(ctx.study_date)
    ds.SeriesTime = tm(series_start)
    ds.AcquisitionTime = tm(where.acquired)
    ds.ContentTime = tm(where.acquired)
    ds.AcquisitionDateTime = dt(where.acquired)
    ds.Modality = "MR"
    ds.Manufacturer = MANUFACTURER
    set_identity(ds, ctx)
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.description  # Siemens: the protocol name is the series description
    ds.ManufacturerModelName = MODEL
    ds.SoftwareVersions = SOFTWARE.split("\\")
    for keyword, value in MR_FIXED_ATTRIBUTES.items():
        setattr(ds, keyword, value)
    _set_sequence(ds, series)
    if where.trigger_time_ms is not None:
        ds.TriggerTime = f"{where.trigger_time_ms:g}"
    if where.diffusion is not None:
        _set_diffusion(ds, where.diffusion)
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = str(series.number)
    ds.AcquisitionNumber = str(where.temporal[0] if where.temporal else 1)
    ds.InstanceNumber = str(where.instance)
    if where.temporal is not None:
        ds.TemporalPositionIdentifier = str(where.temporal[0])
        ds.NumberOfTemporalPositions = str(where.temporal[1])
    ds.FrameOfReferenceUID = ctx.frame_uid
    _set_plane(ds, series.geometry, where.index)
    _set_pixels(ds, pixels)
    block = ds.private_block(SIEMENS_CSA_GROUP, SIEMENS_CSA_CREATOR, create=True)
    block.add_new(SIEMENS_CSA_IMAGE_ELEMENT, "OB", siemens_csa_header(_csa_tags(series)))
    return ds


def _set_sequence(ds: Dataset, series: MRSeries) -> None:
    """The acquisition's sequence, timing and k-space attributes."""
    g = series.geometry
    ds.ScanningSequence = series.scanning_sequence
    ds.SequenceVariant = series.sequence_variant
    if series.scan_options:
        ds.ScanOptions = series.scan_options
    ds.MRAcquisitionType = series.acquisition_type
    ds.SequenceName = series.sequence_name
    ds.SliceThickness = f"{g.slice_thickness:g}"
    ds.RepetitionTime = f"{series.repetition_time:g}"
    ds.EchoTime = f"{series.echo_time:g}"
    if series.inversion_time is not None:
        ds.InversionTime = f"{series.inversion_time:g}"
    ds.SpacingBetweenSlices = f"{g.slice_spacing:g}"
    ds.EchoTrainLength = str(series.echo_train_length)
    ds.PixelBandwidth = f"{series.pixel_bandwidth:g}"
    ds.AcquisitionMatrix = [0, g.columns, g.rows, 0] if series.phase_direction == "COL" else [g.columns, 0, 0, g.rows]
    ds.InPlanePhaseEncodingDirection = series.phase_direction
    ds.FlipAngle = f"{series.flip_angle:g}"


def _set_diffusion(ds: Dataset, diffusion: Diffusion) -> None:
    bvalue, direction = diffusion
    ds.DiffusionBValue = float(bvalue)
    if direction is None:
        ds.DiffusionDirectionality = "NONE"
    else:
        ds.DiffusionDirectionality = "DIRECTIONAL"
        ds.DiffusionGradientOrientation = [float(v) for v in direction]


def _set_plane(ds: Dataset, g: Geometry, slice_index: int) -> None:
    """Where slice `slice_index` of `g` lies in the patient."""
    position = g.position(slice_index)
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*g.row_dir, *g.col_dir)]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(np.dot(position, g.normal)):.6g}"
    ds.Rows = g.rows
    ds.Columns = g.columns
    ds.PixelSpacing = [f"{g.row_spacing:g}", f"{g.col_spacing:g}"]


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Signed 16-bit greyscale pixels and a window that shows them."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = str(int(pixels.max()) // 2)
    ds.WindowWidth = str(max(int(pixels.max()), 1))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()


def _csa_tags(series: MRSeries) -> list[tuple[str, str, list[str]]]:
    """The CSA image header's tags for `series`: dcm2niix reads the phase-encoding polarity and bandwidth."""
    tags: list[tuple[str, str, list[str]]] = [("ImaCoilString", "LO", ["HC1-7"])]
    if series.phase_positive is not None:
        tags.append(("PhaseEncodingDirectionPositive", "IS", [str(series.phase_positive)]))
    if series.bandwidth_phase is not None:
        tags.append(("BandwidthPerPixelPhaseEncode", "FD", [f"{series.bandwidth_phase:.8f}"]))
    tags.append(("SliceNormalVector", "FD", [f"{v:.8f}" for v in series.geometry.normal]))
    return tags


def siemens_csa_header(tags: Sequence[tuple[str, str, Sequence[str]]]) -> bytes:
    """A Siemens CSA2 ("SV10") header holding `tags` as (name, VR, values).

    Layout: magic, tag count, then per tag a 84-byte header (name, VM, VR, type, item count, 77) and its
    items, each a 16-byte header (length, length, 77, length) and the value as NUL-terminated text padded
    to 4 bytes. Real headers list at least six items per tag (the unused ones empty); dcm2niix relies on it.
    """
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(tags), 77)
    for name, vr, values in tags:
        n_items = max(len(values), 6)
        out += struct.pack("<64si4s3i", name.encode("ascii"), len(values), vr.encode("ascii"), 3, n_items, 77)
        for i in range(n_items):
            data = values[i].encode("ascii") + b"\x00" if i < len(values) else b""
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\x00" * (-len(data) % 4)
    return bytes(out)


def _screenshot_pixels(lines: Sequence[str], rows: int, columns: int) -> np.ndarray:
    """An RGB screen save with the text burned into the pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(columns / 100, rows / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    for i, line in enumerate(lines):
        figure.text(0.03, 0.92 - i * 0.09, line, color="white", fontsize=11, family="DejaVu Sans Mono")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:rows, :columns, :3])


def screenshot_file(ctx: Context, spec: ScreenSpec) -> Dataset:
    """The screen save: an RGB secondary capture showing the patient's identity (BurnedInAnnotation YES)."""
    p = ctx.patient
    when = ctx.study_time + timedelta(minutes=spec.minutes_after_start)
    lines = [
        f"{p.family}, {p.given}",
        f"ID {p.patient_id}   DOB {da(p.birth)}",
        f"{INSTITUTION}",
        f"ACC {ctx.accession}   {da(ctx.study_date)}",
        spec.caption,
    ]
    ds = _base(ctx, SECONDARY_CAPTURE_STORAGE, ctx.uid("screen", "sop", 1), when)
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SeriesDate = da(ctx.study_date)
    ds.ContentDate = da(ctx.study_date)
    ds.SeriesTime = tm(when)
    ds.ContentTime = tm(when)
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = MANUFACTURER
    set_identity(ds, ctx)
    ds.SeriesDescription = spec.description
    ds.ManufacturerModelName = MODEL
    ds.SoftwareVersions = SOFTWARE.split("\\")
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = ctx.uid("screen", "series")
    ds.SeriesNumber = str(spec.number)
    ds.InstanceNumber = "1"
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = _screenshot_pixels(lines, spec.rows, spec.columns).tobytes()
    return ds
