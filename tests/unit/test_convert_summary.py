"""Nothing lost silently (issue 9, item 6): every series a session received is converted or listed as left out
with dcm2bids' / de-identification's reason, and text dcm2niix cannot encode (ISO 2022) never ends as invalid
JSON. Small pydicom-built series through the real de-identification, dcm2niix and dcm2bids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bidsafe.convert import (
    AMBIGUOUS,
    NO_MAPPING,
    NOT_CONVERTED,
    convert_session,
    summarise,
)
from bidsafe.convert_series import SeriesInfo, repair_sidecar_bytes
from bidsafe.deid.engine import deidentify_tree, write_report
from bidsafe.deid.rules import load_rules

from helpers.deid_testing import KEY, mr_dataset, write

JAPANESE = ["", "ISO 2022 IR 87"]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _series(root: Path, number: int, description: str, charset: list[str] | str, slices: int = 4) -> list[Path]:
    """A small axial volume (8x8, 2 mm slices) with a Japanese patient name and its own character set."""
    paths = []
    for k in range(slices):
        ds = mr_dataset(
            series_uid=f"1.2.826.0.1.3680043.9.7777.1.{number}",
            sop_uid=f"1.2.826.0.1.3680043.9.7777.1.{number}.{k + 1}",
            instance_number=k + 1,
            series_number=number,
            rows=8,
            columns=8,
        )
        ds.SpecificCharacterSet = charset
        japanese = "ISO 2022 IR 87" in charset
        ds.PatientName = "Yamada^Taro=山田^太郎=やまだ^たろう" if japanese else "Yamada^Taro"
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.Manufacturer = "SIEMENS"
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = 2
        ds.EchoTime = 3
        ds.RepetitionTime = 2000
        ds.PixelData = (np.arange(64, dtype="<u2") * (k + 1)).tobytes()
        paths.append(write(ds, root / f"series{number}" / f"{k:03d}.dcm"))
    return paths


def _deidentify(raw: Path, tmp_path: Path) -> tuple[Path, Path]:
    deid = tmp_path / "work" / "deid"
    report = deidentify_tree(raw, deid, rules=load_rules(), key=KEY, subject_key="01")
    report_json = write_report(report, tmp_path / "private" / "deid.json")
    return deid, report_json


def _sidecars(session: Path) -> dict[str, dict]:
    # strict parse of the bytes, as any BIDS tool would do
    return {str(p.relative_to(session)): json.loads(p.read_bytes()) for p in session.rglob("*.json")}


@pytest.mark.slow
def test_iso_2022_study_converts_to_valid_json_and_loses_nothing(tmp_path):
    raw = tmp_path / "inbox"
    _series(raw, 2, "t1_mprage 頭部 丐", JAPANESE)  # 丐 holds a '"' byte inside its JIS code
    _series(raw, 3, "t2_tse_tra", JAPANESE)
    deid, report_json = _deidentify(raw, tmp_path)
    kept = pydicom.dcmread(next((deid).rglob("0002_*/*.dcm")))
    assert "ISO 2022 IR 87" in kept.SpecificCharacterSet  # the de-identified study still declares JIS

    out = tmp_path / "work" / "convert" / "bids"
    summary_json = tmp_path / "work" / "convert" / "series.json"
    files = convert_session(deid, out, "01", "01", log_dir=tmp_path / "private" / "logs",
                            summary_json=summary_json, deid_report=report_json)
    session = out / "sub-01" / "ses-01"
    assert sorted(str(p.relative_to(session)) for p in files) == [
        "anat/sub-01_ses-01_T1w.nii.gz", "anat/sub-01_ses-01_T2w.nii.gz"]
    sidecars = _sidecars(session)
    t1 = sidecars["anat/sub-01_ses-01_T1w.json"]
    # exactly the de-identified DICOM's text, decoded with its declared character set
    assert t1["SeriesDescription"] == kept.SeriesDescription
    assert t1["ProtocolName"] == kept.ProtocolName
    assert not any("\x1b" in str(v) for s in sidecars.values() for v in s.values())
    if "頭部" in kept.SeriesDescription:  # kept by today's cleaning; the vocabulary may replace it
        assert t1["SeriesDescription"] == "t1_mprage 頭部 丐"
    summary = json.loads(summary_json.read_text())
    assert (summary["received"], summary["converted"], summary["left_out"]) == (2, 2, 0)
    # the vocabulary replaces the kanji before dcm2niix sees them, so usually nothing needs repairing; the
    # repair itself is checked on raw series below
    repaired = 1 if "頭部" in kept.SeriesDescription else 0
    assert summary["sidecars_repaired"] == repaired
    if repaired:
        log = (tmp_path / "private" / "logs" / "convert_sub-01_ses-01.log").read_text()
        assert "sidecars repaired (invalid JSON from dcm2niix): 1" in log


@pytest.mark.slow
def test_raw_iso_2022_series_sidecar_decodes_to_the_exact_text(tmp_path):
    """Without de-identification in between: dcm2niix's ESC bytes, a JIS '"' byte, a Latin-1 G1 set."""
    _series(tmp_path / "dicom", 5, "脳 撮影 丐 T1", JAPANESE)
    _series(tmp_path / "dicom", 6, "Ørsted 画像", ["ISO 2022 IR 100", "ISO 2022 IR 87"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dcm2niixOptions": "-b y -ba y -z y -f %3s", "descriptions": [
        {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesNumber": "5"}},
        {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesNumber": "6"}},
    ]}))
    files = convert_session(tmp_path / "dicom", tmp_path / "bids", "01", "01", config=config)
    assert len(files) == 2
    sidecars = _sidecars(tmp_path / "bids" / "sub-01" / "ses-01")
    assert sidecars["anat/sub-01_ses-01_T1w.json"]["SeriesDescription"] == "脳 撮影 丐 T1"
    assert sidecars["anat/sub-01_ses-01_T2w.json"]["SeriesDescription"] == "Ørsted 画像"


