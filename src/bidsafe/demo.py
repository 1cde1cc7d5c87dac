"""Demo data: realistic raw MR scanner exports carrying fake personal data, deterministic for a seed.

Each fake patient gets one study folder per session, laid out like a CD/PACS export named after the
patient (`DOE_JOHN_19800101/<StudyDate>_<Accession>/<series folder>/<file>`), with:

- a 3-plane localizer (excluded from BIDS),
- a sagittal 3D T1w and an axial T2w of a full head *with a face* (pydeface's head template, moved by a
  small per-session head pose, resampled; T2w contrast by remapping the T1w intensities),
- a BOLD run, one slice per file, interleaved ascending: slice timing in the standard per-slice
  AcquisitionTime / AcquisitionDateTime / ContentTime (and TriggerTime), which dcm2niix reads,
- a DWI run (b0 + 6 directions; standard DiffusionBValue / DiffusionGradientOrientation in the patient
  frame),
- a spin-echo EPI field-map pair with opposite phase-encoding polarity. dcm2niix reads the polarity from a
  standard attribute (RectilinearPhaseEncodeReordering) only for GE, and for GE it takes slice timing and
  gradient directions from private tags instead (measured), so the exports mimic a Siemens scanner: each MR
  image has a minimal CSA image header (0029,1010) with PhaseEncodingDirectionPositive and
  BandwidthPerPixelPhaseEncode, from which dcm2niix derives PhaseEncodingDirection (with its sign) and
  TotalReadoutTime. De-identification must keep that element (private creator "SIEMENS CSA HEADER"),
- a secondary-capture screenshot with the patient's name burned into the pixels (BurnedInAnnotation YES),

and fake personal data wherever real exports carry it (patient, visit, staff, site, device, free text,
nested sequences, a PACS private block, folder and file names). Junk an inbox really receives sits next to
each export: a DICOMDIR, a text note, a zero-byte file and a truncated DICOM file.

The BOLD, DWI and field-map series are oblique (tilted about the left-right axis) and the T2w has a
non-square matrix, so a converter that confuses rows, columns or slice order is caught by the tests.
Everything is made from the seed alone (no clock, no network): the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_dir, atomic_write_text
from bidsafe.progress import Progress

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
DETACHED_PATIENT_MANAGEMENT = "1.2.840.10008.3.1.2.1.1"

MANUFACTURER = "SIEMENS"
MODEL = "Prisma_fit"
SOFTWARE = "syngo MR E11"
FIELD_STRENGTH = 3.0
IMAGING_FREQUENCY = 123.2594

# Siemens keeps what the standard lacks (phase-encoding polarity, bandwidth per pixel in the phase
# direction) in the CSA image header, a private binary element that dcm2niix parses.
SIEMENS_CSA_CREATOR = "SIEMENS CSA HEADER"
SIEMENS_CSA_GROUP = 0x0029
SIEMENS_CSA_IMAGE_ELEMENT = 0x10  # (0029,1010) with the creator in (0029,0010)

# A PACS gateway private block seen in real exports: it repeats the patient's name (UTF-8, as OB).
PACS_PRIVATE_CREATOR = "MITRA OBJECT UTF8 ATTRIBUTES 1.0"
PACS_PRIVATE_GROUP = 0x0033

# Distinctive made-up names (>= 6 letters) so that a substring scan never hits them by chance.
FAMILY_NAMES = (
    "QUILLFEATHER", "VARDAKISSON", "OSTROWICZKA", "HAVERBROOKE", "LINDQVARSEN", "THISTLEWAITE",
    "MERRIWEDDER", "BRANDVOLDEN", "KAZIMIERSKA", "FENWHISTLE", "ABERNATHYX", "CROMWALLACE",
    "DELACROUXE", "GUNNARSDOTTIR", "PEMBERFIELD", "ZABRINSKIE",
)
GIVEN_NAMES_F = (
    "OTTOLINE", "WILHELMINA", "PERPETUA", "ROSAMUNDE", "LEOCADIA", "GWENLLIAN", "ISOLDINE", "MARGUERITTA",
)
GIVEN_NAMES_M = (
    "BARTHOLOMEW", "EVANDERUS", "THADDEUS", "LEOFRIC", "AMBROSIUS", "CORNELIUSZ", "PERCIVALE", "OSWINDAL",
)
STAFF_FAMILY = ("HOLLINGRAKE", "PRZYBYLSKA", "WETHERBEE", "OYELARAN", "STRATHMORE", "VILLENEUVEX")
STAFF_GIVEN = ("AUGUSTINA", "FLORIMOND", "HILDEGUND", "MAXIMILIAN", "SEPTIMUS", "CLEMENTINE")
STREETS = ("LARKSPUR CRESCENT", "BRAMBLEWICK LANE", "FOXGLOVE TERRACE", "WINTERBOURNE ROAD")
TOWNS = ("WEXBRIDGE", "MARLOWDEN", "CASTLEFORTH", "ELDERMOOR")

INSTITUTION = "ST ALDHELM NEUROIMAGING CENTRE"
INSTITUTION_ADDRESS = "4 CANONBURY WHARF, WEXBRIDGE WX7 3QP"
DEPARTMENT = "ALDHELM NEURORADIOLOGY"
STATION = "AWP167043"
ISSUER_OF_PATIENT_ID = "ALDHELM PAS"
DEVICE_SERIAL = "167043PRISMA"

# Head centre of the template in patient LPS millimetres (measured on its bounding box).
HEAD_CENTRE_LPS = np.array([7.0, -13.5, -20.0])
# Centre of the functional slab: the cerebrum, above the head centre.
BRAIN_CENTRE_LPS = np.array([7.0, -5.0, 15.0])


@dataclass(frozen=True)
class DemoSeries:
    """One series of a demo session and where it went."""

    number: int
    description: str
    folder: Path
    files: tuple[Path, ...]
    expected_datatype: str | None  # BIDS datatype the default config should map it to; None = excluded
    expected_suffix: str | None


@dataclass(frozen=True)
class DemoSession:
    """A fake patient's visit: the identity planted in it and where its export was written."""

    subject_index: int  # 1-based
    session_index: int  # 1-based
    family_name: str
    given_name: str
    patient_name: str  # DICOM PN, FAMILY^GIVEN
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    age: str  # DICOM AS, e.g. 042Y
    weight: str  # kg
    size: str  # m
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession: str
    study_id: str
    study_instance_uid: str
    patient_folder: Path
    folder: Path  # the study folder of this session
    series: tuple[DemoSeries, ...] = ()
    planted: dict[str, str] = field(default_factory=dict)
    junk: tuple[Path, ...] = ()

    def series_by_description(self, description: str) -> DemoSeries:
        for series in self.series:
            if series.description == description:
                return series
        raise KeyError(description)


