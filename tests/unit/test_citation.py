"""Release metadata a repository accepts (issue 15, item 1): CITATION.cff and datacite.json validated against
the CFF 1.2.0 and DataCite 4.5 JSON Schemas, GeneratedBy, SourceDatasets, DatasetDOI, and CHANGES notes for
withdrawn and reprocessed sessions and rule profile changes.

Uses the synthetic project of tests/helpers/release_project.py (real files and hashes; the real validator and
leak gates where it finds them importable); the two schema checks are tests/helpers/citation_schemas.py's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bidsafe.release.assemble import generated_by, split_changes
from bidsafe.release.citation import citation_cff, datacite_record, runtime_environment
from bidsafe.release.manifest import verify_release
from bidsafe.release.publish import publish_release

from helpers.citation_schemas import cff_errors, datacite_errors
from helpers.release_project import HAVE_VALIDATE, PROFILE, Project

TODAY = datetime.now(UTC).strftime("%Y-%m-%d")
CITATION = {
    "creators": [
        {"given_names": "Marie", "family_names": "Curie", "orcid": "0000-0002-1825-0097",
         "affiliation": "Example Imaging Centre"},
        {"name": "Example Imaging Centre MRI team"},
    ],
    "publisher": "Example University Data Repository",
    "abstract": "Structural and functional MRI of healthy adults.",
    "keywords": ["MRI", "BIDS"],
    "doi": "10.5555/example.v{version}",
    "url": "https://data.example.org/study/v{version}",
    "source_datasets": [{"URL": "https://data.example.org/raw", "Version": "2024-01"}],
}


def _publish(project: Project):  # noqa: ANN202 (PublishOutcome)
    return publish_release(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE,
                           config=project.config)


def test_the_validators_refuse_broken_records(tmp_path: Path) -> None:
    """The schemas really check: a record without creators or publisher fails both."""
    rc = {"name": "x", "license": "LicenseRef-bidsafe-DUA", "authors": ["A"], "citation": {}}
    good = datacite_record(rc, 1, TODAY, "1.0.0", None, "Be nice.")
    assert datacite_errors(good) == []
    assert datacite_errors({k: v for k, v in good.items() if k != "publisher"})
    assert datacite_errors({**good, "creators": []})
    cff = citation_cff(rc, 1, TODAY, "1.0.0")
    (tmp_path / "ok.cff").write_text(yaml.safe_dump(cff), encoding="utf-8")
    (tmp_path / "bad.cff").write_text(yaml.safe_dump({**cff, "authors": [], "date-released": "yesterday"}),
                                      encoding="utf-8")
    assert cff_errors(tmp_path / "ok.cff") == []
    assert {e.split(":")[0] for e in cff_errors(tmp_path / "bad.cff")} == {"['authors']", "['date-released']"}


def test_citation_files_validate_and_replace_authors(two_session_project: Project) -> None:
    two_session_project.assemble(citation=CITATION, dataset_doi="doi:10.5555/example", funding=["Grant 1"])
    staging = two_session_project.staging
    assert cff_errors(staging / "CITATION.cff") == []
    cff = yaml.safe_load((staging / "CITATION.cff").read_text())
    assert (cff["version"], cff["date-released"], cff["doi"]) == ("1.0.0", TODAY, "10.5555/example.v1")
    assert cff["authors"][0] == {"family-names": "Curie", "given-names": "Marie", "affiliation":
                                 "Example Imaging Centre", "orcid": "https://orcid.org/0000-0002-1825-0097"}
    assert cff["authors"][1] == {"name": "Example Imaging Centre MRI team"} and "license" not in cff
    record = json.loads((staging / "datacite.json").read_text())
    assert datacite_errors(record) == []
    assert record["types"]["resourceTypeGeneral"] == "Dataset"
    assert (record["version"], record["publicationYear"], record["doi"]) == ("1.0.0", TODAY[:4], "10.5555/example.v1")
    assert record["publisher"] == {"name": "Example University Data Repository"}
    assert record["creators"][0]["name"] == "Curie, Marie"
    # the rights are the data usage agreement the release is shared under
    assert record["rightsList"][0]["rightsIdentifier"] == "LicenseRef-bidsafe-DUA"
    assert "not attempt to identify" in record["rightsList"][0]["rights"]
    # v1 follows no version: only the study-wide DOI is related
    assert record["relatedIdentifiers"] == [{"relatedIdentifier": "10.5555/example", "relatedIdentifierType": "DOI",
                                             "relationType": "IsVersionOf"}]
    assert record["fundingReferences"] == [{"funderName": "Grant 1"}]
    description = json.loads((staging / "dataset_description.json").read_text())
    assert "Authors" not in description  # BIDS: not with a CITATION.cff
    assert description["DatasetDOI"] == "doi:10.5555/example"
    assert description["SourceDatasets"] == [{"URL": "https://data.example.org/raw", "Version": "2024-01"}]
    assert "datacite.json" in (staging / ".bidsignore").read_text().split()


def test_no_creator_no_citation_files_and_authors_stay(two_session_project: Project) -> None:
    staging = two_session_project.staging
    two_session_project.assemble(authors=[])
    assert not (staging / "CITATION.cff").exists() and not (staging / "datacite.json").exists()
    two_session_project.assemble(authors=["A. Author"], citation={})
    assert (staging / "CITATION.cff").exists()
    assert "Authors" not in json.loads((staging / "dataset_description.json").read_text())


def test_generated_by_records_the_environment(two_session_project: Project, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("BIDSAFE_CONTAINER_IMAGE", "registry.example.org/bidsafe:0.1.0")
    two_session_project.assemble()
    description = two_session_project.staging / "dataset_description.json"
    bidsafe = json.loads(description.read_text())["GeneratedBy"][0]
    assert bidsafe["Container"] == {"Type": "docker", "Tag": "registry.example.org/bidsafe:0.1.0"}
    bare = tmp_path / "root"  # a filesystem root without container marker files
    bare.mkdir()
    assert runtime_environment({"APPTAINER_CONTAINER": "/x/bidsafe.sif"}, bare) == {"Container": {"Type": "apptainer"}}
    (bare / ".dockerenv").touch()
    assert runtime_environment({}, bare) == {"Container": {"Type": "docker"}}
    (bare / ".dockerenv").unlink()
    words = runtime_environment({}, bare)["Environment"]  # outside a container: in words, never a path
    assert words.startswith("Python 3.") and words.endswith(("virtual environment", "system installation"))
    assert runtime_environment({"CONDA_DEFAULT_ENV": "/home/someone/env"}, bare)["Environment"].endswith(
        " conda environment")
    described = generated_by({"bidsafe": "0.1.0"}, PROFILE, {"Environment": words})[0]
    assert described["Description"].endswith(f"Ran in a {words}.") and "Container" not in described


def test_second_version_is_a_new_version_of_the_first(two_session_project: Project) -> None:
    two_session_project.assemble(citation=CITATION)
    v1 = _publish(two_session_project)
    two_session_project.add("d4", "01", seed=5)
    two_session_project.write_tables()
    two_session_project.assemble(citation=CITATION)
    v2 = _publish(two_session_project)
    assert (v1.version, v2.version) == (1, 2)
    record = json.loads((v2.path / "datacite.json").read_text())
    assert datacite_errors(record) == [] and cff_errors(v2.path / "CITATION.cff") == []
    assert record["version"] == "2.0.0" and record["doi"] == "10.5555/example.v2"
    assert {"relatedIdentifier": "10.5555/example.v1", "relatedIdentifierType": "DOI",
            "relationType": "IsNewVersionOf"} in record["relatedIdentifiers"]
    assert json.loads((v1.path / "datacite.json").read_text())["version"] == "1.0.0"  # v1 untouched
    assert verify_release(v1.path).ok and verify_release(v2.path).ok


def test_without_doi_or_url_the_previous_version_is_a_relative_link(two_session_project: Project) -> None:
    two_session_project.assemble()
    _publish(two_session_project)
    two_session_project.add("d4", "01", seed=5)
    two_session_project.write_tables()
    two_session_project.assemble()
    record = json.loads((two_session_project.staging / "datacite.json").read_text())
    assert record["relatedIdentifiers"] == [{"relatedIdentifier": "../v1", "relatedIdentifierType": "URL",
                                             "relationType": "IsNewVersionOf"}]
    assert datacite_errors(record) == []


def test_citation_edits_alone_make_no_version(two_session_project: Project) -> None:
    """CITATION.cff and datacite.json carry the version and date: like CHANGES, never a change by themselves."""
    two_session_project.assemble(citation=CITATION)
    _publish(two_session_project)
    two_session_project.assemble(citation={**CITATION, "abstract": "Another text.", "keywords": ["MRI"]})
    outcome = _publish(two_session_project)
    assert (outcome.version, outcome.new) == (1, False)


def test_changes_name_withdrawn_and_reprocessed_sessions_and_profile_changes(two_session_project: Project) -> None:
    two_session_project.add("c3", "01", seed=7)
    two_session_project.write_tables()
    two_session_project.assemble()
    _publish(two_session_project)
    # c3 withdraws; a1's session is reprocessed (one sidecar byte); the rule profile changes
    two_session_project.sessions = [s for s in two_session_project.sessions if s.subject != "c3"]
    two_session_project.table_rows = [r for r in two_session_project.table_rows if r[0] != "c3"]
    two_session_project.write_tables()
    sidecar = next((two_session_project.sessions[0].bids_dir).rglob("*_T1w.json"))
    data = sidecar.read_bytes()
    sidecar.unlink()  # a new file, as a rerun writes: the published hard link keeps v1's bytes
    sidecar.write_bytes(data.replace(b"2.3", b"2.4"))
    two_session_project.assemble(profile_override="strict-mr (sha256:0123456789abcdef)",
                     withheld={("c3", "01"): "consent:withdrawn"})
    _, notes, _ = split_changes((two_session_project.staging / "CHANGES").read_text())
    assert notes == [
        "Release contents: 2 participants, 2 sessions.",
        "Withdrawn 1 session (the participant withdrew consent; delete any copies you hold): sub-c3/ses-01.",
        "Reprocessed 1 session (their files changed; fetch them again): sub-a1/ses-01.",
        f"De-identification rule profile changed: was {PROFILE}, now strict-mr (sha256:0123456789abcdef).",
    ]


@pytest.mark.skipif(not HAVE_VALIDATE, reason="bidsafe.validate (the BIDS validator gate) is not importable")
def test_the_gates_pass_with_the_citation_files(two_session_project: Project) -> None:
    """The new files trip neither the BIDS validator (datacite.json is in .bidsignore) nor the leak scan."""
    two_session_project.assemble(citation=CITATION, dataset_doi="doi:10.5555/example")
    results = {r.name: r for r in two_session_project.gate_results()}
    assert all(r.passed for r in results.values()), {n: r.summary for n, r in results.items()}


def test_assemble_stage_reads_why_sessions_were_withheld(tmp_path: Path) -> None:
    """A withdrawn participant never reaches a later stage: pseudonymise's summary says why (pseudonyms only)."""
    from bidsafe.stages import _decision_reasons

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"sessions": [
        {"subject": "a1", "session": "01", "included": True, "reason": ""},
        {"subject": "c3", "session": "01", "included": False, "reason": "consent:withdrawn"},
        {"subject": "d4", "session": "02", "included": False, "reason": "consent:none"},
    ]}))
    assert _decision_reasons(summary) == {("c3", "01"): "consent:withdrawn", ("d4", "02"): "consent:none"}
    assert _decision_reasons(tmp_path / "missing.json") == {}


def test_citation_config_errors_say_what_is_wanted() -> None:
    from bidsafe.config import config_problems

    base = {"inbox": "in", "work_dir": "w", "private_dir": "p", "release_dir": "r"}
    problems = config_problems({**base, "release": {"citation": {
        "creators": [{"given_names": "Marie"}, {"name": "Team", "orcid": "1234"}], "doi": "10.5555/fixed"}}})
    assert problems == [
        "config: release.citation.creators[0]: {'given_names': 'Marie'} is not allowed: a creator needs name (an "
        "organisation or a whole name) or family_names",
        "config: release.citation.creators[1].orcid: '1234' is not allowed (allowed: an ORCID iD such as "
        "0000-0002-1825-0097)",
        "config: release.citation.doi: '10.5555/fixed' is not allowed (allowed: a DOI with {version} in it, e.g. "
        "10.1234/mystudy.v{version})",
    ]
    assert config_problems({**base, "release": {"citation": CITATION}}) == []
