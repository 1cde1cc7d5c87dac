"""Failure stays with its session: each kind of session-level failure withholds that session with a reason,
the later stages pass it through, assemble leaves it out, the report says why, and the other session is
released. Real stage functions throughout (real dcm2niix/dcm2bids, the real deface engine and QC)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from bidsafe.deid.stage import deid_stage
from bidsafe.demo import generate
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.keys import create_key
from bidsafe.phi import load_values
from bidsafe.release.leakscan import harvest_source
from bidsafe.sessionstatus import INCLUDED, WITHHELD, read_status, run_session_stage
from bidsafe.stages import (
    assemble_stage,
    convert_stage,
    deface_stage,
    qa_session_files,
    qc_stage,
    read_included,
    report_stage,
    scrub_stage,
)

from helpers.mr_instances import empty_mr, save_dicom, set_pixels
from helpers.pseudonym_data import FakeSession, config, write_index, write_registry

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "deid" / "basic-mr.yaml"
ALLOWLIST = REPO / "config" / "sidecar_allowlist.yaml"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: withheld by de-identification as possibly burned-in


# ------------------------------------------------------------------------------------------- helpers


class Work:
    """A work area laid out as the workflow lays it out (work/<stage>/sub-S/ses-T, work/status/<stage>/...)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"

    def status(self, stage: str, subject: str, session: str = "01") -> Path:
        return self.work / "status" / stage / f"sub-{subject}" / f"ses-{session}" / "status.json"

    def dir(self, stage: str, subject: str, session: str = "01") -> Path:
        return self.work / stage / f"sub-{subject}" / f"ses-{session}"

    def scrub_from(self, subject: str, upstream: Path) -> dict:
        return scrub_stage(in_bids=self.dir("convert", subject) / "bids", out_bids=self.dir("scrub", subject) / "bids",
                           status_json=self.status("scrub", subject), upstream_status=upstream,
                           values_json=self.root / "values.json", deid_dir=self.root / "nowhere",
                           allowlist=ALLOWLIST)

    def deface_from(self, subject: str, upstream: Path | None) -> dict:
        stage = self.dir("deface", subject)
        return deface_stage(in_dir=self.dir("scrub", subject) / "bids", out_bids=stage / "bids",
                            status_json=self.status("deface", subject), records_json=stage / "records.json",
                            pictures_dir=stage / "qc", engine="builtin", upstream_status=upstream)

    def qc_from(self, subject: str, upstream: Path | None) -> dict:
        return qc_stage(in_bids=self.dir("deface", subject) / "bids", out_dir=self.dir("qc", subject),
                        status_json=self.status("qc", subject), upstream_status=upstream, subject=subject,
                        session="01")

    def finish_from(self, stage: str, subject: str) -> dict:
        """Run every stage after `stage` for a session, each reading its predecessor's status."""
        order = ["convert", "scrub", "deface", "qc"]
        status: dict = read_status(self.status(stage, subject)) or {}
        for later in order[order.index(stage) + 1:] if stage in order else order:
            upstream = self.status(order[order.index(later) - 1] if later != "convert" else "deid", subject)
            if later == "convert":
                status = convert_stage(dicom_dir=self.dir("deid", subject),
                                       out_bids=self.dir("convert", subject) / "bids",
                                       summary_json=self.dir("convert", subject) / "series.json",
                                       status_json=self.status("convert", subject), upstream_status=upstream,
                                       subject=subject, session="01", config=REPO / "config" / "dcm2bids.json",
                                       deid_report=self.root / "private" / f"deid_{subject}.json")
            elif later == "scrub":
                status = self.scrub_from(subject, upstream)
            elif later == "deface":
                status = self.deface_from(subject, upstream)
            else:
                status = self.qc_from(subject, upstream)
        return status

    def good_session(self, subject: str = "good") -> None:
        """An included session that went through deface (a head-like T1w), and its QC by the real stage."""
        ses = self.dir("deface", subject) / "bids" / f"sub-{subject}" / "ses-01"
        (ses / "anat").mkdir(parents=True)
        grid = np.indices((20, 20, 20)).astype(np.float32) - 9.5
        head = (np.sqrt((grid ** 2).sum(axis=0)) < 7) * 800.0 + np.random.default_rng(1).normal(20, 5, (20, 20, 20))
        image = nib.Nifti1Image(np.clip(head, 0, None).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
        nib.save(image, ses / "anat" / f"sub-{subject}_ses-01_T1w.nii.gz")
        (ses / "anat" / f"sub-{subject}_ses-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
        (ses / f"sub-{subject}_ses-01_scans.tsv").write_text(
            f"filename\tacq_time\nanat/sub-{subject}_ses-01_T1w.nii.gz\t1900-01-01T10:00:00\n")
        included = self.status("deface", subject)
        included.parent.mkdir(parents=True)
        included.write_text(json.dumps({"status": INCLUDED, "stage": "deface", "images": 1}))
        assert self.qc_from(subject, included)["status"] == INCLUDED

    def assemble(self, subjects: list[str]) -> tuple[Path, list[dict[str, str]], str]:
        """Assemble and report as the workflow does; (staging, included.tsv rows, report text)."""
        participants = self.work / "pseudonymise"
        participants.mkdir(parents=True, exist_ok=True)
        (participants / "participants.tsv").write_text(
            "participant_id\tage\n" + "".join(f"sub-{s}\t40\n" for s in subjects))
        summary = {"sessions": [{"subject": s, "session": "01", "included": True, "reason": ""} for s in subjects]}
        (participants / "summary.json").write_text(json.dumps(summary))
        staging = self.work / "staging" / "release"
        included_tsv = self.work / "staging" / "included.tsv"
        assemble_stage(
            staging=staging, included_tsv=included_tsv,
            session_status=[self.status("qc", s) for s in subjects],
            defaced=[self.dir("deface", s) / "bids" for s in subjects],
            qc_dirs=[self.dir("qc", s) for s in subjects], participants_dir=participants,
            release_config={"name": "test", "audience": "public", "license": "CC-BY-4.0"},
            profile_parts=[], profiles_json=self.work / "staging" / "profiles.json",
            release_dir=self.root / "release",
        )
        conversions = [p for s in subjects if (p := self.dir("convert", s) / "series.json").is_file()]
        html = report_stage(html=self.root / "report.html", summary_json=participants / "summary.json",
                            included_tsv=included_tsv, gate_reports=[], qc_dirs=[self.dir("qc", s) for s in subjects],
                            picture_dirs=[], conversion_summaries=conversions)
        return staging, read_included(included_tsv), Path(html).read_text(encoding="utf-8")


def check_withheld(work: Work, bad: str, stage: str, code: str, words: str) -> None:
    """The session `bad` is withheld at `stage` with `code`, carried to the last stage; assemble leaves it
    out and keeps the good one; included.tsv and the report give the stage and the reason."""
    final = read_status(work.status("qc", bad))
    assert final["status"] == WITHHELD and final["stage"] == stage and final["code"] == code
    assert words in final["reason"]
    for later in ("deface", "qc"):  # every later stage wrote its outputs, empty
        assert work.status(later, bad).is_file()
    assert not any(work.dir("qc", bad).iterdir())
    if stage != "qc":  # withheld before deface: nothing of the session went on
        assert not any((work.dir("deface", bad) / "bids").rglob("*.nii*"))
    work.good_session()
    staging, rows, html = work.assemble([bad, "good"])
    assert (staging / "sub-good" / "ses-01" / "anat" / "sub-good_ses-01_T1w.nii.gz").is_file()
    assert not (staging / f"sub-{bad}").exists()
    assert "sub-" + bad not in (staging / "participants.tsv").read_text()
    by_subject = {r["subject"]: r for r in rows}
    assert by_subject["good"]["status"] == INCLUDED
    assert by_subject[bad]["status"] == WITHHELD and by_subject[bad]["stage"] == stage
    assert by_subject[bad]["code"] == code and words in by_subject[bad]["reason"]
    assert f"at {stage}: " in html and words in html.replace("&#x27;", "'").replace("&quot;", '"')
    assert "1 of 2 sessions included, 1 withheld" in html


def _mr(path: Path, study: str, series: str, number: int, sop_class: str, charset: str | None = None) -> None:
    ds = empty_mr(sop_class=sop_class)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "Orlowska^Thea", "PX-5521"
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20230102", "MR", 7, number
    ds.SeriesDescription = "screen capture"
    if charset:
        ds.SpecificCharacterSet = charset
    # a slice placed in the patient: an MR image without geometry is withheld as a possible screen capture
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(number)], [1, 0, 0, 0, 1, 0]
    save_dicom(set_pixels(ds, np.arange(16, dtype=np.uint16).reshape(4, 4)), path)


# ------------------------------------------------------------------------------------------- each kind


def _deid_session_of(tmp_path: Path, work: Work, sop_class: str, charset: str | None = None) -> dict:
    """Three files of one series (with a SpecificCharacterSet when given) through the deid stage."""
    inbox = tmp_path / "inbox"
    study, series = generate_uid(), generate_uid()
    rels = [f"ORLOWSKA/{i}.dcm" for i in range(1, 4)]
    for i, rel in enumerate(rels, start=1):
        _mr(inbox / rel, study, series, i, sop_class, charset)
    files_txt = tmp_path / "private" / "files.txt"
    files_txt.parent.mkdir()
    files_txt.write_text("\n".join(rels) + "\n")
    create_key(tmp_path / "private" / "secret.key")
    return deid_stage(status_json=work.status("deid", "bad"), files_txt=files_txt, inbox=inbox,
                      out_dir=work.dir("deid", "bad"), values_json=tmp_path / "values.json",
                      report_json=tmp_path / "private" / "deid_bad.json", rules_path=RULES,
                      key_path=tmp_path / "private" / "secret.key", subject="bad")


def test_every_file_burned_in_withholds_at_deid(tmp_path):
    work = Work(tmp_path)
    status = _deid_session_of(tmp_path, work, SC)
    assert status["code"] == "deid:all-burned-in"
    assert work.dir("deid", "bad").is_dir() and not any(work.dir("deid", "bad").iterdir())
    assert "Orlowska" in {v.value.split("^")[0] for v in load_values(tmp_path / "values.json")}  # kept, private
    work.finish_from("deid", "bad")
    # the conversion summary still tells which series were received and why they went nowhere
    summary = json.loads((work.dir("convert", "bad") / "series.json").read_text())
    assert summary["converted"] == 0 and summary["series"][0]["series"] == "7"
    assert summary["series"][0]["left_out"][0]["reason"].startswith("withheld by de-identification")
    check_withheld(work, "bad", "deid", "deid:all-burned-in", "withheld as possibly holding burned-in text")


def test_unsupported_character_set_withholds_at_deid(tmp_path):
    """Text in a character set pydicom cannot decode can be neither harvested nor cleaned: fail closed."""
    work = Work(tmp_path)
    status = _deid_session_of(tmp_path, work, MR, charset="ISO_IR 999")
    assert status["code"] == "deid:nothing-deidentified"
    assert status["reason"] == "no file of the session could be de-identified: 3 failed (unsupported character set)"
    work.finish_from("deid", "bad")
    check_withheld(work, "bad", "deid", "deid:nothing-deidentified", "unsupported character set")


def test_a_known_character_set_is_de_identified(tmp_path):
    assert _deid_session_of(tmp_path, Work(tmp_path), MR, charset="ISO_IR 100")["status"] == INCLUDED


@pytest.fixture(scope="module")
def demo_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("demo") / "inbox", subjects=1, sessions=1, seed=5)[0].folder