# --------------------------------------------------------------------------------------------------
# identities


@dataclass(frozen=True)
class _Patient:
    index: int
    family: str
    given: str
    sex: str
    patient_id: str
    other_id: str
    birth: date
    weight: float
    size: float
    address: str
    phone: str
    referring: str
    first_study: date


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _make_patients(subjects: int, seed: int) -> list[_Patient]:
    rng = np.random.default_rng([seed, 7031])
    families = list(FAMILY_NAMES)
    rng.shuffle(families)
    patients = []
    for i in range(subjects):
        # Pairs of participants share a sex (M, M, F, F, ...) so the demo's consenting pair (3 and 4) can form
        # a k-anonymous group once ages are generalised; the random draw stays so every other value is as before.
        rng.random()
        sex = "M" if (i // 2) % 2 == 0 else "F"
        given = _pick(rng, GIVEN_NAMES_F if sex == "F" else GIVEN_NAMES_M)
        family = families[i % len(families)]
        if i >= len(families):  # more patients than names: make the family name unique again
            family = f"{family}{chr(ord('A') + (i // len(families)) % 26)}X"
        birth = date(1948, 1, 1) + timedelta(days=int(rng.integers(0, 52 * 365)))
        first_study = date(2021, 1, 4) + timedelta(days=int(rng.integers(0, 700)))
        patients.append(
            _Patient(
                index=i + 1,
                family=family,
                given=given,
                sex=sex,
                patient_id=f"HX{int(rng.integers(1_000_000, 9_999_999))}",
                other_id=f"NHN{int(rng.integers(100_000_000, 999_999_999))}",
                birth=birth,
                weight=round(float(rng.uniform(52, 96)), 1),
                size=round(float(rng.uniform(1.55, 1.95)), 2),
                address=f"{int(rng.integers(3, 180))} {_pick(rng, STREETS)}, {_pick(rng, TOWNS)}",
                phone=f"+44 1632 {int(rng.integers(100000, 999999))}",
                referring=f"{_pick(rng, STAFF_FAMILY)}^{_pick(rng, STAFF_GIVEN)}^^DR",
                first_study=first_study,
            )
        )
    return patients


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


# --------------------------------------------------------------------------------------------------
# images


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """pydeface's full-head template (with face) as float32 data and its voxel-to-RAS affine."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("pydeface")
    if spec is None or spec.origin is None:
        raise BidsafeError("pydeface is not installed: its head template is needed for demo data")
    path = Path(spec.origin).parent / "data" / "mean_reg2mean.nii.gz"
    if not path.is_file():
        raise BidsafeError("pydeface's head template is missing", path)
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine.astype(np.float64)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass(frozen=True)
class Geometry:
    """A stack of parallel slices in patient (LPS) coordinates, as DICOM describes it."""

    rows: int
    columns: int
    slices: int
    row_dir: tuple[float, float, float]  # IOP[0:3]: direction of increasing column index
    col_dir: tuple[float, float, float]  # IOP[3:6]: direction of increasing row index
    row_spacing: float  # PixelSpacing[0]: distance between rows
    col_spacing: float  # PixelSpacing[1]: distance between columns
    slice_spacing: float  # centre-to-centre
    slice_thickness: float
    centre: tuple[float, float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.array(self.row_dir), np.array(self.col_dir))

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice k (centre of its first transmitted pixel)."""
        r, c = np.array(self.row_dir), np.array(self.col_dir)
        first = (
            np.array(self.centre)
            - (self.columns - 1) / 2 * self.col_spacing * r
            - (self.rows - 1) / 2 * self.row_spacing * c
            - (self.slices - 1) / 2 * self.slice_spacing * self.normal
        )
        return first + k * self.slice_spacing * self.normal

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix from (column, row, slice) voxel indices to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, 0] = np.array(self.row_dir) * self.col_spacing
        affine[:3, 1] = np.array(self.col_dir) * self.row_spacing
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.position(0)
        return affine


def _sample_head(geometry: Geometry, pose: np.ndarray) -> np.ndarray:
    """Template intensities at every voxel of `geometry`, for a head moved by the 4x4 RAS `pose`.

    One affine chain maps output (slice, row, column) indices to template voxel indices, so no grid of
    coordinates is ever materialised.
    """
    from scipy import ndimage

    data, affine = _template()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    # (column, row, slice) -> template (i, j, k); reorder the input axes to (slice, row, column).
    chain = np.linalg.inv(affine) @ np.linalg.inv(pose) @ lps_to_ras @ geometry.affine_lps()
    krc_to_crs = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    matrix = chain @ krc_to_crs
    values = ndimage.affine_transform(
        data, matrix[:3, :3], offset=matrix[:3, 3], order=1, mode="constant", cval=0.0,
        output_shape=(geometry.slices, geometry.rows, geometry.columns), output=np.float32,
    )
    return values


