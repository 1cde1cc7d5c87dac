"""Participant metadata: ages, precision rules, the allow-list, demographics, k-anonymity, BIDS validity."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.ages import age_between, parse_dicom_age
from bidsafe.pseudonymise.columns import parse_columns
from bidsafe.pseudonymise.kanonymity import enforce_k_anonymity
from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, read_linkage
from bidsafe.pseudonymise.metadata import (
    Demographics,
    HeaderFacts,
    MetadataTables,
    SessionMetadataInput,
    build_tables,
    facts_from_dataset,
    read_demographics,
    release_value,
)
from bidsafe.pseudonymise.render import render_metadata
from bidsafe.pseudonymise.stage import run_pseudonymise

from helpers.pseudonym_data import FakeSession, config, write_index, write_registry


def _rule(columns: dict, name: str):
    return {r.name: r for r in parse_columns(columns)}[name]


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# ------------------------------------------------------------------------------------------ ages


@pytest.mark.parametrize(
    ("birth", "scan", "years", "months"),
    [
        (date(1980, 4, 17), date(2023, 4, 16), 42, 42 * 12 + 11),
        (date(1980, 4, 17), date(2023, 4, 17), 43, 43 * 12),
        (date(2000, 2, 29), date(2001, 2, 27), 0, 11),
        (date(2000, 2, 29), date(2001, 3, 1), 1, 12),
        (date(2024, 1, 31), date(2024, 2, 28), 0, 0),
        (date(2024, 1, 31), date(2024, 2, 29), 0, 1),  # the 31st's monthly anniversary in February is the 29th
        (date(2023, 5, 2), date(2023, 5, 2), 0, 0),
    ],
)
def test_age_between_counts_completed_calendar_years_and_months(birth, scan, years, months):
    age = age_between(birth, scan)
    assert int(age.years) == years and int(age.months) == months
    assert age.days == (scan - birth).days


def test_age_before_birth_is_unknown():
    assert age_between(date(2020, 1, 2), date(2020, 1, 1)) is None


def test_dicom_age_strings():
    assert parse_dicom_age("034Y").years == 34
    assert parse_dicom_age("012W").days == 84
    assert parse_dicom_age("005D").days == 5
    assert parse_dicom_age("003M").months == 3
    assert parse_dicom_age("34") is None and parse_dicom_age("") is None


def test_facts_prefer_birth_date_over_patient_age_and_normalise():
    ds = Dataset()
    ds.PatientBirthDate, ds.StudyDate, ds.PatientAge = "19800417", "20230416", "050Y"
    ds.PatientSex, ds.PatientWeight, ds.PatientSize = "F ", "0", "1.72"
    facts = facts_from_dataset(ds)
    assert int(facts.age.years) == 42 and facts.sex == "F" and facts.weight_kg is None and facts.height_m == 1.72
    ds.PatientBirthDate = ""
    ds.PatientSex = "X"
    facts = facts_from_dataset(ds)
    assert facts.age.years == 50 and facts.sex is None


# ------------------------------------------------------------------------------------------ precision rules


def test_precision_rules_floor_ages_round_measurements_and_top_code():
    age = _rule({"age": {"unit": "years", "precision": 1}}, "age")
    assert release_value(age, 34.999) == "34"
    assert release_value(age, 95.0) == "95"  # rendering alone does not top-code; raw values are clamped first
    assert age.top_code == 89
    weight = _rule({"weight": {"round_kg": 0.5}}, "weight")
    assert (weight.unit, weight.precision, weight.table) == ("kg", 0.5, "sessions")
    assert [release_value(weight, v) for v in (72.24, 72.26, 72.75, 3.0)] == ["72.0", "72.5", "73.0", "3.0"]
    height = _rule({"height": {}}, "height")
    assert release_value(height, 172.5) == "173" and release_value(height, None) == "n/a"
    fine = _rule({"hc": {"source": "demographics:head_circumference_cm", "precision": 0.1}}, "hc")
    assert release_value(fine, 0.3) == "0.3" and release_value(fine, 34.56) == "34.6"
    weeks = _rule({"age": {"round_weeks": 1}}, "age")
    assert weeks.unit == "weeks" and weeks.units_label == "week"
    assert round(weeks.top_code) == 4644  # 89 years of 365.25 days


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"birth_date": {"source": "demographics:dob_text", "precision": 1}}, "date, name or identifier"),
        ({"participant_id": {}}, "reserved BIDS column"),
        ({"patient_id": {}}, "date, name or identifier"),
        ({"2nd": {}}, "start with a letter"),
        ({"mother_name": {"source": "demographics:mother", "levels": ["a"]}}, "date, name or identifier"),
        ({"score": {"source": "demographics:scan_date", "precision": 1}}, "demographics column looks like"),
        ({"score": {"source": "demographics:notes"}}, "free text is never released"),
        ({"score": {"source": "demographics:score", "precison": 1}}, "unknown key 'precison'"),
        ({"age": {"unit": "decades"}}, "unit must be one of"),
        ({"age": {"round_years": 1, "precision": 2}}, "not both"),
        ({"age": {"precision": 0}}, "positive"),
        ({"mystery": {}}, "'source' is required"),
        ({"sex": {"precision": 1}}, "sex takes no unit"),
        ({"age": {"table": "everywhere"}}, "table must be one of"),
        ({"x": {"source": "demographics:x", "precision": 1, "range": [5, 1]}}, "range must be"),
    ],
)
def test_unsafe_or_unclear_column_rules_are_refused(columns: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_columns(columns)


def test_default_columns_are_sex_and_age():
    rules = parse_columns(None)
    assert [(r.name, r.source, r.table) for r in rules] == [("sex", "sex", "participants"),
                                                            ("age", "age_at_scan", "both")]


# ------------------------------------------------------------------------------------------ k-anonymity


def _tables(people: list[tuple[str, float]], columns: dict | None = None) -> MetadataTables:
    rules = parse_columns(columns or {"sex": {}, "age": {"round_years": 1}})
    sessions = [
        SessionMetadataInput(subject=f"s{n:02d}", session="01", patient_id=f"P{n}", study_uid=f"1.{n}",
                             study_date="20230101", study_time="", facts=HeaderFacts(sex=sex, age=_years(age)))
        for n, (sex, age) in enumerate(people)
    ]
    return build_tables(sessions, rules, Demographics())


def _years(value: float):
    from bidsafe.pseudonymise.ages import Age

    return Age(days=value * 365.25, months=value * 12, years=value)


PEOPLE = [("F", 31.2), ("F", 33.9), ("F", 38.0), ("M", 42.5), ("M", 44.0)]


def test_k_anonymity_fail_lists_small_classes_by_bin_only():
    tables = _tables(PEOPLE)
    with pytest.raises(BidsafeError) as caught:
        enforce_k_anonymity(tables, k=2, action="fail", quasi_identifiers=["sex", "age"])
    message = str(caught.value)
    assert "5 equivalence class(es) of (sex, age) hold fewer than k=2" in message
    assert "(F, 31): 1" in message and "(M, 44): 1" in message
    assert "31.2" not in message and "P0" not in message
    assert enforce_k_anonymity(tables, k=1, action="fail", quasi_identifiers=["sex", "age"]).holds


def test_k_anonymity_generalise_coarsens_age_until_it_holds():
    tables = _tables(PEOPLE)
    outcome = enforce_k_anonymity(tables, k=2, action="generalise", quasi_identifiers=["sex", "age"])
    assert outcome.holds and outcome.small_classes_before == [1, 1, 1, 1, 1]
    # 5-year bins leave (F, 35) alone; 10-year bins give (F, 30) x3 and (M, 40) x2.
    assert outcome.steps == ["age: bins of 5 years", "age: bins of 10 years"]
    assert outcome.column_steps == {"age": 10.0} and outcome.suppressed == []
    files = render_metadata(tables, outcome).files
    rows = [line.split("\t") for line in files["participants.tsv"].splitlines()]
    assert rows[0] == ["participant_id", "sex", "age"]
    assert [r[1:] for r in rows[1:]] == [["F", "30"], ["F", "30"], ["F", "30"], ["M", "40"], ["M", "40"]]
    assert files["sub-s03/sub-s03_sessions.tsv"] == "session_id\tage\nses-01\t40\n"
    sidecar = json.loads(files["participants.json"])
    assert "multiple of 10 years" in sidecar["age"]["Description"]
    assert "generalised for k-anonymity" in sidecar["age"]["Description"]


def test_k_anonymity_generalise_terminates_by_suppressing_everything_when_k_exceeds_the_cohort():
    tables = _tables([("F", 31.0), ("M", 60.0)])
    outcome = enforce_k_anonymity(tables, k=5, action="generalise", quasi_identifiers=["sex", "age"])
    assert outcome.holds and outcome.suppressed == ["age", "sex"]
    assert outcome.steps[-2:] == ["age: suppressed", "sex: suppressed"]
    assert "no quasi-identifier" in outcome.note
    files = render_metadata(tables, outcome).files
    assert files["participants.tsv"].splitlines()[0] == "participant_id"
    assert set(json.loads(files["participants.json"])) == {"participant_id"}
    assert files["sub-s00/sub-s00_sessions.tsv"] == "session_id\nses-01\n"


def test_k_anonymity_checks_every_released_session_age_not_only_the_first():
    rules = parse_columns({"sex": {}, "age": {"round_years": 1}})
    sessions = [
        SessionMetadataInput("anna", "01", "P1", "1.1", "20200101", "", HeaderFacts(sex="F", age=_years(30.5))),
        SessionMetadataInput("anna", "02", "P1", "1.2", "20210101", "", HeaderFacts(sex="F", age=_years(31.5))),
        SessionMetadataInput("bea", "01", "P2", "1.3", "20200101", "", HeaderFacts(sex="F", age=_years(30.2))),
    ]
    tables = build_tables(sessions, rules, Demographics())
    # participants.tsv alone would be 2-anonymous: (F, 30) x2. Anna's second session at 31 is alone.
    outcome = enforce_k_anonymity(tables, k=2, action="generalise", quasi_identifiers=["sex", "age"])
    assert outcome.small_classes_before == [1] and outcome.steps == ["age: bins of 5 years"]
    files = render_metadata(tables, outcome).files
    assert files["sub-anna/sub-anna_sessions.tsv"] == "session_id\tage\nses-01\t30\nses-02\t30\n"
    with pytest.raises(BidsafeError, match=r"\(F, 31\): 1"):
        enforce_k_anonymity(tables, k=2, action="fail", quasi_identifiers=["sex", "age"])


def test_k_anonymity_ignores_columns_that_are_not_released_and_counts_na():
    tables = _tables([("F", 31.0), (None, 32.0), (None, 33.0)], {"sex": {}})
    outcome = enforce_k_anonymity(tables, k=2, action="generalise", quasi_identifiers=["sex", "age"])
    assert outcome.quasi_identifiers == ["sex"] and outcome.suppressed == ["sex"]  # (F): 1, (n/a): 2


# ------------------------------------------------------------------------------------------ the stage


@pytest.fixture
def cohort(tmp_path: Path) -> dict:
    inbox, index = tmp_path / "inbox", tmp_path / "index.tsv"
    write_index(index, inbox, [
        FakeSession("MRN-1", "ALPHA^ANN", "20230310", "19800417", "F", weight="61.3", size="1.68"),
        FakeSession("MRN-1", "ALPHA^ANN", "20240312", "19800417", "F", weight="63.9", size="1.68"),
        FakeSession("MRN-2", "BRAVO^BEN", "20230601", "", "M", age="095Y", weight="80.2"),
        FakeSession("MRN-3", "CHARLIE^CY", "20230601", "19900101", "M"),
    ])
    registry = write_registry(tmp_path / "consent.tsv", [
        {"patient_id": "MRN-1", "consent": "public"}, {"patient_id": "MRN-2", "consent": "public"},
        {"patient_id": "MRN-3", "consent": "named"},
    ])
    demographics = tmp_path / "demographics.csv"
    demographics.write_text(
        "patient_id,birth_weight_kg,radiology_score,head_circumference_cm,study_date,notes\n"
        "MRN-1,3.26,2,,,lives with Ann's mother\n"
        "MRN-1,,,55.24,2024-03-12,\n"
        "MRN-2,n/a,7,,,\n"
        "MRN-3,2.9,1,,,\n",
        encoding="utf-8",
    )
    columns = {
        "sex": {},
        "age": {"round_years": 1},
        "weight": {"round_kg": 0.5},
        "birth_weight": {"source": "demographics:birth_weight_kg", "unit": "kg", "precision": 0.5},
        "radiology_score": {"source": "demographics:radiology_score", "levels": {"1": "normal", "2": "minor",
                                                                                 "3": "major"}},
        "head_circumference": {"source": "demographics:head_circumference_cm", "unit": "cm", "precision": 1,
                               "table": "sessions"},
    }
    cfg = config(registry, demographics=str(demographics), participants={"columns": columns})
    return {"root": tmp_path, "inbox": inbox, "index": index, "config": cfg}


def _run(cohort: dict):
    root = cohort["root"]
    result = run_pseudonymise(cohort["index"], cohort["inbox"], root / "private", root / "out", cohort["config"])
    subjects = {r.patient_id: r.subject for r in read_linkage(root / "private" / LINKAGE_FILENAME)}
    return result, subjects


def test_participants_tsv_has_only_allow_listed_columns_with_precision_applied(cohort: dict):
    result, subjects = _run(cohort)
    out = cohort["root"] / "out"
    rows = {r["participant_id"]: r for r in _tsv(out / "participants.tsv")}
    assert list(next(iter(rows.values()))) == ["participant_id", "sex", "age", "birth_weight", "radiology_score"]
    assert set(rows) == {f"sub-{subjects['MRN-1']}", f"sub-{subjects['MRN-2']}"}  # MRN-3 consented to named only
    ann, ben = rows[f"sub-{subjects['MRN-1']}"], rows[f"sub-{subjects['MRN-2']}"]
    # Ann: born 1980-04-17, first scan 2023-03-10 -> 42; birth weight 3.26 -> 3.5 (nearest 0.5); score 2.
    assert (ann["sex"], ann["age"], ann["birth_weight"], ann["radiology_score"]) == ("F", "42", "3.5", "2")
    # Ben: PatientAge 095Y -> top-coded 89; birth weight n/a; score 7 is not a listed level -> n/a.
    assert (ben["sex"], ben["age"], ben["birth_weight"], ben["radiology_score"]) == ("M", "89", "n/a", "n/a")
    ann_sessions = _tsv(out / f"sub-{subjects['MRN-1']}" / f"sub-{subjects['MRN-1']}_sessions.tsv")
    assert ann_sessions == [
        {"session_id": "ses-01", "age": "42", "weight": "61.5", "head_circumference": "n/a"},
        {"session_id": "ses-02", "age": "43", "weight": "64.0", "head_circumference": "55"},
    ]
    sidecar = json.loads((out / "participants.json").read_text())
    assert sidecar["birth_weight"]["Units"] == "kg" and sidecar["age"]["Units"] == "year"
    assert sidecar["radiology_score"]["Levels"] == {"1": "normal", "2": "minor", "3": "major"}
    session_sidecar = json.loads((out / f"sub-{subjects['MRN-1']}" / f"sub-{subjects['MRN-1']}_sessions.json")
                                 .read_text())
    assert set(session_sidecar) == {"session_id", "age", "weight", "head_circumference"}
    everything = "".join(p.read_text() for p in out.rglob("*") if p.is_file()).lower()
    for secret in ("mother", "ann's", "alpha", "mrn", "1980", "0417", "2023", "2024", "3.26", "61.3", "55.24"):
        assert secret not in everything
    notes = json.loads((out / "summary.json").read_text())["metadata_notes"]
    assert notes == {"age: value above 89 top-coded": 2,
                     "radiology_score: demographics value is not one of the levels, released as n/a": 1}
    assert result.k_anonymity.holds


def test_missing_demographics_column_or_file_is_a_clear_error(cohort: dict):
    cfg = cohort["config"]
    cfg["participants"]["columns"]["apgar"] = {"source": "demographics:apgar_score", "levels": ["1"]}
    with pytest.raises(BidsafeError, match=r"column 'apgar_score' .* missing"):
        _run(cohort)
    del cfg["participants"]["columns"]["apgar"]
    cfg["demographics"] = None
    with pytest.raises(ConfigError, match="needs the 'demographics' file"):
        _run(cohort)


def test_duplicate_demographics_rows_are_refused(tmp_path: Path):
    path = tmp_path / "d.tsv"
    path.write_text("patient_id\tx\nSECRET\t1\nSECRET\t2\n", encoding="utf-8")
    with pytest.raises(BidsafeError, match="rows 2 and 3") as caught:
        read_demographics(path)
    assert "SECRET" not in str(caught.value).replace(str(path), "")


def test_neonates_age_in_weeks_and_postmenstrual_age(tmp_path: Path):
    inbox, index = tmp_path / "inbox", tmp_path / "index.tsv"
    write_index(index, inbox, [FakeSession("NB-1", "BABY^ONE", "20230122", "20230101", "F", weight="3.1")])
    registry = write_registry(tmp_path / "c.tsv", [{"patient_id": "NB-1", "consent": "public"}])
    demographics = tmp_path / "d.tsv"
    demographics.write_text("patient_id\tgestational_age_weeks\nNB-1\t36.4\n", encoding="utf-8")
    columns = {"sex": {}, "age_weeks": {"source": "age_at_scan", "round_weeks": 1, "table": "sessions"},
               "scan_pma": {"source": "postmenstrual_age", "round_weeks": 1},
               "birth_ga": {"source": "demographics:gestational_age_weeks", "unit": "weeks", "precision": 1}}
    cfg = config(registry, demographics=str(demographics), participants={"columns": columns})
    run_pseudonymise(index, inbox, tmp_path / "private", tmp_path / "out", cfg)
    (row,) = _tsv(tmp_path / "out" / "participants.tsv")
    assert (row["sex"], row["birth_ga"]) == ("F", "36")
    (session_file,) = (tmp_path / "out").glob("sub-*/sub-*_sessions.tsv")
    # 21 days after birth = 3 weeks; postmenstrual 36.4 + 3 = 39.4 -> 39 weeks.
    assert _tsv(session_file) == [{"session_id": "ses-01", "age_weeks": "3", "scan_pma": "39"}]


def test_demo_settings_terminate_with_two_released_participants(tmp_path: Path):
    """The demo (2 public participants) with k_anonymity 2 + generalise always ends with a valid table."""
    inbox, index = tmp_path / "inbox", tmp_path / "index.tsv"
    write_index(index, inbox, [
        FakeSession("P-1", "ONE^A", "20230101", "19600101", "F"),
        FakeSession("P-2", "TWO^B", "20230101", "19950101", "M"),
    ])
    registry = write_registry(tmp_path / "c.tsv", [{"patient_id": "P-1", "consent": "public"},
                                                  {"patient_id": "P-2", "consent": "public"}])
    cfg = config(registry, release={"k_anonymity": 2, "k_anonymity_action": "generalise"})
    result = run_pseudonymise(index, inbox, tmp_path / "private", tmp_path / "out", cfg)
    assert result.k_anonymity.holds and result.k_anonymity.suppressed == ["age", "sex"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["k_anonymity"]["steps"][0] == "age: bins of 5 years"
    assert summary["k_anonymity"]["suppressed"] == ["age", "sex"]


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None and not (Path(sys.executable).parent /
                    "bids-validator-deno").exists(), reason="bids-validator-deno is not installed")
def test_bids_validator_accepts_the_metadata_files(cohort: dict):
    from bidsafe.validate import run_validator

    result, subjects = _run(cohort)
    dataset = cohort["root"] / "dataset"
    shutil.copytree(cohort["root"] / "out", dataset, ignore=shutil.ignore_patterns("summary.json"))
    (dataset / "dataset_description.json").write_text(json.dumps(
        {"Name": "metadata test", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
         "Authors": ["A", "B"]}))
    (dataset / "README").write_text("A dataset made by the participants unit test to check the metadata files.\n")
    for decision in result.decisions:
        if not decision.included:
            continue
        anat = dataset / f"sub-{decision.subject}" / f"ses-{decision.session}" / "anat"
        anat.mkdir(parents=True)
        image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
        image.header.set_xyzt_units("mm", "sec")
        stem = f"sub-{decision.subject}_ses-{decision.session}_T1w"
        nib.save(image, anat / f"{stem}.nii.gz")
        (anat / f"{stem}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    validation = run_validator(dataset)
    assert validation.valid and validation.errors == []
    tsv_codes = {w.code for w in validation.warnings if "TSV" in w.code or "PARTICIPANT" in w.code}
    assert tsv_codes == set()