def test_repair_drops_an_escape_no_character_set_explains():
    broken = b'{\n\t"SeriesNumber": 4,\n\t"SeriesDescription": "a\x1b%Gb\x01c"\n}\n'
    with pytest.raises(ValueError):
        json.loads(broken)
    fixed = repair_sidecar_bytes(broken, {"4": ["ISO_IR 100"]})
    assert fixed is not None and fixed["SeriesNumber"] == 4
    assert all(c >= " " for c in fixed["SeriesDescription"])
    assert repair_sidecar_bytes(b'{"a": ', {}) is None


# --- the summary ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_left_out_series_is_listed_with_its_reason(tmp_path):
    raw = tmp_path / "inbox"
    _series(raw, 2, "t1_mprage", "ISO_IR 100")
    _series(raw, 3, "localizer", "ISO_IR 100", slices=2)
    _series(raw, 4, "t2_tse_tra", "ISO_IR 100")
    _series(raw, 5, "t2_tse_cor", "ISO_IR 100")
    capture = mr_dataset(sop_uid="1.2.826.0.1.3680043.9.7777.1.9.1", series_number=900)
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    write(capture, raw / "capture" / "000.dcm")
    cut = _series(raw, 6, "t1_mprage_cut", "ISO_IR 100", slices=3)[-1]
    data = cut.read_bytes()
    cut.write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])  # the last slice lost its pixels
    deid, report_json = _deidentify(raw, tmp_path)

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dcm2niixOptions": "-b y -ba y -z y -f %3s", "descriptions": [
        {"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": "t1_mprage*"}},
        {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesDescription": "t2_tse_tra"}},
        # series 5 matches both of these: dcm2bids pairs neither
        {"datatype": "anat", "suffix": "T2w", "custom_entities": "acq-cor",
         "criteria": {"SeriesDescription": "t2_tse_cor"}},
        {"datatype": "anat", "suffix": "PDw", "criteria": {"SeriesDescription": "t2_*_cor"}},
    ]}))
    summary_json = tmp_path / "series.json"
    convert_session(deid, tmp_path / "bids", "01", "01", config=config, summary_json=summary_json,
                    deid_report=report_json)
    summary = json.loads(summary_json.read_text())
    by_number = {s["series"]: s for s in summary["series"]}
    assert sorted(by_number) == ["2", "3", "4", "5", "6", "900"]
    assert (summary["received"], summary["converted"], summary["left_out"]) == (6, 3, 3)
    assert by_number["2"]["status"] == "converted" and by_number["2"]["images"] and not by_number["2"]["left_out"]
    assert by_number["3"]["status"] == "left out"
    assert [r["reason"] for r in by_number["3"]["left_out"]] == [NO_MAPPING]
    assert by_number["5"]["status"] == "left out"
    assert [r["reason"] for r in by_number["5"]["left_out"]] == [AMBIGUOUS]
    assert by_number["900"]["status"] == "left out" and by_number["900"]["files"] == 1
    assert by_number["900"]["left_out"] == [
        {"reason": "withheld by de-identification: Secondary Capture SOP class", "count": 1, "unit": "files"}]
    # converted, but one file short: visible, with the reason
    assert by_number["6"]["status"] == "converted" and by_number["6"]["files"] == 3
    assert by_number["6"]["left_out"] == [{"reason": "failed de-identification: image without pixel data (file "
                                                     "cut short before (7FE0,0010)?)", "count": 1, "unit": "files"}]
    assert summary["partly_left_out"] == 1
    assert by_number["2"]["description"] == "t1_mprage"
    text = summary_json.read_text()
    assert "Yamada" not in text and "inbox" not in text and str(tmp_path) not in text  # no names, no paths


def test_a_series_dcm2niix_wrote_nothing_for_is_listed(tmp_path):
    series = {"7": SeriesInfo("7", "ep2d_bold", 30, ["ISO_IR 100"]), "8": SeriesInfo("8", "t1", 10)}
    sidecars = {"008": {"SeriesNumber": 8}}
    produced = tmp_path / "sub-01" / "ses-01"
    (produced / "anat").mkdir(parents=True)
    (produced / "anat" / "sub-01_ses-01_T1w.json").write_text('{"SeriesNumber": 8}')
    (produced / "anat" / "sub-01_ses-01_T1w.nii.gz").write_bytes(b"")
    summary = summarise(series, sidecars, "INFO    | sub-01_ses-01_T1w  <-  008\n", produced, [])
    assert (summary["received"], summary["converted"], summary["left_out"]) == (2, 1, 1)
    assert summary["series"][0]["left_out"] == [{"reason": NOT_CONVERTED, "count": 1, "unit": "images"}]
    assert summary["series"][1]["images"] == ["anat/sub-01_ses-01_T1w.nii.gz"]