def _t2_contrast(t1: np.ndarray) -> np.ndarray:
    """Remap the template's T1-like intensities to a T2-like contrast (CSF bright, white matter dark)."""
    knots = [0, 20, 60, 130, 200, 270, 360, 420, 520, 700]
    values = [0, 0, 250, 950, 800, 620, 380, 450, 650, 650]
    return np.interp(t1, knots, values).astype(np.float32)


def _to_int16(volume: np.ndarray, rng: np.random.Generator, scale: float, noise: float) -> np.ndarray:
    noisy = volume * scale + rng.normal(0.0, noise, size=volume.shape)
    return np.clip(np.rint(np.abs(noisy)), 0, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# DICOM


@dataclass
class _Context:
    """Everything one session's files share."""

    patient: _Patient
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

    def uid(self, *parts: object) -> str:
        return generate_uid(
            entropy_srcs=["bidsafe-demo", str(self.seed), str(self.patient.index), str(self.session_index)]
            + [str(p) for p in parts]
        )

    @property
    def patient_name(self) -> str:
        return f"{self.patient.family}^{self.patient.given}"


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _identity(ds: Dataset, ctx: _Context) -> None:
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
    ds.PatientBirthDate = _da(p.birth)
    ds.PatientSex = p.sex
    other = Dataset()
    other.PatientID = p.other_id
    other.IssuerOfPatientID = "NATIONAL HEALTH NUMBER"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientAge = _age(p.birth, ctx.study_date)
    ds.PatientSize = f"{p.size:.2f}"
    ds.PatientWeight = f"{p.weight:.1f}"
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ds.AdditionalPatientHistory = f"Follow-up for {p.given.title()} {p.family.title()}, MRN {p.patient_id}"
    ds.PatientComments = f"{name} prefers morning slots; call {p.phone}"
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.StudyID = ctx.study_id
    request = Dataset()
    request.AccessionNumber = ctx.accession
    request.RequestedProcedureID = ctx.requested_procedure_id
    request.ScheduledProcedureStepID = ctx.step_id
    request.RequestedProcedureDescription = "MRI BRAIN RESEARCH"
    request.ScheduledProcedureStepDescription = f"Research brain MRI {p.family}"
    request.StudyInstanceUID = ctx.study_uid
    # Not in the standard's item, but real worklist brokers copy the name in (dcm2niix then reads it).
    request.PatientName = name
    ds.RequestAttributesSequence = [request]
    ds.ImageComments = f"{p.family} {p.given} {p.patient_id}"
    block = ds.private_block(PACS_PRIVATE_GROUP, PACS_PRIVATE_CREATOR, create=True)
    block.add_new(0x13, "OB", name.encode("utf-8"))
    block.add_new(0x15, "OB", p.patient_id.encode("utf-8"))
    block.add_new(0x17, "OB", _da(p.birth).encode("utf-8"))


def _planted(ctx: _Context, patient_folder: str) -> dict[str, str]:
    """Every distinctive personal value planted in the export (field -> value).

    Short values that occur by chance anywhere (sex, weight, size) are left out on purpose: they are the
    session's attributes but a substring scan for them means nothing.
    """
    p = ctx.patient
    ds = Dataset()
    _identity(ds, ctx)
    return {
        "PatientName": ctx.patient_name,
        "PatientFamilyName": p.family,
        "PatientGivenName": p.given,
        "PatientID": p.patient_id,
        "IssuerOfPatientID": ISSUER_OF_PATIENT_ID,
        "OtherPatientIDs": p.other_id,
        "PatientBirthDate": _da(p.birth),
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
        "StudyDate": _da(ctx.study_date),
        "StudyDescription": ds.StudyDescription,
        "AdditionalPatientHistory": ds.AdditionalPatientHistory,
        "PatientComments": ds.PatientComments,
        "ImageComments": ds.ImageComments,
        "PatientFolder": patient_folder,
    }


def _base(ctx: _Context, sop_class: str, sop_uid: str, when: datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = _da(when)
    ds.InstanceCreationTime = _tm(when)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = _da(ctx.study_date)
    ds.StudyTime = _tm(ctx.study_time)
    return ds


@dataclass(frozen=True)
class _MRSeries:
    """Acquisition parameters of one MR series."""

    key: str
    number: int
    description: str
    geometry: Geometry
    image_type: tuple[str, ...]
    scanning_sequence: str
    sequence_variant: str
    sequence_name: str
    acquisition_type: str
    repetition_time: float  # ms
    echo_time: float  # ms
    flip_angle: float
    start_offset_s: float  # series start after the study start
    inversion_time: float | None = None
    echo_train_length: int = 1
    pixel_bandwidth: float = 244.0
    phase_direction: str = "COL"
    scan_options: str = ""
    phase_positive: int | None = None  # CSA PhaseEncodingDirectionPositive (EPI only)
    bandwidth_phase: float | None = None  # CSA BandwidthPerPixelPhaseEncode, Hz/pixel (EPI only)


def _write_dataset(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def _mr_file(
    ctx: _Context,
    series: _MRSeries,
    series_uid: str,
    pixels: np.ndarray,
    slice_index: int,
    instance: int,
    acquired: datetime,
    temporal: tuple[int, int] | None = None,
    trigger_time_ms: float | None = None,
    diffusion: tuple[float, tuple[float, float, float] | None] | None = None,
    image_type: tuple[str, ...] | None = None,
) -> Dataset:
    g = series.geometry
    sop_uid = ctx.uid(series.key, "sop", instance)
    series_start = ctx.study_time + timedelta(seconds=series.start_offset_s)
    ds = _base(ctx, MR_IMAGE_STORAGE, sop_uid, series_start)
    ds.ImageType = list(image_type or series.image_type)
    ds.SeriesDate = _da(ctx.study_date)
    ds.AcquisitionDate = _da(ctx.study_date)
    ds.ContentDate = _da(ctx.study_date)
    ds.SeriesTime = _tm(series_start)
    ds.AcquisitionTime = _tm(acquired)
    ds.ContentTime = _tm(acquired)
    ds.AcquisitionDateTime = _dt(acquired)
    ds.Modality = "MR"
    ds.Manufacturer = MANUFACTURER
    _identity(ds, ctx)
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = MODEL
    ds.BodyPartExamined = "HEAD"
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
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = f"{IMAGING_FREQUENCY:g}"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = f"{FIELD_STRENGTH:g}"
    ds.SpacingBetweenSlices = f"{g.slice_spacing:g}"
    ds.EchoTrainLength = str(series.echo_train_length)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = f"{series.pixel_bandwidth:g}"
    ds.SoftwareVersions = SOFTWARE.split("\\")
    ds.ProtocolName = series.description  # Siemens: the protocol name is the series description
    if trigger_time_ms is not None:
        ds.TriggerTime = f"{trigger_time_ms:g}"
    ds.ReceiveCoilName = "32Ch Head"
    ds.AcquisitionMatrix = [0, g.columns, g.rows, 0] if series.phase_direction == "COL" else [g.columns, 0, 0, g.rows]
    ds.InPlanePhaseEncodingDirection = series.phase_direction
    ds.FlipAngle = f"{series.flip_angle:g}"
    ds.PatientPosition = "HFS"
    if diffusion is not None:
        bvalue, direction = diffusion
        ds.DiffusionBValue = float(bvalue)
        if direction is None:
            ds.DiffusionDirectionality = "NONE"
        else:
            ds.DiffusionDirectionality = "DIRECTIONAL"
            ds.DiffusionGradientOrientation = [float(v) for v in direction]
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = str(series.number)
    ds.AcquisitionNumber = str(temporal[0] if temporal else 1)
    ds.InstanceNumber = str(instance)
    position = g.position(slice_index)
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*g.row_dir, *g.col_dir)]
    ds.FrameOfReferenceUID = ctx.frame_uid
    if temporal is not None:
        ds.TemporalPositionIdentifier = str(temporal[0])
        ds.NumberOfTemporalPositions = str(temporal[1])
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(np.dot(position, g.normal)):.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = g.rows
    ds.Columns = g.columns
    ds.PixelSpacing = [f"{g.row_spacing:g}", f"{g.col_spacing:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = str(int(pixels.max()) // 2)
    ds.WindowWidth = str(max(int(pixels.max()), 1))
    csa_tags: list[tuple[str, str, list[str]]] = [("ImaCoilString", "LO", ["HC1-7"])]
    if series.phase_positive is not None:
        csa_tags.append(("PhaseEncodingDirectionPositive", "IS", [str(series.phase_positive)]))
    if series.bandwidth_phase is not None:
        csa_tags.append(("BandwidthPerPixelPhaseEncode", "FD", [f"{series.bandwidth_phase:.8f}"]))
    csa_tags.append(("SliceNormalVector", "FD", [f"{v:.8f}" for v in g.normal]))
    block = ds.private_block(SIEMENS_CSA_GROUP, SIEMENS_CSA_CREATOR, create=True)
    block.add_new(SIEMENS_CSA_IMAGE_ELEMENT, "OB", siemens_csa_header(csa_tags))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


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


@dataclass(frozen=True)
class _Naming:
    """How one series' folder and files are named (exports mix conventions)."""

    folder: Callable[[int, str], str]
    file: Callable[[int, str], str]  # (instance, sop uid) -> name


def _series_folder_name(number: int, description: str) -> str:
    return f"Series_{number:03d}_{'_'.join(description.split())}"


def _write_volume_series(
    ctx: _Context,
    study_folder: Path,
    series: _MRSeries,
    naming: _Naming,
    volumes: Sequence[np.ndarray],
    slice_times_s: Sequence[float] | None = None,
    diffusion: Sequence[tuple[float, tuple[float, float, float] | None]] | None = None,
) -> tuple[Path, tuple[Path, ...]]:
    """Write 3D volumes (each (slices, rows, columns)) as one file per slice, volumes one after the other."""
    folder = study_folder / naming.folder(series.number, series.description)
    series_uid = ctx.uid(series.key, "series")
    series_start = ctx.study_time + timedelta(seconds=series.start_offset_s)
    files = []
    n_vol = len(volumes)
    tr_s = series.repetition_time / 1000.0
    # 2D series acquire their slices one after another within each TR (interleaved); a 3D volume at once.
    if slice_times_s is not None:
        times = list(slice_times_s)
    elif series.acquisition_type == "2D":
        times = _interleaved_slice_times(series.geometry.slices, tr_s)
    else:
        times = [0.0] * series.geometry.slices
    instance = 0
    for v, volume in enumerate(volumes):
        for k in range(series.geometry.slices):
            instance += 1
            slice_offset = times[k]
            acquired = series_start + timedelta(seconds=v * tr_s + slice_offset)
            ds = _mr_file(
                ctx,
                series,
                series_uid,
                volume[k],
                k,
                instance,
                acquired,
                temporal=(v + 1, n_vol) if n_vol > 1 else None,
                trigger_time_ms=slice_offset * 1000.0 if slice_times_s is not None else None,
                diffusion=diffusion[v] if diffusion is not None else None,
            )
            path = folder / naming.file(instance, ds.SOPInstanceUID)
            _write_dataset(ds, path)
            files.append(path)
    return folder, tuple(files)


def _interleaved_slice_times(slices: int, tr_s: float) -> list[float]:
    """Interleaved ascending order: even-indexed slices first, then odd ones."""
    order = list(range(0, slices, 2)) + list(range(1, slices, 2))
    step = tr_s / slices
    times = [0.0] * slices
    for position, k in enumerate(order):
        times[k] = round(position * step, 4)
    return times


DWI_BVALUE = 1000.0
# Six non-collinear unit directions (patient LPS frame, as DiffusionGradientOrientation stores them).
DWI_DIRECTIONS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.707107, 0.707107, 0.0),
    (0.707107, 0.0, 0.707107),
    (0.0, 0.707107, 0.707107),
)
BOLD_VOLUMES = 12
BOLD_TR_MS = 2000.0


