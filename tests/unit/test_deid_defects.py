"""Smaller de-identification defects (issue 9, item 9): descriptors on non-text VRs, instance UIDs under the
DICOM root, a file cut just before its pixels, and one date shift per study whatever the PatientID spelling."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from bidsafe.deid.dates import shift_days_for
from bidsafe.deid.engine import FAILED, PROCESSED, deidentify_tree, shift_subject_key
from bidsafe.deid.rules import load_rules
from bidsafe.deid.uids import is_registered_uid, keyed_uid

from helpers.deid_testing import KEY, MR_IMAGE_STORAGE, StubRules, mr_dataset, tag, write

# --- C (clean) on a VR that is not text, or not a VR --------------------------------------------------------


def _with_declared_vr(tmp_path: Path, ds: Dataset, keyword: str, vr: bytes, value: bytes) -> Path:
    """Write `ds` with `keyword` carrying `value` under the explicit VR `vr` (which pydicom would refuse)."""
    placeholder = b"Q" * len(value)
    ds[tag(keyword)] = DataElement(tag(keyword), "LO", placeholder.decode())
    path = write(ds, tmp_path / "raw" / "img.dcm")
    group, element = tag(keyword) >> 16, tag(keyword) & 0xFFFF
    head = group.to_bytes(2, "little") + element.to_bytes(2, "little") + b"LO"
    data = path.read_bytes()
    assert data.count(head + len(value).to_bytes(2, "little") + placeholder) == 1
    path.write_bytes(data.replace(head, head[:4] + vr, 1).replace(placeholder, value, 1))
    return path


def _deidentified(tmp_path: Path, rules: StubRules) -> tuple[Dataset, bytes]:
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=rules, key=KEY)
    (entry,) = report.entries
    assert entry.status == PROCESSED, entry.reason
    data = (tmp_path / "out" / entry.output).read_bytes()
    return pydicom.dcmread(tmp_path / "out" / entry.output), data


@pytest.mark.parametrize("declared", [b"XX", b"DS", b"IS", b"US"])
def test_text_descriptor_under_a_wrong_vr_is_retyped_and_cleaned(tmp_path, declared):
    _with_declared_vr(tmp_path, mr_dataset(), "SeriesDescription", declared, b"T1 Quillfeather MPRAGE")
    out, data = _deidentified(tmp_path, StubRules({"SeriesDescription": "C", "PatientName": "Z"}))
    element = out["SeriesDescription"]
    assert element.VR == "LO"  # the dictionary's VR, never the file's invalid or wrong one
    assert "Quillfeather" not in element.value and "MPRAGE" in element.value
    assert b"Quillfeather" not in data
    assert b"\x08\x00\x3e\x10" + declared not in data


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "expected"),
    [
        ("PatientWeight", b"DS", b"72.5", "72.5"),  # a well-formed number carries no name: kept
        ("PatientWeight", b"DS", b"-1.5e+02", "-1.5e+02"),
        ("PatientWeight", b"DS", b"Quillfeather", "0"),  # not a number: the dummy
        ("PatientWeight", b"DS", b"12 Marisol", "0"),
        ("EchoNumbers", b"IS", b"12", "12"),
        ("EchoNumbers", b"IS", b"PID-9981", "0"),
        ("EchoNumbers", b"IS", b"3.5 ", "0"),  # IS holds integers only
        ("StudyTime", b"TM", b"093015.25 ", "093015.25"),
        ("StudyTime", b"TM", b"Marisol ", "000000"),
    ],
)
def test_numeric_descriptor_kept_only_when_well_formed(tmp_path, keyword, vr, value, expected):
    _with_declared_vr(tmp_path, mr_dataset(), keyword, vr, value)
    out, data = _deidentified(tmp_path, StubRules({keyword: "C", "PatientName": "Z"}))
    written_vr = out[keyword].VR
    assert written_vr == vr.decode()
    assert expected.encode() in data
    if expected in ("0", "000000"):
        assert value.strip() not in data


def test_binary_descriptor_cannot_be_inspected_and_becomes_the_dummy(tmp_path):
    ds = mr_dataset()
    ds.DeviceSettingDescription = b"Quillfeather"  # C in PS3.15, VR OB
    write(ds, tmp_path / "raw" / "img.dcm")
    out, data = _deidentified(tmp_path, StubRules({"DeviceSettingDescription": "C"}))
    assert out["DeviceSettingDescription"].VR == "OB"
    assert out.DeviceSettingDescription == b"\x00" * 8
    assert b"Quillfeather" not in data


def test_descriptor_with_an_invalid_vr_and_no_dictionary_entry_is_removed(tmp_path):
    ds = mr_dataset()
    retired_unknown = 0x00091001 - 0x00010000  # (0008,1001): in no dictionary
    ds[retired_unknown] = DataElement(retired_unknown, "LO", "QQQQQQQQQQQQ")
    path = write(ds, tmp_path / "raw" / "img.dcm")
    path.write_bytes(path.read_bytes().replace(b"\x08\x00\x01\x10LO", b"\x08\x00\x01\x10ZZ", 1))

    class AllC(StubRules):
        def resolved_action_for(self, tag_int: int) -> str:
            return "C" if tag_int == retired_unknown else super().resolved_action_for(tag_int)

    out, data = _deidentified(tmp_path, AllC())
    assert retired_unknown not in out
    assert b"QQQQQQQQQQQQ" not in data and b"ZZ" not in data


# --- UIDs under the DICOM root --------------------------------------------------------------------------------


def test_instance_uids_under_the_dicom_root_are_remapped_registered_ones_stay():
    assert is_registered_uid(MR_IMAGE_STORAGE) and is_registered_uid("1.2.840.10008.1.2.1")
    assert is_registered_uid("1.2.840.10008.1.4.1.1")  # Talairach: a well-known frame of reference
    assert not is_registered_uid("1.2.840.10008.99.12345")

    ds = mr_dataset(
        study_uid="1.2.840.10008.99.12345",
        series_uid="1.2.840.10008.99.12345.2",
        sop_uid="1.2.840.10008.99.12345.2.3",
    )
    ds.FrameOfReferenceUID = "1.2.840.10008.99.12345.9"
    ref = Dataset()
    ref.ReferencedSOPClassUID = MR_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = "1.2.840.10008.1.2.3.4"  # looks like a transfer syntax, is an instance
    ref.ReferencedTransferSyntaxUIDInFile = "1.2.840.10008.1.2.4.202"  # a syntax newer than some tables
    ds.ReferencedImageSequence = [ref]
    coded = Dataset()
    coded.CodingSchemeUID = "1.2.840.10008.2.16.4"  # DCM: registered
    ds.CodingSchemeIdentificationSequence = [coded]
    rules = StubRules(
        {
            "ReferencedImageSequence": "K",
            "ReferencedSOPInstanceUID": "U",
            "ReferencedSOPClassUID": "K",
            "ReferencedTransferSyntaxUIDInFile": "U",
            "CodingSchemeIdentificationSequence": "K",
            "CodingSchemeUID": "U",
        }
    )
    from bidsafe.deid.engine import deidentify_dataset

    out = deidentify_dataset(ds, rules=rules, key=KEY, shift_days=7)
    assert out.StudyInstanceUID == keyed_uid(KEY, "1.2.840.10008.99.12345")
    assert out.SeriesInstanceUID == keyed_uid(KEY, "1.2.840.10008.99.12345.2")
    assert out.SOPInstanceUID == keyed_uid(KEY, "1.2.840.10008.99.12345.2.3")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.FrameOfReferenceUID == keyed_uid(KEY, "1.2.840.10008.99.12345.9")
    item = out.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == keyed_uid(KEY, "1.2.840.10008.1.2.3.4")
    assert item.ReferencedSOPClassUID == MR_IMAGE_STORAGE
    assert item.ReferencedTransferSyntaxUIDInFile == "1.2.840.10008.1.2.4.202"
    assert out.CodingSchemeIdentificationSequence[0].CodingSchemeUID == "1.2.840.10008.2.16.4"
    assert out.SOPClassUID == MR_IMAGE_STORAGE and out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


# --- a file cut just before its pixels ------------------------------------------------------------------------


def test_image_cut_just_before_its_pixel_data_fails_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    good = write(mr_dataset(), raw / "good.dcm")
    data = good.read_bytes()
    cut = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData, explicit VR little endian
    other = mr_dataset(sop_uid="1.2.826.0.1.3680043.9.7777.1.2.4", instance_number=2)
    (raw / "cut_before_pixels.dcm").write_bytes(write(other, tmp_path / "tmp.dcm").read_bytes()[:cut])
    floats = mr_dataset(sop_uid="1.2.826.0.1.3680043.9.7777.1.2.5", instance_number=3)
    del floats.PixelData
    floats.FloatPixelData = b"\x00\x00\x80\x3f" * 16  # an image may carry float pixels instead
    del floats.BitsStored, floats.HighBit, floats.PixelRepresentation
    write(floats, raw / "float_pixels.dcm")
    report = deidentify_tree(raw, tmp_path / "out", rules=load_rules(), key=KEY)
    by_name = {Path(e.input).name: e for e in report.entries}
    assert by_name["good.dcm"].status == PROCESSED
    assert by_name["float_pixels.dcm"].status == PROCESSED
    failed = by_name["cut_before_pixels.dcm"]
    assert failed.status == FAILED and failed.output is None
    assert "pixel data" in failed.reason
    assert failed.series == "3"  # the conversion summary names the series that lost a file
    assert not report.ok
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


def test_non_image_without_pixels_is_not_flagged(tmp_path):
    ds = mr_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.12.2.1107.5.9.1"  # Siemens CSA non-image
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(ds, keyword)
    write(ds, tmp_path / "raw" / "csa.dcm")
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=load_rules(), key=KEY)
    assert [e.status for e in report.entries] == [PROCESSED]


# --- one date shift per study ---------------------------------------------------------------------------------


def test_shift_subject_key_ignores_spelling():
    assert shift_subject_key("0012345") == shift_subject_key("12345") == shift_subject_key(" 12345 ")
    assert shift_subject_key("PID-99812") == shift_subject_key("pid 99812") == "pid99812"
    assert shift_subject_key("12345") != shift_subject_key("123456")


@pytest.mark.parametrize("jobs", [1, 2])
def test_one_series_gets_one_shift_whatever_the_patient_id_spelling(tmp_path, jobs):
    spellings = ["0012345", "12345", " 12345", "12-345", "QX 7"]  # the last one normalises apart
    for number, patient_id in enumerate(spellings, 1):
        sop = f"1.2.826.0.1.3680043.9.7777.1.2.{number}"
        ds = mr_dataset(sop_uid=sop, instance_number=number, patient_id=patient_id)
        write(ds, tmp_path / "raw" / f"{number:02d}.dcm")
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=load_rules(), key=KEY, jobs=jobs)
    assert [e.status for e in report.entries] == [PROCESSED] * len(spellings)
    dates = {pydicom.dcmread(tmp_path / "out" / e.output).StudyDate for e in report.entries}
    shift = shift_days_for(KEY, shift_subject_key("12345"), load_rules().max_shift_days)
    expected = (date(2021, 3, 9) + timedelta(days=shift)).strftime("%Y%m%d")
    assert dates == {expected}  # the study's first file decided, for every file of the study
    assert not list((tmp_path / "out").rglob("*.tmp"))
