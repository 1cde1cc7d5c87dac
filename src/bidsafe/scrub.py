"""Stage `scrub`: make one converted session safe to release (sidecars, NIfTI header text, names, scans.tsv).

dcm2niix and dcm2bids copy site, device, time and free-text fields from the (already de-identified) DICOM into
sidecars and NIfTI headers (dcm2niix's default anonymisation `-ba y` still writes InstitutionName, InstitutionAddress,
StationName, DeviceSerialNumber, SeriesDescription, ProtocolName, ImageComments and times; ImageComments also
reaches the NIfTI header). Scrub therefore works by allow-list, never by block-list:

- sidecar JSON keys pass only when listed in `config/sidecar_allowlist.yaml` (each with a reason); every kept
  string keeps only descriptor-vocabulary tokens (`bidsafe.deid.vocabulary`), then loses every harvested personal
  value (`PersonalValues.redact`) as a second layer that never cuts a vocabulary word;
- NIfTI header text fields (descrip, aux_file, intent_name, db_name, data_type) are rewritten and extensions
  dropped, while the voxel bytes are copied unchanged and checked to be identical after writing;
- every output path component must follow the BIDS pattern `sub-<S>_ses-<T>[_<key>-<value>]..._<suffix>.<ext>`
  built from pseudonyms and config labels, and contain no personal value: anything else stops the stage;
- `sub-S_ses-T_scans.tsv` gives each image's acquisition time read from the de-identified (date-shifted) DICOM.

The session appears in `out_dir` whole or not at all. Reports name keys and fields, never values.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import pydicom
import yaml
from nibabel.arrayproxy import ArrayProxy
from pydicom.errors import InvalidDicomError

from bidsafe import resources
from bidsafe.bidsnames import LABEL, datatypes, entity_order
from bidsafe.deid.vocabulary import Vocabulary, vocabulary_for
from bidsafe.errors import BidsafeError, ConfigError, GuardError
from bidsafe.fsutil import atomic_dir
from bidsafe.phi import PersonalValues
from bidsafe.testhooks import text_cleaning_disabled

DEFAULT_ALLOWLIST = resources.path("config/sidecar_allowlist.yaml")

# What a NIfTI header's free-text fields become: a fixed string that says who wrote the file, nothing more.
NIFTI_DESCRIP = "bidsafe"
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")

# The names BIDS defines come from its schema (bidsafe.bidsnames); sub/ses are matched apart, in front.
BIDS_DATATYPES = datatypes()
BIDS_ENTITIES = frozenset(entity_order()) - {"sub", "ses"}
_LABEL = LABEL
_EXTENSIONS = (".nii.gz", ".nii", ".json", ".bval", ".bvec")
_BIDS_NAME = re.compile(
    rf"^sub-(?P<sub>{_LABEL})_ses-(?P<ses>{_LABEL})(?P<entities>(?:_[a-z]+-{_LABEL})*)_(?P<suffix>{_LABEL})"
    r"(?P<ext>\.nii\.gz|\.nii|\.json|\.bval|\.bvec|\.tsv)$"
)
_NUMERIC_TEXT = re.compile(rb"^[\s0-9eE+\-.]*$")
_DICOM_TAGS = (
    "SeriesNumber", "SeriesInstanceUID", "SeriesDescription", "AcquisitionDateTime", "AcquisitionDate",
    "AcquisitionTime", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime", "StudyDate", "StudyTime",
)


@dataclass(frozen=True)
class AllowedKey:
    key: str
    why: str
    free_text: bool = False


@dataclass
class FileScrub:
    """What happened to one output file (relative to the output folder); names only, never values."""

    path: str
    dropped_keys: list[str] = field(default_factory=list)
    cleaned_fields: list[str] = field(default_factory=list)
    header_fields_rewritten: list[str] = field(default_factory=list)


@dataclass
class ScrubReport:
    subject: str
    session: str
    files: list[FileScrub] = field(default_factory=list)
    scans_tsv: str = ""
    acq_time_missing: list[str] = field(default_factory=list)  # images whose series was not found in deid DICOM
    ignored_outside_session: int = 0  # converter leftovers outside sub-S/ses-T (never copied)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "session": self.session,
            "files": [vars(f) for f in self.files],
            "scans_tsv": self.scans_tsv,
            "acq_time_missing": self.acq_time_missing,
            "ignored_outside_session": self.ignored_outside_session,
        }

    def __str__(self) -> str:
        dropped = sum(len(f.dropped_keys) for f in self.files)
        cleaned = sum(len(f.cleaned_fields) for f in self.files)
        rewritten = sum(len(f.header_fields_rewritten) for f in self.files)
        return (
            f"sub-{self.subject} ses-{self.session}: {len(self.files)} files, {dropped} sidecar keys dropped, "
            f"{cleaned} fields cleaned, {rewritten} NIfTI header fields rewritten, "
            f"{len(self.acq_time_missing)} images without acq_time"
        )


# ---------------------------------------------------------------------------------------------- allow-list


def load_allowlist(path: Path | None = None) -> dict[str, AllowedKey]:
    """Read and check the sidecar allow-list: a YAML list of {key, why[, free_text]} entries, keys unique."""
    path = Path(path) if path is not None else DEFAULT_ALLOWLIST
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the sidecar allow-list ({exc.strerror})", path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the sidecar allow-list is not valid YAML ({exc})", path) from exc
    if not isinstance(entries, list) or not entries:
        raise ConfigError("the sidecar allow-list must be a non-empty YAML list", path)
    allowed: dict[str, AllowedKey] = {}
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) - {"key", "why", "free_text"}:
            raise ConfigError(f"entry {number}: expected a mapping with key, why and optional free_text", path)
        key, why, free = entry.get("key"), entry.get("why"), entry.get("free_text", False)
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            raise ConfigError(f"entry {number}: 'key' must be a sidecar key name", path)
        if not isinstance(why, str) or not why.strip():
            raise ConfigError(f"entry {number} ({key}): every kept key needs a one-line 'why'", path)
        if not isinstance(free, bool):
            raise ConfigError(f"entry {number} ({key}): 'free_text' must be true or false", path)
        if key in allowed:
            raise ConfigError(f"entry {number}: key {key} is listed twice", path)
        allowed[key] = AllowedKey(key, why.strip(), free)
    return allowed


# ---------------------------------------------------------------------------------------------- sidecars


# Names (keys, path components) are checked more strictly than free text: a rendering of 5+ characters counts
# anywhere inside the name ("NoteSmithson"), shorter ones only as whole words (else "Ann" would hit "Annotation").
NAME_SUBSTRING_MIN = 5


class NameChecker:
    """Tells whether a name (sidecar key, path component) carries a personal value.

    With a `vocabulary`, a harvested form that is one vocabulary token (a patient named Bold, Field or Swan) is
    not looked for where it stands as a whole token: `_bold.nii.gz` must not stop every session of that patient.
    """

    def __init__(self, values: PersonalValues, vocabulary: Vocabulary | None = None) -> None:
        self.values = values
        self.vocabulary = vocabulary
        needles = values.needles()
        self.protected = {n for n in needles if vocabulary.is_single_token(n)} if vocabulary is not None else set()
        self.long_needles = [n for n in needles if len(n) >= NAME_SUBSTRING_MIN and n not in self.protected]

    def __call__(self, name: str) -> bool:
        if self.protected and self.vocabulary is not None:
            name, _ = self.vocabulary.protect(name, self.protected)
        if self.values.find(name) or self.values.find(re.sub(r"[-_.]+", " ", name)):
            return True
        lowered = name.lower()
        return any(needle in lowered for needle in self.long_needles)


def _safe_name(name: str, personal: NameChecker) -> str:
    """A key name fit for a report: withheld when the name itself carries a personal value."""
    return "<withheld key name>" if personal(name) else name


# Kept keys whose strings are not text from the scanner: BIDS URIs/paths that dcm2bids builds from pseudonyms and
# config labels (their tokens are pseudonyms, which no vocabulary lists); they still lose harvested values.
VOCABULARY_EXEMPT_KEYS = frozenset({"IntendedFor"})


class _TextCleaning:
    """Vocabulary first, then harvested values, for every kept sidecar string (both off under the test hook)."""

    def __init__(self, values: PersonalValues, vocabulary: Vocabulary | None) -> None:
        self.values = values
        self.vocabulary = vocabulary
        self.off = text_cleaning_disabled()
        self.protected = (
            {form for form in values.needles() if vocabulary.is_single_token(form)} if vocabulary is not None else set()
        )

    def __call__(self, text: str, *, vocabulary: bool = True) -> str:
        if self.off:
            return text
        if vocabulary and self.vocabulary is not None:
            text, _ = self.vocabulary.clean(text)
        masked: list[str] = []
        if self.protected and self.vocabulary is not None:
            text, masked = self.vocabulary.protect(text, self.protected)
        cleaned = self.values.redact(text)
        return Vocabulary.unprotect(cleaned, masked) if masked else cleaned


def _clean(value: Any, clean: _TextCleaning | PersonalValues, *, vocabulary: bool = True) -> tuple[Any, bool]:
    """`value` with every string inside it cleaned; True when anything changed."""
    if isinstance(clean, PersonalValues):
        clean = _TextCleaning(clean, None)
    if isinstance(value, str):
        cleaned = clean(value, vocabulary=vocabulary)
        return cleaned, cleaned != value
    if isinstance(value, list):
        items = [_clean(item, clean, vocabulary=vocabulary) for item in value]
        return [v for v, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = clean(key, vocabulary=vocabulary)
            new_item, item_changed = _clean(item, clean, vocabulary=vocabulary)
            changed = changed or item_changed or new_key != key
            out[new_key] = new_item
        return out, changed
    return value, False


def scrub_sidecar(
    sidecar: Mapping[str, Any],
    allowed: Mapping[str, AllowedKey],
    values: PersonalValues,
    vocabulary: Vocabulary | None = None,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(kept and cleaned sidecar, dropped key names, cleaned key names) — key names withheld if personal.

    `vocabulary`: the descriptor vocabulary (default: the shipped one)."""
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    personal = NameChecker(values, vocabulary)
    clean = _TextCleaning(values, vocabulary)
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    cleaned: list[str] = []
    for key, value in sidecar.items():
        if key not in allowed:
            dropped.append(_safe_name(key, personal))
            continue
        new_value, changed = _clean(value, clean, vocabulary=key not in VOCABULARY_EXEMPT_KEYS)
        if changed:
            cleaned.append(key)
        kept[key] = new_value
    return kept, dropped, cleaned