def _oblique_axial(rows: int, columns: int, slices: int, pixel: float, spacing: float, thickness: float,
                   tilt_deg: float, centre: np.ndarray) -> Geometry:
    t = math.radians(tilt_deg)
    return Geometry(
        rows=rows,
        columns=columns,
        slices=slices,
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, round(math.cos(t), 6), round(math.sin(t), 6)),
        row_spacing=pixel,
        col_spacing=pixel,
        slice_spacing=spacing,
        slice_thickness=thickness,
        centre=tuple(float(v) for v in centre),
    )


def _session_pose(rng: np.random.Generator) -> np.ndarray:
    """A small head movement in the scanner (RAS, about the head centre): each visit sits differently."""
    angles = np.radians(rng.uniform(-4.0, 4.0, size=3))
    shift = rng.uniform(-4.0, 4.0, size=3)
    centre_ras = HEAD_CENTRE_LPS * np.array([-1.0, -1.0, 1.0])
    pose = np.eye(4)
    pose[:3, :3] = _rotation(*angles)
    pose[:3, 3] = centre_ras - pose[:3, :3] @ centre_ras + shift
    return pose


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


def _write_screenshot(ctx: _Context, folder: Path, name_of: Callable[[int], str]) -> tuple[Path, ...]:
    p = ctx.patient
    rows, columns = 256, 384
    when = ctx.study_time + timedelta(minutes=31)
    lines = [
        f"{p.family}, {p.given}",
        f"ID {p.patient_id}   DOB {_da(p.birth)}",
        f"{INSTITUTION}",
        f"ACC {ctx.accession}   {_da(ctx.study_date)}",
        "DTI COLOR FA SUMMARY",
    ]
    pixels = _screenshot_pixels(lines, rows, columns)
    sop_uid = ctx.uid("screen", "sop", 1)
    ds = _base(ctx, SECONDARY_CAPTURE_STORAGE, sop_uid, when)
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SeriesDate = _da(ctx.study_date)
    ds.ContentDate = _da(ctx.study_date)
    ds.SeriesTime = _tm(when)
    ds.ContentTime = _tm(when)
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = MANUFACTURER
    _identity(ds, ctx)
    ds.SeriesDescription = "Screen Save"
    ds.ManufacturerModelName = MODEL
    ds.SoftwareVersions = SOFTWARE.split("\\")
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = ctx.uid("screen", "series")
    ds.SeriesNumber = "900"
    ds.InstanceNumber = "1"
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    path = folder / name_of(1)
    _write_dataset(ds, path)
    return (path,)


