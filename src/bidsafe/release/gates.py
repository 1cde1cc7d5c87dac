"""The release gates: four independent checks of an assembled staging tree, each with its own JSON report.

1. `validator`: the official BIDS validator finds 0 errors.
2. `leak_scan`: no personal value harvested from the raw DICOM appears in any file, header or path.
3. `deface`: every image that can show a face (any image under `anat/`, any other whose field of view and voxel
   size can hold a face) has a deface record whose output hash equals the released file's, or a suffix
   exempted in config with a reason. The gate decides this itself, from the released files.
4. `consent`: every subject/session in the tree is marked included by the pseudonymise stage; nothing else.

Each gate fails closed: a missing module, an unreadable input or an empty list of values to look for is a
failed gate, never a pass. Reports name gates, codes, counts and release-relative paths only; never a personal
value, never a private identifier (the private sessions table's study UIDs stay out of them).

Every result carries a fingerprint of the staging tree it checked, so `publish` can refuse gate results that
were computed on a different (or since modified) tree.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe.bidsnames import ANAT, LABEL, from_session, image_suffix, session_of
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_json
from bidsafe.release.manifest import TOOL_DROPPINGS, iter_release_files, sha256_file
from bidsafe.validate import run_validator

VALIDATOR = "validator"
LEAK_SCAN = "leak_scan"
DEFACE = "deface"
CONSENT = "consent"
REQUIRED_GATES: tuple[str, ...] = (VALIDATOR, LEAK_SCAN, DEFACE, CONSENT)

# Cap on the paths listed in one report: a systematic failure on 10,000 files needs a sample, not a novel.
MAX_LISTED = 200

_ENTITY = re.compile(rf"(?:^|_)(sub|ses)-({LABEL})(?=_|\.|$)")


@dataclass
class GateResult:
    """One gate's verdict. `details` is JSON-safe and free of personal values."""

    name: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    checked_utc: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        return cls(
            name=str(data["name"]),
            passed=data["passed"] is True,
            summary=str(data.get("summary", "")),
            details=dict(data.get("details") or {}),
            fingerprint=str(data.get("fingerprint", "")),
            checked_utc=str(data.get("checked_utc", "")),
        )


def write_gate_report(result: GateResult, path: str | Path) -> Path:
    """Write one gate's result as JSON (atomically)."""
    return atomic_write_json(path, result.to_dict())


def read_gate_report(path: str | Path) -> GateResult:
    try:
        return GateResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BidsafeError(f"unreadable gate report ({type(exc).__name__})", path) from exc


def staging_fingerprint(staging: str | Path) -> str:
    """A digest of the tree's file list, sizes and modification times (cheap; changes when any file does)."""
    staging = Path(staging)
    digest = hashlib.sha256()
    for rel in iter_release_files(staging, skip=TOOL_DROPPINGS):
        st = os.stat(staging / rel)
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _result(name: str, passed: bool, summary: str, details: dict[str, Any], fingerprint: str) -> GateResult:
    return GateResult(name, passed, summary, details, fingerprint=fingerprint, checked_utc=_now())


def _capped(items: Iterable[Any]) -> list[Any]:
    return list(items)[:MAX_LISTED]


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value not in (None, ""):
            return value
    return None


def _fail_closed(name: str) -> Callable[[Callable[..., GateResult]], Callable[..., GateResult]]:
    """An expected failure inside a gate (tool missing, unreadable input) is a failed gate with a report,
    not a crash without one."""

    def wrap(gate: Callable[..., GateResult]) -> Callable[..., GateResult]:
        @functools.wraps(gate)
        def run(staging: str | Path, *args: Any, **kwargs: Any) -> GateResult:
            try:
                return gate(staging, *args, **kwargs)
            except BidsafeError as exc:
                try:
                    fingerprint = staging_fingerprint(staging)
                except BidsafeError:
                    fingerprint = ""
                return _result(name, False, f"gate could not run: {exc}", {}, fingerprint)

        return run

    return wrap


