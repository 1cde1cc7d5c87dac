"""The run report a lab manager reads in a minute (issue 16 item 7): the summary block (release, sessions with
reasons in words, quarantine counts, series left out, k-anonymity actions, gates), QC flags, a report written
from whatever a failed run left, no personal value in it, and the five-line terminal summary."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe import ingest
from bidsafe.pseudonymise import consent, studies
from bidsafe.pseudonymise.kanonymity import KAnonymityOutcome
from bidsafe.release.gates import GateResult, write_gate_report
from bidsafe.release.report import REASON_WORDS, k_anonymity_actions, qc_flags, reason_in_words
from bidsafe.release.runreport import collect_from_work, finish_run, terminal_summary
from bidsafe.siteexclusions import EXCLUDED_PREFIX

SRC = Path(__file__).resolve().parents[2] / "src" / "bidsafe"
PLANTED = "ZZPLANTED^Secretname"  # a personal value planted in the private inputs: never in the report
PLANTED_UID = "1.2.826.0.1.3680043.99999.424242"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _work_area(root: Path, *, publish: bool = True, gates_pass: bool = True) -> tuple[Path, Path]:
    """A work area as a run leaves it: one session included, one withheld for consent, one excluded by the
    site, one withheld at deface; k-anonymity generalised age and suppressed sex; 3 files quarantined."""
    work, private = root / "work", root / "private"
    outcome = KAnonymityOutcome(k=5, action="generalise", quasi_identifiers=["sex", "age"], participants=2,
                                small_classes_before=[1, 1], steps=["age: bins of 5 years", "age: bins of 10 years",
                                                                    "sex: suppressed"],
                                column_steps={"age": 10.0}, suppressed=["sex"])
    _write(work / "pseudonymise" / "summary.json", json.dumps({
        "sessions": [
            {"subject": "a1", "session": "01", "included": True, "reason": ""},
            {"subject": "b2", "session": "01", "included": False, "reason": consent.REASON_INSUFFICIENT},
            {"subject": "c3", "session": "01", "included": False,
             "reason": f"{EXCLUDED_PREFIX}: scanned under the wrong study"},
            {"subject": "d4", "session": "01", "included": True, "reason": ""},
        ],
        "k_anonymity": outcome.to_json(),
    }))
    _write(work / "staging" / "included.tsv",
           "subject\tsession\tstatus\treason\tstage\tcode\na1\t01\tincluded\t\t\t\n"
           "d4\t01\twithheld\tdeface guard: deface refused (builtin): shear 0.41 above 0.2\tdeface\tdeface:refused\n")
    _write(work / "convert" / "sub-a1" / "ses-01" / "series.json", json.dumps({
        "received": 3, "converted": 2, "left_out": 1, "partly_left_out": 0,
        "series": [{"series": "1", "description": "localizer", "files": 3, "status": "left out", "images": [],
                    "left_out": [{"reason": "no mapping matched", "count": 3, "unit": "images"}]}]}))
    _write(work / "qc" / "sub-a1" / "ses-01" / "sub-a1_ses-01_qc.tsv",
           "filename\tdatatype\tsuffix\tvolumes\tsnr\ttsnr\tcom_shift_mean_mm\tcom_shift_max_mm\n"
           "func/sub-a1_ses-01_task-rest_bold.nii.gz\tfunc\tbold\t3\tn/a\tn/a\t20.1\t44.0\n")
    _write(work / "deface" / "sub-a1" / "ses-01" / "records.json", json.dumps([
        {"input": "sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz", "engine": "builtin",
         "singular_values": [0.98, 1.02, 1.01], "shear": 0.003, "agreement_dice": 0.9871,
         "brain_cm3_removed": 0.0, "removed_cm3": 1281.15}]))
    (work / "deface" / "sub-a1" / "ses-01" / "qc").mkdir(parents=True)
    gates = [GateResult("validator", True, "0 errors, 3 warnings"),
             GateResult("leak_scan", gates_pass, "0 hits" if gates_pass else "2 hits in 1 file"),
             GateResult("deface", True, "1 of 1 images can show a face"),
             GateResult("consent", True, "1 sessions in the release, all included")]
    for gate in gates:
        write_gate_report(gate, work / "gates" / f"{gate.name}.json")
    if publish:
        _write(work / "publish" / "published.json", json.dumps({"release": "/data/release/v3", "gates": []}))
    quarantine = private / "ingest" / "quarantine.tsv"
    quarantine.parent.mkdir(parents=True)
    ingest.write_tsv(quarantine, ingest.QUARANTINE_COLUMNS, [
        (f"{PLANTED}/DICOMDIR", PLANTED_UID, ingest.REASON_DICOMDIR),
        (f"{PLANTED}/notes.txt", "", ingest.REASON_NOT_DICOM),
        (f"{PLANTED}/a.dcm", PLANTED_UID, f"{ingest.REASON_TRUNCATED}: Input/output error"),
        (f"{PLANTED}/b.dcm", "", f"odd reason naming {PLANTED}"),
    ])
    return work, private


def test_summary_block_has_release_sessions_quarantine_series_k_anonymity_and_gates(tmp_path: Path) -> None:
    work, private = _work_area(tmp_path)
    lines = finish_run(work, private, failed=False, stream=io.StringIO())
    text = (work / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    summary = text.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert "Published: /data/release/v3" in summary
    assert "1 included, 2 withheld, 1 excluded (of 4)" in summary
    assert ("sub-b2 ses-01: <b>withheld</b> — The participant&#x27;s consent covers a narrower audience than this "
            "release&#x27;s.") in summary
    assert "sub-c3 ses-01: <b>excluded</b> — excluded by the site configuration: scanned under the wrong study" \
        in summary
    assert "sub-d4 ses-01: <b>withheld</b> — A deface safety guard refused the images" in summary
    assert "(at deface: deface guard: deface refused (builtin): shear 0.41 above 0.2)" in summary
    assert ("Quarantined at ingest</b>: 4 file(s) (1 DICOMDIR (index file, no images); 1 not DICOM; "
            "1 other reason; 1 truncated/unreadable)") in summary
    assert "by de-identification or as incomplete): 1 whole, 0 in part" in summary
    assert ("k=5 over sex, age: age generalised to bins of 10 years; sex suppressed (column removed for all 2 "
            "released participants)") in summary
    for name, line in (("validator", "0 errors, 3 warnings"), ("leak_scan", "0 hits"), ("consent", "1 sessions")):
        assert re.search(rf'<span class="pass">passed</span> {name}: {re.escape(line)}', summary)
    assert "consent:insufficient" not in summary and "deface:refused" not in summary  # words, not codes
    assert lines[1] == "  release:  published /data/release/v3"


def test_no_personal_value_reaches_the_report(tmp_path: Path) -> None:
    work, private = _work_area(tmp_path)
    finish_run(work, private, failed=True, stream=io.StringIO())
    text = (work / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    assert "other reason" in text  # the planted reason was counted, not shown
    assert PLANTED not in text and "Secretname" not in text and PLANTED_UID not in text
    assert "Input/output error" not in text  # only the ingest stage's fixed phrases


def test_every_known_reason_code_has_words() -> None:
    codes = {v for k, v in vars(consent).items() if k.startswith("REASON_") and isinstance(v, str)}
    codes |= {v for k, v in vars(studies).items() if k.startswith("REASON_") and isinstance(v, str)}
    codes -= {consent.REASON_OK, consent.REASON_NOT_REQUIRED}  # these include a session
    for source in SRC.rglob("*.py"):  # codes the per-session stages write (SessionWithheld, default codes)
        codes |= set(re.findall(r'"((?:deid|convert|scrub|deface|qc):[a-z-]+)"', source.read_text("utf-8")))
    assert {"deid:all-burned-in", "convert:ambiguous", "deface:refused", "qc:failed"} <= codes
    missing = sorted(codes - set(REASON_WORDS))
    assert not missing, f"reason codes without words in bidsafe.release.report.REASON_WORDS: {missing}"
    for code in codes:
        words = reason_in_words(code)
        assert code not in words and len(words.split()) >= 4 and words.endswith(".")
    assert reason_in_words("", "consent:withdrawn") == "The participant withdrew consent."
    assert reason_in_words("convert:weird-new", "x") == "Withheld (convert:weird-new). (x)"


def test_k_anonymity_actions_in_words() -> None:
    held = KAnonymityOutcome(k=2, action="generalise", quasi_identifiers=["sex", "age"], participants=6)
    assert k_anonymity_actions(held.to_json()) == "k=2 held over sex, age with no change (6 participants)"
    generalised = KAnonymityOutcome(k=5, action="generalise", quasi_identifiers=["age"], participants=7,
                                    steps=["age: bins of 5 years"], column_steps={"age": 5.0})
    assert k_anonymity_actions(generalised.to_json()) == "k=5 over age: age generalised to bins of 5 years"
    assert k_anonymity_actions(None).startswith("not recorded")


def test_qc_flags_short_runs_and_implausible_displacement() -> None:
    cells, flags = qc_flags({"volumes": "3", "tsnr": "5.3e15", "com_shift_max_mm": "44.0"})
    assert cells["tsnr"] == "n/a (3 volumes)"
    assert len(flags) == 1 and "centre-of-mass displacement of 44 mm" in flags[0] and "implausible" in flags[0]
    cells, flags = qc_flags({"volumes": "200", "tsnr": "5.3e15", "fd_max_mm": "0.2"})  # an older table
    assert cells["tsnr"] == "5.3e+15" and flags == ["tSNR 5.3e+15 is implausible (above 1000)"]
    assert cells["com_shift_max_mm"] == "0.2"
    assert qc_flags({"volumes": "7", "suffix": "dwi", "tsnr": "n/a"})[0]["tsnr"] == "n/a"  # not a BOLD measure
    cells, flags = qc_flags({"volumes": "1", "tsnr": "n/a", "snr": "31.4"})
    assert cells["tsnr"] == "n/a" and cells["snr"] == "31.4" and not flags


def test_qc_has_no_tsnr_under_ten_volumes_and_names_the_displacement() -> None:
    from bidsafe.imageqc import COLUMNS, image_qc

    rng = np.random.default_rng(0)
    for volumes, has_tsnr in ((3, False), (9, False), (10, True)):
        data = (rng.normal(100, 5, (16, 16, 8, volumes)) * (np.arange(16)[:, None, None, None] > 3)).astype("f4")
        path = Path(f"/tmp/bidsafe-test-qc-{volumes}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        try:
            row = image_qc(path, "func", "bold")
        finally:
            path.unlink()
        assert (row["tsnr"] is not None) is has_tsnr
        assert row["com_shift_max_mm"] is not None
    assert "fd_mean_mm" not in COLUMNS and "not Power's framewise displacement" in COLUMNS["com_shift_mean_mm"][
        "Description"]


def test_report_is_written_on_failure_with_missing_inputs(tmp_path: Path) -> None:
    stream = io.StringIO()
    lines = finish_run(tmp_path / "work", tmp_path / "private", failed=True, log=[tmp_path / "absent.log"],
                       stream=stream)
    text = (tmp_path / "work" / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    assert "The run failed" in text and "Nothing published" in text
    assert ("Missing inputs</b> (the report shows what exists): pseudonymise summary, assembled session list, "
            "ingest quarantine report, publish record") in text
    assert len(lines) == 5 and stream.getvalue().splitlines() == lines
    assert lines[0] == "bidsafe: run FAILED"


def test_a_run_that_stopped_midway_says_how_far_each_session_got(tmp_path: Path) -> None:
    work, private = _work_area(tmp_path, publish=False)
    (work / "staging" / "included.tsv").unlink()
    (work / "gates").rename(tmp_path / "gates-gone")
    _write(work / "status" / "convert" / "sub-a1" / "ses-01" / "status.json",
           '{"status": "included", "stage": "convert"}')
    _write(work / "status" / "qc" / "sub-d4" / "ses-01" / "status.json", json.dumps(
        {"status": "withheld", "stage": "deface", "code": "deface:refused", "reason": "deface guard: shear"}))
    log = _write(tmp_path / "snakemake.log", "Error in rule deface:\n    jobid: 3\n")
    lines = finish_run(work, private, failed=True, log=str(log), stream=io.StringIO())
    text = (work / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    assert "Not finished when the run stopped (last stage finished: convert)." in text
    assert "0 included, 2 withheld, 1 excluded, 1 unfinished (of 4)" in text
    assert lines == [
        "bidsafe: run FAILED (failed job: deface)",
        "  release:  nothing published: the run failed at deface",
        "  sessions: 0 included, 2 withheld, 1 excluded, 1 unfinished (of 4)",
        "  gates:    none ran",
        f"  report:   {work / 'report' / 'bidsafe-report.html'}",
    ]


def test_terminal_summary_five_lines_for_a_failed_gate(tmp_path: Path) -> None:
    work, private = _work_area(tmp_path, publish=False, gates_pass=False)
    facts = collect_from_work(work, private)
    lines = terminal_summary(facts, Path("r.html"), failed=True, failed_rules=["publish"])
    assert lines == [
        "bidsafe: run FAILED (failed job: publish)",
        "  release:  nothing published: gate(s) failed: leak_scan: 2 hits in 1 file",
        "  sessions: 1 included, 2 withheld, 1 excluded (of 4)",
        "  gates:    validator passed, leak_scan FAILED, deface passed, consent passed",
        "  report:   r.html",
    ]


def test_deface_numbers_and_readable_figures(tmp_path: Path) -> None:
    from PIL import Image

    from bidsafe.deface.qc import write_qc_png

    work, private = _work_area(tmp_path)
    data = np.zeros((20, 24, 16), dtype=np.float32)
    data[4:16, 4:20, 3:13] = 100.0
    removal = np.zeros(data.shape, dtype=bool)
    removal[4:16, 16:20, 3:7] = True
    png = write_qc_png(nib.Nifti1Image(data, np.eye(4)), removal,
                       work / "deface" / "sub-a1" / "ses-01" / "qc" / "sub-a1_ses-01_T1w.png", title="T1w")
    # 810 px wide at 90 dpi with 15-point titles (was 540 px wide with 8-point titles at 72 dpi: ~6 px text)
    assert Image.open(png).size == (810, 567)
    finish_run(work, private, failed=False, stream=io.StringIO())
    text = (work / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    drill = text.split("<h2>Per session</h2>")[1]
    session = drill.split("sub-a1 ses-01")[1].split("</details>")[0]
    assert "<td>builtin</td><td>0.980–1.020</td>" in session and '<td class="num">0.9871</td>' in session
    assert '<td class="num">1281.15</td>' in session and "data:image/png;base64," in session
    assert "<td>n/a (3 volumes)</td>" in session and "centre-of-mass displacement, max (mm; not Power FD)" in session
    assert "centre-of-mass displacement of 44 mm between volumes is implausible" in session


@pytest.mark.parametrize("code", sorted(REASON_WORDS))
def test_reason_words_keep_the_stage_detail(code: str) -> None:
    assert reason_in_words(code, "the detail", "convert").endswith("(at convert: the detail)")


def test_summary_says_when_nothing_new_was_published(tmp_path: Path) -> None:
    """Issue 10: a rerun whose release equals the highest published version names it and says so."""
    work, private = _work_area(tmp_path)
    _write(work / "publish" / "published.json", json.dumps(
        {"release": "/data/release/v3", "version": 3, "new_version": False,
         "note": "no change since v3: nothing new published", "gates": []}))
    lines = finish_run(work, private, failed=False, stream=io.StringIO())
    text = (work / "report" / "bidsafe-report.html").read_text(encoding="utf-8")
    summary = text.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert "Published: /data/release/v3 (no change since v3: nothing new published)" in summary
    assert lines[1] == "  release:  published /data/release/v3 (no change since v3: nothing new published)"
