"""Assemble, gates, publish and report on a tiny synthetic BIDS release (real files, real hashes).

The validator and leak-scan gates use the real `bidsafe.validate` / `bidsafe.release.leakscan` modules; their
tests skip with a message while those modules cannot be imported. The publish tests then use explicit
stand-in results for those two gates only (clearly marked), so publish itself is always exercised.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.phi import PersonalValues
from bidsafe.release import gates as gates_mod
from bidsafe.release.assemble import (
    DEFAULT_DATA_USAGE_AGREEMENT,
    SessionInput,
    changes_version,
    release_config,
)
from bidsafe.release.gates import (
    CONSENT,
    DEFACE,
    LEAK_SCAN,
    VALIDATOR,
    gate_consent,
    gate_deface,
    read_gate_report,
    run_gates,
    staging_fingerprint,
    write_gate_report,
)
from bidsafe.release.manifest import parse_manifest, verify_release
from bidsafe.release.publish import publish
from bidsafe.release.report import write_run_report

from helpers.release_project import (
    HAVE_LEAKSCAN,
    HAVE_VALIDATE,
    PROFILE,
    Project,
    file_sha256,
    make_session,
    snapshot,
    write_json,
    write_nifti,
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(tmp_path)
    proj.add("a1", "01", seed=1)
    proj.add("a1", "02", seed=2)
    proj.add("b2", "01", seed=3)
    proj.add("c3", "01", seed=4, included=False, reason="consent none")
    proj.write_tables()
    proj.assemble()
    return proj


# ------------------------------------------------------------------------------------------- assemble
def test_assemble_copies_included_sessions_and_dataset_files(project: Project) -> None:
    staging = project.staging
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    assert "sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz" in files
    assert "sub-b2/ses-01/func/sub-b2_ses-01_task-rest_bold.json" in files
    assert not any(f.startswith("sub-c3") for f in files), "a withheld subject reached the staging tree"
    assert not any("files.txt" in f or "tmp_dcm2bids" in f for f in files), "private/scaffold files copied"
    assert {"dataset_description.json", "README", "CHANGES", "LICENSE", ".bidsignore", "participants.tsv"} <= set(files)
    # same bytes as the session tree, hard-linked (same filesystem)
    src = project.sessions[0].bids_dir / "sub-a1" / "ses-01" / "anat" / "sub-a1_ses-01_T1w.nii.gz"
    dst = staging / "sub-a1" / "ses-01" / "anat" / "sub-a1_ses-01_T1w.nii.gz"
    assert os.stat(src).st_ino == os.stat(dst).st_ino
    # participants and sessions tables hold included subjects/sessions only
    with open(staging / "participants.tsv", encoding="utf-8") as handle:
        ids = [row["participant_id"] for row in csv.DictReader(handle, delimiter="\t")]
    assert ids == ["sub-a1", "sub-b2"]
    assert (staging / "sub-a1" / "sub-a1_sessions.tsv").read_text().splitlines()[1:] == ["ses-01\t30", "ses-02\t31"]
    assert not (staging / "sub-c3").exists()
    # QC derivatives of included sessions only, with a derivative dataset_description
    qc = staging / "derivatives" / "bidsafe-qc"
    assert (qc / "sub-a1" / "ses-02" / "sub-a1_ses-02_desc-qc_metrics.tsv").read_text().endswith("\t12.5\n")
    assert not (qc / "sub-c3").exists()
    assert json.loads((qc / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_dataset_description_readme_changes_license(project: Project) -> None:
    staging = project.staging
    dd = json.loads((staging / "dataset_description.json").read_text())
    assert dd["BIDSVersion"] == "1.10.0"
    assert dd["DatasetType"] == "raw"
    assert dd["License"] == "LicenseRef-bidsafe-DUA"
    # the authors are cited in CITATION.cff, so BIDS wants no Authors here
    assert "Authors" not in dd and "A. Author" in (staging / "CITATION.cff").read_text()
    assert dd["HowToAcknowledge"] == "Cite the test."
    assert dd["Funding"] == ["Grant 1"] and dd["EthicsApprovals"] == ["Ethics board 42"]
    by_name = {g["Name"]: g for g in dd["GeneratedBy"]}
    assert by_name["bidsafe"]["Version"] == "0.1.0"
    assert "basic-mr" in by_name["bidsafe"]["Description"]
    assert by_name["dcm2niix"]["Version"] == "v1.0.20240202" and by_name["pydicom"]["Version"] == "3.0.1"
    readme = (staging / "README").read_text()
    assert "Data usage agreement" in readme and "re-identify" in readme and "not pass these data" in readme
    assert DEFAULT_DATA_USAGE_AGREEMENT.strip() in (staging / "LICENSE").read_text()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    changes = (staging / "CHANGES").read_text().splitlines()
    assert changes[0] == f"1.0.0 {today}"
    assert changes[1] == "  - Initial release: 2 participants, 3 sessions."
    assert (staging / ".bidsignore").read_text().split() == ["MANIFEST.sha256", "SHAREABLE.json", "datacite.json"]


def test_configured_readme_still_carries_the_agreement(project: Project) -> None:
    project.assemble(readme="# My study\n\nSome words about it.", data_usage_agreement="Be nice. Never re-identify.")
    readme = (project.staging / "README").read_text()
    assert readme.startswith("# My study\n\nSome words about it.\n")
    assert readme.rstrip().endswith("Be nice. Never re-identify.")


@pytest.mark.parametrize("license_id", ["CC0", "cc0-1.0", "PDDL"])
def test_public_domain_license_is_refused(license_id: str) -> None:
    with pytest.raises(ConfigError, match="data usage agreement"):
        release_config({"release": {"license": license_id}})


def test_release_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="release.version"):
        release_config({"version": 0})
    with pytest.raises(ConfigError, match="release.authors"):
        release_config({"authors": [""]})
    assert release_config({"release": {"authors": "Solo"}})["authors"] == ["Solo"]


def test_assemble_refuses_missing_session_tree(project: Project, tmp_path: Path) -> None:
    project.sessions.append(SessionInput("d4", "01", tmp_path / "nowhere"))
    with pytest.raises(BidsafeError, match="sub-d4/ses-01"):
        project.assemble()


# ------------------------------------------------------------------------------------------- gates
def test_clean_staging_passes_deface_and_consent(project: Project) -> None:
    deface = gate_deface(project.staging, project.records)
    assert deface.passed, deface.details
    assert deface.details["checked"] == 3 and deface.details["no_record"] == []
    consent = gate_consent(project.staging, project.sessions_tsv)
    assert consent.passed, consent.details
    assert consent.details["sessions_in_release"] == 3
    assert consent.fingerprint == deface.fingerprint == staging_fingerprint(project.staging)


def test_session_relative_record_paths_are_understood(project: Project) -> None:
    for records in project.records:
        entries = json.loads(records.read_text())
        for entry in entries:
            entry["path"] = entry["path"].split("/", 2)[2]  # "anat/sub-..._T1w.nii.gz"
        records.write_text(json.dumps(entries))
    assert gate_deface(project.staging, project.records).passed


def test_deface_gate_fails_without_a_record(project: Project) -> None:
    result = gate_deface(project.staging, project.records[1:])
    assert not result.passed
    assert result.details["no_record"] == ["sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz"]


def test_deface_gate_fails_when_one_byte_changed(project: Project) -> None:
    t1 = project.staging / "sub-b2" / "ses-01" / "anat" / "sub-b2_ses-01_T1w.nii.gz"
    data = bytearray(t1.read_bytes())
    data[-1] ^= 0x01
    t1.unlink()  # break the hard link: the session tree keeps its defaced bytes
    t1.write_bytes(bytes(data))
    result = gate_deface(project.staging, project.records)
    assert not result.passed
    assert result.details["hash_mismatch"] == ["sub-b2/ses-01/anat/sub-b2_ses-01_T1w.nii.gz"]


def test_deface_gate_checks_anat_images_anywhere(project: Project) -> None:
    # a copy of an anatomical suffix anywhere needs a record whatever its size; any head-sized image too
    qc = project.staging / "derivatives" / "bidsafe-qc" / "sub-a1" / "ses-01"
    copy = qc / "sub-a1_ses-01_T1w.nii.gz"
    write_nifti(copy, (4, 4, 4), 9)
    head = _head(qc / "sub-a1_ses-01_desc-brain_T2w.nii.gz", (96, 112, 96), (2.0, 2.0, 2.0))
    small = _head(qc / "sub-a1_ses-01_desc-thumb_T2w.nii.gz", (4, 4, 4), (2.0, 2.0, 2.0))
    result = gate_deface(project.staging, project.records)
    assert not result.passed
    expected = sorted(p.relative_to(project.staging).as_posix() for p in (copy, head))
    assert sorted(result.details["no_record"]) == expected
    assert small.relative_to(project.staging).as_posix() not in result.details["no_record"]
    assert result.details["why"] == {"anat": 3, "anat_suffix": 1, "face_fov": 1, "no_face": 4}


def test_deface_gate_fails_closed_on_unreadable_records(project: Project) -> None:
    project.records[0].write_text("{not json")
    result = gate_deface(project.staging, project.records)
    assert not result.passed and result.details["unreadable_records"] == ["sub-a1/ses-01/records.json"]


def _head(path: Path, shape: tuple[int, ...], zooms: tuple[float, float, float], seed: int = 5) -> Path:
    """A NIfTI with a given grid (voxels and field of view are what the gate judges, not the contents)."""
    rng = np.random.default_rng(seed)
    img = nib.Nifti1Image(rng.integers(0, 1000, size=shape, dtype=np.int16), np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


SES_A1 = Path("sub-a1") / "ses-01"


@pytest.mark.parametrize("suffix", ["angio", "UNIT1", "T1map", "MP2RAGE", "inplaneT1", "defacemask"])
def test_deface_gate_needs_a_record_for_every_anat_image_whatever_its_suffix(project: Project, suffix: str) -> None:
    image = _head(project.staging / SES_A1 / "anat" / f"sub-a1_ses-01_{suffix}.nii.gz", (6, 6, 6), (2.0, 2.0, 2.0))
    result = gate_deface(project.staging, project.records)
    assert not result.passed
    assert result.details["no_record"] == [image.relative_to(project.staging).as_posix()]
    assert result.details["why"]["anat"] == 4


def test_deface_gate_accepts_an_exempt_suffix_with_its_reason(project: Project) -> None:
    image = _head(project.staging / SES_A1 / "anat" / "sub-a1_ses-01_angio.nii.gz", (6, 6, 6), (2.0, 2.0, 2.0))
    reason = "time-of-flight MIP slab above the orbits: no face in the field of view (site check 2026-01)"
    result = gate_deface(project.staging, project.records, {"angio": reason})
    assert result.passed, result.details
    assert result.details["exempted"] == [{"file": image.relative_to(project.staging).as_posix(), "suffix": "angio"}]
    assert result.details["exempt"] == {"angio": reason}
    assert "1 exempt by suffix" in result.summary
    blank = gate_deface(project.staging, project.records, {"angio": "  "})
    assert not blank.passed and blank.details["exempt_without_reason"] == ["angio"]


def test_deface_gate_leaves_a_small_field_of_view_bold_alone(project: Project) -> None:
    # a 2 mm partial-brain BOLD slab (128 x 128 x 24 mm) and a whole-brain 3.5 mm BOLD: neither can draw a face
    slab = _head(project.staging / SES_A1 / "func" / "sub-a1_ses-01_task-slab_bold.nii.gz", (64, 64, 12, 3),
                 (2.0, 2.0, 2.0))
    coarse = _head(project.staging / SES_A1 / "func" / "sub-a1_ses-01_task-whole_bold.nii.gz", (64, 64, 36, 2),
                   (3.5, 3.5, 3.5))
    result = gate_deface(project.staging, project.records)
    assert result.passed, result.details
    assert result.details["why"]["no_face"] == 5  # the fixture's three small BOLDs and these two
    assert gates_mod.field_of_view(slab) == ((24.0, 128.0, 128.0), 2.0)
    assert gates_mod.field_of_view(coarse) == ((126.0, 224.0, 224.0), 3.5)


@pytest.mark.parametrize(
    ("relative", "shape", "zooms"),
    [
        ("fmap/sub-a1_ses-01_acq-3d_magnitude1.nii.gz", (128, 128, 80), (1.8, 1.8, 1.8)),
        ("fmap/sub-a1_ses-01_TB1map.nii.gz", (96, 96, 64, 2), (2.5, 2.5, 2.5)),
        ("func/sub-a1_ses-01_task-rest_sbref.nii.gz", (104, 90, 72), (2.0, 2.0, 2.0)),
        ("perf/sub-a1_ses-01_m0scan.nii.gz", (100, 120, 90), (2.0, 2.0, 1.0)),
    ],
)
def test_deface_gate_needs_a_record_for_a_large_field_of_view_outside_anat(
    project: Project, relative: str, shape: tuple[int, ...], zooms: tuple[float, float, float]
) -> None:
    image = _head(project.staging / SES_A1 / relative, shape, zooms)
    result = gate_deface(project.staging, project.records)
    assert not result.passed
    assert result.details["no_record"] == [image.relative_to(project.staging).as_posix()]
    assert result.details["why"]["face_fov"] == 1
    # a record with the released hash satisfies it (the stage defaces it when deface.suffixes names it)
    write_json(project.records[0], [*json.loads(project.records[0].read_text()),
                               {"path": image.relative_to(project.staging).as_posix(), "sha256": file_sha256(image)}])
    assert gate_deface(project.staging, project.records).passed


def test_deface_gate_judges_field_of_view_in_millimetres_and_fails_closed_on_bad_geometry(project: Project) -> None:
    # stored in metres: 0.0018 m voxels are 1.8 mm, a 230 mm head, not a 0.23 mm speck
    metres = project.staging / SES_A1 / "fmap" / "sub-a1_ses-01_acq-m_magnitude1.nii.gz"
    img = nib.Nifti1Image(np.ones((128, 128, 80), dtype=np.int16), np.diag([0.0018, 0.0018, 0.0018, 1.0]))
    img.header.set_xyzt_units("meter", "sec")
    metres.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, metres)
    broken = project.staging / SES_A1 / "fmap" / "sub-a1_ses-01_acq-x_magnitude1.nii.gz"
    broken.write_bytes(b"not a nifti")
    result = gate_deface(project.staging, project.records)
    assert result.details["why"] == {"anat": 3, "face_fov": 1, "geometry_unreadable": 1, "no_face": 3}
    assert sorted(result.details["no_record"]) == sorted(p.relative_to(project.staging).as_posix()
                                                         for p in (metres, broken))


def test_consent_gate_fails_on_a_subject_not_included(project: Project) -> None:
    # a withheld participant's session ends up in the tree
    withheld = make_session(project.work / "other", "c3", "01", seed=4)[0]
    src = withheld.bids_dir / "sub-c3" / "ses-01" / "anat" / "sub-c3_ses-01_T1w.nii.gz"
    dst = project.staging / "sub-c3" / "ses-01" / "anat" / "sub-c3_ses-01_T1w.nii.gz"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    result = gate_consent(project.staging, project.sessions_tsv)
    assert not result.passed
    assert {"file": "sub-c3/ses-01/anat/sub-c3_ses-01_T1w.nii.gz", "problem": "sub-c3 ses-01 is not included"} in (
        result.details["violations"]
    )
    report = json.dumps(result.to_dict())
    assert "1.2.826.0.1.3680043" not in report, "private study UIDs must not reach the gate report"


def test_consent_gate_reads_table_rows(project: Project) -> None:
    participants = project.staging / "participants.tsv"
    participants.write_text(participants.read_text() + "sub-c3\tF\t40\n")
    result = gate_consent(project.staging, project.sessions_tsv)
    assert not result.passed
    assert result.details["violations"] == [
        {"file": "participants.tsv row 4", "problem": "sub-c3 has no included session"}
    ]


def test_consent_gate_fails_on_unknown_session_of_included_subject(project: Project) -> None:
    sessions = project.staging / "sub-a1" / "sub-a1_sessions.tsv"
    sessions.write_text(sessions.read_text() + "ses-09\t40\n")
    result = gate_consent(project.staging, project.sessions_tsv)
    assert not result.passed
    assert result.details["violations"][0]["problem"] == "sub-a1 ses-09 is not included"


def test_consent_gate_fails_closed_on_a_bad_table(project: Project) -> None:
    project.sessions_tsv.write_text("subject\tsession\nA\t1\n")
    result = gate_consent(project.staging, project.sessions_tsv)
    assert not result.passed and "included" in result.summary


def test_gates_fail_closed_on_a_symlink_in_the_tree(project: Project, tmp_path: Path) -> None:
    secret = tmp_path / "private-note.txt"
    secret.write_text("not for release\n")
    os.symlink(secret, project.staging / "sub-a1" / "notes.txt")
    for result in (
        gate_deface(project.staging, project.records),
        gate_consent(project.staging, project.sessions_tsv),
        gates_mod.gate_leak_scan(project.staging, project.values()),
    ):
        assert not result.passed
        assert result.fingerprint == ""
    assert "sub-a1/notes.txt" in gate_deface(project.staging, project.records).summary


def test_gate_reports_round_trip(project: Project, tmp_path: Path) -> None:
    result = gate_deface(project.staging, project.records)
    path = write_gate_report(result, tmp_path / "gates" / "deface.json")
    again = read_gate_report(path)
    assert again == result


@pytest.mark.skipif(not HAVE_VALIDATE, reason="bidsafe.validate not importable yet: validator gate not tested")
def test_validator_gate_passes_clean_and_fails_on_a_stray_file(project: Project) -> None:
    clean = gates_mod.gate_validator(project.staging, "deno")
    assert clean.passed, clean.details
    assert clean.details["errors"] == 0
    # (a missing README is only a warning for bids-validator 3.x; a file BIDS does not know is an error)
    (project.staging / "scanner_notes.txt").write_text("exported by the console\n")
    broken = gates_mod.gate_validator(project.staging, "deno")
    assert not broken.passed
    assert {"code": "NOT_INCLUDED", "location": "/scanner_notes.txt"} in broken.details["error_issues"], broken.details


@pytest.mark.skipif(not HAVE_LEAKSCAN, reason="bidsafe.release.leakscan not importable yet: leak gate not tested")
def test_leak_gate_passes_clean_and_fails_on_a_planted_name(project: Project) -> None:
    clean = gates_mod.gate_leak_scan(project.staging, project.values())
    assert clean.passed, clean.details
    sidecar = project.staging / "sub-b2" / "ses-01" / "anat" / "sub-b2_ses-01_T1w.json"
    data = json.loads(sidecar.read_text())
    sidecar.unlink()
    write_json(sidecar, {**data, "ImageComments": "patient Berenike Quintavalle"})
    leaked = gates_mod.gate_leak_scan(project.staging, project.values())
    assert not leaked.passed
    assert [h["file"] for h in leaked.details["hits"]] == ["sub-b2/ses-01/anat/sub-b2_ses-01_T1w.json"]
    report = json.dumps(leaked.to_dict()).lower()
    assert "quintavalle" not in report and "berenike" not in report, "the gate report printed the value"


def test_leak_gate_fails_closed_with_nothing_to_look_for(project: Project) -> None:
    result = gates_mod.gate_leak_scan(project.staging, PersonalValues())
    assert not result.passed


def test_run_gates_writes_four_reports(project: Project, tmp_path: Path) -> None:
    results = run_gates(
        project.staging,
        values=project.values(),
        records=project.records,
        sessions_tsv=project.sessions_tsv,
        report_dir=tmp_path / "gates",
    )
    assert [r.name for r in results] == [VALIDATOR, LEAK_SCAN, DEFACE, CONSENT]
    assert sorted(p.name for p in (tmp_path / "gates").iterdir()) == sorted(
        ["validator.json", "leak_scan.json", "deface.json", "consent.json"]
    )
    by_name = {r.name: r for r in results}
    assert by_name[DEFACE].passed and by_name[CONSENT].passed
    assert by_name[VALIDATOR].passed is HAVE_VALIDATE  # a missing module fails closed
    assert by_name[LEAK_SCAN].passed is HAVE_LEAKSCAN


# ------------------------------------------------------------------------------------------- publish
def _manifest_lines(release: Path) -> list[str]:
    return (release / "MANIFEST.sha256").read_text().splitlines()


def test_clean_publish_creates_v1_latest_manifest_and_shareable(project: Project) -> None:
    staged_files = sorted(p.relative_to(project.staging).as_posix() for p in project.staging.rglob("*") if p.is_file())
    v1 = publish(project.staging, project.release_dir, project.gate_results(), profile=PROFILE)
    assert v1 == project.release_dir / "v1"
    latest = project.release_dir / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "v1"
    assert sorted(p.name for p in project.release_dir.iterdir()) == [".publish.lock", "latest", "v1"]

    listed = parse_manifest((v1 / "MANIFEST.sha256").read_text())
    assert sorted(listed) == staged_files
    lines = _manifest_lines(v1)
    assert lines == sorted(lines, key=lambda line: line[66:])
    for rel, digest in listed.items():
        assert digest == file_sha256(v1 / rel)
    # compatible with coreutils
    check = subprocess.run(["sha256sum", "--check", "--quiet", "MANIFEST.sha256"], cwd=v1, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr

    shareable = json.loads((v1 / "SHAREABLE.json").read_text())
    assert shareable["shareable"] is True and shareable["version"] == 1 and shareable["version_label"] == "1.0.0"
    assert shareable["profile"] == PROFILE
    assert shareable["manifest"]["sha256"] == file_sha256(v1 / "MANIFEST.sha256")
    assert shareable["manifest"]["files"] == len(staged_files)
    assert {g["name"] for g in shareable["gates"]} == {VALIDATOR, LEAK_SCAN, DEFACE, CONSENT}
    assert all(g["passed"] for g in shareable["gates"])
    assert datetime.strptime(shareable["published_utc"], "%Y-%m-%dT%H:%M:%SZ")
    # SHAREABLE.json is written last
    assert os.stat(v1 / "SHAREABLE.json").st_mtime_ns >= os.stat(v1 / "MANIFEST.sha256").st_mtime_ns
    # released files are read-only; the staging tree is still there
    assert not os.stat(v1 / "README").st_mode & 0o222
    assert (project.staging / "README").is_file()
    t1 = "sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz"
    assert os.stat(v1 / t1).st_ino == os.stat(project.staging / t1).st_ino, "same filesystem: hard links"

    assert verify_release(latest).ok
    assert verify_release(v1).ok


def test_verify_fails_after_one_byte_changes(project: Project) -> None:
    from bidsafe.cli import main

    v1 = publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    assert main(["verify", str(project.release_dir / "latest")]) == 0
    target = v1 / "sub-a1" / "ses-02" / "func" / "sub-a1_ses-02_task-rest_bold.json"
    data = bytearray(target.read_bytes())
    data[5] ^= 0x20
    target.unlink()
    target.write_bytes(bytes(data))
    result = verify_release(project.release_dir / "latest")
    assert not result.ok
    assert result.changed == ["sub-a1/ses-02/func/sub-a1_ses-02_task-rest_bold.json"]
    assert result.missing == [] and result.extra == []
    assert main(["verify", str(v1)]) == 1


def test_second_publish_makes_v2_and_carries_changes(project: Project) -> None:
    publish(project.staging, project.release_dir, project.gate_results(), profile=PROFILE)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble(changes=["Added a participant who consented late."])
    changes = (project.staging / "CHANGES").read_text()
    assert changes_version(changes) == 2
    v2 = publish(project.staging, project.release_dir, project.gate_results(), profile=PROFILE)
    assert v2.name == "v2" and os.readlink(project.release_dir / "latest") == "v2"
    text = (v2 / "CHANGES").read_text()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    v1_text = (project.release_dir / "v1" / "CHANGES").read_text()
    assert text.startswith(
        f"2.0.0 {today}\n  - Added a participant who consented late.\n"
        "  - Release contents: 3 participants, 4 sessions.\n  - Added 1 sessions: sub-d4/ses-01.\n"
    )
    assert text.endswith("\n" + v1_text), "v1's entry must be carried forward unchanged"
    assert verify_release(project.release_dir / "v1").ok and verify_release(v2).ok
    assert json.loads((v2 / "SHAREABLE.json").read_text())["version"] == 2


EXPECTED_GATE = {"deface": "deface", "consent": "consent", "leak": "leak_scan", "validator": "validator"}


@pytest.mark.parametrize(
    "defect",
    [
        "deface_missing_record",
        "deface_changed_byte",
        "consent_not_included",
        "leak_planted_name",
        "leak_json_key_with_name",
        "leak_nifti_descrip_with_id",
        "leak_path_with_birth_date",
        "deface_original_face_back",
        "validator_stray_file",
    ],
)
def test_a_failed_gate_blocks_publish(project: Project, defect: str) -> None:
    # an earlier, good release exists
    publish(project.staging, project.release_dir, project.gate_results(), profile=PROFILE)
    project.write_tables()
    project.assemble()
    before = snapshot(project.release_dir)
    staging = project.staging
    if defect == "deface_missing_record":
        project.records = project.records[:-1]
    elif defect == "deface_changed_byte":
        # the released T1w is not the defaced output: one voxel differs (still a readable NIfTI)
        t1 = staging / "sub-a1" / "ses-02" / "anat" / "sub-a1_ses-02_T1w.nii.gz"
        img = nib.load(t1)
        voxels = np.asarray(img.dataobj).copy()
        voxels[0, 0, 0] += 1
        t1.unlink()
        nib.save(nib.Nifti1Image(voxels, img.affine, img.header), t1)
    elif defect == "consent_not_included":
        rows = project.sessions_tsv.read_text().replace("b2\t01\t1.2.826.0.1.3680043.2.2\tyes", "b2\t01\tx\tno")
        project.sessions_tsv.write_text(rows)
    elif defect == "leak_planted_name":
        if not HAVE_LEAKSCAN:
            pytest.skip("bidsafe.release.leakscan not importable yet: leak defect not tested")
        desc = staging / "dataset_description.json"
        data = json.loads(desc.read_text())
        desc.unlink()
        write_json(desc, {**data, "Acknowledgements": "Thanks to Berenike Quintavalle"})
    elif defect.startswith("leak_") and not HAVE_LEAKSCAN:
        pytest.skip("bidsafe.release.leakscan not importable yet: leak defect not tested")
    elif defect == "leak_json_key_with_name":
        sidecar = staging / "sub-a1" / "ses-02" / "anat" / "sub-a1_ses-02_T1w.json"
        data = json.loads(sidecar.read_text())
        sidecar.unlink()
        write_json(sidecar, {**data, "QuintavalleProtocol": 1})
    elif defect == "leak_nifti_descrip_with_id":
        bold = next(staging.glob("sub-*/ses-*/func/*_bold.nii.gz"), None) or next(staging.rglob("*.nii.gz"))
        img = nib.load(bold)
        header = img.header.copy()
        header["descrip"] = b"acq PX7731904"
        voxels = np.asarray(img.dataobj)
        bold.unlink()
        nib.save(nib.Nifti1Image(voxels, img.affine, header), bold)
    elif defect == "leak_path_with_birth_date":
        beh = staging / "sub-a1" / "ses-02" / "anat" / "sub-a1_ses-02_acq-19610423_T2w.json"
        beh.write_text("{}\n")
    elif defect == "deface_original_face_back":
        # the released T1w is the converted image before defacing (as if a stage had been skipped)
        t1 = staging / "sub-a1" / "ses-02" / "anat" / "sub-a1_ses-02_T1w.nii.gz"
        img = nib.load(t1)
        voxels = np.asarray(img.dataobj).copy()
        voxels[: voxels.shape[0] // 3] += 100  # the face region the deface stage had zeroed is back
        t1.unlink()
        nib.save(nib.Nifti1Image(voxels, img.affine, img.header), t1)
    elif defect == "validator_stray_file":
        if not HAVE_VALIDATE:
            pytest.skip("bidsafe.validate not importable yet: validator defect not tested")
        (staging / "scanner_notes.txt").write_text("exported by the console\n")
    results = project.gate_results()
    failed = [r.name for r in results if not r.passed]
    assert EXPECTED_GATE[defect.split("_")[0]] in failed, failed
    with pytest.raises(BidsafeError, match="not published; gates failed: " + ".*".join(failed)):
        publish(staging, project.release_dir, results, profile=PROFILE)
    assert snapshot(project.release_dir) == before
    assert not (project.release_dir / "v2").exists()
    assert not (staging / "SHAREABLE.json").exists() and not (staging / "MANIFEST.sha256").exists()


def test_publish_refuses_missing_or_stale_gates(project: Project) -> None:
    results = project.gate_results(fast=True)
    with pytest.raises(BidsafeError, match="not run: consent"):
        publish(project.staging, project.release_dir, [r for r in results if r.name != CONSENT], profile=PROFILE)
    with pytest.raises(BidsafeError, match="not run: validator, leak_scan, deface, consent"):
        publish(project.staging, project.release_dir, [], profile=PROFILE)
    (project.staging / "README").write_text("changed after the gates ran\n" * 20)
    with pytest.raises(BidsafeError, match="changed since these gates ran"):
        publish(project.staging, project.release_dir, results, profile=PROFILE)
    forged = [replace(r, fingerprint="") for r in project.gate_results(fast=True)]
    with pytest.raises(BidsafeError, match="changed since"):
        publish(project.staging, project.release_dir, forged, profile=PROFILE)
    assert not project.release_dir.exists()


def test_publish_accepts_gate_report_files(project: Project, tmp_path: Path) -> None:
    paths = [write_gate_report(r, tmp_path / "gates" / f"{r.name}.json") for r in project.gate_results(fast=True)]
    assert publish(project.staging, project.release_dir, paths, profile=PROFILE).name == "v1"


def test_publishing_a_staging_numbered_for_a_published_version_publishes_nothing_new(project: Project) -> None:
    publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    before = snapshot(project.release_dir)
    # staging still says 1.0.0 (not reassembled) and holds v1's content: v1 is its release, nothing new
    again = publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    assert again == project.release_dir / "v1"
    assert snapshot(project.release_dir) == before


def test_publish_copies_across_filesystems(project: Project) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(project.staging).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to publish onto")
    release_dir = Path(tempfile.mkdtemp(prefix="bidsafe-test-release-", dir=shm))
    try:
        v1 = publish(project.staging, release_dir, project.gate_results(fast=True), profile=PROFILE)
        t1 = "sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz"
        assert os.stat(v1 / t1).st_dev != os.stat(project.staging / t1).st_dev
        assert file_sha256(v1 / t1) == file_sha256(project.staging / t1)
        assert verify_release(release_dir / "latest").ok
        assert sorted(p.name for p in release_dir.iterdir()) == [".publish.lock", "latest", "v1"]
    finally:
        shutil.rmtree(release_dir)


def test_configured_version_is_published(project: Project) -> None:
    project.assemble(version=7)
    assert (project.staging / "CHANGES").read_text().startswith("7.0.0 ")
    v7 = publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    assert v7.name == "v7" and os.readlink(project.release_dir / "latest") == "v7"
    with pytest.raises(BidsafeError, match="version 3 is not above the highest published v7"):
        project.assemble(version=3)


@pytest.mark.parametrize("fail_on", ["MANIFEST.sha256", "SHAREABLE.json", "latest"])
def test_publish_is_atomic_when_a_write_fails(project: Project, monkeypatch: pytest.MonkeyPatch, fail_on: str) -> None:
    publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    project.add("d4", "01", seed=5)  # a changed release: an unchanged one would publish nothing
    project.write_tables()
    project.assemble()
    results = project.gate_results(fast=True)
    before = snapshot(project.release_dir)
    real_replace = os.replace
    calls = []

    def failing_replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if Path(str(dst)).name == fail_on and not calls:
            calls.append(dst)
            raise OSError(28, "No space left on device (simulated)")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        publish(project.staging, project.release_dir, results, profile=PROFILE)
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls, "the simulated failure never happened"
    assert snapshot(project.release_dir) == before
    assert not (project.release_dir / "v2").exists() and not (project.release_dir / ".v2.tmp").exists()
    assert os.readlink(project.release_dir / "latest") == "v1"
    # and the same staging publishes fine afterwards
    assert publish(project.staging, project.release_dir, results, profile=PROFILE).name == "v2"


# ------------------------------------------------------------------------------------------- report
def test_report_is_self_contained_html(project: Project, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "sub-a1_ses-01_T1w_deface.png"
    plt.imsave(png, np.arange(64, dtype=float).reshape(8, 8), cmap="gray")
    results = project.gate_results(fast=True)
    results[0] = replace(results[0], passed=False, summary="1 anatomical images <b>checked</b>")
    html_path = write_run_report(
        tmp_path / "report" / "bidsafe-report.html",
        sessions_tsv_summary=[
            {"subject": "a1", "session": "01", "included": "true", "reason": "", "study_uid": "1.2.3.99"},
            {"subject": "c3", "session": "01", "included": "false", "reason": "consent none"},
        ],
        gate_results=results,
        qc_rows=[{"image": "sub-a1_ses-01_T1w.nii.gz", "snr": 11.5}],
        deface_pngs=[png],
    )
    text = html_path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert '<td>sub-c3</td><td>ses-01</td><td><span class="withheld">withheld</span></td><td>consent none</td>' in text
    assert "1 of 2 sessions included" in text
    assert "A gate failed: the release was not published." in text
    assert "1 anatomical images &lt;b&gt;checked&lt;/b&gt;" in text
    assert '<td class="num">11.5</td>' in text
    import base64

    assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in text
    assert "1.2.3.99" not in text, "private columns of the sessions table must not be shown"
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    assert str(tmp_path) not in text, "no absolute paths in the report"
    passing = [r for r in project.gate_results(fast=True) if r.name != LEAK_SCAN]
    partial = write_run_report(
        tmp_path / "partial.html", sessions_tsv_summary=[], gate_results=passing, qc_rows=[], deface_pngs={}
    ).read_text()
    assert "Gates not run: leak_scan." in partial and "Every gate passed" not in partial


# ------------------------------------------------------------------------------------ processing profiles
def _profile_parts(root: Path, sessions: dict[str, Path], weaker: set[str] = frozenset()) -> list[Path]:
    """Stage parts as the pipeline's stages write them, each session with its own rule file."""
    from bidsafe.profile import write_stage_profile

    mapping = root / "dcm2bids.json"
    mapping.write_text('{"descriptions": []}\n', encoding="utf-8")
    parts = []
    for key, rules in sessions.items():
        folder = root / "profile" / key
        extra = {"weaker_rules": ["(0010,0010) PatientName: K is weaker than Basic Z"]} if key in weaker else {}
        parts.append(folder / "deid.json")
        write_stage_profile(parts[-1], {"rules": rules}, **extra)
        parts.append(folder / "convert.json")
        write_stage_profile(parts[-1], {"dcm2bids_config": mapping})
    return parts


