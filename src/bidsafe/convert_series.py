"""The series of one session as the convert stage sees them: what the de-identified DICOM holds, by series
number, and dcm2niix's output for each (its sidecars read, repaired when dcm2niix wrote invalid JSON, and the
images of withheld series removed before dcm2bids pairs them). bidsafe.convert's notes say why and how."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ESC = "\x1b"


# --- the DICOM side: series received ---------------------------------------------------------------------


@dataclass
class SeriesInfo:
    """One series of the (de-identified) session: its number, description, file count, character set."""

    number: str
    description: str = ""
    files: int = 0
    charset: list[str] = field(default_factory=list)


def series_key(value: Any) -> str:
    """A series number as one text, whatever its form (IS text, JSON integer, float): '3', or '?'."""
    try:
        return str(int(float(str(value).split("\\")[0])))
    except (ValueError, OverflowError):
        return "?"


def dicom_series(dicom_dir: Path) -> dict[str, SeriesInfo]:
    """The series under `dicom_dir` by series number. De-identification writes one folder per series, so
    one header per folder is read and the folder's files counted (series sharing a number are merged)."""
    import pydicom

    from bidsafe.phi import quiet_pydicom

    found: dict[str, SeriesInfo] = {}
    for root, dirs, names in os.walk(dicom_dir):
        dirs.sort()
        header = None
        count = 0
        for name in sorted(names):
            path = Path(root) / name
            if header is None:
                try:
                    with quiet_pydicom():
                        header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=[
                            "SpecificCharacterSet", "SeriesNumber", "SeriesDescription"])
                except Exception:  # noqa: BLE001 - not DICOM: not a series
                    continue
                if "SeriesNumber" not in header and "SeriesDescription" not in header:
                    header = None
                    continue
            count += 1
        if header is None:
            continue
        info = found.setdefault(series_key(header.get("SeriesNumber", "")), SeriesInfo(
            series_key(header.get("SeriesNumber", ""))))
        info.files += count
        if not info.description:
            info.description = str(header.get("SeriesDescription", "") or "")
        if not info.charset:
            charset = header.get("SpecificCharacterSet", "") or ""
            info.charset = [str(c) for c in charset] if isinstance(charset, list | pydicom.multival.MultiValue) \
                else [str(charset)]
    return found


# --- dcm2niix's sidecars: repaired when they are not JSON -------------------------------------------------


def repair_sidecars(folder: Path, charsets: Mapping[str, list[str]]) -> list[str]:
    """Repair every sidecar in `folder` that is not valid JSON (see the notes of bidsafe.convert); returns their
    names. `charsets` gives each series' SpecificCharacterSet by series number."""
    repaired = []
    for path in sorted(folder.glob("*.json")):
        data = path.read_bytes()
        try:
            json.loads(data)
            continue
        except ValueError:
            pass
        fixed = repair_sidecar_bytes(data, charsets)
        if fixed is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(fixed, indent="\t", ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, path)
            repaired.append(path.name)
    return repaired


def repair_sidecar_bytes(data: bytes, charsets: Mapping[str, list[str]]) -> dict[str, Any] | None:
    """The sidecar dcm2niix meant to write, or None when even a lenient parse fails (dcm2bids then reports
    it). Raw control characters are accepted inside strings, and every string holding an ISO 2022 escape is
    decoded with the character set its series declares."""
    try:
        sidecar = json.loads(data.decode("utf-8", errors="replace"), strict=False)
    except ValueError:
        return None
    if not isinstance(sidecar, dict):
        return None
    declared = charsets.get(series_key(sidecar.get("SeriesNumber", ""))) or []
    if not any("2022" in term for term in declared):
        # no declared code extensions: the ISO 2022 sets DICOM defines, so the escape still decodes
        declared = ["", "ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"]
    return {key: _decoded(value, declared) for key, value in sidecar.items()}


def _decoded(value: Any, charset: list[str]) -> Any:
    if isinstance(value, list):
        return [_decoded(v, charset) for v in value]
    if not isinstance(value, str) or _ESC not in value:
        return value
    from pydicom.charset import convert_encodings, decode_bytes

    try:
        raw = value.encode("latin-1")  # dcm2niix wrote each byte as the Latin-1 character of that byte
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    try:
        text = decode_bytes(raw, convert_encodings(charset), set())
    except Exception:  # noqa: BLE001 - an escape no declared set explains
        text = raw.decode("iso2022_jp_2", errors="replace")
    # an escape that named no known set stays a control character: never let one through
    return "".join(c for c in text if c >= " " or c in "\t\n\r")


# what dcm2niix writes next to an image of the same stem without a sidecar of its own (the equalised or
# de-tilted copy of a volume); echoes, phases and the like get their own sidecar
_SAME_IMAGE_SUFFIX = re.compile(r"^(_(Eq|Tilt|Tilt_Eq)_\d+)?\.(nii|nii\.gz|json|bval|bvec)$")


def withhold_outputs(folder: Path, series: set[str]) -> list[str]:
    """Remove from dcm2niix's output `folder` every image of the given series (by their sidecars'
    SeriesNumber), so dcm2bids cannot place them; returns the names removed."""
    if not series:
        return []
    stems = [stem for stem, sidecar in read_sidecars(folder).items()
             if series_key(sidecar.get("SeriesNumber", "")) in series]
    removed = []
    for path in sorted(folder.iterdir()):
        if any(path.name.startswith(stem) and _SAME_IMAGE_SUFFIX.match(path.name[len(stem):]) for stem in stems):
            path.unlink()
            removed.append(path.name)
    return removed


def read_sidecars(folder: Path) -> dict[str, dict[str, Any]]:
    """dcm2niix's sidecars by file stem (a sidecar still unreadable counts as an image with no series)."""
    sidecars: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            value = json.loads(path.read_bytes())
        except ValueError:
            value = {}
        sidecars[path.name[: -len(".json")]] = value if isinstance(value, dict) else {}
    return sidecars
