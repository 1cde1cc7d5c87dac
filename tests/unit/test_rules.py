"""The de-identification rule set: the shipped profile, compound resolution, lookups and check-rules."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from bidsafe.cli import main as cli
from bidsafe.deid import rules as rules_mod
from bidsafe.deid.rules import (
    RESOLVED_ACTIONS,
    check_rules,
    default_rules_path,
    load_rules,
    resolve_action,
)
from bidsafe.errors import ConfigError

REPO = Path(__file__).parents[2]
TABLE = REPO / "src" / "bidsafe" / "data" / "ps315" / "table_e1_1.json"  # shipped in the package
SHIPPED = default_rules_path()


@pytest.fixture(scope="module")
def shipped():
    return load_rules()


def _tag(text: str) -> int:
    return int(text[1:5] + text[6:10], 16)


@functools.cache
def _shipped_data() -> dict:
    return yaml.load(SHIPPED.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _edited(tmp_path: Path, edit) -> Path:
    """Write a copy of the shipped rule file after `edit(data)` changed its parsed content."""
    data = copy.deepcopy(_shipped_data())
    edit(data)
    out = tmp_path / "edited.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    out.write_text(yaml.dump(data, Dumper=dumper, sort_keys=False), encoding="utf-8")
    return out


def _row(data: dict, keyword: str) -> dict:
    return next(row for row in data["table"] if row["keyword"] == keyword)


# --- the shipped profile -----------------------------------------------------------------------------


def test_shipped_profile_loads_with_its_declared_options_and_codes(shipped):
    assert shipped.path == REPO / "config" / "deid" / "basic-mr.yaml"
    assert shipped.profile == "basic-mr"
    assert set(shipped.options) == {"retain_safe_private", "retain_long_modif_dates", "clean_desc"}
    assert shipped.codes[0] == ("113100", "Basic Application Confidentiality Profile")
    assert dict(shipped.codes[1:]) == {
        "113111": "Retain Safe Private Option",
        "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
        "113105": "Clean Descriptors Option",
    }
    assert 0 < len(shipped.method) <= 64
    assert (shipped.date_mode, shipped.max_shift_days, shipped.burned_in) == ("shift", 3650, {})
    assert shipped.uid_root == "2.25."
    # The words say which options apply, and why device identity is not claimed.
    for words in ("Retain Safe Private", "Modified Dates", "Clean Descriptors", "Retain Device Identity"):
        assert words in shipped.description


def test_shipped_profile_actions_for_identity_and_physics(shipped):
    expect = {
        0x00100010: "Z",  # PatientName, Type 2
        0x00100020: "Z",  # PatientID Z/D, Type 2
        0x00100030: "Z",  # PatientBirthDate
        0x00080050: "Z",  # AccessionNumber
        0x00080090: "Z",  # ReferringPhysicianName
        0x00080080: "X",  # InstitutionName X/Z/D, Type 3
        0x00081010: "X",  # StationName: Retain Device Identity not applied
        0x00181000: "D",  # DeviceSerialNumber X/Z/D, Type 1 in Enhanced General Equipment
        0x00080018: "U",  # SOPInstanceUID
        0x0020000D: "U",  # StudyInstanceUID
        0x00020003: "U",  # MediaStorageSOPInstanceUID follows SOPInstanceUID
        0x00080020: "C",  # StudyDate: shifted (modified dates)
        0x0008103E: "C",  # SeriesDescription: cleaned (clean descriptors)
        0x00181030: "C",  # ProtocolName
        0x00102110: "X",  # Allergies: clean_desc deliberately not applied to clinical narrative
        0x00400275: "X",  # RequestAttributesSequence
        0x00080008: "K",  # ImageType: keep-list
        0x00200032: "K",  # ImagePositionPatient
        0x7FE00010: "K",  # PixelData
        0x00181020: "K",  # SoftwareVersions (needed by dcm2niix, not a table row)
        0x00081140: "X",  # ReferencedImageSequence X/Z/U*, Type 3
    }
    got = {tag: shipped.resolved_action_for(tag) for tag in expect}
    assert got == expect


def test_every_resolved_action_is_one_the_engine_knows(shipped):
    assert set(shipped.resolved.values()) <= set(RESOLVED_ACTIONS)
    for tag in shipped.table:
        assert shipped.resolved[tag] == resolve_action(shipped.table[tag].action, shipped.iod_types.get(tag))


def test_keep_list_has_reasons_and_no_table_rows(shipped):
    assert len(shipped.keep) > 100
    assert not set(shipped.keep) & set(shipped.table)
    assert all(reason.strip() for reason in shipped.keep.values())
    assert all(not (tag >> 16) & 1 for tag in shipped.keep)


def test_safe_private_entries_have_reasons_and_private_groups(shipped):
    assert shipped.safe_private
    for entry in shipped.safe_private:
        assert entry.reason.strip() and entry.creator.strip()
        assert entry.group & 1 and 0 <= entry.element <= 0xFF


def test_shipped_profile_covers_every_row_of_table_e1_1(shipped):
    rows = json.loads(TABLE.read_text(encoding="utf-8"))
    assert len(rows) == 621
    patterns = {rule.tag for rule in shipped.patterns}
    for row in rows:
        if row["tag"] in rules_mod.PATTERNS:
            assert row["tag"] in patterns
        else:
            rule = shipped.table[_tag(row["tag"])]
            assert rule.basic == row["basic_profile"], row["tag"]
    result = check_rules(SHIPPED)
    assert result.ok, result.gaps
    assert (result.rows_present, result.rows_expected) == (621, 621)
    assert result.table_path == TABLE


def test_check_rules_command_passes_on_the_shipped_folder(capsys):
    assert cli(["check-rules", str(SHIPPED.parent)]) == 0
    out = capsys.readouterr().out
    assert "rows present: 621/621" in out
    assert re.search(r"rows changed by clean_desc: \d+", out)
    assert "OK:" in out


# --- compound actions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "iod_type", "expected"),
    [
        ("X/Z", 1, "D"),
        ("X/Z", 2, "Z"),
        ("X/Z", 3, "X"),
        ("X/Z", None, "X"),
        ("X/D", 1, "D"),
        ("X/D", 2, "D"),
        ("X/D", 3, "X"),
        ("X/D", None, "X"),
        ("Z/D", 1, "D"),
        ("Z/D", 2, "Z"),
        ("Z/D", 3, "Z"),
        ("Z/D", None, "Z"),
        ("X/Z/D", 1, "D"),
        ("X/Z/D", 2, "Z"),
        ("X/Z/D", 3, "X"),
        ("X/Z/D", None, "X"),
        ("X/Z/U*", 1, "U*"),
        ("X/Z/U*", 2, "Z"),
        ("X/Z/U*", 3, "X"),
        ("X/Z/U*", None, "X"),
        ("K", 1, "K"),
        ("U", None, "U"),
        ("C", 2, "C"),
        ("D", 3, "D"),
    ],
)
def test_resolve_action(action, iod_type, expected):
    assert resolve_action(action, iod_type) == expected


def test_iod_type_changes_a_compound_row(tmp_path):
    def make_type_1(data):
        data["iod_types"]["ReferencedImageSequence"] = 1

    rules = load_rules(_edited(tmp_path, make_type_1))
    assert rules.action_for(0x00081140) == "X/Z/U*"
    assert rules.resolved_action_for(0x00081140) == "U*"


# --- lookups ------------------------------------------------------------------------------------------


def test_patterns_match_curves_overlays_and_private_groups(shipped):
    assert shipped.action_for(0x50001234) == "X"  # (50xx,xxxx) curve data
    assert shipped.resolved_action_for(0x501E0010) == "X"
    assert shipped.resolved_action_for(0x60003000) == "X"  # (60xx,3000) overlay data
    assert shipped.resolved_action_for(0x601E4000) == "X"  # (60xx,4000) overlay comments
    assert shipped.resolved_action_for(0x60000010) == "X"  # overlay rows: neither table nor keep-list
    assert shipped.action_for(0x00291010) == "X"  # private: the engine asks is_safe_private
    assert shipped.resolved_action_for(0x00431039) == "X"
    rule = {r.tag: r for r in shipped.patterns}["(gggg,eeee) where gggg is odd"]
    assert (rule.basic, rule.action, rule.options) == ("X", "C", ("retain_safe_private",))


def test_keep_list_attribute_is_kept_and_unknown_standard_attribute_removed(shipped):
    assert shipped.action_for(0x00180080) == "K"  # RepetitionTime
    assert shipped.resolved_action_for(0x00189087) == "K"  # DiffusionBValue
    assert shipped.resolved_action_for(0x52009229) == "K"  # SharedFunctionalGroupsSequence
    assert shipped.action_for(0x00081032) == "X"  # ProcedureCodeSequence: not needed, not listed
    assert shipped.resolved_action_for(0x00400255) == "X"  # PerformedProcedureTypeDescription (free text)
    assert shipped.resolved_action_for(0x00080000) == "X"  # group length
    assert shipped.resolved_action_for(0x00099999) == "X"  # private, unknown creator


def test_is_safe_private_compares_creator_case_insensitively(shipped):
    assert shipped.is_safe_private("SIEMENS CSA HEADER", 0x0029, 0x10)
    assert shipped.is_safe_private("  siemens csa header ", 0x0029, 0x10)
    assert shipped.is_safe_private("SIEMENS CSA HEADER", 0x0029, 0x1010)  # full element: low byte used
    assert not shipped.is_safe_private("SIEMENS CSA HEADER", 0x0029, 0x30)
    assert not shipped.is_safe_private("SIEMENS CSA HEADERX", 0x0029, 0x10)
    assert not shipped.is_safe_private("MITRA OBJECT UTF8 ATTRIBUTES 1.0", 0x0033, 0x13)


# --- check-rules finds gaps ----------------------------------------------------------------------------


def test_weakened_row_fails_with_the_row_named(tmp_path, capsys):
    def weaken(data):
        _row(data, "PatientName")["action"] = "K"

    path = _edited(tmp_path, weaken)
    result = check_rules(path)
    assert not result.ok
    assert any(g.startswith("(0010,0010) PatientName: K is weaker than Basic Z") for g in result.gaps), result.gaps
    assert cli(["check-rules", str(path)]) == 1
    assert "gap: (0010,0010) PatientName" in capsys.readouterr().out


def test_the_table_ships_in_the_package_and_is_the_default(monkeypatch):
    monkeypatch.delenv(rules_mod.TABLE_ENV, raising=False)
    shipped_table = rules_mod.find_table()
    assert shipped_table.name == "table_e1_1.json" and shipped_table.parent.parent.name == "data"
    assert shipped_table.read_bytes() == TABLE.read_bytes()  # the package's own copy, however installed
    rows = json.loads(TABLE.read_text(encoding="utf-8"))
    assert len(rows) == 621  # DICOM edition 2024b (the table's README)
    assert {"tag": "(0010,0010)", "basic_profile": "Z"}.items() <= next(
        r for r in rows if r["keyword"] == "PatientName"
    ).items()
    assert "2024b" in (TABLE.parent / "README.md").read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "data/ps315/table_e1_1.json" in pyproject  # package-data: present in an installed wheel too


def test_deleted_row_fails_with_the_row_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(rules_mod.TABLE_ENV, raising=False)

    def delete(data):
        data["table"].remove(_row(data, "PatientBirthDate"))

    path = _edited(tmp_path, delete)
    result = check_rules(path)
    assert not result.ok
    assert (result.rows_present, result.rows_expected) == (620, 621)
    assert result.gaps == ("(0010,0030) PatientBirthDate: Table E.1-1 row missing (Basic Z)",)
    assert cli(["check-rules", str(path)]) == 1
    out = capsys.readouterr().out
    assert "rows present: 620/621" in out
    assert "gap: (0010,0030) PatientBirthDate: Table E.1-1 row missing" in out


def test_burned_in_allowance_needs_a_known_class_and_a_reason(tmp_path, capsys):
    def allow(setting):
        def edit(data):
            data["burned_in"] = setting

        return edit

    ok = _edited(tmp_path, allow({"allow": {"ultrasound": "test: our probe exports carry no annotation"}}))
    assert load_rules(ok).burned_in == {"ultrasound": "test: our probe exports carry no annotation"}
    assert cli(["check-rules", str(ok)]) == 0
    assert "burned-in classes allowed: ultrasound" in capsys.readouterr().out
    for setting, problem in [
        ({"allow": {"ultrasound": " "}}, "burned_in.allow: class ultrasound needs a reason"),
        ({"allow": {"dicomdir": "x"}}, "burned_in.allow: unknown class 'dicomdir'"),
        ("keep", "'burned_in' must be withhold or {allow: {class: reason}}"),
    ]:
        path = _edited(tmp_path, allow(setting))
        result = check_rules(path)
        assert any(g.startswith(problem) for g in result.gaps), (setting, result.gaps)
        assert cli(["check-rules", str(path)]) == 1
        with pytest.raises(ConfigError):
            load_rules(path)
    assert "burned-in classes allowed: none" in capsys.readouterr().out


def test_missing_table_is_an_error_not_a_pass(tmp_path, monkeypatch):
    monkeypatch.setenv(rules_mod.TABLE_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="Table E.1-1 JSON not found"):
        check_rules(SHIPPED)


def test_undeclared_option_action_fails(tmp_path):
    def undeclare(data):
        data["options"].remove("clean_desc")
        data["codes"] = [c for c in data["codes"] if c["value"] != "113105"]
        for row in data["table"]:
            if row.get("options") == ["clean_desc"]:
                del row["options"]

    result = check_rules(_edited(tmp_path, undeclare))
    assert any(
        g.startswith("(0008,103E) SeriesDescription: C needs option clean_desc, which the file does not declare")
        for g in result.gaps
    ), result.gaps


def test_option_action_passes_only_when_declared(tmp_path):
    def retain_serial(declare):
        def edit(data):
            row = _row(data, "DeviceSerialNumber")
            row.update(action="K", options=["retain_device_ident"], reason="test: scanner serial kept")
            if declare:
                data["options"].append("retain_device_ident")
                data["codes"].append({"value": "113109", "meaning": "Retain Device Identity Option"})

        return edit

    declared = check_rules(_edited(tmp_path, retain_serial(True)))
    assert declared.ok, declared.gaps
    assert declared.option_counts["retain_device_ident"] == 1
    with pytest.raises(ConfigError, match="option 'retain_device_ident' is not declared"):
        load_rules(_edited(tmp_path, retain_serial(False)))


def test_option_named_on_a_row_must_give_that_action(tmp_path):
    def misuse(data):
        _row(data, "PatientName").update(action="C", options=["clean_desc"], reason="not a descriptor")

    result = check_rules(_edited(tmp_path, misuse))
    named = "(0010,0010) PatientName: names option clean_desc, but its column gives nothing"
    assert any(named in g for g in result.gaps), result.gaps
    assert any("(0010,0010) PatientName: C is weaker than Basic Z" in g for g in result.gaps)


def test_missing_and_extra_rows_fail(tmp_path):
    def drop_and_add(data):
        data["table"] = [r for r in data["table"] if r["keyword"] != "OtherPatientIDs"]
        data["table"].append({"tag": "(0018,0080)", "keyword": "RepetitionTime", "basic": "X", "action": "X"})
        data["keep"] = [k for k in data["keep"] if k["keyword"] != "RepetitionTime"]

    gaps = check_rules(_edited(tmp_path, drop_and_add)).gaps
    assert any(g.startswith("(0010,1000) OtherPatientIDs: Table E.1-1 row missing") for g in gaps), gaps
    assert any(g.startswith("(0018,0080) RepetitionTime: not a row of Table E.1-1") for g in gaps), gaps


def test_keep_entry_without_reason_fails(tmp_path):
    def drop_reason(data):
        next(k for k in data["keep"] if k["keyword"] == "EchoTime")["reason"] = ""

    path = _edited(tmp_path, drop_reason)
    with pytest.raises(ConfigError, match=r"keep: \(0018,0081\) EchoTime: missing reason"):
        load_rules(path)
    gaps = check_rules(path).gaps
    assert any("(0018,0081) EchoTime: missing reason" in g for g in gaps)


def test_keep_entry_that_is_a_table_row_fails(tmp_path):
    def keep_name(data):
        data["keep"].append({"tag": "(0010,0010)", "keyword": "PatientName", "reason": "handy"})

    with pytest.raises(ConfigError, match=r"keep: \(0010,0010\) PatientName: is a Table E.1-1 row"):
        load_rules(_edited(tmp_path, keep_name))


def test_safe_private_entry_without_reason_or_with_even_group_fails(tmp_path):
    def bad_private(data):
        data["safe_private"][0]["reason"] = " "
        data["safe_private"].append({"creator": "ACME", "group": 0x0010, "element": 0x01, "reason": "x"})

    with pytest.raises(ConfigError) as info:
        load_rules(_edited(tmp_path, bad_private))
    assert "missing reason" in str(info.value)
    assert "group must be odd" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: _row(d, "PatientName").update(action="Q"), r"\(0010,0010\) PatientName: unknown action 'Q'"),
        (lambda d: _row(d, "PatientName").update(tag="(0010,001G)"), r"PatientName: bad tag syntax"),
        (lambda d: d["table"].append(dict(_row(d, "PatientID"))), r"duplicate row \(0010,0020\) PatientID"),
        (lambda d: _row(d, "PatientName").update(keyword="PatientID"), r"keyword PatientID is \(0010,0020\)"),
        (lambda d: d["options"].append("retain_everything"), r"unknown option 'retain_everything'"),
        (lambda d: d["codes"].pop(), r"codes must be exactly"),
        (lambda d: d.update(method="x" * 65), r"'method' is 65 characters"),
        (lambda d: d["iod_types"].update(PatientName=4), r"iod_types: PatientName: Type must be 1, 2 or 3"),
    ],
)
def test_malformed_rule_file_raises_config_error_naming_the_rule(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(path)
    assert info.value.path == path
    assert info.value.exit_code == 2


def test_unreadable_rule_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("table: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(bad)
    with pytest.raises(ConfigError, match="cannot read rule file"):
        load_rules(tmp_path / "missing.yaml")
    assert cli(["check-rules", str(tmp_path / "missing.yaml")]) == 2


# --- the allow-list keeps what dcm2niix needs (real scanner files) --------------------------------------

CORPUS = REPO.parent / "shared" / "corpus"
# Sidecar fields that may disappear: they identify a person, a site or a device, and the rule set removes
# their source attributes on purpose (Basic Profile; patient characteristics and device identity not retained).
IDENTITY_SIDECAR_FIELDS = frozenset(
    {
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
        "DeviceSerialNumber", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
        "PatientWeight", "PatientSize", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
        "AccessionNumber", "StudyID",
    }
)


def _dcm2niix() -> str:
    venv = REPO / ".venv" / "bin" / "dcm2niix"
    found = str(venv) if venv.is_file() else shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix not installed")
    return found


def _allow_listed(ds, rules) -> None:
    """Remove, at every level, what the rule set removes: standard attributes resolving to X and private
    elements off the safe-private list (with the creators of emptied blocks). Values are left alone:
    this checks the allow-list, not the engine's replacements."""
    creators = {
        (el.tag.group, el.tag.element): str(el.value)
        for el in ds
        if el.tag.is_private and 0x10 <= el.tag.element <= 0xFF
    }
    kept_blocks = set()
    for el in list(ds):
        tag = el.tag
        if tag.is_private:
            if tag.element <= 0xFF:
                continue
            creator = creators.get((tag.group, tag.element >> 8))
            if creator is None or not rules.is_safe_private(creator, tag.group, tag.element & 0xFF):
                del ds[tag]
                continue
            kept_blocks.add((tag.group, tag.element >> 8))
        elif rules.resolved_action_for(int(tag)) == "X":
            del ds[tag]
            continue
        if el.VR == "SQ":
            for item in el.value:
                _allow_listed(item, rules)
    for el in list(ds):
        if el.tag.is_private and el.tag.element <= 0xFF and (el.tag.group, el.tag.element) not in kept_blocks:
            del ds[el.tag]


