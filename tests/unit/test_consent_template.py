"""`bidsafe consent-template`: one registry row per PatientID, private, loadable once consent is filled in."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from bidsafe.cli import main as bidsafe_main
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.consent import TEMPLATE_COLUMNS, decide, read_registry, write_consent_template

from helpers.mr_instances import empty_mr


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.suffix != ".csv" else ","))


def _fill(path: Path, level: str) -> None:
    rows = _rows(path)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TEMPLATE_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "consent": level} for row in rows)


@pytest.mark.slow  # the `two_session_demo` fixture generates two whole demo sessions (about 40 s)
def test_demo_inbox_gives_one_row_per_patient_with_counts_and_dates(two_session_demo, tmp_path: Path, capsys):
    root, sessions = two_session_demo
    out = tmp_path / "team" / "consent.tsv"
    assert bidsafe_main(["consent-template", str(root), str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 patient(s), 2 studies, written to" in printed.out
    for session in sessions:  # counts only: no ID, name or date reaches the terminal
        for secret in (session.patient_id, session.family_name, session.study_date):
            assert secret not in printed.out + printed.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    dates = sorted(f"{s.study_date[:4]}-{s.study_date[4:6]}-{s.study_date[6:]}" for s in sessions)
    assert out.read_text(encoding="utf-8").splitlines()[0].split("\t") == list(TEMPLATE_COLUMNS)
    assert _rows(out) == [{
        "patient_id": sessions[0].patient_id, "consent": "", "study_id": "", "consent_form_id": "", "withdrawn": "",
        "study_count": "2", "first_study": dates[0], "last_study": dates[1],
    }]
    # Unfilled, the registry is refused (a template never releases anyone by itself); filled, it loads.
    with pytest.raises(BidsafeError, match="row 2, column 'consent' is not one of"):
        read_registry(out)
    _fill(out, "public")
    registry = read_registry(out)
    assert decide(registry, sessions[0].patient_id, "public") == (True, "consent:ok")


@pytest.mark.slow  # the `two_session_demo` fixture generates two whole demo sessions (about 40 s)
def test_an_existing_registry_is_kept_unless_forced(two_session_demo, tmp_path: Path, capsys):
    root, _ = two_session_demo
    out = tmp_path / "consent.tsv"
    out.write_text("patient_id\tconsent\nX\tpublic\n", encoding="utf-8")
    assert bidsafe_main(["consent-template", str(root), str(out)]) == 2
    assert "give --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "patient_id\tconsent\nX\tpublic\n"
    assert bidsafe_main(["consent-template", str(root), str(out), "--force"]) == 0
    assert len(_rows(out)) == 1 and _rows(out)[0]["study_count"] == "2"
    with pytest.raises(ConfigError, match="inside the inbox"):
        write_consent_template(root, root / "consent.tsv")
    assert not (root / "consent.tsv").exists()


def _image(path: Path, study: str, patient_id: str | None, study_date: str) -> None:
    ds = empty_mr()
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.StudyDate, ds.Modality = study_date, "MR"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros(16, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_studies_are_counted_per_patient_whatever_the_folders(tmp_path: Path):
    inbox = tmp_path / "inbox"
    a1, a2, b1, none = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    _image(inbox / "x" / "1.dcm", a1, "PID-A", "20230105")
    _image(inbox / "x" / "2.dcm", a1, "PID-A", "20230105")  # a second file of the same study
    _image(inbox / "y" / "1.dcm", a2, "PID-A", "20211130")  # the same patient, elsewhere, earlier
    _image(inbox / "1.dcm", b1, "PID-B", "")  # no study date
    _image(inbox / "z" / "1.dcm", none, None, "20240101")  # no PatientID: cannot be matched to a registry
    (inbox / "notes.txt").write_text("not DICOM\n")
    summary = write_consent_template(inbox, tmp_path / "c.csv")
    assert (summary.patients, summary.studies, summary.studies_without_patient_id) == (2, 4, 1)
    assert [(r["patient_id"], r["study_count"], r["first_study"], r["last_study"]) for r in _rows(tmp_path / "c.csv")] \
        == [("PID-A", "2", "2021-11-30", "2023-01-05"), ("PID-B", "1", "", "")]
    assert (tmp_path / "c.csv").read_text(encoding="utf-8").startswith("patient_id,consent,")
