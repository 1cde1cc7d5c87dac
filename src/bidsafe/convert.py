"""Convert stage: one session of (de-identified) DICOM to BIDS with dcm2bids v3 + dcm2niix.

dcm2bids runs in a private scratch folder next to the output; only the `sub-<label>/ses-<label>` tree it
builds is moved into the output (atomically, replacing an earlier conversion of the same session). Its
scaffold files, `tmp_dcm2bids/`, `participants.tsv` and log never reach the dataset: the log lists input
paths, so it goes to the caller's private `log_dir` (or nowhere).

The converter must be the dcm2niix that ships with this environment (a Debian package's older build may
sit elsewhere on PATH): the folder of the running Python interpreter is put first on PATH.

dcm2niix runs first, on its own (with the config's `dcm2niixOptions`), and dcm2bids then only pairs its
output (`--skip_dcm2niix`). In between, sidecars dcm2niix wrote as invalid JSON are repaired: dcm2niix
copies DICOM text bytes into the sidecar unchanged except for escaping `"` and `\\` and writing each byte
>= 0x80 as the Latin-1 character of that byte, so the only bytes that break JSON are C0 controls, and in
DICOM text the only one allowed is ESC, the ISO 2022 code-extension escape (`\\ISO 2022 IR 87`, Japanese,
and the other ISO 2022 character sets). The original bytes of such a string are recovered exactly (each
character back to its Latin-1 byte) and decoded with the character set the series declares. This is done
here rather than by re-encoding text in de-identification: it is lossless, touches only the sidecars that
are broken (every other sidecar is left byte for byte), covers text from any source dcm2niix reads (standard
elements, private and CSA text alike), and leaves de-identification writing kept elements byte for byte.

Nothing lost silently: every series the session received is accounted for in a per-session summary
(`write_summary`): converted to which BIDS images, or left out and why (no mapping matched, ambiguous
mapping, not converted by dcm2niix, withheld or failed in de-identification), from dcm2bids' and
dcm2niix's own outcome and the private de-identification report, parsed here; the summary holds only
counts, series numbers, de-identified series descriptions and reasons.

Incomplete series are withheld (`bidsafe.completeness`): the de-identified headers of each series are
checked for missing images before dcm2niix's output is paired, and the images of a series with a gap are
removed from dcm2niix's output, so dcm2bids never places a volume with its gap closed; the summary names the
series and how many images are missing. dcm2niix's console messages that mean lost data (missing images,
uneven slice spacing, volumes that do not sort) are counted in the summary as fixed phrases (the messages
themselves quote paths and values and stay in the private log).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bidsafe import resources
from bidsafe.bidsnames import NIFTI_EXTENSIONS, is_label
from bidsafe.completeness import check_dicom_dir, lost_data_warnings
from bidsafe.convert_series import (
    SeriesInfo,
    dicom_series,
    read_sidecars,
    repair_sidecars,
    series_key,
    withhold_outputs,
)
from bidsafe.errors import BidsafeError, ConfigError, SessionWithheld
from bidsafe.fsutil import atomic_dir, atomic_write_json

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
NIFTI_SUFFIXES = NIFTI_EXTENSIONS
# dcm2bids 3's own default, for a config that sets no dcm2niixOptions (dcm2bids.utils.utils.DEFAULT; not
# imported: importing dcm2bids checks the network)
DCM2BIDS_DEFAULT_DCM2NIIX_OPTIONS = "-b y -ba y -z y -f '%3s_%f_%p_%t'"


def default_config() -> Path:
    """The shipped dcm2bids v3 configuration (`config/dcm2bids.json`, inside the package when installed)."""
    return resources.path("config/dcm2bids.json")


def tool_bin_dir() -> Path:
    """The folder holding this environment's console scripts (dcm2bids, dcm2niix)."""
    return Path(sys.executable).parent


def _tool(name: str) -> Path:
    candidate = tool_bin_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise BidsafeError(f"{name} not found next to the Python interpreter; run `make setup`", tool_bin_dir())