def _convert(dcm2niix: str, src: Path, out: Path) -> dict:
    out.mkdir()
    subprocess.run([dcm2niix, "-ba", "n", "-f", "%s_%e", "-o", str(out), str(src)], capture_output=True, check=True)
    result: dict = {}
    for f in sorted(out.iterdir()):
        if f.suffix == ".json":
            result[f.name] = json.loads(f.read_text(encoding="utf-8"))
        elif f.suffix in (".bval", ".bvec"):
            result[f.name] = f.read_text(encoding="utf-8")
        else:
            img = nib.load(f)
            result[f.name] = (np.asarray(img.dataobj).tobytes(), img.shape, np.round(img.affine, 4).tolist())
    return result


def _series_dirs() -> list[Path]:
    # README.md and the repositories' LICENSE files are no DICOM (a folder holding only those is no series)
    return sorted({p.parent for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("README.md", "LICENSE")})


@pytest.mark.corpus
@pytest.mark.slow
def test_allow_list_keeps_everything_dcm2niix_needs_on_real_scanner_files(shipped, tmp_path):
    """GE, Siemens mosaic (CSA), Siemens XA30 (enhanced and interoperability) and Philips series convert to
    the same voxels, geometry, bvals/bvecs and sidecar values with only the keep-list, the table's non-X rows
    and the safe-private list left."""
    if not CORPUS.is_dir():
        pytest.skip(f"real scanner corpus absent ({CORPUS})")
    dcm2niix = _dcm2niix()
    vendors_seen = set()
    for index, series in enumerate(_series_dirs()):
        reduced = tmp_path / f"in{index}"
        reduced.mkdir()
        private_before = private_after = 0
        for path in sorted(series.iterdir()):
            ds = pydicom.dcmread(path)
            vendors_seen.add(str(ds.get("Manufacturer", "")).split()[0].upper())
            private_before += sum(1 for el in ds if el.tag.is_private)
            _allow_listed(ds, shipped)
            private_after += sum(1 for el in ds if el.tag.is_private)
            ds.save_as(reduced / path.name, enforce_file_format=False)
        assert private_after < private_before  # the allow-list really removed private elements
        raw = _convert(dcm2niix, series, tmp_path / f"raw{index}")
        kept = _convert(dcm2niix, reduced, tmp_path / f"out{index}")
        name = series.relative_to(CORPUS).as_posix()
        assert sorted(kept) == sorted(raw), name
        assert any(f.endswith(".nii") for f in raw), name
        for file_name, before in raw.items():
            after = kept[file_name]
            if not isinstance(before, dict):
                assert after == before, f"{name}/{file_name}"
                continue
            lost_or_changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            assert lost_or_changed <= IDENTITY_SIDECAR_FIELDS, f"{name}/{file_name}: {sorted(lost_or_changed)}"
    assert {"GE", "SIEMENS", "PHILIPS"} <= vendors_seen


