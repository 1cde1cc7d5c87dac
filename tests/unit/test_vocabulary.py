"""The descriptor vocabulary: kept text keeps only allowed tokens, in DICOM (standard, keep-list, private text,
Siemens CSA protocol, GE's compressed block) and in sidecars; vocabulary words survive patients who share their
spelling; `check-rules` refuses date- and ID-shaped entries; the test-only hook switches all text cleaning off."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from bidsafe.cli import main as bidsafe_main
from bidsafe.deid import textclean
from bidsafe.deid.engine import PROCESSED, deidentify_dataset, deidentify_tree, write_report
from bidsafe.deid.rules import load_rules
from bidsafe.deid.textclean import TextCleaner
from bidsafe.deid.vocabulary import (
    DATE_ID_SAMPLES,
    DEFAULT_VOCABULARY,
    FILLER,
    check_vocabulary,
    load_vocabulary,
    tokens,
    vocabulary_for,
)
from bidsafe.errors import ConfigError
from bidsafe.keys import create_key
from bidsafe.phi import PersonalValue, PersonalValues, harvest_dataset
from bidsafe.scrub import load_allowlist, scrub_sidecar
from bidsafe.testhooks import NO_TEXT_CLEANING

from helpers.deid_testing import KEY, mr_dataset, write

# Each class of fresh token from issue 9 (none of them harvested from any header), with the parts that must go.
FRESH: dict[str, tuple[str, ...]] = {
    "Mueller": ("Mueller",),
    "12345678": ("12345678",),
    "Juergen": ("Juergen",),
    "04-Jul-1965": ("Jul", "1965"),
    "17.3.1971": ("1971",),
    "PID 8842 QX": ("PID", "8842", "QX"),
    "Ørsted2": ("Ørsted2", "rsted2"),
    "山田": ("山田",),
    "Zqxwv2": ("Zqxwv2",),
    "Johanna1": ("Johanna1",),
}
FRESH_IDS = list(FRESH)


def _gone(text: str, parts: tuple[str, ...]) -> None:
    found = {t.lower() for t in tokens(text)}
    for part in parts:
        assert part.lower() not in found
        assert part.lower() not in text.lower()


def _deid(ds: Dataset, values=()) -> Dataset:
    return deidentify_dataset(ds, rules=load_rules(), key=KEY, shift_days=7, values=values)


# --- tokens and the default file ------------------------------------------------------------------------------


def test_tokens_split_at_ascii_space_punctuation_and_controls_only():
    assert tokens("Ax DWI_Müller-12345678\t山田 ep2d.bold\x98x") == [
        "Ax",
        "DWI",
        "Müller",
        "12345678",
        "山田",
        "ep2d",
        "bold",
        "x",
    ]
    assert tokens("a\u00a0b") == ["a\u00a0b"]  # non-ASCII whitespace is not a separator
    assert tokens("  ,;  ") == []


def test_default_vocabulary_allows_protocol_words_and_refuses_dates_ids_and_names():
    vocabulary = load_vocabulary()
    for word in ("ep2d", "BOLD", "mprage", "dwi", "AP", "PA", "tfl3d1", "32Ch", "3mm", "dir80", "b1000", "H23", "ANON"):
        assert vocabulary.allows(word), word
    for token in (
        "1971",
        "2023",
        "1965",
        "12345678",
        "8842",
        "Mueller",
        "Juergen",
        "Jul",
        "QX",
        "Müller",
        "山田",
        "Zqxwv2",
        "Johanna1",
        "Ørsted2",
    ):
        assert not vocabulary.allows(token), token
    assert not any(vocabulary.allows(sample) for sample in DATE_ID_SAMPLES if sample.lower() not in vocabulary.words)
    assert check_vocabulary(DEFAULT_VOCABULARY) == []


def test_clean_replaces_tokens_keeps_separators_and_counts():
    cleaned, replaced = vocabulary_for().clean("EPI PE=AP 17.3.1971 Mueller_Mueller")
    assert cleaned == "EPI PE=AP 17.3.ANON ANON_ANON"
    assert replaced == {"1971": 1, "Mueller": 2}


def test_bytes_cleaning_keeps_every_length():
    data = "ep2d_bold Müller 山田 1971".encode()
    cleaned, replaced = vocabulary_for().clean_bytes(data)
    assert len(cleaned) == len(data)
    assert cleaned == b"ep2d_bold " + FILLER * len("Müller".encode()) + b" " + FILLER * 6 + b" " + FILLER * 4
    assert set(replaced) == {"Müller", "山田", "1971"}
    assert FILLER == textclean.FILLER


# --- DICOM: descriptors, keep-list text, private text ----------------------------------------------------------


@pytest.mark.parametrize("fresh", FRESH_IDS)
def test_fresh_tokens_replaced_in_descriptors(fresh):
    ds = mr_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SeriesDescription = f"Ax DWI {fresh}"
    ds.ProtocolName = f"EPI PE=AP {fresh}"
    ds.StudyDescription = f"fMRI {fresh} rest"
    out = _deid(ds, values=harvest_dataset(ds))
    assert out.SeriesDescription.startswith("Ax DWI ")
    assert out.ProtocolName.startswith("EPI PE=AP ")
    for keyword in ("SeriesDescription", "ProtocolName", "StudyDescription"):
        if keyword in out:
            _gone(str(out[keyword].value), FRESH[fresh])


@pytest.mark.parametrize("fresh", FRESH_IDS)
def test_fresh_tokens_replaced_in_keep_list_text(fresh):
    ds = mr_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SequenceName = f"*tfl3d1 {fresh}"[:16]
    ds.ReceiveCoilName = f"Head_32 {fresh}"[:16]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", fresh.upper()[:16]]
    region = Dataset()
    region.CodeValue = "T-A0100"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = f"Brain {fresh}"
    ds.AnatomicRegionSequence = [region]
    out = _deid(ds)
    assert out.SequenceName.startswith("*tfl3d1 ")
    assert out.ReceiveCoilName.startswith("Head_32 ")
    assert list(out.ImageType)[:3] == ["ORIGINAL", "PRIMARY", "M"]
    assert out.AnatomicRegionSequence[0].CodeMeaning.startswith("Brain ")
    assert out.AnatomicRegionSequence[0].CodeValue == "T-A0100"  # coded values are not free text
    assert out.Modality == "MR"
    for text in (
        out.SequenceName,
        out.ReceiveCoilName,
        "\\".join(out.ImageType),
        out.AnatomicRegionSequence[0].CodeMeaning,
    ):
        _gone(str(text), tuple(p for p in FRESH[fresh] if len(p) <= 14))


def test_modality_names_the_output_folder_after_cleaning(tmp_path: Path):
    raw = tmp_path / "raw"
    ds = mr_dataset()
    ds.SeriesDescription = "ep2d_bold Zqxwv2"
    write(ds, raw / "a.dcm")
    report = deidentify_tree(raw, tmp_path / "out", key=KEY)
    (entry,) = report.entries
    assert entry.status == PROCESSED and "_MR_" in entry.output


def _csa(text: bytes) -> bytes:
    return b"SV10\x04\x03\x02\x01" + struct.pack("<I", len(text)) + text + b"\x00" * (len(text) % 2)


@pytest.mark.parametrize("fresh", FRESH_IDS)
def test_fresh_tokens_replaced_in_the_siemens_csa_protocol(fresh):
    value = fresh.encode("utf-8")
    protocol = (
        b'<ParamString."tProtocolName"> { ""ep2d_bold ' + value + b'"" }\n### ASCCONV BEGIN ###\n'
        b'tSequenceFileName\t = \t""%CustomerSeq%\\ep2d_bold""\n'
        b'tProtocolName\t = \t""ep2d_bold ' + value + b'""\n'
        b'sCoilSelectMeas.aRxCoilSelectData[0].asList[0].sCoilElementID.tCoilID\t = \t""Head_32 ' + value + b'""\n'
        b"sKSpace.lBaseResolution\t = \t64\n### ASCCONV END ###"
    )
    ds = mr_dataset()
    ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x20, "OB", _csa(protocol))
    out = _deid(ds)
    cleaned = out.private_block(0x0029, "SIEMENS CSA HEADER")[0x20].value
    assert len(cleaned) == len(_csa(protocol))
    text = cleaned.decode("utf-8", "replace")
    _gone(text, FRESH[fresh])
    assert '<ParamString."tProtocolName">' in text  # structure kept
    assert 'tProtocolName\t = \t""ep2d_bold ' in text and "sKSpace.lBaseResolution\t = \t64" in text
    assert 'tSequenceFileName\t = \t""%CustomerSeq%\\ep2d_bold""' in text
    assert 'tCoilID\t = \t""Head_32 ' in text


@pytest.mark.parametrize("fresh", FRESH_IDS)
def test_fresh_tokens_replaced_inside_the_ge_gzip_block(fresh):
    text = f'SEDESC "Ax fMRI {fresh}"\nPSEQ "epiRT"\nSLICEORDER "1"\nUSERCV_MASK "1073741840"\n'.encode()
    gz = gzip.compress(text)
    value = struct.pack("<I", len(gz)) + gz
    value += b"\x00" * (len(value) % 2)
    ds = mr_dataset()
    ds.private_block(0x0025, "GEMS_SERS_01", create=True).add_new(0x1B, "OB", value)
    out = _deid(ds)
    data = out.private_block(0x0025, "GEMS_SERS_01")[0x1B].value
    (length,) = struct.unpack("<I", data[:4])
    inner = gzip.decompress(data[4 : 4 + length])
    _gone(inner.decode("utf-8", "replace"), FRESH[fresh])
    assert inner.startswith(b'SEDESC "Ax fMRI ') and b'PSEQ "epiRT"' in inner and b'SLICEORDER "1"' in inner
    assert b'USERCV_MASK "1073741840"' in inner  # numeric values are data a converter may read
    assert len(inner) == len(text)


def test_kept_private_text_elements_are_cleaned_same_length():
    ds = mr_dataset()
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x9C, "LO", "epiRT Zqxwv2")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", ["1000", "8", "0", "0"])
    out = _deid(ds)
    assert out.private_block(0x0019, "GEMS_ACQU_01")[0x9C].value == "epiRT " + "*" * 6
    assert list(out.private_block(0x0043, "GEMS_PARM_01")[0x39].value) == [1000, 8, 0, 0]


# --- patients named like protocol words ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bold^Anna", "Field^Tom", "Swan^Li", "Bold^Field Swan"])
def test_vocabulary_words_survive_patients_who_share_their_spelling(name):
    ds = mr_dataset(patient_name=name)
    ds.SeriesDescription = "ep2d_bold"
    ds.ProtocolName = "gre_field_mapping SWAN"
    ds.SequenceName = "*swi3d1r"
    protocol = (
        b'### ASCCONV BEGIN ###\ntProtocolName\t = \t""ep2d_bold""\ntSequenceFileName\t = \t""gre_field_mapping""\n'
    )
    ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(
        0x20, "OB", _csa(protocol + b"### ASCCONV END ###")
    )
    out = _deid(ds, values=harvest_dataset(ds))
    assert out.SeriesDescription == "ep2d_bold"
    assert out.ProtocolName == "gre_field_mapping SWAN"
    assert out.SequenceName == "*swi3d1r"
    csa = out.private_block(0x0029, "SIEMENS CSA HEADER")[0x20].value
    assert b'""ep2d_bold""' in csa and b'""gre_field_mapping""' in csa
    given = name.split("^")[1].split()[0]
    sidecar = {
        "SeriesDescription": f"ep2d_bold {given}",
        "ProtocolName": "gre_field_mapping",
        "PulseSequenceDetails": "swan",
    }
    kept, _, _ = scrub_sidecar(
        sidecar, load_allowlist(), PersonalValues(harvest_dataset(mr_dataset(patient_name=name)))
    )
    # the given name goes unless it is itself a vocabulary word (then it can never be told from protocol text)
    expected = f"ep2d_bold {given}" if vocabulary_for().allows(given) else "ep2d_bold ANON"
    assert kept["SeriesDescription"] == expected
    assert kept["ProtocolName"] == "gre_field_mapping" and kept["PulseSequenceDetails"] == "swan"


def test_harvested_multi_token_values_still_go_and_single_vocabulary_needles_do_not_cut_bytes():
    vocabulary = vocabulary_for()
    cleaner = TextCleaner([PersonalValue("name", "PatientName", "Bold^Zqxwv")], vocabulary)
    assert cleaner.clean_bytes(b"ep2d_bold") == b"ep2d_bold"
    assert b"zqxwv" not in cleaner.clean_bytes(b"x Zqxwv y").lower()
    assert cleaner.clean_text("ep2d_bold") == "ep2d_bold"


# --- sidecars through scrub ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", FRESH_IDS)
def test_fresh_tokens_replaced_in_sidecars(fresh):
    sidecar = {
        "SeriesDescription": f"Ax DWI {fresh}",
        "ProtocolName": f"EPI_asc {fresh}",
        "SoftwareVersions": f"syngo MR E11 {fresh}",
        "ImageType": ["ORIGINAL", "PRIMARY", fresh],
        "IntendedFor": ["bids::sub-X7K2/ses-1/func/sub-X7K2_ses-1_task-rest_bold.nii.gz"],
        "EchoTime": 0.03,
    }
    kept, _, cleaned = scrub_sidecar(sidecar, load_allowlist(), PersonalValues())
    for key in ("SeriesDescription", "ProtocolName", "SoftwareVersions"):
        _gone(kept[key], FRESH[fresh])
    _gone(" ".join(kept["ImageType"]), FRESH[fresh])
    assert kept["ProtocolName"].startswith("EPI_asc ") and kept["SoftwareVersions"].startswith("syngo MR E11 ")
    assert kept["IntendedFor"] == sidecar["IntendedFor"] and kept["EchoTime"] == 0.03
    assert "SeriesDescription" in cleaned


def test_dcm2niix_latin1_mojibake_is_replaced_in_sidecars():
    for raw in ("Ørsted2", "山田"):
        mojibake = raw.encode("utf-8").decode("latin-1")
        kept, _, _ = scrub_sidecar({"ProtocolName": f"EPI_asc {mojibake}"}, load_allowlist(), PersonalValues())
        assert kept["ProtocolName"].startswith("EPI_asc ")
        assert not re.search(r"[^\x00-\x7f]", kept["ProtocolName"])
        assert "rsted2" not in kept["ProtocolName"]


# --- report, site extension, CLI -------------------------------------------------------------------------------


def test_private_report_lists_replaced_tokens_with_counts(tmp_path: Path, capsys):
    raw = tmp_path / "raw"
    for number in (1, 2):
        ds = mr_dataset(sop_uid=f"1.2.826.0.1.3680043.9.7777.1.2.{number}", instance_number=number)
        ds.SeriesDescription = "ep2d_bold Zqxwv2"
        write(ds, raw / f"{number}.dcm")
    report = deidentify_tree(raw, tmp_path / "out", key=KEY)
    path = write_report(report, tmp_path / "private" / "report.json")
    payload = json.loads(path.read_text())
    (per_study,) = payload["replaced_tokens"].values()
    assert per_study["Zqxwv2"] == 2
    assert "Zqxwv2" not in capsys.readouterr().err


def test_site_extension_file_adds_tokens(tmp_path: Path):
    extra = tmp_path / "site.yaml"
    extra.write_text('kind: vocabulary\ngroups:\n  tasks:\n    reason: "tasks"\n    tokens: [fingertap, Zqxwv]\n')
    vocabulary = load_vocabulary([extra])
    assert vocabulary.allows("fingertap") and vocabulary.allows("ZQXWV") and vocabulary.placeholder == "ANON"
    assert not load_vocabulary().allows("fingertap")
    raw = tmp_path / "raw"
    ds = mr_dataset()
    ds.SeriesDescription = "fMRI fingertap Zqxwv2"
    write(ds, raw / "a.dcm")
    assert (
        bidsafe_main(
            ["deid", str(raw), str(tmp_path / "out"), "--key", str(_key(tmp_path)), "--vocabulary", str(extra)]
        )
        == 0
    )
    (written,) = (tmp_path / "out").rglob("*.dcm")
    import pydicom

    assert pydicom.dcmread(written).SeriesDescription == "fMRI fingertap ANON"


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "secret.key"
    path.parent.mkdir(mode=0o700)
    create_key(path)
    return path


_HEAD = 'kind: vocabulary\nplaceholder: "ANON"\ngroups:\n  p:\n    reason: "the placeholder"\n    tokens: [ANON]\n'
BAD_FILES = {  # file body after the head, entry named in the message, detail named in the message
    "date_token": ('  words:\n    reason: "x"\n    tokens: [bold, 1971]\n', "groups.words", "1971"),
    "written_date_token": ('  words:\n    reason: "x"\n    tokens: [4jul65, bold]\n', "groups.words", "4jul65"),
    "no_reason": ("  words:\n    tokens: [bold]\n", "groups.words", "reason"),
    "long_digit_code": ('  words:\n    reason: "x"\n    tokens: [HX1324932]\n', "groups.words", "HX1324932"),
    "id_pattern": (
        'patterns:\n  codes:\n    reason: "x"\n    regex: "[a-z]{0,3}[0-9]{1,8}"\n',
        "patterns.codes",
        "1971",
    ),
    "year_pattern": ('patterns:\n  numbers:\n    reason: "x"\n    regex: "[0-9]{1,4}"\n', "patterns.numbers", "1971"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_check_rules_rejects_date_and_id_shaped_entries(tmp_path: Path, capsys, case):
    body, entry, detail = BAD_FILES[case]
    path = tmp_path / "vocab.yaml"
    path.write_text(_HEAD + body)
    assert bidsafe_main(["check-rules", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out and entry in out and detail in out
    with pytest.raises(ConfigError, match=re.escape(entry)):
        load_vocabulary([path])


def test_check_rules_folder_with_rules_and_vocabulary_passes(capsys):
    assert bidsafe_main(["check-rules", str(DEFAULT_VOCABULARY.parent)]) == 0
    assert "descriptor vocabulary" in capsys.readouterr().out


def test_placeholder_must_be_allowed(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text('kind: vocabulary\nplaceholder: "REMOVEDX"\ngroups:\n  g:\n    reason: "r"\n    tokens: [bold]\n')
    assert any("placeholder" in p for p in check_vocabulary(path))


# --- the test-only hook -----------------------------------------------------------------------------------------


def test_hook_switches_off_all_text_cleaning_and_nothing_else(monkeypatch):
    monkeypatch.setenv(NO_TEXT_CLEANING, "1")
    ds = mr_dataset()
    ds.SeriesDescription = "T1 Quillfeather Zqxwv2"
    ds.SequenceName = "*tfl3d1 Zqxwv2"
    out = _deid(ds, values=harvest_dataset(ds))
    assert out.SeriesDescription == "T1 Quillfeather Zqxwv2" and out.SequenceName == "*tfl3d1 Zqxwv2"
    assert "Quillfeather" not in str(out.get("PatientName", "")) and out.PatientID != "PID-99812"  # tags still go
    assert "InstitutionName" not in out
    values = PersonalValues([PersonalValue("name", "PatientName", "Quillfeather^Marisol")])
    kept, _, _ = scrub_sidecar(
        {"SeriesDescription": "T1 Quillfeather Zqxwv2", "StationName": "x"}, load_allowlist(), values
    )
    assert kept == {"SeriesDescription": "T1 Quillfeather Zqxwv2"}
    monkeypatch.setenv(NO_TEXT_CLEANING, "0")
    assert _deid(mr_dataset()).SeriesDescription == "T1 MPRAGE"


def test_philips_private_sequence_items_follow_the_standard_rules():
    from helpers.deid_testing import StubRules

    ds = mr_dataset()
    item = Dataset()
    item.ProtocolName = "WIP dti_ax Johanna1"
    item.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x20, "LO", "FEEPI Zqxwv2")
    ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0F, "SQ", [item])
    rules = StubRules(
        {"ProtocolName": "C"},
        safe_private={("philips mr imaging dd 001", 0x2005, 0x0F), ("philips mr imaging dd 001", 0x2005, 0x20)},
    )
    out = deidentify_dataset(ds, rules=rules, key=KEY, shift_days=7, values=harvest_dataset(ds))
    (kept,) = out.private_block(0x2005, "Philips MR Imaging DD 001")[0x0F].value
    assert kept.ProtocolName == "WIP dti_ax ANON"
    assert kept.private_block(0x2005, "Philips MR Imaging DD 001")[0x20].value == "FEEPI ******"


@pytest.mark.parametrize("name", ["Bold^Anna", "Field^Tom", "Swan^Li"])
def test_bids_names_of_patients_named_like_protocol_words_pass_the_scrub_name_check(name):
    from bidsafe.scrub import NameChecker, check_bids_path

    values = PersonalValues(harvest_dataset(mr_dataset(patient_name=name)))
    checker = NameChecker(values, vocabulary_for())
    for path in (
        "func/sub-01_ses-1_task-rest_bold.nii.gz",
        "fmap/sub-01_ses-1_acq-field_phasediff.json",
        "anat/sub-01_ses-1_acq-swan_T2starw.nii.gz",
    ):
        check_bids_path(Path("sub-01/ses-1") / path, "01", "1", checker)
    assert checker("sub-01_ses-1_acq-Quillfeather_T1w.nii.gz") is False  # not harvested here
    assert checker(f"sub-01_ses-1_acq-{name.split('^')[1]}x_T1w.nii.gz") is False
    assert NameChecker(values)("sub-01_ses-1_task-rest_bold_field_swan.nii.gz")  # without the vocabulary: cut
    family = PersonalValues(harvest_dataset(mr_dataset(patient_name="Quillfeather^Anna")))
    assert NameChecker(family, vocabulary_for())("sub-01_ses-1_acq-Quillfeather_T1w.nii.gz")
