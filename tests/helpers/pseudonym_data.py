"""Tiny fake scanner sessions for the pseudonymise tests: one or two header-only DICOM files per session, an
ingest-style index TSV and a consent registry, all written with pydicom and csv in a temp folder."""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from bidsafe.ingest import INDEX_COLUMNS

from helpers.mr_instances import MR_IMAGE, empty_mr


@dataclass(frozen=True)
class FakeSession:
    patient_id: str
    name: str  # DICOM PN, e.g. "QUILLFEATHER^MARISOL"
    study_date: str  # YYYYMMDD
    birth_date: str = ""
    sex: str = ""
    age: str = ""  # DICOM AS, used when birth_date is empty
    weight: str = ""
    size: str = ""
    study_id: str = "1"
    accession: str = ""
    study_time: str = "101500"
    study_uid: str = ""
    files: int = 2


def write_session(inbox: Path, session: FakeSession) -> tuple[str, list[str]]:
    """Write the session's files under a folder named after the patient (like real exports); (study uid, relpaths)."""
    study_uid = session.study_uid or generate_uid()
    series_uid = generate_uid()
    folder = inbox / f"{session.name.replace('^', '_')}_{session.patient_id}" / session.study_date
    folder.mkdir(parents=True, exist_ok=True)
    relpaths = []
    for number in range(1, session.files + 1):
        ds = empty_mr()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = session.name
        ds.PatientID = session.patient_id
        ds.PatientBirthDate = session.birth_date
        ds.PatientSex = session.sex
        if session.age:
            ds.PatientAge = session.age
        if session.weight:
            ds.PatientWeight = session.weight
        if session.size:
            ds.PatientSize = session.size
        ds.StudyDate = session.study_date
        ds.StudyTime = session.study_time
        ds.StudyID = session.study_id
        ds.AccessionNumber = session.accession
        ds.Modality = "MR"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        path = folder / f"IM{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        relpaths.append(path.relative_to(inbox).as_posix())
    return study_uid, relpaths


def write_index(index_tsv: Path, inbox: Path, sessions: Sequence[FakeSession]) -> dict[str, FakeSession]:
    """Write the sessions and an ingest-style index of them; {study_uid: session}."""
    by_uid = {}
    lines = []
    for session in sessions:
        study_uid, relpaths = write_session(inbox, session)
        by_uid[study_uid] = session
        for rel in relpaths:
            stat = (inbox / rel).stat()
            record = {
                "relpath": rel, "size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns),
                "study_uid": study_uid, "series_uid": "1.2.3", "sop_uid": generate_uid(),
                "patient_id": session.patient_id, "study_date": session.study_date,
                "study_time": session.study_time, "series_number": "1", "modality": "MR", "sop_class_uid": MR_IMAGE,
            }
            lines.append([record[c] for c in INDEX_COLUMNS])
    append_index(index_tsv, lines)
    return by_uid


def append_index(index_tsv: Path, lines: Sequence[Sequence[str]]) -> None:
    existing = index_tsv.read_text(encoding="utf-8").splitlines()[1:] if index_tsv.exists() else []
    with open(index_tsv, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        for line in existing:
            handle.write(line + "\n")
        writer.writerows(lines)


def write_registry(path: Path, rows: Sequence[Mapping[str, str]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or ["patient_id", "consent", "consent_form_id", "study_id", "withdrawn"])
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t" if path.suffix != ".csv" else ",",
                                lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def config(registry: Path | None, **overrides: object) -> dict:
    """A stage config as the workflow passes it (schema defaults filled in)."""
    base: dict = {
        "consent": str(registry) if registry else None,
        "demographics": None,
        "pseudonyms": {"scheme": "hmac"},
        "release": {"audience": "public", "k_anonymity": 1, "k_anonymity_action": "fail",
                    "quasi_identifiers": ["sex", "age"]},
        "participants": {"columns": {"sex": {}, "age": {"unit": "years", "precision": 1}}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def concurrent_worker(barrier: multiprocessing.synchronize.Barrier, index: str, inbox: str, private: str,
                      out: str, cfg: dict) -> None:
    """One of several processes running the stage at the same moment on the same private_dir."""
    from bidsafe.pseudonymise.stage import run_pseudonymise

    barrier.wait(timeout=60)
    run_pseudonymise(Path(index), Path(inbox), Path(private), Path(out), cfg)
    os._exit(0)  # skip interpreter teardown: faster, and the result is on disk