def test_removing_dates_contradicts_the_modified_dates_option(tmp_path):
    def remove_dates(data):
        data["dates"] = {"mode": "remove"}

    with pytest.raises(ConfigError, match="mode remove contradicts the declared option retain_long_modif_dates"):
        load_rules(_edited(tmp_path, remove_dates))


def test_declared_option_applied_to_no_row_fails(tmp_path):
    def declare_unused(data):
        data["options"].append("retain_device_ident")
        data["codes"].append({"value": "113109", "meaning": "Retain Device Identity Option"})

    result = check_rules(_edited(tmp_path, declare_unused))
    assert "option retain_device_ident is declared (code 113109) but applied to no row" in result.gaps


# --- deid refuses what check-rules rejects -----------------------------------------------------------------


def _raw_session(tmp_path: Path) -> tuple[Path, Path]:
    from bidsafe.keys import create_key

    from helpers.deid_testing import mr_dataset, write

    raw = tmp_path / "raw"
    write(mr_dataset(patient_name="Quillfeather^Marisol"), raw / "a.dcm")
    key = tmp_path / "private" / "secret.key"
    key.parent.mkdir(mode=0o700)
    create_key(key)
    return raw, key


def _weaker_files(tmp_path: Path) -> dict[str, Path]:
    def keep_name(data):
        _row(data, "PatientName")["action"] = "K"

    def delete_birth_date(data):
        data["table"].remove(_row(data, "PatientBirthDate"))

    (tmp_path / "k").mkdir()
    (tmp_path / "deleted").mkdir()
    return {"(0010,0010) PatientName: K is weaker": _edited(tmp_path / "k", keep_name),
            "(0010,0030) PatientBirthDate: Table E.1-1 row missing": _edited(tmp_path / "deleted", delete_birth_date)}


