"""An open (CC0) release for OpenNeuro-style repositories (issue 15, item 5): audience `open` is its own
consent level, its release is CC0 with no data usage agreement and passes `open_release_problems`; every
other audience still refuses CC0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bidsafe.config import config_problems
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.stage import run_pseudonymise
from bidsafe.release.assemble import DEFAULT_DATA_USAGE_AGREEMENT, release_config
from bidsafe.release.openrelease import changes_problems, open_release_problems

from helpers.citation_schemas import cff_errors, datacite_errors
from helpers.pseudonym_data import FakeSession, config, write_index, write_registry
from helpers.release_project import HAVE_VALIDATE, Project

BASE = {"inbox": "in", "work_dir": "w", "private_dir": "p", "release_dir": "r"}


def test_open_audience_is_cc0_and_refuses_an_agreement() -> None:
    assert release_config({"audience": "open"})["license"] == "CC0"  # left unset: CC0
    assert release_config({"audience": "open", "license": "CC0-1.0"})["license"] == "CC0-1.0"
    with pytest.raises(ConfigError, match="use CC0"):
        release_config({"audience": "open", "license": "CC-BY-4.0"})
    with pytest.raises(ConfigError, match="carries no agreement"):
        release_config({"audience": "open", "data_usage_agreement": "Be nice."})
    assert config_problems({**BASE, "release": {"audience": "open", "license": "CC0"}}) == []
    (line,) = config_problems({**BASE, "release": {"audience": "open", "data_usage_agreement": "Be nice."}})
    assert line.startswith("config: release.data_usage_agreement:") and "no data usage agreement" in line


@pytest.mark.parametrize("audience", ["named", "members", "public"])
@pytest.mark.parametrize("licence", ["CC0", "cc0-1.0"])
def test_restricted_audiences_still_refuse_cc0(audience: str, licence: str) -> None:
    with pytest.raises(ConfigError, match="data usage agreement"):
        release_config({"audience": audience, "license": licence})
    (line,) = config_problems({**BASE, "release": {"audience": audience, "license": licence}})
    assert line.startswith(f"config: release.license: '{licence}' is not allowed: a public-domain dedication")


def test_open_release_is_cc0_without_agreement(two_session_project: Project) -> None:
    two_session_project.assemble(audience="open")
    staging = two_session_project.staging
    assert json.loads((staging / "dataset_description.json").read_text())["License"] == "CC0"
    readme = (staging / "README").read_text()
    assert "data usage agreement" not in readme.lower() and "re-identify" not in readme
    assert "CC0 1.0 Universal" in readme and "anyone, without conditions" in readme
    licence = (staging / "LICENSE").read_text()
    assert licence.startswith("License: CC0\n") and DEFAULT_DATA_USAGE_AGREEMENT.strip() not in licence
    record = json.loads((staging / "datacite.json").read_text())
    assert datacite_errors(record) == []
    assert record["rightsList"] == [{
        "rights": "Creative Commons Zero v1.0 Universal",
        "rightsUri": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
        "rightsIdentifier": "CC0-1.0", "rightsIdentifierScheme": "SPDX", "schemeUri": "https://spdx.org/licenses/",
    }]
    assert cff_errors(staging / "CITATION.cff") == []
    assert yaml.safe_load((staging / "CITATION.cff").read_text())["license"] == "CC0-1.0"
    assert open_release_problems(staging) == []


def test_a_restricted_release_is_no_open_release(two_session_project: Project) -> None:
    two_session_project.assemble()
    assert open_release_problems(two_session_project.staging) == [
        "dataset_description.json: License is not CC0",
        "README carries a data usage agreement (a CC0 release cannot restrict use)",
        "LICENSE is missing or does not name CC0",
    ]


def test_open_release_refuses_a_private_field(two_session_project: Project) -> None:
    """A site's own sidecar allow-list let InstitutionName through: an open release is not assembled."""
    sidecar = next(two_session_project.sessions[0].bids_dir.rglob("*_T1w.json"))
    data = json.loads(sidecar.read_text())
    sidecar.unlink()
    sidecar.write_text(json.dumps({**data, "InstitutionName": "Example Hospital"}))
    with pytest.raises(BidsafeError, match=r"_T1w.json holds private field\(s\): InstitutionName") as caught:
        two_session_project.assemble(audience="open")
    assert "Example Hospital" not in str(caught.value)
    assert not two_session_project.staging.exists()  # nothing half-built is left


def test_changes_form_is_checked() -> None:
    assert changes_problems("2.0.0 2026-12-01\n  - Added.\n\n1.0.0 2026-11-01\n  - Initial.\n") == []
    assert changes_problems("v2 2026-12-01\n  - Added.\n") == [
        "CHANGES line 1 is neither an entry header (VERSION DATE) nor an indented note",
        "CHANGES does not start with an entry header (VERSION DATE)",
    ]


def test_open_audience_takes_only_participants_consented_for_open(tmp_path: Path) -> None:
    """`public` consent does not reach an open release; `open` consent reaches every audience."""
    inbox, index, private = tmp_path / "inbox", tmp_path / "index.tsv", tmp_path / "private"
    write_index(index, inbox, [FakeSession("MRN-1", "OPEN^ONE", "20230102", "19800101", "F", study_uid="1.2.1"),
                               FakeSession("MRN-2", "PUBLIC^TWO", "20230103", "19800101", "F", study_uid="1.2.2")])
    registry = write_registry(tmp_path / "consent.tsv", [{"patient_id": "MRN-1", "consent": "open"},
                                                         {"patient_id": "MRN-2", "consent": "public"}])
    decisions = {}
    for audience in ("open", "public"):
        cfg = config(registry, release={"audience": audience})
        result = run_pseudonymise(index, inbox, private, tmp_path / audience, cfg)
        decisions[audience] = sorted((d.included, d.reason) for d in result.decisions)
    assert decisions["open"] == [(False, "consent:insufficient"), (True, "")]
    assert decisions["public"] == [(True, ""), (True, "")]


@pytest.mark.skipif(not HAVE_VALIDATE, reason="bidsafe.validate (the BIDS validator gate) is not importable")
def test_open_release_passes_the_gates(two_session_project: Project) -> None:
    two_session_project.assemble(audience="open")
    results = {r.name: r for r in two_session_project.gate_results()}
    assert all(r.passed for r in results.values()), {n: r.summary for n, r in results.items()}