def _write_localizer(ctx: _Context, study_folder: Path, pose: np.ndarray, rng: np.random.Generator) -> DemoSeries:
    """Three planes x three slices, each plane its own orientation (as scanners write them)."""
    planes = {
        "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
        "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    }
    geometries = [
        Geometry(rows=128, columns=128, slices=3, row_dir=row_dir, col_dir=col_dir, row_spacing=2.0,
                 col_spacing=2.0, slice_spacing=10.0, slice_thickness=8.0,
                 centre=tuple(float(v) for v in HEAD_CENTRE_LPS))
        for row_dir, col_dir in planes.values()
    ]
    series = _MRSeries(
        key="localizer", number=1, description="localizer", geometry=geometries[0],
        image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), scanning_sequence="GR", sequence_variant="SP\\OSP",
        sequence_name="*fl2d1", acquisition_type="2D", repetition_time=8.6, echo_time=4.0, flip_angle=20,
        start_offset_s=0.0,
    )
    folder = study_folder / f"SE{series.number:06d}"
    series_uid = ctx.uid("localizer", "series")
    files = []
    instance = 0
    for g in geometries:
        plane_series = dataclasses.replace(series, geometry=g)
        volume = _to_int16(_sample_head(g, pose), rng, 2.0, 6.0)
        for k in range(g.slices):
            instance += 1
            acquired = ctx.study_time + timedelta(seconds=instance * 0.8)
            ds = _mr_file(ctx, plane_series, series_uid, volume[k], k, instance, acquired)
            path = folder / f"IM_{instance:04d}"
            _write_dataset(ds, path)
            files.append(path)
    return DemoSeries(series.number, series.description, folder, tuple(files), None, None)