def load_config(path: Path) -> dict[str, Any]:
    """Read and sanity-check a dcm2bids v3 config (a user's own file is accepted unchanged)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("dcm2bids config not found", path) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"dcm2bids config is not readable JSON ({exc.__class__.__name__})", path) from exc
    descriptions = config.get("descriptions") if isinstance(config, dict) else None
    if not isinstance(descriptions, list) or not descriptions:
        raise ConfigError("dcm2bids config has no 'descriptions' list", path)
    for i, description in enumerate(descriptions):
        if not isinstance(description, dict) or not {"datatype", "suffix", "criteria"} <= description.keys():
            raise ConfigError(f"description #{i + 1} needs 'datatype', 'suffix' and 'criteria'", path)
    checked: dict[str, Any] = config
    return checked


def convert_session(
    dicom_dir: Path,
    out_dir: Path,
    subject: str,
    session: str,
    config: Path | None = None,
    log_dir: Path | None = None,
    summary_json: Path | None = None,
    deid_report: Path | None = None,
    scratch_root: Path | None = None,
) -> list[Path]:
    """Convert the DICOM files under `dicom_dir` into `out_dir/sub-<subject>/ses-<session>/`.

    Returns the NIfTI files written (sorted). Raises BidsafeError naming `dicom_dir` when dcm2bids fails or
    when no series matched the config; nothing is left in `out_dir` then. `log_dir` (private: the log names
    input paths) receives dcm2niix's and dcm2bids' logs and console output; without it they are discarded.
    `summary_json` receives the session's conversion summary (`summarise`); `deid_report` (the private
    de-identification report of the session) adds the series de-identification withheld or failed.
    `scratch_root`: where dcm2niix and dcm2bids work (default: beside `out_dir`); the pipeline passes a private
    folder (their logs name input paths; the sidecars are not yet scrubbed).
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    for kind, label in (("subject", subject), ("session", session)):
        if not is_label(label):
            raise ConfigError(f"{kind} label must be letters and digits only, got {label!r}")
    if not dicom_dir.is_dir():
        raise BidsafeError("DICOM folder not found", dicom_dir)
    config_path = Path(config) if config is not None else default_config()
    options = str(load_config(config_path).get("dcm2niixOptions", DCM2BIDS_DEFAULT_DCM2NIIX_OPTIONS))

    dcm2bids, dcm2niix = _tool("dcm2bids"), _tool("dcm2niix")
    env = _tool_environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(f"sub-{subject}") / f"ses-{session}"
    scratch = _scratch_folder(out_dir, subject, session, scratch_root)
    try:
        niix = scratch / "dcm2niix"
        niix.mkdir()
        converted = _run_dcm2niix(dcm2niix, options, dicom_dir, niix, env)
        series = dicom_series(dicom_dir)
        incomplete = check_dicom_dir(dicom_dir)
        withhold_outputs(niix, set(incomplete))
        repaired = repair_sidecars(niix, {number: info.charset for number, info in series.items()})
        sidecars = read_sidecars(niix)
        completed = _run_dcm2bids(dcm2bids, niix, subject, session, config_path, scratch, env)
        produced = scratch / "bids" / rel
        summary = summarise(series, sidecars, completed.stdout, produced, _deid_files(deid_report),
                            incomplete={number: finding.reason for number, finding in incomplete.items()},
                            warnings=lost_data_warnings(converted.stdout + "\n" + converted.stderr))
        summary["sidecars_repaired"] = len(repaired)  # invalid JSON from dcm2niix, decoded (module notes)
        if log_dir is not None:
            _save_logs(scratch / "bids", converted, completed, Path(log_dir), subject, session, repaired, summary)
        if summary_json is not None:
            atomic_write_json(summary_json, summary)
        _check_converted(completed, produced, summary, config_path.name, subject, session, dicom_dir,
                         logged=log_dir is not None)
        final = _move_session(produced, out_dir / rel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _niftis(final)


def _scratch_folder(out_dir: Path, subject: str, session: str, scratch_root: Path | None) -> Path:
    """A new folder for dcm2niix's and dcm2bids' work (in `scratch_root`, or beside `out_dir`)."""
    # absolute: dcm2bids runs with the scratch folder as its working directory
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convert-sub-{subject}-ses-{session}-",
                                 dir=scratch_root or out_dir.parent)).resolve()


def _move_session(produced: Path, final: Path) -> Path:
    """The session tree dcm2bids built, moved into place atomically (replacing an earlier conversion)."""
    with atomic_dir(final) as staging:
        for child in sorted(produced.iterdir()):
            shutil.move(child, staging / child.name)  # a rename, or a copy from another file system
    return final


