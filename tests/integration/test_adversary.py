"""End to end, as an adversary would try it: one fake identity written the ways people write it, everywhere.

Issue 9's leaks came from free text: a surname transliterated, an ID without its leading zeros or with
spaces, a birth date in another format, a name followed by a digit, UTF-8 names that dcm2niix turns into
Latin-1 mojibake, names in other scripts, text in private blocks (Siemens CSA protocol, GE's compressed
protocol block, Philips' private sequence) in other character sets, file and folder names. This module plants
each of them in a demo export, runs the whole pipeline, and checks that:

- none of them is found in the published release, the work area (de-identified DICOM included) or any log;
- patients named Bold, Field and Swan keep every series (`ep2d_bold`, field maps) and are published;
- the same run with de-identification's text cleaning switched off (`BIDSAFE_TEST_NO_TEXT_CLEANING`, a
  test-only hook) is refused by the leak gate, with a finding at each planted sidecar key: the gate does
  not share the cleaner's blind spots.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from datetime import date
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsafe.demo import DemoSession, generate, siemens_csa_header

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEED = 23

# The adversary's identity (one person, written many ways).
FAMILY, GIVEN = "Müller", "Jürgen"
IDEOGRAPHIC = "山田^太郎"
PATIENT_ID = "0012345678"
OTHER_ID = "8842QX"
BIRTH = "19710317"
MOTHER = "Ørsted^Birgit"
REFERRING = "Zqxwv^Johanna"
CYRILLIC = "Мюллер^Юрген"

# What each series' descriptors become: (SeriesDescription suffix, ProtocolName suffix) appended to the demo's
# own description, so the series still maps to its BIDS suffix once the planted tokens are gone.
PLANTED_DESCRIPTORS = {
    2: ("Mueller 12345678", "Juergen 17-Mar-1971"),  # T1w: transliterated surname, ID without zeros
    3: ("Zqxwv2", "{study_dmy}"),  # T2w: name + digit; the real scan date in another form
    4: ("PE=AP 17.3.1971", "PID 8842 QX"),  # bold: birth date unpadded; ID with spaces
    5: ("Ørsted2", "山田"),  # dwi: UTF-8 names dcm2niix would write as Latin-1 mojibake; CJK name
    6: ("12 345 678", "Johanna1"),  # fmap AP
    7: ("{study_ymd}", "Юрген"),  # fmap PA: scan date with underscores; Cyrillic
}
# Sidecar keys where each planted descriptor would surface without text cleaning (series -> file suffix).
SIDECAR_OF_SERIES = {2: "_T1w.json", 3: "_T2w.json", 4: "_bold.json", 5: "_dwi.json", 6: "_dir-AP_epi.json",
                     7: "_dir-PA_epi.json"}
# The gate's rules that need no harvested value: a finding of another category matched a personal value.
STRUCTURAL = frozenset({"non-ascii", "non-vocabulary token"})

PATIENTS_WITH_MR_WORDS = ("BOLD^ANNA", "FIELD^MARCUS", "SWAN^INES")


def _study_forms(study_date: str) -> dict[str, str]:
    when = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:]))
    return {"study_ymd": when.strftime("%Y_%m_%d"), "study_dmy": f"{when.day}-{when.strftime('%b')}-{when.year}"}


def _ge_protocol_block(text: str) -> bytes:
    compressed = gzip.compress(text.encode("latin-1"), mtime=0)
    packed = struct.pack("<I", len(compressed)) + compressed
    return packed + b"\x00" if len(packed) % 2 else packed


def _plant_adversary(session: DemoSession) -> None:
    """Rewrite every DICOM file of `session` with the adversary's identity, and plant descriptors and private
    text in the series that convert."""
    forms = _study_forms(session.study_date)
    for path in sorted(p for p in session.folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue  # the demo's junk files
        if "DirectoryRecordSequence" in ds:
            path.unlink()  # a DICOMDIR lists the old identity; it is withheld anyway
            continue
        _plant_identity(ds)
        if ds.get("SeriesNumber") in PLANTED_DESCRIPTORS:
            _plant_text(ds, forms)
        ds.save_as(path)
    # Folder names carry the identity too (as exports named after patients do).
    session.folder.rename(session.folder.with_name(f"Mueller_Juergen_{PATIENT_ID}_17.3.1971"))
    session.patient_folder.rename(session.patient_folder.with_name("Müller_Jürgen_山田"))


def _plant_identity(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"{FAMILY}^{GIVEN}={IDEOGRAPHIC}"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH
    ds.PatientMotherBirthName = MOTHER
    ds.ReferringPhysicianName = REFERRING
    ds.OtherPatientNames = CYRILLIC
    other = Dataset()
    other.PatientID = OTHER_ID
    ds.OtherPatientIDsSequence = [other]
    for item in ds.get("ReferencedPatientSequence", []):
        item.PatientName, item.PatientID = ds.PatientName, PATIENT_ID
    for item in ds.get("RequestAttributesSequence", []):
        item.PatientName = ds.PatientName
    ds.StudyDescription = "MRI BRAIN Mueller Juergen"
    ds.AdditionalPatientHistory = f"Follow-up for {GIVEN} {FAMILY}"
    ds.PatientComments = f"{FAMILY} prefers mornings"
    ds.ImageComments = f"{FAMILY} {PATIENT_ID}"
    pacs = ds.private_block(0x0033, "MITRA OBJECT UTF8 ATTRIBUTES 1.0", create=True)
    for element, value in ((0x13, f"{FAMILY}^{GIVEN}"), (0x15, PATIENT_ID), (0x17, BIRTH)):
        pacs.add_new(element, "OB", value.encode())


def _plant_text(ds: Dataset, forms: dict[str, str]) -> None:
    series_text, protocol_text = (t.format(**forms) for t in PLANTED_DESCRIPTORS[ds.SeriesNumber])
    description = ds.SeriesDescription
    ds.SeriesDescription = f"{description} {series_text}"
    ds.ProtocolName = f"{description} {protocol_text}"
    ds.SequenceName = f"{ds.SequenceName[:8]}Johanna1"  # keep-list text (SH: 16 characters)
    # Siemens CSA series header with the ASCII protocol that dcm2niix reads.
    protocol = (
        "### ASCCONV BEGIN ###\n"
        f'tProtocolName\t = \t""{description}_Mueller_Juergen""\n'
        f'sProtConsistencyInfo.tBaselineString\t = \t""N4_VE11C_{BIRTH}""\n'
        "### ASCCONV END ###\n"
    )
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x20, "OB", siemens_csa_header([("MrPhoenixProtocol", "UN", [protocol])]))
    # GE's compressed protocol block (SEDESC is the series description).
    ge = ds.private_block(0x0025, "GEMS_SERS_01", create=True)
    ge.add_new(0x1B, "OB", _ge_protocol_block(f'SEDESC "Orsted {PATIENT_ID} 17/03/1971"\nNOTES "Juergen"\n'))
    # Philips' private sequence of standard attributes (dcm2niix copies its ProtocolName).
    item = Dataset()
    item.ProtocolName = "WIP Mueller Juergen 8842QX"
    philips = ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
    philips.add_new(0x0F, "SQ", [item])
    # Kept private text in the file's character set (Siemens slice orientation text).
    siemens = ds.private_block(0x0051, "SIEMENS MR HEADER", create=True)
    siemens.add_new(0x0E, "LO", "Tra Ørsted 山田")


def _rename_patient(session: DemoSession, name: str) -> None:
    for series in session.series:
        for path in series.files:
            ds = pydicom.dcmread(path)
            ds.PatientName = name
            for item in [*ds.get("ReferencedPatientSequence", []), *ds.get("RequestAttributesSequence", [])]:
                item.PatientName = name
            ds.save_as(path)


def _write_inbox(root: Path, *, with_mr_word_patients: bool) -> list[DemoSession]:
    sessions = generate(root / "inbox", subjects=4 if with_mr_word_patients else 1, sessions=1, seed=SEED)
    _plant_adversary(sessions[0])
    for session, name in zip(sessions[1:], PATIENTS_WITH_MR_WORDS, strict=False):
        _rename_patient(session, name)
    lines = ["patient_id\tconsent"] + [f"{s.patient_id if s.subject_index != 1 else PATIENT_ID}\tpublic"
                                        for s in sessions]
    (root / "consent.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox="inbox", private_dir="private", work_dir="work", release_dir="release",
                  consent="consent.tsv", demographics=None)
    config["release"]["k_anonymity"] = 1
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return sessions


def _snakemake(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(root / "config.yaml"), "--cores", "2"]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=3000, check=False)


# ------------------------------------------------------------------------------------- the search


def _needles(study_date: str) -> dict[str, list[bytes]]:
    """Every planted value in the forms it could take in any output, as lower-cased byte strings."""
    forms = _study_forms(study_date)
    texts = {
        "surname": ["müller", "mueller", "muller", "мюллер"],
        "given name": ["jürgen", "juergen", "jurgen", "юрген"],
        "mother's name": ["ørsted", "orsted", "birgit"],
        "ideographic name": ["山田", "太郎"],
        "referring name": ["zqxwv", "johanna"],
        "birth date": ["19710317", "1971-03-17", "17.3.1971", "17.03.1971", "17-mar-1971", "17/03/1971"],
        "study date": [study_date, forms["study_ymd"].lower(), forms["study_dmy"].lower()],
    }
    needles: dict[str, list[bytes]] = {}
    for label, words in texts.items():
        out: set[bytes] = set()
        for word in words:
            for encoding in ("utf-8", "latin-1", "iso-8859-5", "gb18030"):
                try:
                    out.add(word.encode(encoding).lower())
                except UnicodeEncodeError:
                    continue
            # UTF-8 read as Latin-1 and written again as UTF-8 (dcm2niix with a non-UTF-8 charset).
            if not word.isascii():
                out.add(word.encode("utf-8").decode("latin-1").encode("utf-8").lower())
        needles[label] = sorted(out)
    return needles


_ID_PATTERNS = {
    "patient ID": re.compile(rb"(?<![0-9.])0*1\D{0,2}2\D{0,2}3\D{0,2}4\D{0,2}5\D{0,2}6\D{0,2}7\D{0,2}8(?![0-9])"),
    "other ID": re.compile(rb"8842[\s_\-]*qx", re.IGNORECASE),
}


def _searchable_bytes(path: Path) -> bytes:
    """What of a file can hold text: everything, except DICOM pixel data and NIfTI voxel data."""
    data = path.read_bytes()
    if path.name.endswith(".nii.gz"):
        data = gzip.decompress(data)
        return data[: max(352, int(struct.unpack("<f", data[108:112])[0]))]
    if path.suffix in (".nii",):
        return data[: max(352, int(struct.unpack("<f", data[108:112])[0]))]
    if path.suffix == ".png":
        return b""
    if len(data) > 132 and data[128:132] == b"DICM":
        parts = [data[: data.rfind(b"\xe0\x7f\x10\x00")] if b"\xe0\x7f\x10\x00" in data else data]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            return parts[0]
        block = ds.get_private_item(0x0025, 0x1B, "GEMS_SERS_01") if (0x0025, 0x0010) in ds else None
        if block is not None and block.value[4:6] == b"\x1f\x8b":
            parts.append(gzip.decompress(block.value[4:]))
        return b"\n".join(parts)
    return data


def _findings(roots: list[Path], study_date: str) -> list[str]:
    needles = _needles(study_date)
    found = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            name = str(path.relative_to(root)).lower().encode("utf-8")
            data = _searchable_bytes(path).lower() + b"\n" + name
            for label, forms in needles.items():
                if any(form in data for form in forms):
                    found.append(f"{root.name}/{path.relative_to(root)}: {label}")
            for label, pattern in _ID_PATTERNS.items():
                if pattern.search(data):
                    found.append(f"{root.name}/{path.relative_to(root)}: {label}")
    return found


# ------------------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def cleaned_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("adversary")
    sessions = _write_inbox(root, with_mr_word_patients=True)
    result = _snakemake(root)
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return {"root": root, "sessions": sessions, "log": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def uncleaned_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("adversary-uncleaned")
    sessions = _write_inbox(root, with_mr_word_patients=False)
    result = _snakemake(root, BIDSAFE_TEST_NO_TEXT_CLEANING="1")
    return {"root": root, "sessions": sessions, "result": result}


def test_no_planted_value_in_release_work_area_or_logs(cleaned_run):
    root = cleaned_run["root"]
    assert (root / "release" / "latest" / "SHAREABLE.json").is_file()
    roots = [root / "release", root / "work", root / ".snakemake" / "log"]
    findings = _findings([r for r in roots if r.is_dir()], cleaned_run["sessions"][0].study_date)
    log = cleaned_run["log"].lower().encode("utf-8")
    for label, forms in _needles(cleaned_run["sessions"][0].study_date).items():
        if any(form in log for form in forms):
            findings.append(f"console: {label}")
    assert findings == []


def test_the_adversary_session_is_published_whole(cleaned_run):
    release = cleaned_run["root"] / "release" / "latest"
    sessions = sorted(release.glob("sub-*/ses-*"))
    assert len(sessions) == 4
    expected = sorted(s.expected_suffix for s in cleaned_run["sessions"][0].series if s.expected_suffix)
    for session in sessions:
        suffixes = sorted(p.name.removesuffix(".nii.gz").rsplit("_", 1)[1] for p in session.rglob("*.nii.gz"))
        assert suffixes == expected, session.name


def test_patients_named_bold_field_swan_keep_every_series(cleaned_run):
    release = cleaned_run["root"] / "release" / "latest"
    names = sorted(p.name for p in release.rglob("*.nii.gz"))
    # four sessions, each with its BOLD run, its DWI and both spin-echo field maps
    assert sum(n.endswith("_task-rest_bold.nii.gz") for n in names) == 4
    assert sum(n.endswith("_dwi.nii.gz") for n in names) == 4
    assert sum(n.endswith("_epi.nii.gz") for n in names) == 8
    for sidecar in release.rglob("*_bold.json"):
        assert "bold" in json.loads(sidecar.read_text(encoding="utf-8"))["SeriesDescription"]


def test_without_text_cleaning_the_leak_gate_refuses(uncleaned_run):
    root = uncleaned_run["root"]
    assert uncleaned_run["result"].returncode != 0
    assert not (root / "release" / "latest").exists()
    report = json.loads((root / "work" / "gates" / "leak_scan.json").read_text(encoding="utf-8"))
    assert not report["passed"]
    hits = report["details"]["hits"]
    for number, suffix in SIDECAR_OF_SERIES.items():
        for key in ("SeriesDescription", "ProtocolName"):
            found = {h["category"] for h in hits if h["file"].endswith(suffix) and h["where"] == f"json:{key}"}
            # matched as a personal value by the gate's own search, not only by its structural rules
            assert found - STRUCTURAL, f"no personal-value finding for {key} of series {number} ({suffix})"
    # findings never carry a value
    text = json.dumps(report).lower().encode("utf-8")
    for forms in _needles(uncleaned_run["sessions"][0].study_date).values():
        assert not any(form in text for form in forms)