def test_deid_refuses_a_rule_set_check_rules_rejects(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(rules_mod.TABLE_ENV, raising=False)
    raw, key = _raw_session(tmp_path)
    for problem, path in _weaker_files(tmp_path).items():
        out = tmp_path / f"out-{path.parent.name}"
        assert cli(["deid", str(raw), str(out), "--rules", str(path), "--key", str(key)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and problem in err and "--allow-weaker-rules" in err
        assert not out.exists()  # refused before anything was written
        assert "Quillfeather" not in err


def test_deid_with_allow_weaker_rules_says_identity_not_removed(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(rules_mod.TABLE_ENV, raising=False)
    raw, key = _raw_session(tmp_path)
    path = _weaker_files(tmp_path)["(0010,0010) PatientName: K is weaker"]
    out, report = tmp_path / "out", tmp_path / "private" / "report.json"
    assert cli(["deid", str(raw), str(out), "--rules", str(path), "--key", str(key), "--report", str(report),
                "--allow-weaker-rules"]) == 0
    assert "NOT de-identified" in capsys.readouterr().err
    (written,) = [p for p in out.rglob("*") if p.is_file()]
    ds = pydicom.dcmread(written)
    # the kept name is honest now: the file no longer claims its identity was removed
    assert str(ds.PatientName) == "Quillfeather^Marisol"
    assert ds.PatientIdentityRemoved == "NO"
    assert "DeidentificationMethodCodeSequence" not in ds
    assert "not de-identified" in str(ds.DeidentificationMethod)
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert saved["shareable"] is False
    assert any(g.startswith("(0010,0010) PatientName") for g in saved["weaker_rules"])


def test_deid_with_checked_rules_stamps_identity_removed(tmp_path, capsys):
    raw, key = _raw_session(tmp_path)
    out = tmp_path / "out"
    assert cli(["deid", str(raw), str(out), "--key", str(key)]) == 0
    (written,) = [p for p in out.rglob("*") if p.is_file()]
    ds = pydicom.dcmread(written)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