def _convert_with(work: Work, dicom: Path, mapping: dict) -> dict:
    config = work.root / "mapping.json"
    config.write_text(json.dumps(mapping))
    included = work.status("deid", "bad")
    included.parent.mkdir(parents=True, exist_ok=True)
    included.write_text(json.dumps({"status": INCLUDED, "stage": "deid"}))
    return convert_stage(dicom_dir=dicom, out_bids=work.dir("convert", "bad") / "bids",
                         summary_json=work.dir("convert", "bad") / "series.json",
                         status_json=work.status("convert", "bad"), upstream_status=included, subject="bad",
                         session="01", config=config, log_dir=work.root / "private" / "dcm2bids")


@pytest.mark.slow  # a demo session generated, then converted with dcm2niix and dcm2bids
def test_ambiguous_mapping_withholds_at_convert(tmp_path, demo_dicom):
    work = Work(tmp_path)
    every = {"SeriesDescription": "*"}
    status = _convert_with(work, demo_dicom, {"descriptions": [
        {"datatype": "anat", "suffix": "T1w", "criteria": every},
        {"datatype": "anat", "suffix": "T2w", "criteria": every},
    ]})
    assert status["status"] == WITHHELD and status["code"] == "convert:ambiguous"
    assert "several" in status["reason"] and str(tmp_path) not in status["reason"]  # no work-area path
    summary = json.loads((work.dir("convert", "bad") / "series.json").read_text())
    assert summary["converted"] == 0 and summary["received"] >= 5
    assert not any((work.dir("convert", "bad") / "bids").iterdir())
    work.finish_from("convert", "bad")
    check_withheld(work, "bad", "convert", "convert:ambiguous", "the dcm2bids mapping is ambiguous")


