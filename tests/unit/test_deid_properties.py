"""Property: random personal values planted anywhere never survive de-identification.

Names (random letters), IDs and dates are planted in random standard identity attributes, free-text
descriptors, nested sequences, a non-safe private block, the kept Siemens CSA protocol text, and the file and
folder names; after `deidentify_tree` with the shipped rules, none of them may occur (case-insensitive) in
any output byte or output path.
"""

from __future__ import annotations

import string
import struct
import tempfile
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from bidsafe.deid.engine import PROCESSED, deidentify_tree
from bidsafe.deid.rules import load_rules
from bidsafe.deid.vocabulary import vocabulary_for
from bidsafe.phi import PLACEHOLDERS

from helpers.deid_testing import KEY, mr_dataset, write

RULES = load_rules()
# Planted values may overflow their VR's maximum length; pydicom warns, which is fine for test input.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

names = st.text(alphabet=string.ascii_letters, min_size=5, max_size=12)
ids = st.from_regex(r"[A-Z]{2}[0-9]{5,8}", fullmatch=True)
# Birth dates and visit dates more than the largest date shift apart, so that a shifted visit date can
# never coincide with a planted birth date (that would be a match by construction, not a leak).
birth_dates = st.dates(min_value=date(1930, 1, 1), max_value=date(1990, 12, 31))
visit_dates = st.dates(min_value=date(2001, 1, 1), max_value=date(2024, 12, 31))

IDENTITY_SLOTS = [
    "OtherPatientIDs", "AccessionNumber", "StudyID", "InstitutionName", "StationName", "PatientAddress",
    "OperatorsName", "ReferringPhysicianName", "PerformingPhysicianName", "PatientBirthName",
    "PatientMotherBirthName", "InstitutionalDepartmentName", "MedicalRecordLocator", "DeviceSerialNumber",
]  # fmt: skip
TEXT_SLOTS = ["SeriesDescription", "ProtocolName", "StudyDescription", "ImageComments", "DerivationDescription"]


def _csa_with(text: bytes) -> bytes:
    return b"SV10\x04\x03\x02\x01" + struct.pack("<I", len(text)) + text + b"\x00" * (len(text) % 2)


def _baseline_bytes() -> bytes:
    """De-identified output of the same kind of file without planted values: what any output contains."""
    with tempfile.TemporaryDirectory() as tmp:
        write(mr_dataset(patient_name="", patient_id=""), Path(tmp) / "raw" / "a.dcm")
        report = deidentify_tree(Path(tmp) / "raw", Path(tmp) / "out", rules=RULES, key=KEY)
        data = b"".join((Path(tmp) / "out" / e.output).read_bytes() for e in report.entries)
    return data.lower() + RULES.method.lower().encode() + b" ".join(m.lower().encode() for _, m in RULES.codes)


BASELINE = _baseline_bytes()
VOCABULARY = vocabulary_for()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=names,
    given_name=names,
    physician=names,
    patient_id=ids,
    birth=birth_dates,
    visit=visit_dates,
    identity_slots=st.lists(st.sampled_from(IDENTITY_SLOTS), min_size=1, max_size=6, unique=True),
    text_slots=st.lists(st.sampled_from(TEXT_SLOTS), min_size=1, max_size=3, unique=True),
    date_style=st.sampled_from(["%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%Y_%m_%d", "%d-%b-%Y", "%b %d %Y",
                                "%d %B %Y", "%m/%d/%y"]),
    nest=st.booleans(),
)
def test_planted_personal_values_never_survive(
    family, given_name, physician, patient_id, birth, visit, identity_slots, text_slots, date_style, nest
):
    planted = {
        "family": family,
        "given": given_name,
        "physician": physician,
        "id": patient_id,
        "birth": birth.strftime("%Y%m%d"),
        "visit": visit.strftime("%Y%m%d"),
    }
    for value in planted.values():
        assume(value.lower().encode() not in BASELINE)
        assume(value.lower() not in PLACEHOLDERS)  # "nothing here" words are never searched for, by design
        # a name that is one vocabulary word (Bold, FALSE) is never cut from protocol text, by design (issue 9)
        assume(not VOCABULARY.is_single_token(value))
    assume(len({v.lower() for v in planted.values()}) == len(planted))
    assume(not any(a.lower() in b.lower() for a in planted.values() for b in planted.values() if a != b))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / f"{family.upper()}_{given_name.upper()}_{planted['birth']}" / f"{planted['visit']}_{patient_id}"
        for number in (1, 2):
            ds = mr_dataset(
                patient_name=f"{family}^{given_name}",
                patient_id=patient_id,
                study_date=planted["visit"],
                sop_uid=f"1.2.826.0.1.3680043.9.7777.1.2.{number}",
                instance_number=number,
            )
            ds.PatientBirthDate = planted["birth"]
            for slot in identity_slots:
                setattr(ds, slot, f"{physician}^{family}" if slot.endswith("Name") else f"{patient_id} {family}")
            for slot in text_slots:
                setattr(ds, slot, f"rest {family.lower()} {visit.strftime(date_style)} {patient_id} run")
            request = Dataset()
            request.RequestingPhysician = f"{physician}^Dr"
            request.RequestedProcedureDescription = f"MRI for {given_name} {family}"
            if nest:
                inner = Dataset()
                inner.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.1.2.1"
                inner.ReferringPhysicianName = physician
                request.ReferencedStudySequence = [inner]
            ds.RequestAttributesSequence = [request]
            ds.private_block(0x0011, "ACME PACS 2", create=True).add_new(0x01, "LO", f"{family} {patient_id}")
            protocol = (
                f'### ASCCONV BEGIN ###\ntProtocolName = "{family}_{given_name}"\n'
                f'tPatientID = "{patient_id}"\nsKSpace.lBaseResolution = 256\n'
                f'tComment = "{visit.strftime(date_style)}"\n### ASCCONV END ###'
            ).encode()
            ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x20, "OB", _csa_with(protocol))
            write(ds, folder / f"{family}_{given_name}_{number}.dcm")

        report = deidentify_tree(root / folder.relative_to(root).parts[0], root / "out", rules=RULES, key=KEY)
        assert [e.status for e in report.entries] == [PROCESSED, PROCESSED]

        outputs = [p for p in (root / "out").rglob("*") if p.is_file()]
        assert len(outputs) == 2
        for path in outputs:
            data = path.read_bytes().lower()
            relpath = path.relative_to(root / "out").as_posix().lower()
            for what, value in planted.items():
                needle = value.lower()
                assert needle.encode() not in data, f"{what} survived in {relpath}"
                assert needle not in relpath, f"{what} survived in the output path"
            for style in ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", date_style):
                for day in (birth, visit):
                    assert day.strftime(style).encode() not in data, f"a date survived in {relpath}"
