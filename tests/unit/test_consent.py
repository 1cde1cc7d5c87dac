"""The consent registry and the audience gate: levels x audiences, withdrawal, malformed registries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.consent import (
    AUDIENCES,
    LEVELS,
    REASON_INSUFFICIENT,
    REASON_MISSING,
    REASON_NO_REGISTRY,
    REASON_NONE,
    REASON_NOT_REQUIRED,
    REASON_OK,
    REASON_WITHDRAWN,
    decide,
    level_covers,
    load_registry,
    read_registry,
)

# What each consent level allows, written out by hand (open ⊇ public ⊇ members ⊇ named; none allows
# nothing).
EXPECTED = {
    ("none", "named"): False, ("none", "members"): False, ("none", "public"): False,
    ("named", "named"): True, ("named", "members"): False, ("named", "public"): False,
    ("members", "named"): True, ("members", "members"): True, ("members", "public"): False,
    ("public", "named"): True, ("public", "members"): True, ("public", "public"): True,
    ("none", "open"): False, ("named", "open"): False, ("members", "open"): False, ("public", "open"): False,
    ("open", "named"): True, ("open", "members"): True, ("open", "public"): True, ("open", "open"): True,
}


def _registry(tmp_path: Path, text: str, name: str = "consent.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    rows = [f"P-{level}\t{level}\tCF-{level}\t" for level in LEVELS]
    rows.append("P-gone\tpublic\tCF-gone\t2024-03-01")
    return _registry(tmp_path, "patient_id\tconsent\tconsent_form_id\twithdrawn\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize(("level", "audience"), sorted(EXPECTED))
def test_levels_times_audiences(registry_file: Path, level: str, audience: str):
    registry = read_registry(registry_file)
    included, reason = decide(registry, f"P-{level}", audience)
    assert included is EXPECTED[(level, audience)]
    assert level_covers(level, audience) is EXPECTED[(level, audience)]
    if included:
        assert reason == REASON_OK
    else:
        assert reason == (REASON_NONE if level == "none" else REASON_INSUFFICIENT)


@pytest.mark.parametrize("audience", AUDIENCES)
def test_missing_and_withdrawn_are_withheld_for_every_audience(registry_file: Path, audience: str):
    registry = read_registry(registry_file)
    assert decide(registry, "P-unknown", audience) == (False, REASON_MISSING)
    assert decide(registry, "", audience) == (False, REASON_MISSING)
    assert decide(registry, "P-gone", audience) == (False, REASON_WITHDRAWN)
    assert registry.lookup("P-gone").withdrawn_on.isoformat() == "2024-03-01"


def test_no_registry_withholds_everyone_unless_declared_not_required(tmp_path: Path):
    assert load_registry({"consent": None}) is None
    assert decide(None, "P-1", "public") == (False, REASON_NO_REGISTRY)
    declared = load_registry({"consent": "none-required"})
    assert decide(declared, "P-1", "public") == (True, REASON_NOT_REQUIRED)
    with pytest.raises(ConfigError):
        load_registry({"consent": 5})
    with pytest.raises(ConfigError, match="audience"):
        decide(declared, "P-1", "everyone")


def test_withdrawn_values(tmp_path: Path):
    path = _registry(tmp_path, "patient_id\tconsent\twithdrawn\n"
                     "A\tpublic\tno\nB\tpublic\tyes\nC\tpublic\t20240105\nD\tpublic\tn/a\nE\tpublic\t\n")
    registry = read_registry(path)
    assert {p: registry.lookup(p).withdrawn for p in "ABCDE"} == {
        "A": False, "B": True, "C": True, "D": False, "E": False
    }


def test_csv_and_sniffed_delimiters_and_case(tmp_path: Path):
    csv_path = _registry(tmp_path, "Patient_ID,Consent\nA,PUBLIC\nB, members \n", "registry.csv")
    registry = read_registry(csv_path)
    assert decide(registry, "A", "public") == (True, REASON_OK)
    assert decide(registry, "B", "members") == (True, REASON_OK)
    sniffed = _registry(tmp_path, "patient_id;consent\nA;named\n", "registry.txt")
    assert decide(read_registry(sniffed), "A", "named") == (True, REASON_OK)
    bom = tmp_path / "bom.tsv"
    bom.write_bytes("\ufeffpatient_id\tconsent\nA\tpublic\n".encode())
    assert decide(read_registry(bom), "A", "public") == (True, REASON_OK)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("patient_id\tconsent\nSECRET-1\tpublic\nSECRET-2\tpubic\n", r"row 3, column 'consent'"),
        ("patient_id\tlevel\nSECRET-1\tpublic\n", r"required column 'consent'"),
        ("name\tconsent\nSECRET-1\tpublic\n", r"required column 'patient_id'"),
        ("patient_id\tconsent\n\tpublic\n", r"row 2, column 'patient_id' is empty"),
        ("patient_id\tconsent\twithdrawn\nSECRET-1\tpublic\tlast spring\n", r"row 2, column 'withdrawn'"),
        ("patient_id\tconsent\nSECRET-1\tpublic\nSECRET-1\tnone\n", r"rows 2 and 3 .* disagree"),
        ("patient_id\tconsent\tstudy_id\nSECRET-1\tpublic\tS9\nSECRET-2\tnamed\tS9\n", r"rows 2, 3 share"),
        ("patient_id\tconsent\nSECRET-1\tpublic\textra\n", r"row 2 has 3 cells"),
        ("", r"empty"),
    ],
)
def test_malformed_registry_names_file_row_and_column_but_no_value(tmp_path: Path, text: str, expected: str):
    path = _registry(tmp_path, text)
    with pytest.raises(BidsafeError, match=expected) as caught:
        read_registry(path)
    message = str(caught.value)
    assert str(path) in message
    for value in ("SECRET", "pubic", "last spring", "S9", "extra"):
        assert value not in message.replace(str(path), "")


def test_missing_registry_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(BidsafeError, match="not found"):
        load_registry({"consent": str(tmp_path / "absent.tsv")})


def test_several_rows_per_participant_merge_ids(tmp_path: Path):
    path = _registry(tmp_path, "patient_id\tconsent\tstudy_id\tconsent_form_id\n"
                     "A\tpublic\tS1\tCF1\nA\tpublic\tS2\tCF1\nB\tpublic\tS3\t\n")
    registry = read_registry(path)
    a = registry.lookup("A")
    assert a.study_ids == ("S1", "S2") and a.consent_form_ids == ("CF1",) and a.rows == (2, 3)
    assert a.study_id == ""  # two study IDs: none of them identifies the participant
    assert registry.lookup("B").study_id == "S3"


def test_study_id_as_key_when_the_scanner_holds_study_ids(tmp_path: Path):
    path = _registry(tmp_path, "study_id\tconsent\nSTUDY-7\tmembers\n")
    registry = read_registry(path)
    assert decide(registry, "STUDY-7", "members") == (True, REASON_OK)
    assert decide(registry, "STUDY-7", "public") == (False, REASON_INSUFFICIENT)


def test_demo_registry_passes_exactly_the_public_participants(tmp_path: Path):
    from bidsafe.demo import write_consent_registry

    # The demo writer only reads these attributes; 4 participants x 2 sessions as in `make demo`.
    sessions = [SimpleNamespace(subject_index=i, session_index=s, patient_id=f"HX{i}000{i}", study_id=f"EX{i}{s}")
                for i in range(1, 5) for s in (1, 2)]
    path = write_consent_registry(sessions, tmp_path / "consent.tsv")
    registry = read_registry(path)
    decisions = {i: decide(registry, f"HX{i}000{i}", "public") for i in range(1, 5)}
    assert decisions == {1: (False, REASON_NONE), 2: (False, REASON_INSUFFICIENT), 3: (True, REASON_OK),
                         4: (True, REASON_OK)}
    assert decide(registry, "HX20002", "members") == (True, REASON_OK)


def test_the_audiences_are_the_schema_enum_and_each_has_words_for_the_readme():
    from bidsafe.config import load_schema
    from bidsafe.release.assemble import AUDIENCE_WORDS

    enum = load_schema()["properties"]["release"]["properties"]["audience"]["enum"]
    assert tuple(enum) == AUDIENCES and sorted(AUDIENCE_WORDS) == sorted(enum)
