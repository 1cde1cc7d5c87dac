"""Convert stage: one session of (de-identified) DICOM to BIDS with dcm2bids v3 + dcm2niix.

dcm2bids runs in a private scratch folder next to the output; only the `sub-<label>/ses-<label>` tree it
builds is moved into the output (atomically, replacing an earlier conversion of the same session). Its
scaffold files, `tmp_dcm2bids/`, `participants.tsv` and log never reach the dataset: the log lists input
paths, so it goes to the caller's private `log_dir` (or nowhere).

The converter must be the dcm2niix that ships with this environment (a Debian package's older build may
sit elsewhere on PATH): the folder of the running Python interpreter is put first on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_dir

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def default_config() -> Path:
    """The shipped dcm2bids v3 configuration (`config/dcm2bids.json` of the repository)."""
    return Path(__file__).resolve().parents[2] / "config" / "dcm2bids.json"


def tool_bin_dir() -> Path:
    """The folder holding this environment's console scripts (dcm2bids, dcm2niix)."""
    return Path(sys.executable).parent


def _tool(name: str) -> Path:
    candidate = tool_bin_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise BidsafeError(f"{name} not found next to the Python interpreter; run `make setup`", tool_bin_dir())


def load_config(path: Path) -> dict:
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
    return config


def convert_session(
    dicom_dir: Path,
    out_dir: Path,
    subject: str,
    session: str,
    config: Path | None = None,
    log_dir: Path | None = None,
) -> list[Path]:
    """Convert the DICOM files under `dicom_dir` into `out_dir/sub-<subject>/ses-<session>/`.

    Returns the NIfTI files written (sorted). Raises BidsafeError naming `dicom_dir` when dcm2bids fails or
    when no series matched the config; nothing is left in `out_dir` then. `log_dir` (private: the log names
    input paths) receives dcm2bids' log and console output; without it they are discarded.
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    for kind, label in (("subject", subject), ("session", session)):
        if not _LABEL.match(label or ""):
            raise ConfigError(f"{kind} label must be letters and digits only, got {label!r}")
    if not dicom_dir.is_dir():
        raise BidsafeError("DICOM folder not found", dicom_dir)
    config_path = Path(config) if config is not None else default_config()
    load_config(config_path)

    dcm2bids = _tool("dcm2bids")
    _tool("dcm2niix")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(tool_bin_dir()), env.get("PATH", "")])
    # dcm2bids imports matplotlib-free code but still honours HOME for caches: keep them out of the data.
    env.setdefault("MPLBACKEND", "Agg")

    out_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(f"sub-{subject}") / f"ses-{session}"
    # absolute: dcm2bids runs with the scratch folder as its working directory
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convert-sub-{subject}-ses-{session}-",
                                    dir=out_dir.parent)).resolve()
    try:
        command = [
            str(dcm2bids),
            "--dicom_dir", str(dicom_dir.resolve()),
            "--participant", subject,
            "--session", session,
            "--config", str(config_path.resolve()),
            "--output_dir", str(scratch / "bids"),
            "--force_dcm2bids",
            "--clobber",
            "--log_level", "INFO",
        ]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace",
                                   cwd=scratch, check=False)
        if log_dir is not None:
            _save_logs(scratch / "bids", completed, Path(log_dir), subject, session)
        if completed.returncode != 0:
            raise BidsafeError(
                f"dcm2bids failed with exit code {completed.returncode} for sub-{subject} ses-{session}"
                + (" (see the convert log in the private area)" if log_dir is not None else ""),
                dicom_dir,
            )
        produced = scratch / "bids" / rel
        if not produced.is_dir() or not _niftis(produced):
            raise BidsafeError(
                f"no series matched the dcm2bids config for sub-{subject} ses-{session} "
                f"(config {config_path.name})",
                dicom_dir,
            )
        final = out_dir / rel
        with atomic_dir(final) as staging:
            for child in sorted(produced.iterdir()):
                os.replace(child, staging / child.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _niftis(final)


def _niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _save_logs(
    bids_scratch: Path, completed: subprocess.CompletedProcess, log_dir: Path, subject: str, session: str
) -> None:
    """Keep dcm2bids' own log and its console output (they name input paths: private area only)."""
    from bidsafe.private import ensure_private_dir, private_write_text

    ensure_private_dir(log_dir)
    parts = [f"$ dcm2bids (exit {completed.returncode})\n", "--- stdout ---\n", _ANSI.sub("", completed.stdout),
             "--- stderr ---\n", _ANSI.sub("", completed.stderr)]
    for log in sorted((bids_scratch / "tmp_dcm2bids" / "log").glob("*.log")):
        parts += [f"--- {log.name} ---\n", log.read_text(encoding="utf-8", errors="replace")]
    left_out = unmatched_series(completed.stdout)
    parts.append(f"--- series left out by the config: {len(left_out)} ---\n")
    parts += [f"{line}\n" for line in left_out]
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