def _write_session(ctx: _Context, study_folder: Path) -> list[DemoSeries]:
    rng = np.random.default_rng([ctx.seed, ctx.patient.index, ctx.session_index, 2])
    pose = _session_pose(rng)
    p = ctx.patient
    written: list[DemoSeries] = [_write_localizer(ctx, study_folder, pose, rng)]

    # 3D T1w, sagittal, 1 mm: rows run head to foot, columns front to back.
    t1_geometry = Geometry(rows=224, columns=224, slices=176, row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0),
                           row_spacing=1.0, col_spacing=1.0, slice_spacing=1.0, slice_thickness=1.0,
                           centre=tuple(float(v) for v in HEAD_CENTRE_LPS))
    t1 = _MRSeries(key="t1", number=2, description="t1_mprage_sag_p2_iso", geometry=t1_geometry,
                   image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), scanning_sequence="GR\\IR",
                   sequence_variant="SK\\SP\\MP", sequence_name="*tfl3d1_16ns", acquisition_type="3D",
                   repetition_time=2300.0, echo_time=2.98, inversion_time=900.0, flip_angle=9, start_offset_s=60.0,
                   scan_options="IR", pixel_bandwidth=240.0)
    head = _sample_head(t1_geometry, pose)
    t1_name = f"{p.family}_{p.given}"
    folder, files = _write_volume_series(
        ctx, study_folder, t1,
        _Naming(_series_folder_name, lambda i, _uid: f"{t1_name}.MR.{t1.number:04d}.{i:04d}.IMA"),
        [_to_int16(head, rng, 4.0, 8.0)],
    )
    written.append(DemoSeries(t1.number, t1.description, folder, files, "anat", "T1w"))
    del head

    # T2w, axial 1 x 1 x 2 mm with a non-square matrix (192 columns left-right, 224 rows front-back).
    t2_geometry = Geometry(rows=224, columns=192, slices=100, row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 1.0, 0.0),
                           row_spacing=1.0, col_spacing=1.0, slice_spacing=2.0, slice_thickness=2.0,
                           centre=tuple(float(v) for v in HEAD_CENTRE_LPS))
    t2 = _MRSeries(key="t2", number=3, description="t2_tse_tra", geometry=t2_geometry,
                   image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), scanning_sequence="SE",
                   sequence_variant="SK\\SP\\OSP", sequence_name="*tse2d1_16", acquisition_type="2D",
                   repetition_time=6000.0, echo_time=102.0, flip_angle=150, start_offset_s=420.0,
                   echo_train_length=16, pixel_bandwidth=190.0)
    head = _t2_contrast(_sample_head(t2_geometry, pose))
    folder, files = _write_volume_series(
        ctx, study_folder, t2, _Naming(lambda n, _d: f"SE{n:06d}", lambda i, _uid: f"IM{i:05d}"),
        [_to_int16(head, rng, 2.0, 8.0)],
    )
    written.append(DemoSeries(t2.number, t2.description, folder, files, "anat", "T2w"))
    del head

    # EPI series share one oblique slab over the cerebrum: 64 x 64 at 3 mm, 30 slices 3 mm thick, 0.5 mm gap.
    epi_geometry = _oblique_axial(64, 64, 30, 3.0, 3.5, 3.0, tilt_deg=12.0, centre=BRAIN_CENTRE_LPS)
    epi_head = _t2_contrast(_sample_head(epi_geometry, pose))

    bold = _MRSeries(key="bold", number=4, description="ep2d_bold_rest", geometry=epi_geometry,
                     image_type=("ORIGINAL", "PRIMARY", "M", "ND"), scanning_sequence="EP",
                     sequence_variant="SK\\SS", sequence_name="*epfid2d1_64", acquisition_type="2D",
                     repetition_time=BOLD_TR_MS, echo_time=30.0, flip_angle=77, start_offset_s=840.0,
                     scan_options="FS", pixel_bandwidth=2232.0, phase_positive=1, bandwidth_phase=31.25)
    slice_times = _interleaved_slice_times(epi_geometry.slices, BOLD_TR_MS / 1000.0)
    drift = rng.normal(0.0, 0.01, size=BOLD_VOLUMES)
    volumes = [_to_int16(epi_head * (1.0 + drift[v]), rng, 1.5, 10.0) for v in range(BOLD_VOLUMES)]
    folder, files = _write_volume_series(
        ctx, study_folder, bold,
        _Naming(_series_folder_name, lambda _i, uid: f"MR.{uid}.dcm"), volumes, slice_times_s=slice_times,
    )
    written.append(DemoSeries(bold.number, bold.description, folder, files, "func", "bold"))

    dwi = _MRSeries(key="dwi", number=5, description="ep2d_diff_6dir", geometry=epi_geometry,
                    image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND"), scanning_sequence="EP",
                    sequence_variant="SK\\SP", sequence_name="*ep_b1000", acquisition_type="2D",
                    repetition_time=8000.0, echo_time=81.0, flip_angle=90, start_offset_s=1200.0,
                    scan_options="PFP\\FS", pixel_bandwidth=1628.0, phase_positive=1, bandwidth_phase=25.0)
    diffusion: list[tuple[float, tuple[float, float, float] | None]] = [(0.0, None)]
    diffusion += [(DWI_BVALUE, d) for d in DWI_DIRECTIONS]
    adc = np.where(epi_head > 800, 2.5e-3, 0.8e-3).astype(np.float32)
    dwi_volumes = []
    for bvalue, direction in diffusion:
        weight = 1.0 if direction is None else 1.0 + 0.3 * abs(direction[0])  # a little anisotropy
        dwi_volumes.append(_to_int16(epi_head * np.exp(-bvalue * adc * weight), rng, 1.5, 8.0))
    folder, files = _write_volume_series(
        ctx, study_folder, dwi, _Naming(lambda n, _d: f"DTI_{n:02d}", lambda i, _uid: f"IM_{i:04d}"),
        dwi_volumes, diffusion=diffusion,
    )
    written.append(DemoSeries(dwi.number, dwi.description, folder, files, "dwi", "dwi"))

    # Spin-echo EPI pair with opposite phase-encoding polarity, each blurred along its own direction.
    # PhaseEncodingDirectionPositive 1 is anterior-to-posterior here (dcm2niix: "j-"), 0 the reverse ("j").
    for number, label, positive, shift in ((6, "AP", 1, 1), (7, "PA", 0, -1)):
        fmap = _MRSeries(key=f"fmap{label}", number=number, description=f"SpinEchoFieldMap_{label}",
                         geometry=epi_geometry, image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
                         scanning_sequence="EP", sequence_variant="SK\\SP", sequence_name="*epse2d1_64",
                         acquisition_type="2D", repetition_time=7000.0, echo_time=60.0, flip_angle=90,
                         start_offset_s=1500.0 + 30.0 * (number - 6), pixel_bandwidth=2232.0,
                         phase_positive=positive, bandwidth_phase=31.25)
        distorted = np.roll(epi_head, shift, axis=1)
        folder, files = _write_volume_series(
            ctx, study_folder, fmap,
            _Naming(lambda n, _d: f"{n:03d}_fmap", lambda i, _uid: f"{i:06d}.dcm"),
            [_to_int16(distorted, rng, 1.5, 8.0)],
        )
        written.append(DemoSeries(fmap.number, fmap.description, folder, files, "fmap", "epi"))

    screen_folder = study_folder / "SCREENSHOTS"
    files = _write_screenshot(ctx, screen_folder, lambda i: f"SC_{p.family}_{i:03d}.dcm")
    written.append(DemoSeries(900, "Screen Save", screen_folder, files, None, None))
    return written


