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

Modules, data flowing one way: `protocol` (the scan protocol as a table: series, DICOM attributes, sizes,
naming) and `people` (the fake identities) are data; `anatomy` makes the head images; `dicomfiles` turns them
into datasets; `session` writes one study folder from the protocol; `build` plans and writes them all;
`registries` writes the consent and demographics tables; `cli` is the `bidsafe demo-data` command.
"""

from __future__ import annotations

from bidsafe.demo.anatomy import Geometry
from bidsafe.demo.build import generate, plan_sessions
from bidsafe.demo.dicomfiles import siemens_csa_header
from bidsafe.demo.protocol import DWI_BVALUE, DWI_DIRECTIONS
from bidsafe.demo.records import DemoSeries, DemoSession
from bidsafe.demo.registries import consent_level, write_consent_registry, write_demographics

__all__ = [
    "DWI_BVALUE",
    "DWI_DIRECTIONS",
    "DemoSeries",
    "DemoSession",
    "Geometry",
    "consent_level",
    "generate",
    "plan_sessions",
    "siemens_csa_header",
    "write_consent_registry",
    "write_demographics",
]