def test_shareable_states_one_profile_once_when_every_session_shares_it(project: Project, tmp_path: Path) -> None:
    from bidsafe.profile import collect_profiles

    rules = tmp_path / "basic-mr.yaml"
    rules.write_text("profile: basic-mr\n", encoding="utf-8")
    keys = ["sub-a1/ses-01", "sub-a1/ses-02", "sub-b2/ses-01"]
    profiles = collect_profiles(_profile_parts(tmp_path, dict.fromkeys(keys, rules)))
    v1 = publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE,
                 profiles=profiles)
    record = json.loads((v1 / "SHAREABLE.json").read_text())["processing_profile"]
    assert record["uniform"] is True and record["sessions"] == 3 and "profiles" not in record
    assert record["profile"]["deid"]["rules"] == {"file": "basic-mr.yaml", "sha256": file_sha256(rules)}
    assert record["profile"]["convert"]["dcm2bids_config"]["sha256"] == file_sha256(tmp_path / "dcm2bids.json")


def test_shareable_lists_the_sessions_processed_with_another_profile(project: Project, tmp_path: Path) -> None:
    from bidsafe.profile import collect_profiles, rules_label

    old, new = tmp_path / "old" / "basic-mr.yaml", tmp_path / "new" / "basic-mr.yaml"
    for path, text in ((old, "profile: basic-mr\n"), (new, "profile: basic-mr\n# edited\n")):
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
    # two sessions processed before the edit, one after (a rule edit that had not been rerun yet)
    parts = _profile_parts(tmp_path, {"sub-a1/ses-01": old, "sub-a1/ses-02": old, "sub-b2/ses-01": new})
    profiles = collect_profiles(parts)
    v1 = publish(project.staging, project.release_dir, project.gate_results(fast=True),
                 profile=rules_label(profiles), profiles=profiles)
    shareable = json.loads((v1 / "SHAREABLE.json").read_text())
    record = shareable["processing_profile"]
    assert record["uniform"] is False and record["sessions"] == 3
    first, second = record["profiles"]
    assert first["sessions"] == ["sub-a1/ses-01", "sub-a1/ses-02"]
    assert first["profile"]["deid"]["rules"]["sha256"] == file_sha256(old)
    assert second["sessions"] == ["sub-b2/ses-01"]
    assert second["profile"]["deid"]["rules"]["sha256"] == file_sha256(new)
    assert shareable["profile"] == (f"basic-mr.yaml (sha256:{file_sha256(old)[:16]}) for 2 sessions; "
                                    f"basic-mr.yaml (sha256:{file_sha256(new)[:16]}) for 1 session")