def _write_junk(ctx: _Context, study_folder: Path, series: Sequence[DemoSeries]) -> tuple[Path, ...]:
    """What real inboxes receive next to the images: a DICOMDIR, a note, an empty file, a cut-off file."""
    junk = []
    dicomdir = study_folder / "DICOMDIR"
    dicomdir.write_bytes(_dicomdir_bytes(ctx, study_folder, series))
    junk.append(dicomdir)
    note = study_folder / "export_note.txt"
    note.write_text(
        f"Export for {ctx.patient.given.title()} {ctx.patient.family.title()} ({ctx.patient.patient_id})\n"
        f"Accession {ctx.accession}, burned by {STATION}\n",
        encoding="utf-8",
    )
    junk.append(note)
    empty = study_folder / "LOCKFILE"
    empty.write_bytes(b"")
    junk.append(empty)
    source = series[1].files[0]
    truncated = series[1].folder / "IM_TRUNCATED"
    truncated.write_bytes(source.read_bytes()[:300])
    junk.append(truncated)
    return tuple(junk)


def _dicomdir_bytes(ctx: _Context, study_folder: Path, series: Sequence[DemoSeries]) -> bytes:
    """A Media Storage Directory (DICOMDIR) referencing the first file of each series, written by pydicom."""
    import tempfile

    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fileset = FileSet()
    fileset.ID = "DEMOEXPORT"
    fileset.UID = ctx.uid("fileset")
    for one in series:
        fileset.add(dcmread(one.files[0]))
    with tempfile.TemporaryDirectory() as tmp:
        fileset.write(tmp)
        return (Path(tmp) / "DICOMDIR").read_bytes()


# --------------------------------------------------------------------------------------------------
# public API


def _plan(out_dir: Path, subjects: int, sessions: int, seed: int) -> list[tuple[_Context, Path, Path]]:
    """Every session's shared context, patient folder and study folder, from the seed alone."""
    if subjects < 1 or sessions < 1:
        raise BidsafeError("--subjects and --sessions must be at least 1")
    planned = []
    for patient in _make_patients(subjects, seed):
        rng = np.random.default_rng([seed, patient.index, 11])
        patient_folder = Path(out_dir) / f"{patient.family}_{patient.given}_{_da(patient.birth)}"
        study_day = patient.first_study
        for s in range(1, sessions + 1):
            if s > 1:
                study_day = study_day + timedelta(days=int(rng.integers(90, 240)))
            start = datetime(study_day.year, study_day.month, study_day.day, int(rng.integers(8, 17)),
                             int(rng.integers(0, 60)), int(rng.integers(0, 60)))
            ctx = _Context(
                patient=patient,
                session_index=s,
                seed=seed,
                study_date=study_day,
                study_time=start,
                accession=f"RAD{int(rng.integers(10_000_000, 99_999_999))}",
                study_id=f"EX{int(rng.integers(100_000, 999_999))}",
                study_uid="",
                frame_uid="",
                operator=f"{_pick(rng, STAFF_FAMILY)}^{_pick(rng, STAFF_GIVEN)}",
                performing=f"{_pick(rng, STAFF_FAMILY)}^{_pick(rng, STAFF_GIVEN)}^^DR",
                requested_procedure_id=f"RP{int(rng.integers(1_000_000, 9_999_999))}",
                step_id=f"SPS{int(rng.integers(1_000_000, 9_999_999))}",
            )
            ctx.study_uid = ctx.uid("study")
            ctx.frame_uid = ctx.uid("frame")
            planned.append((ctx, patient_folder, patient_folder / f"{_da(study_day)}_{ctx.accession}"))
    return planned


def _session_record(
    ctx: _Context, patient_folder: Path, folder: Path, series: Sequence[DemoSeries] = (),
    junk: Sequence[Path] = (),
) -> DemoSession:
    p = ctx.patient
    return DemoSession(
        subject_index=p.index,
        session_index=ctx.session_index,
        family_name=p.family,
        given_name=p.given,
        patient_name=ctx.patient_name,
        patient_id=p.patient_id,
        birth_date=_da(p.birth),
        sex=p.sex,
        age=_age(p.birth, ctx.study_date),
        weight=f"{p.weight:.1f}",
        size=f"{p.size:.2f}",
        study_date=_da(ctx.study_date),
        study_time=ctx.study_time.strftime("%H%M%S"),
        accession=ctx.accession,
        study_id=ctx.study_id,
        study_instance_uid=ctx.study_uid,
        patient_folder=patient_folder,
        folder=folder,
        series=tuple(series),
        planted=_planted(ctx, patient_folder.name),
        junk=tuple(junk),
    )


