"""The BIDS validator wrapper: real validator runs on tiny hand-made datasets, parsed codes and locations."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe.cli import main as bidsafe_main
from bidsafe.errors import BidsafeError
from bidsafe.validate import (
    Finding,
    ValidationResult,
    find_validator,
    format_finding,
    parse_report,
    run_validator,
    summary,
)

README = (
    "Tiny test dataset for bidsafe's validator wrapper.\n\n"
    "One subject with one T1-weighted image of random noise; nothing here comes from a person.\n"
)


def _valid_dataset(root: Path) -> Path:
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0"})
    )
    (root / "README").write_text(README)
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    # Random voxels: a constant image gzips below the size of a NIfTI header, which npm's validator rejects.
    voxels = np.random.default_rng(0).integers(0, 1000, (16, 16, 16)).astype(np.int16)
    image = nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 1.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, anat / "sub-01_T1w.nii.gz")
    (anat / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003}))
    return root


def _invalid_dataset(root: Path) -> Path:
    _valid_dataset(root)
    (root / "dataset_description.json").unlink()
    anat = root / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_T1w.nii.gz", anat / "sub-01_T1weighted.nii.gz")
    (root / "participants.tsv").write_text("participant_id\nsub-02\n")
    return root


@pytest.fixture()
def valid_dataset(tmp_path: Path) -> Path:
    return _valid_dataset(tmp_path / "valid")


@pytest.fixture()
def invalid_dataset(tmp_path: Path) -> Path:
    return _invalid_dataset(tmp_path / "invalid")


def _codes(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.code, f.location) for f in findings}


# --------------------------------------------------------------------------------------------- deno


def test_deno_accepts_a_valid_dataset_and_reports_warnings_with_fields(valid_dataset: Path):
    result = run_validator(valid_dataset, backend="deno")
    assert result.valid and result.errors == [] and result.exit_code == 0
    assert result.backend == "deno"
    assert result.validator_version == importlib.metadata.version("bids-validator-deno")
    assert result.subjects == ["01"] and result.files == 5
    missing_keys = {(f.code, f.sub_code, f.location) for f in result.warnings}
    assert ("SIDECAR_KEY_RECOMMENDED", "Manufacturer", "/sub-01/anat/sub-01_T1w.nii.gz") in missing_keys
    manufacturer = next(f for f in result.warnings if f.sub_code == "Manufacturer")
    assert manufacturer.message == "A data file's JSON sidecar is missing a key listed as recommended."
    assert manufacturer.detail == ""  # the generic "Field description" paragraph is not a detail
    assert all(f.severity == "warning" for f in result.warnings)


def test_deno_reports_errors_with_codes_and_locations(invalid_dataset: Path):
    result = run_validator(invalid_dataset, backend="deno")
    assert not result.valid and result.exit_code == 16
    assert _codes(result.errors) >= {
        ("MISSING_DATASET_DESCRIPTION", "/dataset_description.json"),
        ("PARTICIPANT_ID_MISMATCH", "/participants.tsv"),
        ("NOT_INCLUDED", "/sub-01/anat/sub-01_T1weighted.nii.gz"),
    }
    assert all(f.severity == "error" for f in result.errors)
    text = summary(result)
    assert text.splitlines()[0].startswith("BIDS validator (deno ") and "INVALID" in text
    assert (
        "  /sub-01/anat/sub-01_T1weighted.nii.gz: NOT_INCLUDED: "
        "Files with such naming scheme are not part of BIDS specification."
    ) in text.splitlines()


def test_deno_locates_tsv_rows_and_keeps_the_specific_problem(valid_dataset: Path):
    (valid_dataset / "participants.tsv").write_text("participant_id\tage\nsub-01\tforty\n")
    (valid_dataset / "participants.json").write_text(json.dumps({"age": {"Description": "age", "Format": "number"}}))
    sidecar = valid_dataset / "sub-01" / "anat" / "sub-01_T1w.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": -1}))
    result = run_validator(valid_dataset)
    by_code = {(f.code, f.sub_code): f for f in result.errors}
    age = by_code[("TSV_VALUE_INCORRECT_TYPE", "age")]
    assert age.location == "/participants.tsv:2" and age.detail == "'forty'"
    echo = [f for f in result.errors if f.sub_code == "EchoTime"]
    assert {f.location for f in echo} == {"/sub-01/anat/sub-01_T1w.json"}
    assert "must be > 0" in {f.detail for f in echo}


def test_cli_exit_codes_and_report(valid_dataset: Path, invalid_dataset: Path, tmp_path: Path, capsys):
    assert bidsafe_main(["validate", str(valid_dataset), "--report", str(tmp_path / "ok.json")]) == 0
    assert "valid, 0 errors" in capsys.readouterr().out
    assert bidsafe_main(["validate", str(invalid_dataset), "--report", str(tmp_path / "bad.json")]) == 1
    out = capsys.readouterr().out
    assert "/participants.tsv: PARTICIPANT_ID_MISMATCH:" in out
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["valid"] is False and report["backend"] == "deno" and report["exit_code"] == 16
    assert {"code": "MISSING_DATASET_DESCRIPTION", "location": "/dataset_description.json"}.items() <= next(
        e for e in report["errors"] if e["code"] == "MISSING_DATASET_DESCRIPTION"
    ).items()
    assert json.loads((tmp_path / "ok.json").read_text())["errors"] == []


def test_missing_folder_and_missing_executable_are_clear_errors(tmp_path: Path, monkeypatch):
    with pytest.raises(BidsafeError, match="not a folder"):
        run_validator(tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    with pytest.raises(BidsafeError, match=r"`bids-validator` not found .* --backend deno"):
        find_validator("node")
    with pytest.raises(BidsafeError, match=r"`bids-validator-deno` not found .*make setup"):
        run_validator(tmp_path, backend="deno")


def test_unparseable_output_names_exit_code_and_stderr(valid_dataset: Path, tmp_path: Path):
    broken = tmp_path / "broken-validator"
    broken.write_text("#!/bin/sh\necho 'Segmentation fault?'\necho 'deno: cannot load bundle' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(BidsafeError) as caught:
        run_validator(valid_dataset, executable=broken)
    message = str(caught.value)
    assert "no parseable JSON report (exit code 3)" in message and "deno: cannot load bundle" in message


def test_a_crash_with_json_is_not_taken_for_a_verdict(tmp_path: Path, valid_dataset: Path):
    # Exit 1 from the schema validator is an uncaught exception, not "errors" (that is 16).
    crashing = tmp_path / "crashing-validator"
    crashing.write_text('#!/bin/sh\necho \'{"issues": {"issues": []}}\'\necho "Uncaught NotFound" >&2\nexit 1\n')
    crashing.chmod(0o755)
    with pytest.raises(BidsafeError, match=r"(?s)failed with exit code 1.*Uncaught NotFound"):
        run_validator(valid_dataset, executable=crashing)


def test_errors_exit_without_parsed_errors_fails_closed(tmp_path: Path, valid_dataset: Path):
    lying = tmp_path / "odd-validator"
    lying.write_text('#!/bin/sh\necho \'{"issues": {"issues": [{"code": "X", "severity": "warning"}]}}\'\nexit 16\n')
    lying.chmod(0o755)
    with pytest.raises(BidsafeError, match="exited 16 .* no error could be parsed"):
        run_validator(valid_dataset, executable=lying)


# ------------------------------------------------------------------------------ parsing and summary


def test_legacy_shape_is_parsed_from_files_entries():
    report = {
        "issues": {
            "errors": [
                {
                    "key": "NOT_INCLUDED",
                    "code": 1,
                    "severity": "error",
                    "reason": "Files with such naming scheme are not part of BIDS specification.",
                    "files": [
                        {"file": {"relativePath": "/sub-01/anat/x.nii.gz"}, "evidence": "x.nii.gz", "line": None},
                        {"file": {"relativePath": "/participants.tsv"}, "evidence": None, "line": 3},
                    ],
                    "additionalFileCount": 2,
                },
                {
                    "key": "DATASET_DESCRIPTION_JSON_MISSING",
                    "code": 57,
                    "reason": "The compulsory file /dataset_description.json is missing.",
                    "files": [{"file": None, "reason": "The compulsory file /dataset_description.json is missing."}],
                },
            ],
            "warnings": [{"key": "NO_AUTHORS", "code": 113, "reason": "No authors.", "files": []}],
            "ignored": [],
        }
    }
    shape, findings = parse_report(report)
    assert shape == "legacy"
    assert [(f.code, f.severity, f.location, f.detail) for f in findings] == [
        ("NOT_INCLUDED", "error", "/sub-01/anat/x.nii.gz", "evidence: x.nii.gz"),
        ("NOT_INCLUDED", "error", "/participants.tsv:3", ""),
        ("NOT_INCLUDED", "error", "(2 more files)", ""),
        ("DATASET_DESCRIPTION_JSON_MISSING", "error", "", ""),
        ("NO_AUTHORS", "warning", "", ""),
    ]


def test_unknown_shape_is_an_error():
    with pytest.raises(BidsafeError, match="unknown 'issues' shape"):
        parse_report({"issues": {"problems": []}})


def test_summary_caps_errors_and_counts_warnings_per_code():
    errors = [Finding("NOT_INCLUDED", "error", f"/sub-{i:02d}/x.txt", "Not BIDS.") for i in range(40)]
    warnings = [Finding(f"W{i % 12}", "warning", "/README", "w") for i in range(30)]
    result = ValidationResult(False, errors, warnings, "deno", "3.0.2", exit_code=16)
    lines = summary(result, max_errors=25).splitlines()
    assert lines[0] == "BIDS validator (deno 3.0.2): INVALID, 40 errors, 30 warnings"
    assert lines[2] == "  /sub-00/x.txt: NOT_INCLUDED: Not BIDS."
    assert "  /sub-24/x.txt: NOT_INCLUDED: Not BIDS." in lines
    assert "  /sub-25/x.txt: NOT_INCLUDED: Not BIDS." not in lines
    assert "  ... and 15 more errors" in lines
    assert "  W0: 3" in lines and "  ... and 4 more warnings of 2 other codes" in lines
    assert format_finding(Finding("JSON_KEY_RECOMMENDED", "warning", "", "Missing.", "License")) == (
        "(dataset): JSON_KEY_RECOMMENDED (License): Missing."
    )


# --------------------------------------------------------------------------------------------- node


def _legacy_node_validator() -> str | None:
    exe = shutil.which("bids-validator")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    return exe if version.startswith("1.") else None


NODE_SKIP = "npm's bids-validator 1.x is not on PATH (install: npm install -g bids-validator@1, ~700 MB)"


def test_node_backend_valid_and_invalid(valid_dataset: Path, invalid_dataset: Path):
    if _legacy_node_validator() is None:
        pytest.skip(NODE_SKIP)
    ok = run_validator(valid_dataset, backend="node")
    assert ok.valid and ok.errors == [] and ok.exit_code == 0 and ok.validator_version.startswith("1.")
    bad = run_validator(invalid_dataset, backend="node")
    assert not bad.valid and bad.exit_code == 1
    assert _codes(bad.errors) >= {
        ("NOT_INCLUDED", "/sub-01/anat/sub-01_T1weighted.nii.gz"),
        ("DATASET_DESCRIPTION_JSON_MISSING", ""),
    }