# ---------------------------------------------------------------------------------------------- NIfTI


def _header_class(raw: bytes) -> type[nib.Nifti1Header]:
    for order in ("little", "big"):
        size = int.from_bytes(raw[:4], order)
        if size == 348:
            return nib.Nifti1Header
        if size == 540:
            return nib.Nifti2Header
    raise BidsafeError("not a NIfTI-1/NIfTI-2 file (bad header size)")


def _read_nifti_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def rewrite_nifti_header(src: Path, dst: Path) -> list[str]:
    """Copy `src` to `dst` with header text fields rewritten and extensions dropped; voxel bytes untouched.

    Returns the names of the fields that changed. The copy is verified: same voxel bytes, shape, dtype,
    affine and scaling as `src`, else BidsafeError (and `dst` is removed).
    """
    try:
        raw = _read_nifti_bytes(src)
        klass = _header_class(raw)
        header = klass.from_fileobj(io.BytesIO(raw), check=False)  # type: ignore[no-untyped-call]
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as exc:
        raise BidsafeError(f"cannot read NIfTI image ({type(exc).__name__})", src.name) from exc
    except BidsafeError as exc:
        raise BidsafeError(str(exc), src.name) from exc
    old_offset = int(header["vox_offset"])
    changed: list[str] = []
    new = header.copy()
    for name in NIFTI_TEXT_FIELDS:
        if name not in new:  # NIfTI-2 has no db_name / data_type
            continue
        wanted = NIFTI_DESCRIP.encode() if name == "descrip" else b""
        if bytes(new[name]).rstrip(b"\x00") != wanted:
            changed.append(name)
        new[name] = wanted
    if new.extensions:
        changed.append("extensions")
        new.extensions.clear()
    new_offset = 352 if klass is nib.Nifti1Header else 544
    new["vox_offset"] = new_offset
    buffer = io.BytesIO()
    new.write_to(buffer)
    head = buffer.getvalue()
    if len(head) != new_offset:
        raise BidsafeError("unexpected NIfTI header length after rewrite", src.name)
    payload = head + raw[old_offset:]
    out = gzip.compress(payload, compresslevel=6, mtime=0) if dst.name.endswith(".gz") else payload
    dst.write_bytes(out)
    try:
        _verify_same_image(src, dst, old_offset, new_offset)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return changed