def plan_sessions(out_dir: Path, subjects: int = 2, sessions: int = 1, seed: int = 0) -> list[DemoSession]:
    """What `generate` would write (identities, planted values, folders) without writing anything.

    `series` and `junk` are empty. Cheap: use it where only the identities matter (consent registries,
    expected labels). A patient does not depend on how many patients follow it.
    """
    return [_session_record(ctx, patient_folder, folder)
            for ctx, patient_folder, folder in _plan(Path(out_dir), subjects, sessions, seed)]


def generate(out_dir: Path, subjects: int = 2, sessions: int = 1, seed: int = 0,
             progress: Progress | None = None) -> list[DemoSession]:
    """Write `subjects` x `sessions` raw exports under `out_dir`; return what was planted where.

    Deterministic: the same arguments give the same bytes, and patient n's sessions do not depend on
    how many patients or later sessions are asked for. Each study folder appears whole (built in a
    temporary sibling, then renamed); an existing study folder of the same name is replaced. `progress`
    counts the sessions written (never a name: folders are named after the fake patients).
    """
    out_dir = Path(out_dir)
    planned = _plan(out_dir, subjects, sessions, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for ctx, patient_folder, final in planned:
        with atomic_dir(final) as tmp:
            series = _write_session(ctx, tmp)
            junk = _write_junk(ctx, tmp, series)
        result.append(_session_record(
            ctx, patient_folder, final,
            [_relocate(one, tmp, final) for one in series],
            [final / j.relative_to(tmp) for j in junk],
        ))
        if progress is not None:
            progress.advance()
    return result


def _relocate(series: DemoSeries, tmp: Path, final: Path) -> DemoSeries:
    return DemoSeries(
        series.number,
        series.description,
        final / series.folder.relative_to(tmp),
        tuple(final / f.relative_to(tmp) for f in series.files),
        series.expected_datatype,
        series.expected_suffix,
    )


def consent_level(subject_index: int, subjects: int) -> str:
    """Consent level of the demo participant `subject_index` (1-based) among `subjects`.

    Rule: participant 1 gave no consent to share (`none`), participant 2 consented to sharing with
    members only (`members`), everyone else consented to public release (`public`). With fewer than three
    participants there is simply no `public` one.
    """
    del subjects  # the rule does not depend on the count; kept so callers state what they have
    return {1: "none", 2: "members"}.get(subject_index, "public")


def write_consent_registry(sessions: Sequence[DemoSession], path: Path) -> Path:
    """Write a consent registry TSV (patient_id, study_id, consent, consent_form_id, withdrawn).

    One row per participant, as a research team keeps it: the research study's participant ID, the consent
    level (`consent_level`: participant 1 `none`, 2 `members`, others `public`) and the consent form's ID;
    nobody has withdrawn (`withdrawn` empty).
    """
    subjects = len({s.subject_index for s in sessions})
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["patient_id", "study_id", "consent", "consent_form_id", "withdrawn"])
    for index, patient_id in sorted({(s.subject_index, s.patient_id) for s in sessions}):
        writer.writerow([
            patient_id, f"BSF-{index:04d}", consent_level(index, subjects), f"CF-2021-{index:04d}", "",
        ])
    return atomic_write_text(path, buffer.getvalue())


def write_demographics(sessions: Sequence[DemoSession], path: Path, seed: int = 0) -> Path:
    """Write a demographics TSV, one row per patient: patient_id, gestational_age_weeks, birth_weight_kg,
    head_circumference_cm, radiology_score (plausible values, deterministic for the patient IDs and seed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["patient_id", "gestational_age_weeks", "birth_weight_kg", "head_circumference_cm",
                     "radiology_score"])
    seen = set()
    for s in sessions:
        if s.patient_id in seen:
            continue
        seen.add(s.patient_id)
        rng = np.random.default_rng([seed, s.subject_index, 23])
        weeks = float(np.clip(rng.normal(39.0, 1.6), 32.0, 42.0))
        weight = float(np.clip(rng.normal(3.4, 0.45) - (39.0 - weeks) * 0.15, 1.6, 4.8))
        head = float(np.clip(rng.normal(56.0 if s.sex == "M" else 55.0, 1.5), 51.0, 61.0))
        writer.writerow([s.patient_id, f"{weeks:.1f}", f"{weight:.2f}", f"{head:.1f}", int(rng.integers(0, 4))])
    return atomic_write_text(path, buffer.getvalue())


def cli_main(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not args.force:
        raise ConfigError("OUT_DIR exists and is not empty; give --force to write into it (study folders of the "
                          "same name are replaced)", out_dir)
    for option, target in (("--consent", args.consent), ("--demographics", args.demographics)):
        if target and Path(target).exists() and not args.force:
            raise ConfigError(f"{option}: the file exists; give --force to replace it", target)
    with Progress("bidsafe demo-data: writing", args.subjects * args.sessions, "sessions", every_s=0) as meter:
        sessions = generate(out_dir, subjects=args.subjects, sessions=args.sessions, seed=args.seed,
                            progress=meter)
    if args.consent:
        write_consent_registry(sessions, Path(args.consent))
    if args.demographics:
        write_demographics(sessions, Path(args.demographics), seed=args.seed)
    files = sum(len(series.files) for s in sessions for series in s.series)
    # Never print folder names here: they are named after the (fake) patients, like real exports.
    print(f"wrote {len(sessions)} sessions ({files} DICOM files) under {out_dir}")
    return 0


__all__ = [
    "DemoSeries",
    "DemoSession",
    "Geometry",
    "consent_level",
    "generate",
    "plan_sessions",
    "write_consent_registry",
    "write_demographics",
]

