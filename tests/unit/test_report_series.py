"""The run report shows, per session, the series received, converted and left out, and every left-out series
with its reason: an included session that lost a series says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidsafe.convert import AMBIGUOUS, NO_MAPPING
from bidsafe.errors import BidsafeError
from bidsafe.stages import report_stage

CONVERSION = {
    "received": 3,
    "converted": 2,
    "left_out": 1,
    "partly_left_out": 1,
    "not_dicom_files": 0,
    "series": [
        {"series": "2", "description": "t1_mprage", "files": 176, "status": "converted",
         "images": ["anat/sub-a1_ses-01_T1w.nii.gz"], "left_out": []},
        {"series": "4", "description": "ep2d_bold_rest", "files": 360, "status": "converted",
         "images": ["func/sub-a1_ses-01_task-rest_bold.nii.gz"],
         "left_out": [{"reason": "failed de-identification: image without pixel data", "count": 1,
                       "unit": "files"}]},
        {"series": "7", "description": "gre_field_mapping", "files": 60, "status": "left out", "images": [],
         "left_out": [{"reason": NO_MAPPING, "count": 2, "unit": "images"},
                      {"reason": AMBIGUOUS, "count": 1, "unit": "images"}]},
    ],
}


def _run(tmp_path: Path, conversions: dict[tuple[str, str], dict]) -> str:
    summary = tmp_path / "pseudonymise" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"sessions": [
        {"subject": "a1", "session": "01", "included": True, "reason": ""},
        {"subject": "b2", "session": "01", "included": True, "reason": ""},
    ]}))
    included = tmp_path / "included.tsv"
    included.write_text("subject\tsession\tstatus\treason\na1\t01\tincluded\t\nb2\t01\tincluded\t\n")
    paths = []
    for (subject, session), conversion in conversions.items():
        path = tmp_path / "convert" / f"sub-{subject}" / f"ses-{session}" / "series.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(conversion))
        paths.append(path)
    html = report_stage(html=tmp_path / "report.html", summary_json=summary, included_tsv=included,
                        gate_reports=[], qc_dirs=[], picture_dirs=[], conversion_summaries=paths)
    return html.read_text(encoding="utf-8")


def test_left_out_series_are_visible_with_their_reasons(tmp_path):
    clean = {**CONVERSION, "received": 1, "converted": 1, "left_out": 0, "partly_left_out": 0,
             "series": CONVERSION["series"][:1]}
    text = _run(tmp_path, {("a1", "01"): CONVERSION, ("b2", "01"): clean})
    # the sessions table: counts, and the included session that lost series says so
    assert ('<td>sub-a1</td><td>ses-01</td><td><span class="included">included</span></td>'
            '<td>1 series left out, 1 in part (below)</td>'
            '<td class="num">3</td><td class="num">2</td><td class="num">1</td>') in text
    assert ('<td>sub-b2</td><td>ses-01</td><td><span class="included">included</span></td><td></td>'
            '<td class="num">1</td><td class="num">1</td><td class="num">0</td>') in text
    assert "4 series received: 3 converted, 1 left out." in text
    assert ('<td class="num">7</td><td>gre_field_mapping</td><td class="num">60</td>'
            '<td><span class="withheld">left out</span></td>'
            f"<td>{NO_MAPPING} (2 images); {AMBIGUOUS} (1 images)</td>") in text
    assert ('<td class="num">4</td><td>ep2d_bold_rest</td><td class="num">360</td><td>converted in part</td>'
            "<td>failed de-identification: image without pixel data (1 files)</td>") in text
    series_section = text.split("<h2>Series</h2>")[1].split("<h2>")[0]
    assert "t1_mprage" not in series_section  # converted whole: not listed among the left out
    assert "t1_mprage" in text.split("<h2>Per session</h2>")[1]  # but in its session's full series table


def test_a_session_without_its_summary_is_flagged(tmp_path):
    text = _run(tmp_path, {("a1", "01"): CONVERSION})
    assert "1 session(s) without a conversion summary." in text


def test_an_incomplete_series_and_dcm2niix_lost_data_messages_are_shown(tmp_path):
    incomplete = {**CONVERSION, "received": 1, "converted": 0, "left_out": 1, "partly_left_out": 0, "incomplete": 1,
                  "converter_warnings": {"dcm2niix: missing images": 1, "dcm2niix: slice spacing varies": 2},
                  "series": [{"series": "2", "description": "t1_mprage", "files": 175, "status": "left out",
                              "images": [], "left_out": [{"reason": "incomplete series: 1 of 176 slices missing "
                                                                    "(instance 88)", "count": 175, "unit": "files"}]}]}
    text = _run(tmp_path, {("a1", "01"): incomplete})
    series_section = text.split("<h2>Series</h2>")[1].split("<h2>")[0]
    assert ('<td class="num">2</td><td>t1_mprage</td><td class="num">175</td>'
            '<td><span class="withheld">left out</span></td>'
            "<td>incomplete series: 1 of 176 slices missing (instance 88) (175 files)</td>") in series_section
    assert ("<td>sub-a1</td><td>ses-01</td>"
            "<td>dcm2niix: missing images (1); dcm2niix: slice spacing varies (2)</td>") in series_section
    per_session = text.split("<h2>Per session</h2>")[1]
    assert "dcm2niix reported lost data: dcm2niix: missing images (1); dcm2niix: slice spacing varies (2)" \
        in per_session


@pytest.mark.parametrize(("content", "problem"), [
    (None, "is missing"),
    ("{not json", "is unreadable (JSONDecodeError)"),
    ("[]", "is not a JSON object"),
])
def test_report_rule_without_the_pseudonymise_summary_is_an_error_naming_it(
        tmp_path: Path, content: str | None, problem: str) -> None:
    # The report rule runs after publish: an absent summary is a broken run, not a report with no sessions.
    # (A failed run's report takes whatever exists: runreport.collect_from_work, test_report_summary.py.)
    summary = tmp_path / "pseudonymise" / "summary.json"
    summary.parent.mkdir(parents=True)
    if content is not None:
        summary.write_text(content)
    included = tmp_path / "included.tsv"
    included.write_text("subject\tsession\tstatus\treason\n")
    with pytest.raises(BidsafeError) as caught:
        report_stage(html=tmp_path / "report.html", summary_json=summary, included_tsv=included,
                     gate_reports=[], qc_dirs=[], picture_dirs=[])
    assert caught.value.message == f"the pseudonymise summary {problem}"
    assert caught.value.path == summary
    assert not (tmp_path / "report.html").exists()