def _load_nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is one too
        raise BidsafeError("not a NIfTI image", path.name)
    return image


def _proxy(image: nib.Nifti1Image, path: Path) -> ArrayProxy:
    """The image's voxel array as stored (nibabel loads a file as a proxy with its scaling)."""
    if not isinstance(image.dataobj, ArrayProxy):
        raise BidsafeError("NIfTI image without a file-backed voxel array", path.name)
    return image.dataobj


def _verify_same_image(src: Path, dst: Path, src_offset: int, dst_offset: int) -> None:
    """The rewritten image must be the same image: voxel bytes streamed and compared, geometry and scaling."""
    before, after = _load_nifti(src), _load_nifti(dst)
    data_before, data_after = _proxy(before, src), _proxy(after, dst)
    same = (
        before.shape == after.shape
        and before.header.get_data_dtype() == after.header.get_data_dtype()  # type: ignore[no-untyped-call]
        and (before.affine == after.affine).all()
        and repr((data_before.slope, data_before.inter)) == repr((data_after.slope, data_after.inter))
    )
    if not same:
        raise BidsafeError("rewritten NIfTI header changed geometry or scaling", dst.name)
    opener = gzip.open if src.name.endswith(".gz") else open
    with opener(src, "rb") as a, opener(dst, "rb") as b:
        a.read(src_offset)
        b.read(dst_offset)
        while True:
            chunk_a, chunk_b = a.read(1 << 22), b.read(1 << 22)
            if chunk_a != chunk_b:
                raise BidsafeError("rewritten NIfTI voxel data differ from the input", dst.name)
            if not chunk_a:
                break
    # And nibabel's view of the voxel array (unscaled, as stored) must be identical too.
    unscaled = data_before.get_unscaled(), data_after.get_unscaled()  # type: ignore[no-untyped-call]
    if unscaled[0].tobytes() != unscaled[1].tobytes():
        raise BidsafeError("rewritten NIfTI voxel array differs from the input", dst.name)