# --------------------------------------------------------------------------------------------- validator
@_fail_closed(VALIDATOR)
def gate_validator(staging: str | Path, backend: str = "deno") -> GateResult:
    """Pass when the BIDS validator reports 0 errors (warnings are counted, not failed)."""
    staging = Path(staging)
    fingerprint = staging_fingerprint(staging)
    result = run_validator(staging, backend=backend)
    # Codes and locations only: validator messages can quote file contents ("evidence"), which must not
    # reach a report that is kept outside the private area.
    errors = [_issue_brief(issue) for issue in result.errors]
    warnings = [_issue_brief(issue) for issue in result.warnings]
    error_codes = Counter(e["code"] for e in errors)
    passed = bool(result.valid) and not errors
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(error_codes.items()))
    summary = f"{len(errors)} errors, {len(warnings)} warnings" + (f" ({codes})" if codes else "")
    details = {
        "backend": backend,
        "validator_version": str(getattr(result, "validator_version", "")),
        "errors": len(errors),
        "warnings": len(warnings),
        "error_issues": _capped(errors),
        "warning_codes": dict(sorted(Counter(w["code"] for w in warnings).items())),
    }
    return _result(VALIDATOR, passed, summary, details, fingerprint)


def _issue_brief(issue: Any) -> dict[str, str]:
    code = _get(issue, "code", "key") or "UNKNOWN"
    location = _get(issue, "location", "file", "path") or ""
    brief = {"code": str(code), "location": str(location)}
    sub_code = _get(issue, "sub_code", "subCode")  # names a field (e.g. the missing key), never its value
    if sub_code:
        brief["sub_code"] = str(sub_code)
    return brief


# --------------------------------------------------------------------------------------------- leak scan
@_fail_closed(LEAK_SCAN)
def gate_leak_scan(
    staging: str | Path, values: Any, also: Sequence[str | Path] = (), vocabulary: Any = None, *,
    allow: Any = None, origins: Mapping[Any, Iterable[str]] | None = None, findings: str | Path | None = None,
    memory: str | Path | None = None,
) -> GateResult:
    """Pass when no harvested personal value (in any form the gate renders) occurs in the staging tree or in
    `also`, and the released metadata keeps the structural rules (ASCII only; vocabulary tokens only in
    sidecar string values under sub-*/, when `vocabulary` file paths are given).

    `values`: the raw harvested rows {category, field, value}, as saved in the private area (a path) or in
    memory (any iterable of such rows or objects); the gate renders and matches them itself. An empty
    harvest fails: a scan that looks for nothing proves nothing. `allow`: the site allow-list
    (`release.leak_scan.allow`); hits it allows are counted, not failed. `origins`: value -> session labels.
    `findings`: where to write the private findings file (values, sessions; 0600) - a path in the private
    area, never in work_dir: the report written here names files and fields only. `memory`: a private file
    remembering each scanned file's findings between runs (`leakscan.leak_scan`).
    """
    staging = Path(staging)
    fingerprint = staging_fingerprint(staging)
    # Here, not at the top: the report and publish modules import gates without needing the scanner.
    from bidsafe.release.leakforms import raw_values
    from bidsafe.release.leakscan import leak_scan

    rows = raw_values(values)
    if not rows:
        return _result(LEAK_SCAN, False, "no personal values were harvested: nothing to scan for", {}, fingerprint)
    vocabulary_paths = [Path(p) for p in ([vocabulary] if isinstance(vocabulary, str | Path) else vocabulary or [])]
    also_paths = [Path(p) for p in also]
    report = leak_scan(staging, rows, also=also_paths, vocabulary=vocabulary_paths or None, allow=allow,
                       origins=origins, memory=Path(memory) if memory else None)
    if findings is not None:
        from bidsafe.release.leakscan import write_findings

        write_findings(report, Path(findings))
    hits = [_hit_brief(hit, staging, also_paths) for hit in report.hits]
    allowed = [_hit_brief(hit, staging, also_paths) for hit in report.allowed]
    passed = bool(report.clean) and not hits
    summary = _leak_summary(hits, allowed, getattr(report, "files", None), len(rows), bool(vocabulary_paths))
    details: dict[str, Any] = {
        "values_scanned": len(rows),
        # the scanner's own sanitised folder names when it gives them (a folder name could itself be personal)
        "also": [str(name) for name in getattr(report, "also", [])] or [p.name for p in also_paths],
        "rules": list(report.rules),
        "vocabulary": list(report.vocabulary),
        "vocabulary_words_not_searched": report.vocabulary_words_not_searched,
        "placeholder_values_not_searched": report.placeholder_values_not_searched,
        # the site allow-list: how many entries and which version (sha256 of their canonical JSON), never them
        "allow": dict(report.allow),
        "allowed_count": len(allowed),
        "allowed": _capped(allowed),
        "hits": _capped(hits),
    }
    for counter_name in ("files", "bytes", "seconds", "needles"):
        counted = getattr(report, counter_name, None)
        if isinstance(counted, int | float):
            details[counter_name] = counted
    return _result(LEAK_SCAN, passed, summary, details, fingerprint)


