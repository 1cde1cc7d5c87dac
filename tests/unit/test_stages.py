"""Stage functions as Snakemake calls them: relative data areas, one session's file list, private outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from bidsafe.deid.stage import deid_session
from bidsafe.errors import BidsafeError
from bidsafe.keys import create_key

from helpers.mr_instances import empty_mr, save_dicom, set_pixels

MR = "1.2.840.10008.5.1.4.1.1.4"


def _write_mr(path: Path, study: str, series: str, number: int) -> None:
    ds = empty_mr()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Wexcombe^Isadora", "QZ-4481", "19790304"
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20230102", "MR", 3, number
    ds.SeriesDescription = "t1 mprage Wexcombe"
    # a slice placed in the patient: an image without geometry is withheld as a possible screen capture
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(number)], [1, 0, 0, 0, 1, 0]
    save_dicom(set_pixels(ds, np.arange(16, dtype=np.uint16).reshape(4, 4)), path)


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.chdir(tmp_path)  # relative data areas, as `make demo` gives them
    study, series = generate_uid(), generate_uid()
    rels = [f"WEXCOMBE_ISADORA/{i:03d}.dcm" for i in range(1, 4)]
    for i, rel in enumerate(rels, start=1):
        _write_mr(Path("inbox") / rel, study, series, i)
    files_txt = Path("private/sessions/sub-a/ses-01/files.txt")
    files_txt.parent.mkdir(parents=True)
    files_txt.write_text("\n".join(rels) + "\n")
    create_key(Path("private/secret.key"))
    return {"inbox": Path("inbox"), "files_txt": files_txt}


def _run(session: dict[str, Path]) -> dict[str, int]:
    return deid_session(
        files_txt=session["files_txt"], inbox=session["inbox"], out_dir=Path("work/deid/sub-a/ses-01"),
        values_json=Path("private/phi/sub-a_ses-01.json"), report_json=Path("private/deid/sub-a_ses-01.json"),
        rules_path=Path(__file__).resolve().parents[2] / "config" / "deid" / "basic-mr.yaml",
        key_path=Path("private/secret.key"), subject="a",
    )


def test_deid_session_with_relative_areas(session):
    counts = _run(session)
    assert counts["processed"] == 3
    written = sorted(Path("work/deid/sub-a/ses-01").rglob("*.dcm"))
    assert len(written) == 3
    ds = pydicom.dcmread(written[0])
    assert "Wexcombe" not in str(ds.get("PatientName", "")) and "QZ-4481" not in str(ds.get("PatientID", ""))
    assert "wexcombe" not in str(ds.SeriesDescription).lower() and "mprage" in str(ds.SeriesDescription).lower()
    harvested = json.loads(Path("private/phi/sub-a_ses-01.json").read_text())
    assert {"PatientName", "PatientID"} <= {v["field"] for v in harvested}
    assert oct(Path("private/phi/sub-a_ses-01.json").stat().st_mode & 0o777) == "0o600"


def test_deid_session_fails_clearly_when_no_listed_file_is_there(session):
    for path in Path("inbox").rglob("*.dcm"):
        path.unlink()
    with pytest.raises(BidsafeError, match="no file of the session could be de-identified: 3 not DICOM") as caught:
        _run(session)
    assert caught.value.code == "deid:nothing-deidentified"  # the deid job withholds the session with it
    assert not Path("work/deid/sub-a/ses-01").exists()
    assert json.loads(Path("private/phi/sub-a_ses-01.json").read_text()) == []  # nothing harvested


SHIPPED_RULES = Path(__file__).resolve().parents[2] / "config" / "deid" / "basic-mr.yaml"


def _weaker_rules(tmp_path: Path) -> Path:
    """The shipped rule file with PatientName kept: `bidsafe check-rules` rejects it."""
    text = SHIPPED_RULES.read_text(encoding="utf-8")
    row = '{tag: "(0010,0010)", keyword: PatientName, basic: "Z", action: "Z"}'
    assert text.count(row) == 1
    path = tmp_path / "weaker.yaml"
    path.write_text(text.replace(row, row.replace('action: "Z"', 'action: "K"')), encoding="utf-8")
    return path


def _run_with(session, rules: Path, **kwargs) -> dict[str, int]:
    return deid_session(
        files_txt=session["files_txt"], inbox=session["inbox"], out_dir=Path("work/deid/sub-a/ses-01"),
        values_json=Path("private/phi/sub-a_ses-01.json"), report_json=Path("private/deid/sub-a_ses-01.json"),
        rules_path=rules, key_path=Path("private/secret.key"), subject="a",
        profile_json=Path("work/profile/sub-a/ses-01/deid.json"), **kwargs,
    )


def test_deid_session_records_the_files_it_was_run_with(session):
    import hashlib

    from bidsafe.deid.vocabulary import DEFAULT_VOCABULARY

    _run_with(session, SHIPPED_RULES)
    part = json.loads(Path("work/profile/sub-a/ses-01/deid.json").read_text())
    assert part["rules"] == {"file": "basic-mr.yaml",
                             "sha256": hashlib.sha256(SHIPPED_RULES.read_bytes()).hexdigest()}
    assert part["vocabulary"] == [{"file": "vocabulary.yaml",
                                   "sha256": hashlib.sha256(DEFAULT_VOCABULARY.read_bytes()).hexdigest()}]
    assert "weaker_rules" not in part


def test_deid_session_refuses_a_rule_set_check_rules_rejects(session, tmp_path):
    rules = _weaker_rules(tmp_path)
    with pytest.raises(BidsafeError, match=r"weaker\.yaml.*rejected by `bidsafe check-rules`.*\(0010,0010\)"):
        _run_with(session, rules)
    assert not Path("work/deid/sub-a/ses-01").exists()
    assert not Path("work/profile/sub-a/ses-01/deid.json").exists()


def test_deid_session_allowed_weaker_rules_marks_the_session(session, tmp_path):
    _run_with(session, _weaker_rules(tmp_path), allow_weaker_rules=True)
    part = json.loads(Path("work/profile/sub-a/ses-01/deid.json").read_text())
    assert any(gap.startswith("(0010,0010) PatientName") for gap in part["weaker_rules"])
    (first, *_) = sorted(Path("work/deid/sub-a/ses-01").rglob("*.dcm"))
    assert pydicom.dcmread(first).PatientIdentityRemoved == "NO"


def test_a_session_is_cleaned_of_the_subjects_values_from_its_other_sessions(session):
    """Per patient, not per study: an identifier only a later visit's header carries (here an old hospital
    number) is removed from this visit's text once the subject's harvests are pooled. The vocabulary alone
    keeps it: its groups are short numbers."""
    from bidsafe.deid.stage import harvest_stage

    other_study, other_series = generate_uid(), generate_uid()
    other = Path("inbox/WEXCOMBE_ISADORA_2/001.dcm")
    _write_mr(other, other_study, other_series, 1)
    ds = pydicom.dcmread(other)
    ds.OtherPatientIDs = "0012345678"
    ds.save_as(other)
    other_list = Path("private/sessions/sub-a/ses-02/files.txt")
    other_list.parent.mkdir(parents=True)
    other_list.write_text("WEXCOMBE_ISADORA_2/001.dcm\n")
    for path in Path("inbox/WEXCOMBE_ISADORA").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "t1 mprage 12 345 678"
        ds.save_as(path)
    harvest = Path("private/phi/raw/sub-a_ses-02.json")
    assert harvest_stage(files_txt=other_list, inbox=Path("inbox"), values_json=harvest) > 0
    assert oct(harvest.stat().st_mode & 0o777) == "0o600"

    def description(**kwargs: object) -> str:
        out = Path("work/deid/sub-a/ses-01")
        deid_session(
            files_txt=session["files_txt"], inbox=session["inbox"], out_dir=out,
            values_json=Path("private/phi/sub-a_ses-01.json"), report_json=Path("private/deid/sub-a_ses-01.json"),
            rules_path=Path(__file__).resolve().parents[2] / "config" / "deid" / "basic-mr.yaml",
            key_path=Path("private/secret.key"), subject="a", **kwargs,
        )
        text = str(pydicom.dcmread(min(out.rglob("*.dcm"))).SeriesDescription)
        import shutil

        shutil.rmtree(out)
        return text

    assert "345" in description()  # this visit's own headers do not carry the old number
    cleaned = description(subject_values=[harvest])
    assert "345" not in cleaned and "678" not in cleaned and "mprage" in cleaned