# ---------------------------------------------------------------------------------------------- names


def check_bids_path(relative: Path, subject: str, session: str, personal: NameChecker) -> None:
    """Refuse any output path that is not `sub-S/ses-T/<datatype>/<BIDS name>` or that holds a personal value.

    The message never repeats the offending name (it may be personal): it says where and why.
    """
    parts = relative.parts
    where = "/".join(parts[:3]) if len(parts) >= 3 else f"sub-{subject}/ses-{session}"
    if len(parts) != 4 or parts[0] != f"sub-{subject}" or parts[1] != f"ses-{session}":
        raise GuardError(f"scrub: an output path is not sub-{subject}/ses-{session}/<datatype>/<file> (name withheld)")
    if parts[2] not in BIDS_DATATYPES:
        raise GuardError(f"scrub: a folder under sub-{subject}/ses-{session} is not a BIDS datatype (name withheld)")
    match = _BIDS_NAME.match(parts[3])
    if match is None or match["sub"] != subject or match["ses"] != session or match["ext"] == ".tsv":
        raise GuardError(f"scrub: a file name in {where} does not follow the BIDS pattern (name withheld)")
    entities = [e.split("-", 1)[0] for e in match["entities"].split("_") if e]
    if any(key not in BIDS_ENTITIES for key in entities) or len(set(entities)) != len(entities):
        raise GuardError(f"scrub: a file name in {where} has an unknown or repeated BIDS entity (name withheld)")
    for part in parts:
        if personal(part):
            raise GuardError(f"scrub: a path component in {where} contains a personal value (name withheld)")


