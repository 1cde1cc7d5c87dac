"""The demo scan protocol as data: the scanner, and per series its DICOM acquisition attributes, slice
geometry, image contrast and noise, how the export names its folder and files, and what BIDS should make of it.

The session writer (`session.py`) walks `PROTOCOL` in order; the order is part of the output (random draws
and the DICOMDIR follow it), so a new series goes at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from bidsafe.demo.anatomy import BRAIN_CENTRE_LPS, HEAD_CENTRE_LPS, Geometry, centred, oblique_axial

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

MANUFACTURER = "SIEMENS"
MODEL = "Prisma_fit"
SOFTWARE = "syngo MR E11"
FIELD_STRENGTH = 3.0
IMAGING_FREQUENCY = 123.2594

# Attributes every MR image of this scanner carries, whatever the series.
MR_FIXED_ATTRIBUTES: dict[str, str] = {
    "BodyPartExamined": "HEAD",
    "NumberOfAverages": "1",
    "ImagingFrequency": f"{IMAGING_FREQUENCY:g}",
    "ImagedNucleus": "1H",
    "EchoNumbers": "1",
    "MagneticFieldStrength": f"{FIELD_STRENGTH:g}",
    "PercentSampling": "100",
    "PercentPhaseFieldOfView": "100",
    "ReceiveCoilName": "32Ch Head",
    "PatientPosition": "HFS",
}

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

# Localizer: three planes x three slices, each plane its own orientation (as scanners write them).
LOCALIZER_PLANES: tuple[Geometry, ...] = tuple(
    Geometry(rows=128, columns=128, slices=3, row_dir=row_dir, col_dir=col_dir, row_spacing=2.0,
             col_spacing=2.0, slice_spacing=10.0, slice_thickness=8.0, centre=centred(HEAD_CENTRE_LPS))
    for row_dir, col_dir in (
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # axial
        ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal
        ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # sagittal
    )
)
# 3D T1w, sagittal, 1 mm: rows run head to foot, columns front to back.
T1_GEOMETRY = Geometry(rows=224, columns=224, slices=176, row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0),
                       row_spacing=1.0, col_spacing=1.0, slice_spacing=1.0, slice_thickness=1.0,
                       centre=centred(HEAD_CENTRE_LPS))
# T2w, axial 1 x 1 x 2 mm with a non-square matrix (192 columns left-right, 224 rows front-back).
T2_GEOMETRY = Geometry(rows=224, columns=192, slices=100, row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 1.0, 0.0),
                       row_spacing=1.0, col_spacing=1.0, slice_spacing=2.0, slice_thickness=2.0,
                       centre=centred(HEAD_CENTRE_LPS))
# EPI series share one oblique slab over the cerebrum: 64 x 64 at 3 mm, 30 slices 3 mm thick, 0.5 mm gap.
EPI_GEOMETRY = oblique_axial(64, 64, 30, 3.0, 3.5, 3.0, tilt_deg=12.0, centre=BRAIN_CENTRE_LPS)


@dataclass(frozen=True)
class MRSeries:
    """Acquisition parameters of one MR series (its DICOM attributes)."""

    key: str  # names the series in its UIDs
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


@dataclass(frozen=True)
class SeriesSpec:
    """One row of the protocol: the series, its image and its place in the export.

    `folder` and `file` are str.format patterns (exports mix conventions); fields: number, words (the
    description with `_` for spaces), instance, uid (SOP instance UID), family and given (the patient's names).
    `volumes` says how the pixel volumes are made: `single` (one volume), `localizer` (one per plane of
    LOCALIZER_PLANES), `bold` (BOLD_VOLUMES with signal drift and slice timing), `dwi` (b0 + DWI_DIRECTIONS).
    """

    series: MRSeries
    folder: str
    file: str
    contrast: str  # "T1" (the template as is) or "T2" (t2_contrast)
    volumes: str
    scale: float  # template intensity -> pixel value
    noise: float  # standard deviation of the added noise, in pixel values
    roll: int = 0  # voxels the image is shifted along the rows (field-map distortion)
    datatype: str | None = None  # BIDS datatype the default config should map it to; None = excluded
    suffix: str | None = None


_MAGNITUDE = ("ORIGINAL", "PRIMARY", "M", "ND")
_SERIES_FOLDER = "Series_{number:03d}_{words}"

PROTOCOL: tuple[SeriesSpec, ...] = (
    SeriesSpec(
        MRSeries(key="localizer", number=1, description="localizer", geometry=LOCALIZER_PLANES[0],
                 image_type=(*_MAGNITUDE, "NORM"), scanning_sequence="GR", sequence_variant="SP\\OSP",
                 sequence_name="*fl2d1", acquisition_type="2D", repetition_time=8.6, echo_time=4.0, flip_angle=20,
                 start_offset_s=0.0),
        folder="SE{number:06d}", file="IM_{instance:04d}", contrast="T1", volumes="localizer", scale=2.0, noise=6.0,
    ),
    SeriesSpec(
        MRSeries(key="t1", number=2, description="t1_mprage_sag_p2_iso", geometry=T1_GEOMETRY,
                 image_type=(*_MAGNITUDE, "NORM"), scanning_sequence="GR\\IR", sequence_variant="SK\\SP\\MP",
                 sequence_name="*tfl3d1_16ns", acquisition_type="3D", repetition_time=2300.0, echo_time=2.98,
                 inversion_time=900.0, flip_angle=9, start_offset_s=60.0, scan_options="IR", pixel_bandwidth=240.0),
        folder=_SERIES_FOLDER, file="{family}_{given}.MR.{number:04d}.{instance:04d}.IMA", contrast="T1",
        volumes="single", scale=4.0, noise=8.0, datatype="anat", suffix="T1w",
    ),
    SeriesSpec(
        MRSeries(key="t2", number=3, description="t2_tse_tra", geometry=T2_GEOMETRY,
                 image_type=(*_MAGNITUDE, "NORM"), scanning_sequence="SE", sequence_variant="SK\\SP\\OSP",
                 sequence_name="*tse2d1_16", acquisition_type="2D", repetition_time=6000.0, echo_time=102.0,
                 flip_angle=150, start_offset_s=420.0, echo_train_length=16, pixel_bandwidth=190.0),
        folder="SE{number:06d}", file="IM{instance:05d}", contrast="T2", volumes="single", scale=2.0, noise=8.0,
        datatype="anat", suffix="T2w",
    ),
    SeriesSpec(
        MRSeries(key="bold", number=4, description="ep2d_bold_rest", geometry=EPI_GEOMETRY, image_type=_MAGNITUDE,
                 scanning_sequence="EP", sequence_variant="SK\\SS", sequence_name="*epfid2d1_64",
                 acquisition_type="2D", repetition_time=BOLD_TR_MS, echo_time=30.0, flip_angle=77,
                 start_offset_s=840.0, scan_options="FS", pixel_bandwidth=2232.0, phase_positive=1,
                 bandwidth_phase=31.25),
        folder=_SERIES_FOLDER, file="MR.{uid}.dcm", contrast="T2", volumes="bold", scale=1.5, noise=10.0,
        datatype="func", suffix="bold",
    ),
    SeriesSpec(
        MRSeries(key="dwi", number=5, description="ep2d_diff_6dir", geometry=EPI_GEOMETRY,
                 image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND"), scanning_sequence="EP",
                 sequence_variant="SK\\SP", sequence_name="*ep_b1000", acquisition_type="2D",
                 repetition_time=8000.0, echo_time=81.0, flip_angle=90, start_offset_s=1200.0,
                 scan_options="PFP\\FS", pixel_bandwidth=1628.0, phase_positive=1, bandwidth_phase=25.0),
        folder="DTI_{number:02d}", file="IM_{instance:04d}", contrast="T2", volumes="dwi", scale=1.5, noise=8.0,
        datatype="dwi", suffix="dwi",
    ),
    # Spin-echo EPI pair with opposite phase-encoding polarity, each blurred along its own direction.
    # PhaseEncodingDirectionPositive 1 is anterior-to-posterior here (dcm2niix: "j-"), 0 the reverse ("j").
    *(
        SeriesSpec(
            MRSeries(key=f"fmap{label}", number=number, description=f"SpinEchoFieldMap_{label}",
                     geometry=EPI_GEOMETRY, image_type=_MAGNITUDE, scanning_sequence="EP", sequence_variant="SK\\SP",
                     sequence_name="*epse2d1_64", acquisition_type="2D", repetition_time=7000.0, echo_time=60.0,
                     flip_angle=90, start_offset_s=start, pixel_bandwidth=2232.0, phase_positive=positive,
                     bandwidth_phase=31.25),
            folder="{number:03d}_fmap", file="{instance:06d}.dcm", contrast="T2", volumes="single", scale=1.5,
            noise=8.0, roll=shift, datatype="fmap", suffix="epi",
        )
        for number, label, positive, shift, start in ((6, "AP", 1, 1, 1500.0), (7, "PA", 0, -1, 1530.0))
    ),
)


@dataclass(frozen=True)
class ScreenSpec:
    """The secondary-capture screen save: the patient's name burned into its pixels."""

    number: int
    description: str
    folder: str
    file: str  # str.format pattern: family, instance
    rows: int
    columns: int
    minutes_after_start: int
    caption: str  # the last line of burned-in text, after the identity lines


SCREENSHOT = ScreenSpec(number=900, description="Screen Save", folder="SCREENSHOTS",
                        file="SC_{family}_{instance:03d}.dcm", rows=256, columns=384, minutes_after_start=31,
                        caption="DTI COLOR FA SUMMARY")