def _tool_environment() -> dict[str, str]:
    """The environment dcm2niix and dcm2bids run in: this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(tool_bin_dir()), env.get("PATH", "")])
    # dcm2bids imports matplotlib-free code but still honours HOME for caches: keep them out of the data.
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run_dcm2niix(dcm2niix: Path, options: str, dicom_dir: Path, niix: Path,
                  env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """dcm2niix on the session's DICOM folder into `niix` (its working directory: the scratch folder above it)."""
    return subprocess.run([str(dcm2niix), *shlex.split(options), "-o", str(niix), str(dicom_dir.resolve())],
                          env=env, capture_output=True, text=True, errors="replace", cwd=niix.parent, check=False)


def _run_dcm2bids(dcm2bids: Path, niix: Path, subject: str, session: str, config_path: Path, scratch: Path,
                  env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """dcm2bids on dcm2niix's output (`--skip_dcm2niix`) into `scratch/bids`."""
    command = [
        str(dcm2bids),
        "--dicom_dir", str(niix),
        "--skip_dcm2niix",
        "--participant", subject,
        "--session", session,
        "--config", str(config_path.resolve()),
        "--output_dir", str(scratch / "bids"),
        "--force_dcm2bids",
        "--clobber",
        "--log_level", "INFO",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, errors="replace",
                          cwd=scratch, check=False)


def _check_converted(completed: subprocess.CompletedProcess[str], produced: Path, summary: Mapping[str, Any],
                     config_name: str, subject: str, session: str, dicom_dir: Path, *, logged: bool) -> None:
    """Withhold the session when dcm2bids failed or produced no image (the summary says why)."""
    if completed.returncode != 0:
        raise SessionWithheld(
            "convert:dcm2bids-failed",
            f"dcm2bids failed (exit code {completed.returncode}) for sub-{subject} ses-{session}"
            + (" (see the convert log in the private area)" if logged else ""),
            dicom_dir,
        )
    if not produced.is_dir() or not _niftis(produced):
        raise nothing_converted(summary, config_name, subject, session, dicom_dir)


def nothing_converted(summary: Mapping[str, Any], config_name: str, subject: str, session: str,
                      dicom_dir: Path) -> SessionWithheld:
    """Why a session produced no image, from its conversion summary: an ambiguous mapping (dcm2bids' "several
    pairing") is named as such, apart from series the mapping does not convert at all (localizers, reports,
    CT or RT objects sent by mistake) and series dcm2niix could not read."""
    reasons: Counter[str] = Counter()
    for series in summary.get("series", []):
        for item in series.get("left_out", []):
            reasons[str(item.get("reason", ""))] += 1
    received = int(summary.get("received", 0))
    counted = ", ".join(f"{reason}: {count} series" for reason, count in sorted(reasons.items()))
    where = f"sub-{subject} ses-{session}, mapping {config_name}"
    if reasons.get(AMBIGUOUS):
        return SessionWithheld(
            "convert:ambiguous",
            f"the dcm2bids mapping is ambiguous for this session: images matched several descriptions, so none "
            f"was converted ({where}; {counted})", dicom_dir)
    if not received:
        return SessionWithheld("convert:no-series", f"no DICOM series to convert ({where})", dicom_dir)
    return SessionWithheld(
        "convert:nothing-converted",
        f"none of the {received} series received is converted by the mapping ({where}; {counted})", dicom_dir)


def empty_summary(deid_report: Path | None = None) -> dict[str, Any]:
    """The conversion summary of a session that was not converted: the series de-identification received,
    left out with its reasons (from the private report, reasons only), and nothing converted."""
    return summarise({}, {}, "", Path("/nonexistent"), _deid_files(deid_report))


def _niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _save_logs(
    bids_scratch: Path,
    converted: subprocess.CompletedProcess[str],
    completed: subprocess.CompletedProcess[str],
    log_dir: Path,
    subject: str,
    session: str,
    repaired: list[str],
    summary: Mapping[str, Any],
) -> None:
    """Keep dcm2niix's and dcm2bids' logs and console output (they name input paths: private area only)."""
    from bidsafe.private import ensure_private_dir, private_write_text

    ensure_private_dir(log_dir)
    parts = [f"$ dcm2niix (exit {converted.returncode})\n", "--- stdout ---\n", converted.stdout,
             "--- stderr ---\n", converted.stderr,
             f"--- sidecars repaired (invalid JSON from dcm2niix): {len(repaired)} ---\n"]
    parts += [f"{name}\n" for name in repaired]
    parts += [f"$ dcm2bids (exit {completed.returncode})\n", "--- stdout ---\n", _ANSI.sub("", completed.stdout),
              "--- stderr ---\n", _ANSI.sub("", completed.stderr)]
    for log in sorted((bids_scratch / "tmp_dcm2bids" / "log").glob("*.log")):
        parts += [f"--- {log.name} ---\n", log.read_text(encoding="utf-8", errors="replace")]
    left_out = unmatched_series(completed.stdout)
    parts.append(f"--- series left out by the config: {len(left_out)} ---\n")
    parts += [f"{line}\n" for line in left_out]
    parts.append("--- conversion summary ---\n" + json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    private_write_text(log_dir / f"convert_sub-{subject}_ses-{session}.log", "".join(parts))


def unmatched_series(log_text: str) -> list[str]:
    """Sidecars dcm2bids left unpaired ("No Pairing") or skipped as ambiguous ("Several Pairing")."""
    found: list[str] = []
    for line in _ANSI.sub("", log_text).splitlines():
        match = re.search(r"(No Pairing|Several Pairing)\s+<-\s+(\S+)", line)
        if match:
            entry = f"{match.group(1).lower()}: {match.group(2)}"
            if entry not in found:
                found.append(entry)
    return found


def sidecar_pairing(log_text: str) -> dict[str, str]:
    """dcm2bids' verdict per dcm2niix sidecar (by file stem): the BIDS name it was paired with, or
    "no pairing" / "several pairing"."""
    verdicts: dict[str, str] = {}
    for line in _ANSI.sub("", log_text).splitlines():
        match = re.search(r"\|\s*(.+?)\s+<-\s+(\S+)\s*$", line)
        if match:
            target = match.group(1).strip()
            verdicts[match.group(2)] = target.lower() if target.lower().endswith(" pairing") else target
    return verdicts


# --- the session's summary --------------------------------------------------------------------------------

NO_MAPPING = "no mapping matched (dcm2bids: no pairing)"
AMBIGUOUS = "ambiguous mapping (dcm2bids: several pairing)"
NOT_PLACED = "converted but not placed by dcm2bids"
NOT_CONVERTED = "not converted: dcm2niix wrote no image"
# the reasons `bidsafe.completeness` gives start with "incomplete series: "
_SAFE_REASON = re.compile(r"[^A-Za-z0-9 ,()/.?_=-]")


def _deid_files(report: Path | None) -> list[dict[str, str]]:
    """The de-identification report's file entries, without their input paths (never used here)."""
    if report is None or not Path(report).is_file():
        return []
    files = json.loads(Path(report).read_text(encoding="utf-8")).get("files", [])
    return [{"status": str(f.get("status", "")), "reason": str(f.get("reason", "")),
             "series": str(f.get("series", "") or "")} for f in files]


def _deid_reason(status: str, reason: str) -> str:
    """A de-identification verdict as a fixed phrase: only the text before the first colon (an exception's
    message may quote a value), and only plain characters."""
    head = _SAFE_REASON.sub("", reason.split(":", 1)[0]).strip()[:80]
    verb = "withheld by de-identification" if status == "withheld" else "failed de-identification"
    return f"{verb}: {head}" if head else verb


def summarise(
    series: Mapping[str, SeriesInfo],
    sidecars: Mapping[str, Mapping[str, Any]],
    dcm2bids_log: str,
    produced: Path,
    deid_files: list[dict[str, str]],
    incomplete: Mapping[str, str] | None = None,
    warnings: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per series: received, converted into which images, or left out and why.

    `series`: the de-identified DICOM by series number; `sidecars`: dcm2niix's output by stem; `dcm2bids_log`:
    dcm2bids' console output (its pairing verdicts); `produced`: the session folder dcm2bids built;
    `deid_files`: the de-identification report's entries (status, reason, series); `incomplete`: the series
    withheld as incomplete, with the reason (their dcm2niix output already removed); `warnings`: dcm2niix's
    messages that mean lost data, as fixed phrases with counts.
    """
    rows: dict[str, dict[str, Any]] = {}

    def row(number: str) -> dict[str, Any]:
        info = series.get(number)
        return rows.setdefault(number, {
            "series": number, "description": info.description if info else "", "files": info.files if info else 0,
            "images": [], "left_out": Counter(),
        })

    for number in series:
        row(number)
    for entry in deid_files:
        if entry["status"] in ("withheld", "failed"):
            target = row(series_key(entry["series"]))
            target["left_out"][(_deid_reason(entry["status"], entry["reason"]), "files")] += 1
            target["files"] += 1  # received, though not in the de-identified folder
    placed = _placed_images(produced)
    with_sidecar = _count_unplaced(sidecars, sidecar_pairing(dcm2bids_log), placed, row)
    for number, placed_images in placed.items():
        row(number)["images"] = sorted(placed_images)
    for number, reason in (incomplete or {}).items():
        target = row(number)
        target["left_out"][(reason, "files")] += target["files"]
    for number in series:
        if number not in with_sidecar and not rows[number]["images"] and number not in (incomplete or {}):
            rows[number]["left_out"][(NOT_CONVERTED, "images")] += 1
    listed = _listed(rows)
    converted = sum(1 for r in listed if r["status"] == "converted")
    return {
        "received": len(listed),
        "converted": converted,
        "left_out": len(listed) - converted,
        "partly_left_out": sum(1 for r in listed if r["status"] == "converted" and r["left_out"]),
        "not_dicom_files": sum(1 for f in deid_files if f["status"] == "not_dicom"),
        "incomplete": len(incomplete or {}),
        # dcm2niix messages meaning lost data, fixed phrases: the series withheld as incomplete cause them too
        "converter_warnings": dict(sorted((warnings or {}).items())),
        "series": listed,
    }


def _placed_images(produced: Path) -> dict[str, list[str]]:
    """The images dcm2bids placed in the session folder, by the series number their sidecar names."""
    placed: dict[str, list[str]] = {}
    if produced.is_dir():
        for sidecar_path in sorted(produced.rglob("*.json")):
            try:
                number = series_key(json.loads(sidecar_path.read_bytes()).get("SeriesNumber", ""))
            except (ValueError, AttributeError):
                number = "?"
            images = [p for p in sidecar_path.parent.glob(sidecar_path.name[: -len(".json")] + ".nii*")]
            placed.setdefault(number, []).extend(str(p.relative_to(produced)) for p in images)
    return placed


def _count_unplaced(sidecars: Mapping[str, Mapping[str, Any]], verdicts: Mapping[str, str],
                    placed: Mapping[str, list[str]], row: Callable[[str], dict[str, Any]]) -> set[str]:
    """Count each dcm2niix output dcm2bids did not place, with why, into its series' row; the series numbers
    that had a sidecar."""
    with_sidecar: set[str] = set()
    for stem, sidecar in sidecars.items():
        number = series_key(sidecar.get("SeriesNumber", ""))
        with_sidecar.add(number)
        verdict = verdicts.get(stem, "")
        if verdict == "no pairing":
            row(number)["left_out"][(NO_MAPPING, "images")] += 1
        elif verdict == "several pairing":
            row(number)["left_out"][(AMBIGUOUS, "images")] += 1
        elif not placed.get(number):
            row(number)["left_out"][(NOT_PLACED, "images")] += 1
    return with_sidecar


def _listed(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The summary's series list: by series number (numbers first, in numeric order), reasons sorted."""
    listed = []
    for number in sorted(rows, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
        r = rows[number]
        listed.append({
            "series": r["series"],
            "description": r["description"],
            "files": r["files"],
            "status": "converted" if r["images"] else "left out",
            "images": r["images"],
            "left_out": [
                {"reason": reason, "count": count, "unit": unit}
                for (reason, unit), count in sorted(r["left_out"].items())
            ],
        })
    return listed


def log_conversion_summary(log: Any, summary_json: Path) -> None:
    """One line per left-out series in the stage's log: series number and reason only (the log is not
    private; descriptions stay in the summary file)."""
    summary = json.loads(Path(summary_json).read_text(encoding="utf-8"))
    log.info("series received %d, converted %d, left out %d (%d in part)", summary["received"],
             summary["converted"], summary["left_out"], summary["partly_left_out"])
    for series in summary["series"]:
        for item in series["left_out"]:
            log.warning("series %s %s: %s (%d %s)", series["series"],
                        "left out" if series["status"] != "converted" else "converted in part",
                        item["reason"], item["count"], item["unit"])
    for phrase, count in summary.get("converter_warnings", {}).items():
        log.warning("%s (%d messages; the private convert log has them)", phrase, count)
