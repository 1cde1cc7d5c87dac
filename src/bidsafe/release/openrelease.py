"""What an open (CC0) release must satisfy to be uploaded to an OpenNeuro-style repository, checked on the
assembled dataset (`release.audience: open`; see bidsafe.release.assemble).

OpenNeuro accepts a dataset that passes the BIDS validator, whose anatomical images are defaced, that has a
README and a CHANGES file, is dedicated to the public domain (CC0) and carries no private fields. The
validator and the deface check are release gates already (bidsafe.release.gates) and run on every release;
this module checks the rest, on the files themselves, and names files and keys only, never a value:

- `dataset_description.json` says `License: CC0` (or `CC0-1.0`);
- `README` exists, is not empty and carries no data usage agreement (a CC0 release cannot restrict use);
- `LICENSE` names CC0;
- `CHANGES` exists and is in CPAN Changes form: each entry a `VERSION DATE` line, then indented notes;
- no JSON sidecar or dataset file holds a key that names a person, an institution or a device, or gives
  an acquisition date or time (the sidecar allow-list drops them; a site's own list could let one through).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bidsafe.release.citation import is_cc0
from bidsafe.release.manifest import iter_release_files

# Keys dcm2niix can write that identify a person, a site or a device, or date the scan (BIDS lets a
# de-identified dataset keep times only as shifted acq_time in scans.tsv).
PRIVATE_KEYS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "OtherPatientIDs", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "StudyInstanceUID", "SeriesInstanceUID",
    "StudyID", "AcquisitionDateTime", "AcquisitionDate", "StudyDate", "SeriesDate", "ContentDate",
    "StudyDescription", "ImageComments", "ProcedureStepDescription",
})
_CHANGES_HEADER = re.compile(r"^\d+\.\d+\.\d+ \d{4}-\d{2}-\d{2}$")
_AGREEMENT = re.compile(r"data usage agreement", re.IGNORECASE)


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def changes_problems(text: str) -> list[str]:
    """Where a CHANGES text leaves the CPAN Changes form bidsafe writes (entry headers and indented notes)."""
    problems = []
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        return ["CHANGES is empty"]
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith(" "):
            continue
        if not _CHANGES_HEADER.match(line):
            problems.append(f"CHANGES line {number} is neither an entry header (VERSION DATE) nor an indented note")
    if not _CHANGES_HEADER.match(lines[0]):
        problems.append("CHANGES does not start with an entry header (VERSION DATE)")
    return problems


def open_release_problems(dataset: str | Path) -> list[str]:
    """Every reason `dataset` is not an open (CC0) release an OpenNeuro-style repository accepts; [] when it is."""
    dataset = Path(dataset)
    problems: list[str] = []
    try:
        description = json.loads((dataset / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        description = {}
        problems.append("dataset_description.json is missing or not JSON")
    if not is_cc0(str(description.get("License", ""))):
        problems.append("dataset_description.json: License is not CC0")
    readme = dataset / "README"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if not text.strip():
        problems.append("README is missing or empty")
    elif _AGREEMENT.search(text):
        problems.append("README carries a data usage agreement (a CC0 release cannot restrict use)")
    licence = dataset / "LICENSE"
    if not licence.is_file() or "CC0" not in licence.read_text(encoding="utf-8"):
        problems.append("LICENSE is missing or does not name CC0")
    changes = dataset / "CHANGES"
    if not changes.is_file():
        problems.append("CHANGES is missing")
    else:
        problems += changes_problems(changes.read_text(encoding="utf-8"))
    for rel in iter_release_files(dataset):
        if not rel.endswith(".json"):
            continue
        try:
            content = json.loads((dataset / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            problems.append(f"{rel} is not JSON")
            continue
        private = sorted(set(_keys(content)) & PRIVATE_KEYS)
        if private:
            problems.append(f"{rel} holds private field(s): {', '.join(private)}")
    return problems