def _leak_summary(hits: Sequence[Mapping[str, str]], allowed: Sequence[Mapping[str, str]], scanned: object,
                  values: int, vocabulary: bool) -> str:
    """The leak gate's one-line summary: counts, rule names and file names only, never a value."""
    where = Counter(h["file"] for h in hits)
    rules = Counter(h.get("category", "") for h in hits if h.get("field") == "-")
    return (
        (f"{len(hits)} hits in {len(where)} files (values not shown)" if hits else "0 hits")
        + (f"; {', '.join(f'{n} {rule}' for rule, n in sorted(rules.items()))}" if rules else "")
        + (f"; {len(allowed)} allowed by the site allow-list" if allowed else "")
        + (f"; {scanned} files scanned for {values} values" if isinstance(scanned, int) else "")
        + ("" if vocabulary else "; no vocabulary given: non-vocabulary rule not applied")
    )


def _hit_brief(hit: Any, staging: Path, also: Sequence[Path]) -> dict[str, str]:
    """File, field and category of a hit; the matched value and its context are deliberately dropped."""
    raw = _get(hit, "path", "file", "location") or ""
    shown = str(raw)
    candidate = Path(raw)
    for root, label in [(staging, ""), *[(p, f"{p.name}:") for p in also]]:
        try:
            shown = label + candidate.relative_to(root).as_posix()
            break
        except ValueError:
            continue
    brief = {"file": shown}
    for name in ("field", "category", "where", "part", "kind"):
        value = _get(hit, name)
        if value is not None:
            brief[name] = str(value)
    return brief


# --------------------------------------------------------------------------------------------- deface
def load_deface_records(records: Sequence[str | Path]) -> tuple[dict[str, set[str]], list[str]]:
    """{dataset-relative path: {sha256, ...}} from the per-session record files, plus unreadable files."""
    recorded: dict[str, set[str]] = {}
    unreadable: list[str] = []
    for records_file in map(Path, records):
        try:
            data = json.loads(records_file.read_text(encoding="utf-8"))
            entries = data.get("records", []) if isinstance(data, Mapping) else data
            for entry in entries:
                rel = _dataset_relative(str(entry["path"]), records_file)
                recorded.setdefault(rel, set()).add(str(entry["sha256"]).lower())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            unreadable.append(_session_name(records_file))
    return recorded, unreadable


def _session_name(path: Path) -> str:
    """`sub-S/ses-T/<name>` when the path names a session, else the bare file name (never an absolute path)."""
    return from_session(path) or path.name


def _dataset_relative(rel: str, records_file: Path) -> str:
    """A record's path relative to the dataset root (`sub-S/ses-T/anat/...`).

    Records may give it relative to the dataset (starts with `sub-`) or to the session folder (`anat/...`);
    the session is then read from the file name's entities or, failing that, from the records file's folder.
    """
    rel = Path(rel).as_posix().lstrip("/")
    if rel.startswith("sub-"):
        return rel
    entities = dict(_ENTITY.findall(Path(rel).name))
    subject, session = entities.get("sub"), entities.get("ses")
    if subject is None:
        subject, session = session_of(records_file) or (None, None)
    if subject is None:
        return rel
    return f"sub-{subject}/ses-{session}/{rel}" if session else f"sub-{subject}/{rel}"


