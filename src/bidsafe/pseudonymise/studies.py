"""What the stage knows about each study: its files and header (from ingest's index), and the identity a
subject label is derived from (with the consent registry's study and consent form IDs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsafe.phi import harvest_dataset
from bidsafe.pseudonymise.consent import ConsentRecord, ConsentRegistry
from bidsafe.pseudonymise.linkage import StudyIdentity

REASON_NO_PATIENT_ID = "identity:no-patient-id"
REASON_CONFLICTING_IDS = "identity:conflicting-patient-ids"


@dataclass(frozen=True)
class Study:
    """Everything private the stage knows about one study."""

    uid: str
    relpaths: tuple[str, ...]
    patient_ids: tuple[str, ...]
    study_date: str
    study_time: str
    header: Dataset | None

    @property
    def patient_id(self) -> str:
        """The study's one PatientID; '' when missing or conflicting."""
        return self.patient_ids[0] if len(self.patient_ids) == 1 else ""

    @property
    def problem(self) -> str | None:
        """Why the study cannot be matched to a participant, or None."""
        if not self.patient_ids:
            return REASON_NO_PATIENT_ID
        if len(self.patient_ids) > 1:
            return REASON_CONFLICTING_IDS
        return None


def read_studies(index_tsv: Path, inbox: Path) -> list[Study]:
    """Every study of the ingest stage's index, sorted by UID, with one header read from the inbox."""
    studies: list[Study] = []
    for uid, rows in sorted(_read_index(index_tsv).items()):
        relpaths = tuple(sorted({r[0] for r in rows}))
        studies.append(Study(
            uid=uid, relpaths=relpaths, patient_ids=tuple(sorted({r[1] for r in rows} - {""})),
            study_date=_first(sorted(r[2] for r in rows)), study_time=_first(sorted(r[3] for r in rows)),
            header=_read_one_header(inbox, relpaths),
        ))
    return studies


def _read_index(index_tsv: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """study_uid -> [(relpath, patient_id, study_date, study_time)] from the ingest stage's index."""
    from bidsafe.ingest import read_index, sessions

    grouped = sessions(read_index(Path(index_tsv)))
    return {uid: [(r.relpath, r.patient_id.strip(), r.study_date.strip(), r.study_time.strip()) for r in rows]
            for uid, rows in grouped.items() if uid}


def _read_one_header(inbox: Path, relpaths: Sequence[str]) -> Dataset | None:
    """The first readable header of a session (header only); None when no file reads."""
    for relpath in relpaths:
        try:
            return pydicom.dcmread(Path(inbox) / relpath, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError,
                IndexError, NotImplementedError):
            continue  # an unreadable header only costs metadata; ingest already reported the file
    return None


def _first(values: Sequence[str]) -> str:
    return next((v for v in values if v), "")


def identity_of(study: Study, record: ConsentRecord | None) -> StudyIdentity:
    """What labelling needs: the identity a new label derives from and every ID it must not resemble."""
    patient_id = study.patient_id
    if record is not None and record.study_id:
        identity = f"study:{record.study_id}"
    elif patient_id:
        identity = f"patient:{patient_id}"
    else:
        identity = f"uid:{study.uid}"
    return StudyIdentity(
        study_uid=study.uid, identity=identity, patient_id=patient_id,
        study_ids=record.study_ids if record else (), consent_form_ids=record.consent_form_ids if record else (),
        study_date=study.study_date, study_time=study.study_time,
        identifiers=_identifiers(study.header, study.patient_ids, record),
    )


def registry_record(registry: ConsentRegistry | None, study: Study) -> ConsentRecord | None:
    """The registry's record of the study's participant (None without a registry or a single PatientID)."""
    return registry.lookup(study.patient_id) if (registry is not None and study.patient_id) else None


def _identifiers(header: Dataset | None, patient_ids: Sequence[str], record: ConsentRecord | None
                 ) -> frozenset[str]:
    """Every ID and name a label must not resemble (patient IDs, names, study and consent form IDs)."""
    values: set[str] = {p for p in patient_ids if p}
    if header is not None:
        for value in harvest_dataset(header):
            if value.category in ("id", "name"):
                values.update(value.renderings() if value.category == "name" else {value.value})
    if record is not None:
        values.update(record.study_ids)
        values.update(record.consent_form_ids)
        values.add(record.patient_id)
    return frozenset(v for v in values if v)
