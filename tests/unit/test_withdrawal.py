"""Withdrawal inside the site's areas (issue 10, item 6): a withdrawn participant's files in work_dir and
private_dir are removed, the others' left byte for byte; the linkage table marks them withdrawn for good."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from bidsafe.pseudonymise.linkage import LINKAGE_COLUMNS, LINKAGE_FILENAME, read_linkage
from bidsafe.pseudonymise.sessionlists import included_sessions
from bidsafe.pseudonymise.stage import run_pseudonymise
from bidsafe.withdrawal import label_pattern, named_paths, remove_withdrawn, withdrawn_session_files

from helpers.pseudonym_data import FakeSession, config, write_index, write_registry

GONE, STAYS, LOOKALIKE = "ab12", "cd34", "ab123"  # `sub-ab12` must never match `sub-ab123`

# Every place a pipeline run keeps a session's files (see workflow/rules/*.smk), for one subject/session.
WORK_FILES = (
    "deid/sub-{s}/ses-01/IM0001.dcm",
    "convert/sub-{s}/ses-01/bids/sub-{s}/ses-01/anat/sub-{s}_ses-01_T1w.nii.gz",
    "convert/sub-{s}/ses-01/series.json",
    "scrub/sub-{s}/ses-01/bids/sub-{s}/ses-01/anat/sub-{s}_ses-01_T1w.json",
    "deface/sub-{s}/ses-01/bids/sub-{s}/ses-01/anat/sub-{s}_ses-01_T1w.nii.gz",
    "deface/sub-{s}/ses-01/records.json",
    "deface/sub-{s}/ses-01/qc/sub-{s}_ses-01_T1w_deface.png",
    "qc/sub-{s}/ses-01/sub-{s}_ses-01_qc.tsv",
    "status/deid/sub-{s}/ses-01/status.json",
    "status/qc/sub-{s}/ses-01/status.json",
    "profile/sub-{s}/ses-01/deid.json",
    "logs/deid/sub-{s}_ses-01.log",
    "logs/harvest/sub-{s}_ses-01.log",
    "pseudonymise/sub-{s}/sub-{s}_sessions.tsv",
    "staging/release/sub-{s}/ses-01/anat/sub-{s}_ses-01_T1w.nii.gz",
    "staging/release/derivatives/bidsafe-qc/sub-{s}/ses-01/sub-{s}_ses-01_qc.tsv",
    "deface/.sub-{s}_ses-01.tmp/half.nii.gz",  # a crashed job's temporary sibling
)
PRIVATE_FILES = (
    "phi/raw/sub-{s}_ses-01.json",
    "phi/sub-{s}_ses-01.json",
    "deid/sub-{s}_ses-01.json",
    "dcm2bids/sub-{s}/ses-01/convert.log",
    "dcm2bids/sub-{{subject}}/ses-{{session}}/convert_sub-{s}_ses-01.log",  # the unexpanded-param folder
    "sessions/sub-{s}/ses-01/files.txt",
)
SHARED_WORK = ("gates/leak_scan.json", "logs/ingest/ingest.log", "pseudonymise/participants.tsv",
               "staging/release/participants.tsv", "report/bidsafe-report.html")
SHARED_PRIVATE = ("linkage.tsv", "pseudonymise/sessions.tsv", "ingest/index.tsv", "secret.key")


def _tree(root: Path, subject: str, templates: tuple[str, ...]) -> list[Path]:
    paths = []
    for template in templates:
        path = root / template.format(s=subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{template} {subject}\n".encode())
        paths.append(path)
    return paths


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def areas(tmp_path: Path) -> tuple[Path, Path]:
    work, private = tmp_path / "work", tmp_path / "private"
    for subject in (GONE, STAYS, LOOKALIKE):
        _tree(work, subject, WORK_FILES)
        _tree(private, subject, PRIVATE_FILES)
    _tree(work, "", SHARED_WORK)
    _tree(private, "", SHARED_PRIVATE)
    (private / "leakscan").mkdir()
    (private / "leakscan" / "values.json").write_text(json.dumps([
        {"category": "name", "field": "PatientName", "value": "GONE^ONLY", "sessions": [f"sub-{GONE}_ses-01"]},
        {"category": "name", "field": "InstitutionName", "value": "SHARED HOSPITAL",
         "sessions": [f"sub-{GONE}_ses-01", f"sub-{STAYS}_ses-01"]},
        {"category": "name", "field": "PatientName", "value": "STAYS^HERE", "sessions": [f"sub-{STAYS}_ses-01"]},
        {"category": "id", "field": "PatientID", "value": "X1", "sessions": ["inbox (no session)"]},
    ]))
    (private / "leakscan" / "findings.json").write_text(json.dumps({
        "private": "personal values", "findings": [{"file": "x.json", "values": [
            {"value": "GONE^ONLY", "sessions": [f"sub-{GONE}_ses-01"]},
            {"value": "STAYS^HERE", "sessions": [f"sub-{STAYS}_ses-01"]}]}], "allowed": []}))
    return work, private


def test_label_pattern_matches_whole_labels_only():
    pattern = label_pattern(["sub-ab12"])
    assert pattern is not None and label_pattern([]) is None
    assert all(pattern.search(n) for n in ("sub-ab12", "sub-ab12_ses-01.log", ".sub-ab12_ses-01.tmp", "x_sub-ab12"))
    assert not any(pattern.search(n) for n in ("sub-ab123", "sub-ab123_ses-01.log", "sub-xab12", "ab12"))


def test_removal_takes_every_file_of_the_withdrawn_subject_and_no_other_byte(areas: tuple[Path, Path]):
    work, private = areas
    before_work, before_private = _hashes(work), _hashes(private)
    removal = remove_withdrawn(work, private, {GONE})

    gone_work = {t.format(s=GONE) for t in WORK_FILES}
    gone_private = {t.format(s=GONE) for t in PRIVATE_FILES}
    assert removal.files == len(gone_work) + len(gone_private) and removal.entries == 2
    after_work, after_private = _hashes(work), _hashes(private)
    assert after_work == {k: v for k, v in before_work.items() if k not in gone_work}
    leak = {"leakscan/values.json", "leakscan/findings.json"}
    assert {k: v for k, v in after_private.items() if k not in leak} == {
        k: v for k, v in before_private.items() if k not in gone_private | leak}
    # no folder of theirs is left, empty or not; the look-alike label is untouched
    assert not [p for root in (work, private) for p in root.rglob(f"*sub-{GONE}*") if f"sub-{LOOKALIKE}" not in p.name]
    assert (work / "deid" / f"sub-{LOOKALIKE}" / "ses-01" / "IM0001.dcm").is_file()

    values = json.loads((private / "leakscan" / "values.json").read_text())
    assert [(v["value"], v["sessions"]) for v in values] == [
        ("SHARED HOSPITAL", [f"sub-{STAYS}_ses-01"]), ("STAYS^HERE", [f"sub-{STAYS}_ses-01"]),
        ("X1", ["inbox (no session)"])]
    findings = json.loads((private / "leakscan" / "findings.json").read_text())
    assert [v["value"] for v in findings["findings"][0]["values"]] == ["STAYS^HERE"]
    assert "GONE^ONLY" not in (private / "leakscan" / "findings.json").read_text()
    assert (private / "leakscan" / "values.json").stat().st_mode & 0o777 == 0o600

    # a second call has nothing left to do and changes nothing
    again = _hashes(work), _hashes(private)
    assert remove_withdrawn(work, private, {GONE}).files == 0
    assert (_hashes(work), _hashes(private)) == again


def test_other_subjects_folders_are_not_entered(areas: tuple[Path, Path]):
    work, _ = areas
    # a file that (wrongly) carried the label inside another subject's folder is not searched for: the
    # stages keep each subject's files under its own label, and a work area holds thousands per session
    stray = work / "deid" / f"sub-{STAYS}" / "ses-01" / f"sub-{GONE}.txt"
    stray.write_text("x")
    assert stray not in named_paths(work, {GONE})
    assert work / "deid" / f"sub-{GONE}" in named_paths(work, {GONE})


# ------------------------------------------------------------------------------------------ through the stage


BOTH_PUBLIC = [{"patient_id": "MRN-1", "consent": "public"}, {"patient_id": "MRN-2", "consent": "public"}]


def _site(tmp_path: Path):
    inbox, index, private = tmp_path / "inbox", tmp_path / "index.tsv", tmp_path / "private"
    work = tmp_path / "work"
    sessions = write_index(index, inbox, [
        FakeSession("MRN-1", "QUILLFEATHER^MARISOL", "20230310", "19800417", "F"),
        FakeSession("MRN-2", "VOSKUIJLEN^TAMSIN", "20230601", "19751130", "M"),
    ])
    registry = tmp_path / "consent.tsv"
    return inbox, index, private, work, registry, sessions


def _run(inbox: Path, index: Path, private: Path, work: Path, registry: Path):
    return run_pseudonymise(index, inbox, private, work / "pseudonymise", config(registry), work_dir=work)


def test_stage_marks_withdrawal_in_the_linkage_removes_data_and_never_readds(tmp_path: Path):
    inbox, index, private, work, registry, _ = _site(tmp_path)
    write_registry(registry, BOTH_PUBLIC)
    _run(inbox, index, private, work, registry)
    subject_of = {r.patient_id: r.subject for r in read_linkage(private / LINKAGE_FILENAME)}
    gone, stays = subject_of["MRN-1"], subject_of["MRN-2"]
    for subject in (gone, stays):  # what later stages would have made
        _tree(work, subject, WORK_FILES)
        _tree(private, subject, PRIVATE_FILES[:4])
    before = _hashes(work), _hashes(private)

    write_registry(registry, [{"patient_id": "MRN-1", "consent": "public", "withdrawn": "2024-06-30"},
                              {"patient_id": "MRN-2", "consent": "public"}])
    result = _run(inbox, index, private, work, registry)
    assert {(d.subject, d.included, d.reason) for d in result.decisions} == {
        (gone, False, "consent:withdrawn"), (stays, True, "")}
    assert not [p for root in (work, private) for p in root.rglob(f"*sub-{gone}*")]
    # the other participant's files are untouched byte for byte (their metadata is the stage's own output)
    def theirs(hashes: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in hashes.items() if f"sub-{stays}" in k and not k.startswith("pseudonymise/")}

    assert theirs(_hashes(work)) == theirs(before[0]) and len(theirs(before[0])) == len(WORK_FILES) - 1
    assert {k: v for k, v in _hashes(private).items() if f"sub-{stays}" in k} == {
        k: v for k, v in before[1].items() if f"sub-{stays}" in k}
    rows = read_linkage(private / LINKAGE_FILENAME)
    assert {r.subject: bool(r.withdrawn) for r in rows} == {gone: True, stays: False}, "the row stays, marked"
    marked = next(r.withdrawn for r in rows if r.subject == gone)

    # the registry forgets the withdrawal (row edited back, or removed): the participant is never re-added
    for rows_now in (BOTH_PUBLIC, BOTH_PUBLIC[1:]):
        write_registry(registry, rows_now)
        result = _run(inbox, index, private, work, registry)
        assert [(d.subject, d.reason) for d in result.decisions if not d.included] == [(gone, "consent:withdrawn")]
        assert included_sessions(private / "pseudonymise" / "sessions.tsv") == [(stays, "01")]
        assert not (private / "sessions" / f"sub-{gone}").exists()
        assert next(r.withdrawn for r in read_linkage(private / LINKAGE_FILENAME) if r.subject == gone) == marked

    # a later session of the withdrawn participant keeps their label and is withdrawn too
    write_index(index, inbox, [FakeSession("MRN-1", "QUILLFEATHER^MARISOL", "20240101", "19800417", "F")])
    result = _run(inbox, index, private, work, registry)
    assert {(d.subject, d.session, d.reason) for d in result.decisions if not d.included} == {
        (gone, "01", "consent:withdrawn"), (gone, "02", "consent:withdrawn")}


def test_a_linkage_table_without_the_withdrawn_column_still_reads(tmp_path: Path):
    inbox, index, private, work, registry, _ = _site(tmp_path)
    write_registry(registry, BOTH_PUBLIC)
    _run(inbox, index, private, work, registry)
    linkage = private / LINKAGE_FILENAME
    with open(linkage, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == list(LINKAGE_COLUMNS)
    old_columns = [c for c in LINKAGE_COLUMNS if c != "withdrawn"]
    linkage.write_text("\t".join(old_columns) + "\n" + "".join(
        "\t".join(r[c] for c in old_columns) + "\n" for r in rows), encoding="utf-8")
    assert [(r.subject, r.withdrawn) for r in read_linkage(linkage)] == [(r["subject"], "") for r in rows]


def test_leak_gate_skips_the_files_of_withdrawn_sessions(tmp_path: Path):
    inbox, index, private, work, registry, sessions = _site(tmp_path)
    write_registry(registry, [{"patient_id": "MRN-1", "consent": "public", "withdrawn": "yes"},
                              {"patient_id": "MRN-2", "consent": "public"}])
    _run(inbox, index, private, work, registry)
    sessions_tsv = private / "pseudonymise" / "sessions.tsv"
    skipped = withdrawn_session_files(sessions_tsv, index)
    expected = {p.relative_to(inbox).as_posix() for p in inbox.rglob("*.dcm") if "MRN-1" in p.parent.parent.name}
    assert skipped == expected and len(expected) == 2
    assert withdrawn_session_files(None, index) == frozenset()
    # with the inbox: the rest of their export (a DICOMDIR naming them, a screenshot folder) is skipped too;
    # a file at the inbox root or in a folder shared with anyone else is still harvested
    (theirs,) = {p.parent.parent for p in inbox.rglob("*.dcm") if "MRN-1" in p.parent.parent.name}
    (theirs / "DICOMDIR").write_bytes(b"x")
    (theirs / "SCREENSHOTS").mkdir()
    (theirs / "SCREENSHOTS" / "IM1.dcm").write_bytes(b"x")
    (inbox / "export_note.txt").write_text("x")
    (other,) = {p.parent for p in inbox.rglob("*.dcm") if "MRN-2" in p.parent.parent.name}
    (other / "junk.txt").write_text("x")
    root = theirs.relative_to(inbox).as_posix()
    assert withdrawn_session_files(sessions_tsv, index, inbox) == expected | {
        f"{root}/DICOMDIR", f"{root}/SCREENSHOTS/IM1.dcm"}