# What can show a face, decided here from the released files alone (never from the deface stage's list):
# - every image in an `anat` folder, whatever its suffix (angio, UNIT1, T1map, ... all show the head);
# - every image whose suffix is that of an `anat` image of the release (a T1w copied anywhere else);
# - every other image, any datatype, 3D or 4D (a 4D image is judged by its volume grid: a series of head
#   volumes shows the face in each), whose field of view can hold a face and whose voxels can draw one:
#   its extents along the three world axes, sorted, at least FACE_FOV_MM (a face from brow to mouth is about
#   80 mm high and 100 mm wide, its relief about 60 mm deep), and no voxel edge longer than FACE_VOXEL_MM.
#   This takes any whole-head volume sampled at 2.5 mm or finer (a 3D field map, a 2 mm multiband BOLD, an
#   sbref) and leaves slabs and ordinary 2D EPI at 3 mm or coarser (BOLD, DWI, SE-EPI field maps).
# - an image whose header cannot be read or has no usable affine (fail closed).
# Each such image needs a deface record with its hash, or its suffix exempted in config (`deface.exempt`,
# {suffix: reason}; the reasons are copied into the report).
FACE_FOV_MM: tuple[float, float, float] = (60.0, 80.0, 100.0)
FACE_VOXEL_MM = 2.5
_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def field_of_view(path: Path) -> tuple[tuple[float, float, float], float] | None:
    """(extents of the voxel grid along the world axes in mm, smallest first; longest voxel edge in mm) from a
    NIfTI header, or None when the header is unreadable or its affine unusable."""
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is one too
            return None
        shape = tuple(int(n) for n in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
        affine = np.asarray(img.affine, dtype=np.float64)
        unit = _UNIT_MM.get(str(img.header.get_xyzt_units()[0]), 1.0)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - nibabel raises many types for a damaged file: unreadable is "unknown"
        return None
    linear = affine[:3, :3] * unit
    if not np.all(np.isfinite(linear)) or abs(float(np.linalg.det(linear))) < 1e-9 or min(shape) < 1:
        return None
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ linear.T
    extents = sorted(float(e) for e in world.max(axis=0) - world.min(axis=0))
    voxel = float(np.sqrt((linear**2).sum(axis=0)).max())
    return (extents[0], extents[1], extents[2]), voxel


def _face_reason(path: Path) -> str | None:
    """Why an image outside `anat` needs defacing by its geometry alone ("face_fov", "geometry_unreadable"),
    or None."""
    geometry = field_of_view(path)
    if geometry is None:
        return "geometry_unreadable"
    extents, voxel = geometry
    # 0.01 mm of slack: headers store float32 (a 2.5 mm voxel may read 2.5000001)
    if voxel <= FACE_VOXEL_MM + 0.01 and all(e >= need - 0.01 for e, need in zip(extents, FACE_FOV_MM, strict=True)):
        return "face_fov"
    return None


@dataclass
class _FaceCheck:
    """What the deface gate found among the released images."""

    images: int = 0
    why: Counter[str] = field(default_factory=Counter)
    exempted: list[dict[str, str]] = field(default_factory=list)
    no_record: list[str] = field(default_factory=list)
    mismatch: list[str] = field(default_factory=list)

    @property
    def needing(self) -> int:
        return sum(n for why, n in self.why.items() if why != "no_face")


def _why_face(staging: Path, rel: str, suffix: str, anat_suffixes: set[str]) -> str | None:
    """Why a released image can show a face ("anat", "anat_suffix", a `_face_reason`), or None."""
    if ANAT in Path(rel).parts[:-1]:
        return "anat"
    if suffix in anat_suffixes:
        return "anat_suffix"
    return _face_reason(staging / rel)


def _check_faces(staging: Path, recorded: Mapping[str, set[str]], exempt: Mapping[str, str]) -> _FaceCheck:
    images = [(rel, image_suffix(rel)) for rel in iter_release_files(staging)]
    named = [(rel, suffix) for rel, suffix in images if suffix is not None]
    anat_suffixes = {suffix for rel, suffix in named if ANAT in Path(rel).parts[:-1]}
    check = _FaceCheck(images=len(named))
    for rel, suffix in named:
        why = _why_face(staging, rel, suffix, anat_suffixes)
        if why is None:
            check.why["no_face"] += 1
            continue
        check.why[why] += 1
        if suffix in exempt:
            check.exempted.append({"file": rel, "suffix": suffix})
            continue
        expected = recorded.get(rel)
        if not expected:
            check.no_record.append(rel)
        elif sha256_file(staging / rel) not in expected:
            check.mismatch.append(rel)
    return check


@_fail_closed(DEFACE)
def gate_deface(
    staging: str | Path, records: Sequence[str | Path], exempt: Mapping[str, str] | None = None
) -> GateResult:
    """Pass when every released image that can show a face (see FACE_FOV_MM above) has a deface record whose
    hash equals the released file's, or a suffix exempted with a reason.

    Every NIfTI in the tree is considered, derivatives included: a T1w copied anywhere still shows a face.
    """
    staging = Path(staging)
    fingerprint = staging_fingerprint(staging)
    exempt = {str(k): str(v).strip() for k, v in (exempt or {}).items()}
    without_reason = sorted(k for k, v in exempt.items() if not v)
    if without_reason:
        return _result(DEFACE, False, f"deface.exempt gives no reason for {', '.join(without_reason)}",
                       {"exempt_without_reason": without_reason}, fingerprint)
    recorded, unreadable = load_deface_records(records)
    found = _check_faces(staging, recorded, exempt)
    passed = not (found.no_record or found.mismatch or unreadable)
    summary = (
        f"{found.needing} of {found.images} images can show a face: {len(found.no_record)} without a deface "
        f"record, {len(found.mismatch)} differ from the defaced output, {len(found.exempted)} exempt by suffix"
        + (f", {len(unreadable)} unreadable record files" if unreadable else "")
    )
    details = {
        "checked": found.needing,
        "images": found.images,
        "why": dict(sorted(found.why.items())),
        "criteria": {"face_fov_mm": list(FACE_FOV_MM), "face_voxel_mm": FACE_VOXEL_MM},
        "exempt": dict(sorted(exempt.items())),
        "exempted": _capped(found.exempted),
        "records_files": len(records),
        "no_record": _capped(found.no_record),
        "hash_mismatch": _capped(found.mismatch),
        "unreadable_records": _capped(unreadable),
    }
    return _result(DEFACE, passed, summary, details, fingerprint)


# --------------------------------------------------------------------------------------------- consent
def read_included_sessions(sessions_tsv: str | Path) -> set[tuple[str, str]]:
    """The (subject, session) pairs the pseudonymise stage marked included (its own reader of sessions.tsv);
    an error names the table by its file name only (it lives in the private area)."""
    from bidsafe.pseudonymise.sessionlists import included_sessions

    path = Path(sessions_tsv)
    try:
        return set(included_sessions(path))
    except BidsafeError as exc:
        raise BidsafeError(exc.message, path.name) from exc
    except (OSError, KeyError) as exc:
        raise BidsafeError(f"sessions table unreadable ({type(exc).__name__})", path.name) from exc


def _strip(label: str | None, prefix: str) -> str:
    label = (label or "").strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def path_entities(rel: str) -> tuple[set[str], set[str]]:
    """Every subject and session label a release-relative path names, in folder names or file entities."""
    subjects: set[str] = set()
    sessions: set[str] = set()
    for part in Path(rel).parts:
        for key, label in _ENTITY.findall(part):
            (subjects if key == "sub" else sessions).add(label)
    return subjects, sessions


_SUBJECT_COLUMNS = ("participant_id", "subject", "sub")
_SESSION_COLUMNS = ("session_id", "session", "ses")


@_fail_closed(CONSENT)
def gate_consent(staging: str | Path, sessions_tsv: str | Path) -> GateResult:
    """Pass when every subject/session the tree names (paths and TSV rows) is marked included; nothing else.

    Included sessions absent from the tree are allowed (a later stage may withhold one) and only counted.
    """
    staging = Path(staging)
    fingerprint = staging_fingerprint(staging)
    try:
        included = read_included_sessions(sessions_tsv)
    except BidsafeError as exc:
        return _result(CONSENT, False, str(exc), {}, fingerprint)
    included_subjects = {subject for subject, _ in included}
    violations: list[dict[str, str]] = []

    def check(subjects: set[str], sessions: set[str], where: str) -> None:
        if len(subjects) > 1:
            violations.append({"file": where, "problem": "names more than one subject"})
        for subject in sorted(subjects):
            if not sessions and subject not in included_subjects:
                violations.append({"file": where, "problem": f"sub-{subject} has no included session"})
            for session in sorted(sessions):
                if (subject, session) not in included:
                    violations.append({"file": where, "problem": f"sub-{subject} ses-{session} is not included"})
        if sessions and not subjects:
            violations.append({"file": where, "problem": "names a session without a subject"})

    present: set[tuple[str, str]] = set()
    files = list(iter_release_files(staging))
    for rel in files:
        subjects, sessions = path_entities(rel)
        check(subjects, sessions, rel)
        present.update((s, t) for s in subjects for t in sessions)
        if rel.endswith(".tsv"):
            for line, row_subjects, row_sessions in _tsv_entities(staging / rel):
                # A per-subject table (sub-S_sessions.tsv) names its subject in the path, not in its rows.
                check(row_subjects or subjects, row_sessions, f"{rel} row {line}")
    passed = not violations
    summary = (
        f"{len(present)} sessions in the release, all included"
        if passed
        else f"{len(violations)} entries name subjects/sessions not marked included"
    )
    details = {
        "sessions_in_release": len(present),
        "files_checked": len(files),
        "included_not_released": len(included - present),
        "violations": _capped(violations),
    }
    return _result(CONSENT, passed, summary, details, fingerprint)


def _tsv_entities(path: Path) -> Iterable[tuple[int, set[str], set[str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = reader.fieldnames or []
        subject_column = next((c for c in _SUBJECT_COLUMNS if c in header), None)
        session_column = next((c for c in _SESSION_COLUMNS if c in header), None)
        if subject_column is None and session_column is None:
            return
        for line, row in enumerate(reader, start=2):
            subjects = {_strip(row.get(subject_column), "sub-")} if subject_column else set()
            sessions = {_strip(row.get(session_column), "ses-")} if session_column else set()
            yield line, {s for s in subjects if s and s != "n/a"}, {s for s in sessions if s and s != "n/a"}


# --------------------------------------------------------------------------------------------- all four
def run_gates(
    staging: str | Path,
    *,
    backend: str = "deno",
    values: Any,
    also: Sequence[str | Path] = (),
    records: Sequence[str | Path],
    exempt: Mapping[str, str] | None = None,
    sessions_tsv: str | Path,
    report_dir: str | Path | None = None,
) -> list[GateResult]:
    """Run the four gates independently (one crashing fails only itself); optionally write their reports."""
    gates: list[tuple[str, Callable[[], GateResult]]] = [
        (VALIDATOR, lambda: gate_validator(staging, backend)),
        (LEAK_SCAN, lambda: gate_leak_scan(staging, values, also)),
        (DEFACE, lambda: gate_deface(staging, records, exempt)),
        (CONSENT, lambda: gate_consent(staging, sessions_tsv)),
    ]
    results: list[GateResult] = []
    for name, run in gates:
        try:
            result = run()
        except BidsafeError as exc:
            result = _result(name, False, f"gate could not run: {exc}", {}, "")
        except Exception as exc:  # any crash is a failed gate; record its type only (messages may quote data)
            result = _result(name, False, f"gate crashed: {type(exc).__name__}", {}, "")
        results.append(result)
        if report_dir is not None:
            write_gate_report(result, Path(report_dir) / f"{name}.json")
    return results
