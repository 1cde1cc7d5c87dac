"""What the demo generator returns: each session's planted identity and where its series went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
