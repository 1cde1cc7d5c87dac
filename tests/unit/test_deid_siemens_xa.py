"""Siemens XA private blocks: the SDS/SDI sequences inside the functional groups of an enhanced MR file.

The shipped profile keeps the physics elements of `SIEMENS MR SDS 01` (series) and `SIEMENS MR SDI 02`
(image) and nothing else of those blocks: the patient's weight and sex as the scanner used them, the
acquisition date-time and the per-acquisition UUID sit in the same sequences and must go. PACS that do not
know Siemens' private dictionary re-encode those sequences as UN: the engine must then read the UN value as
the sequence it is and filter its items the same way, not keep the whole value as opaque bytes.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from bidsafe.deid.engine import PROCESSED, deidentify_tree
from bidsafe.deid.rules import load_rules

from helpers.deid_testing import KEY, mr_dataset, write

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
WEIGHT_AND_SEX = "1;HFS;83;;F;0;2;-1142650911"
ACQUISITION = "20210309101500.000000"
UUID = "5c1e2a77-0b8e-4f55-9d3a-7e2b51c0a9f4"


def _sds() -> Dataset:
    item = Dataset()
    block = item.private_block(0x0021, "SIEMENS MR SDS 01", create=True)
    block.add_new(0x01, "IS", "83")  # weight used by the scanner: not kept
    block.add_new(0x05, "IS", [0, 0, -1250])  # table position: kept
    block.add_new(0x2B, "ST", WEIGHT_AND_SEX)  # not kept
    block.add_new(0x43, "UT", UUID + "||Sequence: R017")  # not kept
    block.add_new(0x5A, "CS", "EP")  # scanning sequence: kept
    block.add_new(0x60, "DT", ACQUISITION)  # not kept
    return item


def _sdi() -> Dataset:
    item = Dataset()
    block = item.private_block(0x0021, "SIEMENS MR SDI 02", create=True)
    block.add_new(0x1C, "IS", "1")  # phase-encoding polarity: kept
    block.add_new(0x53, "FD", 28.935)  # bandwidth per pixel phase encode: kept
    block.add_new(0x71, "UT", "X" * 44)  # not on the list
    return item


def _as_un(element: DataElement) -> DataElement:
    """The sequence re-encoded as UN, as a PACS without the private dictionary stores it: the items in
    implicit VR little endian, the value's length defined."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_data_element(buffer, element)
    return DataElement(element.tag, "UN", buffer.getvalue()[8:-8])  # without header and sequence delimiter


def _xa_enhanced(encode_un: bool) -> Dataset:
    ds = mr_dataset(sop_uid="1.2.826.0.1.3680043.9.7777.1.2.600")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.Manufacturer = "Siemens Healthineers"
    ds.NumberOfFrames = 1
    shared, frame = Dataset(), Dataset()
    for holder, creator, item in ((shared, "SIEMENS MR SDS 01", _sds()), (frame, "SIEMENS MR SDI 02", _sdi())):
        block = holder.private_block(0x0021, creator, create=True)
        block.add_new(0xFE, "SQ", [item])
        if encode_un:
            holder[block.get_tag(0xFE)] = _as_un(holder[block.get_tag(0xFE)])
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    return ds


@pytest.mark.parametrize("encode_un", [False, True], ids=["SQ", "UN"])
def test_xa_private_sequences_keep_physics_and_lose_the_rest(tmp_path, encode_un):
    write(_xa_enhanced(encode_un), tmp_path / "raw" / "xa.dcm")
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=load_rules(), key=KEY)
    (entry,) = report.entries
    assert entry.status == PROCESSED
    path = tmp_path / "out" / (entry.output or "")
    out = pydicom.dcmread(path)
    sds = out.SharedFunctionalGroupsSequence[0].private_block(0x0021, "SIEMENS MR SDS 01")[0xFE].value[0]
    sds_block = sds.private_block(0x0021, "SIEMENS MR SDS 01")
    # read back from an explicit VR file, elements written without a known VR come back as UN bytes
    assert [int(v) for v in _text(sds_block[0x05].value).split("\\")] == [0, 0, -1250]
    assert _text(sds_block[0x5A].value) == "EP"
    assert {elem.tag.element & 0xFF for elem in sds if elem.tag.element >= 0x1000} == {0x05, 0x5A}
    sdi = out.PerFrameFunctionalGroupsSequence[0].private_block(0x0021, "SIEMENS MR SDI 02")[0xFE].value[0]
    sdi_block = sdi.private_block(0x0021, "SIEMENS MR SDI 02")
    assert _text(sdi_block[0x1C].value) == "1"
    assert {elem.tag.element & 0xFF for elem in sdi if elem.tag.element >= 0x1000} == {0x1C, 0x53}
    data = path.read_bytes()
    for gone in (WEIGHT_AND_SEX, ACQUISITION[:8], UUID, "X" * 44):
        assert gone.encode() not in data


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii").strip(" \x00")
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def test_un_value_that_looks_like_items_but_is_damaged_keeps_nothing_unchecked(tmp_path):
    ds = _xa_enhanced(encode_un=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    # an item tag, then an item length far beyond the value, then text that is no element at all
    shared[0x002110FE] = DataElement(0x002110FE, "UN", b"\xfe\xff\x00\xe0\xff\xff\xff\x7f" + WEIGHT_AND_SEX.encode())
    write(ds, tmp_path / "raw" / "xa.dcm")
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=load_rules(), key=KEY)
    (entry,) = report.entries
    assert entry.status == PROCESSED
    path = tmp_path / "out" / (entry.output or "")
    kept = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].get(0x002110FE)
    # dropped when unreadable, or read leniently and filtered: then nothing of it passed the allow-list
    assert kept is None or all(len(item) == 0 for item in kept.value)
    assert WEIGHT_AND_SEX.encode() not in path.read_bytes()