def test_publish_refuses_sessions_deidentified_with_weaker_rules(project: Project, tmp_path: Path) -> None:
    from bidsafe.profile import collect_profiles
    from bidsafe.stages import publish_stage

    rules = tmp_path / "weaker.yaml"
    rules.write_text("profile: weaker\n", encoding="utf-8")
    keys = ["sub-a1/ses-01", "sub-a1/ses-02", "sub-b2/ses-01"]
    profiles = collect_profiles(_profile_parts(tmp_path, dict.fromkeys(keys, rules), weaker={"sub-a1/ses-02"}))
    before = snapshot(project.release_dir)
    with pytest.raises(BidsafeError, match=r"not published: 1 session\(s\) .*check-rules.*sub-a1/ses-02"):
        publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE,
                profiles=profiles)
    # the pipeline's publish stage, with every gate passed
    profiles_json = tmp_path / "profiles.json"
    profiles_json.write_text(json.dumps(profiles), encoding="utf-8")
    reports = []
    for result in project.gate_results(fast=True):
        reports.append(tmp_path / "gates" / f"{result.name}.json")
        write_gate_report(result, reports[-1])
    with pytest.raises(BidsafeError, match=r"allow_weaker_rules.*sub-a1/ses-02"):
        publish_stage(staging=project.staging, release_dir=project.release_dir, gate_reports=reports,
                      profiles_json=profiles_json, published_json=tmp_path / "published.json")
    assert snapshot(project.release_dir) == before
    assert not (tmp_path / "published.json").exists()
    # the same sessions without the mark publish
    fixed = collect_profiles(_profile_parts(tmp_path, dict.fromkeys(keys, rules)))
    profiles_json.write_text(json.dumps(fixed), encoding="utf-8")
    version = publish_stage(staging=project.staging, release_dir=project.release_dir, gate_reports=reports,
                            profiles_json=profiles_json, published_json=tmp_path / "published.json")
    assert json.loads((version / "SHAREABLE.json").read_text())["processing_profile"]["uniform"] is True