def _session_tree(in_dir: Path) -> tuple[str, str, Path]:
    pairs = [p for p in in_dir.glob("sub-*/ses-*") if p.is_dir()]
    if len(pairs) != 1:
        raise BidsafeError(f"expected exactly one sub-*/ses-* folder, found {len(pairs)}", in_dir)
    session_dir = pairs[0]
    subject, session = session_dir.parent.name[4:], session_dir.name[4:]
    if not re.fullmatch(_LABEL, subject) or not re.fullmatch(_LABEL, session):
        raise GuardError("scrub: subject/session labels must be alphanumeric pseudonyms (name withheld)", in_dir)
    return subject, session, session_dir


def _split_ext(name: str) -> tuple[str, str]:
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


# ---------------------------------------------------------------------------------------------- scans.tsv


@dataclass
class _Series:
    uid: str
    number: int | None
    description: str
    start: datetime | None


def _parse_dicom_datetime(date_text: str | None, time_text: str | None) -> datetime | None:
    date_text = (date_text or "").strip()
    time_text = (time_text or "").strip()
    if not re.fullmatch(r"\d{8}", date_text):
        return None
    digits = re.match(r"(\d{2})(\d{2})?(\d{2})?", time_text.replace(":", ""))
    hh, mm, ss = (int(g) if g else 0 for g in (digits.groups() if digits else (None, None, None)))
    try:
        return datetime(int(date_text[:4]), int(date_text[4:6]), int(date_text[6:8]), hh, mm, min(ss, 59))
    except ValueError:
        return None


def _acquired(ds: pydicom.Dataset) -> datetime | None:
    """When this file was acquired (de-identified, i.e. shifted, dates): first usable of DT / date+time pairs."""
    dt = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if len(dt) >= 8:
        found = _parse_dicom_datetime(dt[:8], dt[8:14])
        if found is not None:
            return found
    for date_key, time_key in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
        ("StudyDate", "StudyTime"),
    ):
        date_value = ds.get(date_key)
        time_value = ds.get("AcquisitionTime") or ds.get(time_key)
        found = _parse_dicom_datetime(str(date_value or ""), str(time_value or ""))
        if found is not None:
            return found
    return None


