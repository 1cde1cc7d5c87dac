"""Reruns that tell the truth: an edit of a rule, vocabulary, mapping or allow-list file reruns exactly the
stages that read it (Snakemake dry-runs after one real run of 1 subject x 1 session), SHAREABLE.json records
the files each session was processed with, and a rule set that `bidsafe check-rules` rejects is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml

from helpers.pipeline_run import REPO, SITE_VOCABULARY, make_run_folder, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

STAGES_AFTER_CONVERT = {"convert", "scrub", "deface", "qc", "assemble", "publish", "report"}


@contextlib.contextmanager
def edited(path: Path, new_text: str) -> Iterator[None]:
    """Edit a file, then put back its bytes and its modification time, so later checks see the run as it was."""
    original, stat = path.read_bytes(), path.stat()
    path.write_text(new_text, encoding="utf-8")
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = make_run_folder(tmp_path_factory.mktemp("reruns"), seed=11)
    result = snakemake(root)
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return root


def weaken_patient_name(text: str) -> str:
    """The shipped rule file with PatientName kept (K) instead of replaced: check-rules rejects it."""
    lines = text.splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if "(0010,0010)" in line]
    weakened, count = re.subn(r'action: "?\w+"?', 'action: "K"', lines[index], count=1)
    assert count == 1, lines[index]
    lines[index] = weakened
    return "".join(lines)


def test_finished_run_has_nothing_to_do(run):
    assert planned_jobs(run) == {}


def test_snakemakes_own_views_of_a_finished_run_are_complete_and_current(run):
    """Issue 13: every file a job writes is declared, so `--summary` lists the private outputs too, all
    current; nothing changed in inputs or code; `--delete-all-output` would delete exactly those outputs and
    nothing of the inbox or the release. (`--list-changes params` is not checked: Snakemake 9.27 lists every
    job's last output there even when no param changed.)"""
    summary = snakemake(run, "--summary")
    assert summary.returncode == 0, summary.stderr[-3000:]
    rows = [line.split("\t") for line in summary.stdout.splitlines()[1:] if line.strip()]
    outputs = {row[0]: row for row in rows}
    assert {row[4] for row in rows} == {"ok"} and {row[5] for row in rows} == {"no update"}, rows
    for expected in ("private/leakscan/values.json", "private/leakscan/findings.json",
                     "private/pseudonymise/sessions.tsv", "work/publish/published.json"):
        assert expected in outputs
    assert all((run / path).exists() for path in outputs)
    assert not any(path.startswith(("release/", "inbox/")) for path in outputs)
    for change in ("input", "code"):
        listed = snakemake(run, "--list-changes", change)
        assert listed.returncode == 0 and listed.stdout.strip() == "", (change, listed.stdout[-2000:])
    delete = snakemake(run, "--delete-all-output", "--dry-run")
    assert delete.returncode == 0, delete.stderr[-3000:]
    would = {line.removeprefix("Would delete ").strip() for line in (delete.stdout + delete.stderr).splitlines()
             if line.startswith("Would delete ")}
    assert would == set(outputs)
    assert (run / "release" / "v1").is_dir()  # a dry run deleted nothing


def test_a_junk_file_in_the_inbox_publishes_nothing_new_and_the_report_says_so(run):
    """Issue 10, defect 8: the rerun ingests the inbox again and reassembles, but the release is byte for byte
    v1's (CHANGES aside): no v2, and published.json, the summary and the HTML report say why."""
    release = run / "release"
    v1 = {p.relative_to(release).as_posix(): sha256(p) for p in (release / "v1").rglob("*") if p.is_file()}
    (run / "inbox" / "scanner-notes.txt").write_text("not a DICOM file\n", encoding="utf-8")
    result = snakemake(run)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in release.iterdir()) == [".publish.lock", "latest", "v1"]
    assert os.readlink(release / "latest") == "v1"
    assert {p.relative_to(release).as_posix(): sha256(p) for p in (release / "v1").rglob("*") if p.is_file()} == v1
    published = json.loads((run / "work" / "publish" / "published.json").read_text(encoding="utf-8"))
    assert (published["release"], published["version"], published["new_version"]) == ("release/v1", 1, False)
    assert published["note"] == "no change since v1: nothing new published"
    assert "release:  published release/v1 (no change since v1: nothing new published)" in result.stderr
    assert "no change since v1" in (run / "work" / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    assert planned_jobs(run) == {}


def test_an_unwritable_release_dir_stops_the_run_before_any_job(run):
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["release_dir"] = "/proc/bidsafe-release"  # takes no new files, even for root
    (run / "unwritable.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = snakemake(run, "-n", configfile="unwritable.yaml")
    assert result.returncode != 0
    assert "config: 'release_dir' (/proc/bidsafe-release) is not writable" in result.stdout + result.stderr
    assert "Job stats" not in result.stdout + result.stderr


def test_rule_edit_reruns_deid_for_every_session_and_all_after_it(run):
    rules = run / "site" / "basic-mr.yaml"
    with edited(rules, rules.read_text(encoding="utf-8") + "\n# reviewed again\n"):
        jobs = planned_jobs(run)
    assert jobs.get("deid") == 1  # the one session
    assert set(jobs) >= STAGES_AFTER_CONVERT
    assert "ingest" not in jobs and "pseudonymise" not in jobs
    assert planned_jobs(run) == {}  # bytes and time put back: the run is current again


def test_vocabulary_edit_reruns_deid_scrub_and_the_leak_gate(run):
    vocabulary = run / "site" / "vocabulary.yaml"
    with edited(vocabulary, SITE_VOCABULARY.replace("fingertap]", "fingertap, nback]")):
        jobs = planned_jobs(run)
    assert {"deid", "scrub", "gate_leak_scan"} <= set(jobs)


def test_allowlist_edit_reruns_scrub_not_deid_or_convert(run):
    allowlist = run / "site" / "sidecar_allowlist.yaml"
    with edited(allowlist, allowlist.read_text(encoding="utf-8") + "\n# reviewed again\n"):
        jobs = planned_jobs(run)
    assert jobs.get("scrub") == 1
    assert "deid" not in jobs and "convert" not in jobs
    assert {"deface", "qc", "assemble", "publish"} <= set(jobs)


def test_an_edit_carrying_an_older_time_still_reruns(run):
    """`cp -p`, `rsync -t` or an unpacked archive give an edited file an old time: the content decides."""
    mapping = run / "site" / "dcm2bids.json"
    original = mapping.stat()
    with edited(mapping, json.dumps(json.loads(mapping.read_text(encoding="utf-8")), indent=4)):
        os.utime(mapping, ns=(original.st_atime_ns, original.st_mtime_ns - 10**12))
        jobs = planned_jobs(run)
    assert jobs.get("convert") == 1 and "deid" not in jobs


def test_shareable_records_the_profile_the_session_was_processed_with(run):
    shareable = json.loads((run / "release" / "latest" / "SHAREABLE.json").read_text(encoding="utf-8"))
    record = shareable["processing_profile"]
    assert record["uniform"] is True and record["sessions"] == 1
    profile = record["profile"]
    site = run / "site"
    assert profile["deid"]["rules"] == {"file": "basic-mr.yaml", "sha256": sha256(site / "basic-mr.yaml")}
    assert [v["sha256"] for v in profile["deid"]["vocabulary"]] == [
        sha256(REPO / "config" / "deid" / "vocabulary.yaml"), sha256(site / "vocabulary.yaml")]
    assert profile["convert"]["dcm2bids_config"]["sha256"] == sha256(site / "dcm2bids.json")
    assert profile["scrub"]["sidecar_allowlist"]["sha256"] == sha256(site / "sidecar_allowlist.yaml")
    assert profile["scrub"]["vocabulary"] == profile["deid"]["vocabulary"]
    assert "weaker_rules" not in profile["deid"]
    assert shareable["profile"] == f"basic-mr.yaml (sha256:{sha256(site / 'basic-mr.yaml')[:16]})"


def test_pipeline_refuses_a_rule_set_check_rules_rejects(run):
    rules = run / "site" / "basic-mr.yaml"
    with edited(rules, weaken_patient_name(rules.read_text(encoding="utf-8"))):
        result = snakemake(run, "-n")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "basic-mr.yaml" in message and "(0010,0010)" in message and "check-rules" in message
    assert "allow_weaker_rules" in message


def test_the_readme_mapping_loop_reruns_convert_without_forcerun(run):
    """README: edit the dcm2bids config, `snakemake --cores 8 converted`, read series.json, repeat."""
    mapping = run / "site" / "dcm2bids.json"
    before = (run / "work" / "deid").stat().st_mtime_ns
    config = json.loads(mapping.read_text(encoding="utf-8"))
    # a real edit a site makes: drop the mapping of the T2w series; it must then be reported as left out
    config["descriptions"] = [d for d in config["descriptions"] if d.get("suffix") != "T2w"]
    mapping.write_text(json.dumps(config, indent=2), encoding="utf-8")
    assert planned_jobs(run, "converted") == {"convert": 1, "converted": 1}
    result = snakemake(run, "converted")
    assert result.returncode == 0, result.stderr[-4000:]
    (session,) = (run / "work" / "convert").glob("sub-*/ses-*")
    images = {p.name for p in (session / "bids").rglob("*.nii.gz")}
    assert images and not any("T2w" in name for name in images)
    assert any("T1w" in name for name in images)
    part = json.loads((run / "work" / "profile" / session.relative_to(run / "work" / "convert")
                       / "convert.json").read_text(encoding="utf-8"))
    assert part["dcm2bids_config"]["sha256"] == sha256(mapping)
    assert (run / "work" / "deid").stat().st_mtime_ns == before
    assert planned_jobs(run, "converted") == {}  # the loop's next pass starts clean


def test_allow_weaker_rules_runs_deid_but_marks_it_not_identity_removed(tmp_path):
    """Cheap: ingest, pseudonymise and deid of a second small inbox (publish's refusal: tests/unit)."""
    root, (session,) = make_run_folder(tmp_path, seed=12)
    rules = root / "site" / "basic-mr.yaml"
    rules.write_text(weaken_patient_name(rules.read_text(encoding="utf-8")), encoding="utf-8")
    write_config(root, allow_weaker_rules=True)
    result = snakemake(root, "deidentified")
    assert result.returncode == 0, result.stderr[-4000:]
    (part,) = (root / "work" / "profile").glob("sub-*/ses-*/deid.json")
    gaps = json.loads(part.read_text(encoding="utf-8"))["weaker_rules"]
    assert any("(0010,0010)" in gap for gap in gaps)
    first = min((root / "work" / "deid").rglob("*.dcm"))
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    # the rule set kept the name: the file says so instead of claiming its identity was removed
    assert str(ds.PatientName) == session.patient_name
    assert ds.PatientIdentityRemoved == "NO"
    assert "DeidentificationMethodCodeSequence" not in ds