@pytest.mark.slow  # a demo session generated, then converted with dcm2niix and dcm2bids
def test_no_series_the_mapping_converts_withholds_at_convert(tmp_path, demo_dicom):
    """Like a session of localizers only, a structured report or CT/RT objects: nothing the mapping takes."""
    work = Work(tmp_path)
    status = _convert_with(work, demo_dicom, {"descriptions": [
        {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": "no_such_series"}}]})
    assert status["code"] == "convert:nothing-converted"
    received = json.loads((work.dir("convert", "bad") / "series.json").read_text())["received"]
    assert f"none of the {received} series received is converted" in status["reason"]
    assert "no mapping matched" in status["reason"]
    work.finish_from("convert", "bad")
    check_withheld(work, "bad", "convert", "convert:nothing-converted", "is converted by the mapping")


def test_deface_refused_withholds_at_deface(tmp_path):
    work = Work(tmp_path)
    anat = work.dir("scrub", "bad") / "bids" / "sub-bad" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    empty = nib.Nifti1Image(np.zeros((24, 24, 24), dtype=np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(empty, anat / "sub-bad_ses-01_T1w.nii.gz")
    included = work.status("scrub", "bad")
    included.parent.mkdir(parents=True)
    included.write_text(json.dumps({"status": INCLUDED, "stage": "scrub"}))
    status = work.deface_from("bad", included)
    assert status["code"] == "deface:refused" and status["reason"].startswith("deface guard: ")
    assert json.loads((work.dir("deface", "bad") / "records.json").read_text()) == []
    work.finish_from("deface", "bad")
    check_withheld(work, "bad", "deface", "deface:refused", "deface guard")


def test_qc_error_withholds_at_qc(tmp_path):
    work = Work(tmp_path)
    anat = work.dir("deface", "bad") / "bids" / "sub-bad" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-bad_ses-01_T1w.nii.gz").write_bytes(b"\x1f\x8b truncated, not an image")
    included = work.status("deface", "bad")
    included.parent.mkdir(parents=True)
    included.write_text(json.dumps({"status": INCLUDED, "stage": "deface"}))
    status = work.qc_from("bad", included)
    assert status["code"] == "qc:failed" and "cannot read" in status["reason"]
    check_withheld(work, "bad", "qc", "qc:failed", "cannot read")


def test_qc_passes_a_withheld_session_through_its_empty_folder(tmp_path):
    """The crash of issue 16: qc on the empty folder of a session deface withheld."""
    work = Work(tmp_path)
    (work.dir("deface", "bad") / "bids").mkdir(parents=True)
    refused = work.status("deface", "bad")
    refused.parent.mkdir(parents=True)
    refused.write_text(json.dumps({"status": WITHHELD, "stage": "deface", "code": "deface:refused",
                                   "reason": "deface guard: phantom"}))
    assert work.qc_from("bad", refused) == read_status(refused)


def test_qc_of_a_session_with_nothing_to_measure_is_no_failure(tmp_path):
    work = Work(tmp_path)
    (work.dir("deface", "ok") / "bids" / "sub-ok" / "ses-01" / "anat").mkdir(parents=True)
    included = work.status("deface", "ok")
    included.parent.mkdir(parents=True)
    included.write_text(json.dumps({"status": INCLUDED, "stage": "deface"}))
    assert work.qc_from("ok", included) == {"status": INCLUDED, "stage": "qc", "images": 0}
    assert work.dir("qc", "ok").is_dir() and not any(work.dir("qc", "ok").iterdir())


def test_a_bug_or_a_config_error_still_fails_the_job(tmp_path):
    written: list[str] = []
    status = tmp_path / "status.json"
    for error in (TypeError("a bug"), ConfigError("a wrong key")):
        def work(error: Exception = error) -> dict:
            raise error

        with pytest.raises(type(error)):
            run_session_stage("qc", status, None, work, lambda: written.append("empty"), "qc:failed")
    assert written == [] and not status.exists()
    with pytest.raises(ConfigError):  # a mapping that is not there fails every session alike: loudly
        convert_stage(dicom_dir=tmp_path, out_bids=tmp_path / "bids", summary_json=tmp_path / "s.json",
                      status_json=status, upstream_status=None, subject="a", session="01",
                      config=tmp_path / "missing.json")
    assert not status.exists()


def test_expected_failure_without_code_gets_the_stage_default(tmp_path):
    def work() -> dict:
        raise BidsafeError("sidecar is not readable JSON", tmp_path / "sub-a")

    status = run_session_stage("scrub", tmp_path / "s.json", None, work, lambda: None, "scrub:refused")
    assert status == {"status": WITHHELD, "stage": "scrub", "code": "scrub:refused",
                      "reason": "sidecar is not readable JSON"}  # the message without the path
    assert json.loads((tmp_path / "s.json").read_text()) == status


# ------------------------------------------------------------------------------------------- site config


@pytest.fixture
def site(tmp_path: Path) -> dict:
    from bidsafe.pseudonymise.stage import run_pseudonymise

    inbox, private, out = tmp_path / "inbox", tmp_path / "private", tmp_path / "work" / "pseudonymise"
    people = [
        FakeSession("QA-WEEKLY", "Phantom^Weekly", "20240105", sex="O", age="001Y"),
        FakeSession("PX-1001", "Brandvold^Ilse", "20240106", sex="F", age="041Y"),
        FakeSession("PX-1002", "Castellucci^Remo", "20240107", sex="M", age="052Y"),
        FakeSession("PX-1003", "Dunmore^Ysolde", "20240108", sex="F", age="033Y"),
    ]
    sessions = write_index(tmp_path / "index.tsv", inbox, people)
    uid_of = {s.patient_id: uid for uid, s in sessions.items()}
    registry = write_registry(tmp_path / "consent.tsv",
                              [{"patient_id": p.patient_id, "consent": "public"} for p in people])

    def run(**overrides: object):
        return run_pseudonymise(tmp_path / "index.tsv", inbox, private, out, config(registry, **overrides))

    return {"run": run, "uid_of": uid_of, "inbox": inbox, "private": private}


def test_site_withholds_excludes_and_declares_qa_sessions(site):
    first = {d.subject for d in site["run"]().decisions if d.included}
    assert len(first) == 4  # everyone consented
    plain = site["run"]()
    label = {d.subject: d for d in plain.decisions}
    withhold_subject = sorted(label)[0]
    result = site["run"](
        sessions={"withhold": [{"subject": f"sub-{withhold_subject}", "reason": "finding under review"}],
                  "exclude": [{"study_uid": site["uid_of"]["PX-1003"], "reason": "duplicate export"}]},
        qa_sessions=[{"field": "PatientName", "pattern": "phantom\\^.*", "reason": "weekly QA phantom"}],
    )
    reasons = {d.subject: d.reason for d in result.decisions}
    qa = [r for r in reasons.values() if r.startswith("QA session")]
    assert qa == ["QA session (PatientName matches a qa_sessions pattern): weekly QA phantom"]
    assert sum(r == "excluded by the site configuration: duplicate export" for r in reasons.values()) == 1
    if not reasons[withhold_subject].startswith(("QA", "excluded")):
        assert reasons[withhold_subject] == "withheld by the site configuration: finding under review"
    assert len(result.included) == 4 - len({s for s, r in reasons.items() if r})
    summary = json.loads((site["private"].parent / "work" / "pseudonymise" / "summary.json").read_text())
    assert {s["reason"] for s in summary["sessions"]} >= {qa[0]}
    participants = (site["private"].parent / "work" / "pseudonymise" / "participants.tsv").read_text()
    assert all(f"sub-{s}" not in participants for s, r in reasons.items() if r)


def test_qa_sessions_values_are_no_needles_but_everyone_elses_are(site):
    site["run"](qa_sessions=[{"field": "PatientID", "pattern": "qa-.*", "reason": "weekly QA phantom"}])
    skip = qa_session_files(site["private"] / "pseudonymise" / "sessions.tsv", site["private"] / "sessions")
    assert skip and all(rel.startswith("Phantom_Weekly_QA-WEEKLY/") for rel in skip)
    values = {v["value"] for v in json.loads(_values_json(harvest_source(site["inbox"], skip=skip)))}
    assert "QA-WEEKLY" not in values and "PX-1001" in values and "PX-1002" in values
    everything = {v["value"] for v in json.loads(_values_json(harvest_source(site["inbox"])))}
    assert "QA-WEEKLY" in everything
    assert qa_session_files(None, site["private"] / "sessions") == frozenset()


def _values_json(values: object) -> str:
    return values.to_json()  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [
    {"sessions": {"withhold": [{"patient_id": "X", "session": "01", "reason": "r"}]}},  # session needs subject
    {"sessions": {"withhold": [{"subject": "a1", "patient_id": "X", "reason": "r"}]}},  # two selectors
    {"sessions": {"exclude": [{"subject": "a1"}]}},  # no reason
    {"sessions": {"withold": []}},  # typo
    {"qa_sessions": [{"field": "StudyDescription", "pattern": "qa", "reason": "r"}]},
    {"qa_sessions": [{"field": "PatientName", "pattern": "qa", "reason": "r", "extra": 1}]},
])
def test_schema_rejects_malformed_site_entries(bad):
    from snakemake.utils import validate

    base = {"inbox": "i", "work_dir": "w", "private_dir": "p", "release_dir": "r"}
    validate(dict(base), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    with pytest.raises(Exception):  # noqa: B017,PT011 - snakemake wraps jsonschema's error in its own
        validate({**base, **bad}, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))


def test_library_rejects_a_bad_pattern_or_a_missing_reason():
    from bidsafe.siteexclusions import read_site_exclusions

    with pytest.raises(ConfigError, match="regular expression"):
        read_site_exclusions({"qa_sessions": [{"field": "PatientID", "pattern": "(", "reason": "r"}]})
    with pytest.raises(ConfigError, match="reason"):
        read_site_exclusions({"sessions": {"exclude": [{"patient_id": "X", "reason": " "}]}})


def test_leak_gate_reads_a_sessions_dictionary_as_prose_but_still_searches_it(tmp_path):
    """sub-S/sub-S_sessions.json describes columns in words (not scanner descriptors): it must not fail the
    vocabulary rule of image sidecars (it did on every site release with a sessions table), and a personal
    value in it is still found."""
    from bidsafe.release.leakscan import leak_scan

    release = tmp_path / "release"
    (release / "sub-a1").mkdir(parents=True)
    dictionary = {"session_id": {"Description": "Session label; sessions are numbered in order of scan date"},
                  "weight": {"Description": "Body weight at scan, rounded to the nearest 0.5 kg", "Units": "kg"}}
    (release / "sub-a1" / "sub-a1_sessions.json").write_text(json.dumps(dictionary))
    values = [{"category": "name", "field": "PatientName", "value": "Zyxwq^Vortigern"}]
    vocabulary = [REPO / "config" / "deid" / "vocabulary.yaml"]
    assert leak_scan(release, values, vocabulary=vocabulary).hits == []
    dictionary["weight"]["Description"] = "weighed by Vortigern Zyxwq"
    (release / "sub-a1" / "sub-a1_sessions.json").write_text(json.dumps(dictionary))
    assert [h.field for h in leak_scan(release, values, vocabulary=vocabulary).hits] == ["PatientName"]
    # an image sidecar keeps the rule
    (release / "sub-a1" / "anat").mkdir()
    (release / "sub-a1" / "anat" / "sub-a1_T1w.json").write_text(json.dumps({"SeriesDescription": "numbered seen"}))
    assert any(h.category == "non-vocabulary token" for h in leak_scan(release, values, vocabulary=vocabulary).hits)