def index_deid_series(deid_dir: Path) -> list[_Series]:
    """Every series in the de-identified DICOM folder with its number, description and earliest acquisition."""
    series: dict[str, _Series] = {}
    for path in sorted(p for p in deid_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            continue
        number_value = ds.get("SeriesNumber")
        try:
            number = int(number_value) if number_value not in (None, "") else None
        except (TypeError, ValueError):
            number = None
        when = _acquired(ds)
        entry = series.setdefault(uid, _Series(uid, number, str(ds.get("SeriesDescription", "") or ""), when))
        if when is not None and (entry.start is None or when < entry.start):
            entry.start = when
    return list(series.values())


def _sidecar_time(sidecar: Mapping[str, Any]) -> tuple[int, int, int] | None:
    match = re.match(r"(\d{1,2}):(\d{2}):(\d{2})", str(sidecar.get("AcquisitionTime", "")))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def match_series(sidecar: Mapping[str, Any], series: Iterable[_Series]) -> _Series | None:
    """The de-identified series an image came from, using the (unscrubbed) sidecar's SeriesNumber, then
    SeriesDescription and AcquisitionTime to break ties (vendors reuse numbers for derived series)."""
    try:
        number = int(sidecar["SeriesNumber"])
    except (KeyError, TypeError, ValueError):
        return None
    candidates = [s for s in series if s.number == number]
    if len(candidates) > 1:
        description = str(sidecar.get("SeriesDescription", ""))
        same = [s for s in candidates if s.description == description]
        candidates = same or candidates
    if len(candidates) > 1:
        wanted = _sidecar_time(sidecar)
        if wanted is not None:
            timed = [s for s in candidates if s.start is not None]

            def distance(s: _Series) -> int:
                assert s.start is not None
                seconds = s.start.hour * 3600 + s.start.minute * 60 + s.start.second
                return abs(seconds - (wanted[0] * 3600 + wanted[1] * 60 + wanted[2]))

            candidates = sorted(timed, key=distance)[:1] or candidates
    if not candidates:
        return None
    starts = {s.start for s in candidates}
    if len(starts) > 1:  # still ambiguous: the series started at different times, so no single answer
        return None
    return candidates[0]


def format_acq_time(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S") if when is not None else "n/a"


# ---------------------------------------------------------------------------------------------- session


def scrub_session(
    in_dir: Path,
    out_dir: Path,
    *,
    values: PersonalValues,
    deid_dir: Path | None = None,
    allowlist: Path | None = None,
    vocabulary: Vocabulary | None = None,
) -> ScrubReport:
    """Scrub the converted session under `in_dir` (`sub-S/ses-T/<datatype>/...`) into `out_dir` (same layout).

    `vocabulary`: the descriptor vocabulary (default: the shipped one; a site's files via `vocabulary_for`)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    allowed = load_allowlist(allowlist)
    subject, session, session_dir = _session_tree(in_dir)
    report = ScrubReport(subject, session)
    # A converter's own scans.tsv is replaced by ours (shifted acq_time from the de-identified DICOM).
    own_scans = session_dir / f"sub-{subject}_ses-{session}_scans.tsv"
    report.ignored_outside_session = sum(
        1 for p in in_dir.rglob("*") if p.is_file() and (not p.is_relative_to(session_dir) or p == own_scans)
    )
    series = index_deid_series(Path(deid_dir)) if deid_dir is not None else []
    personal = NameChecker(values, vocabulary)
    scans: list[tuple[str, str]] = []

    with atomic_dir(out_dir) as tmp:
        for src in sorted(p for p in session_dir.rglob("*") if p.is_file() and p != own_scans):
            relative = src.relative_to(in_dir)
            check_bids_path(relative, subject, session, personal)
            dst = tmp / relative
            dst.parent.mkdir(parents=True, exist_ok=True)
            entry = FileScrub(relative.as_posix())
            _, ext = _split_ext(src.name)
            if ext == ".json":
                sidecar = _read_sidecar(src, relative)
                kept, entry.dropped_keys, entry.cleaned_fields = scrub_sidecar(sidecar, allowed, values, vocabulary)
                dst.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            elif ext in (".nii.gz", ".nii"):
                entry.header_fields_rewritten = rewrite_nifti_header(src, dst)
                image_in_session = relative.relative_to(f"sub-{subject}/ses-{session}").as_posix()
                sidecar_path = src.with_name(_split_ext(src.name)[0] + ".json")
                sidecar = _read_sidecar(sidecar_path, relative) if sidecar_path.exists() else {}
                found = match_series(sidecar, series)
                if found is None:
                    report.acq_time_missing.append(image_in_session)
                scans.append((image_in_session, format_acq_time(found.start if found else None)))
            elif ext in (".bval", ".bvec"):
                data = src.read_bytes()
                if not _NUMERIC_TEXT.match(data):
                    raise GuardError(f"scrub: {relative.parent.as_posix()}: a {ext} file holds non-numeric text")
                shutil.copyfile(src, dst)
            else:
                raise GuardError(f"scrub: {relative.parent.as_posix()}: unexpected file type (name withheld)")
            report.files.append(entry)
        scans_name = f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}_scans.tsv"
        lines = ["filename\tacq_time"] + [f"{name}\t{when}" for name, when in sorted(scans)]
        (tmp / scans_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        report.scans_tsv = scans_name
    return report


def _read_sidecar(path: Path, relative: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BidsafeError(f"sidecar is not readable JSON ({type(exc).__name__})", relative.parent) from exc
    if not isinstance(data, dict):
        raise BidsafeError("sidecar is not a JSON object", relative.parent)
    return data
