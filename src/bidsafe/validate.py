"""Run the official BIDS validator on a dataset and turn its JSON into findings a person can read.

Two backends:
- `deno` (default): the schema-based validator from PyPI's `bids-validator-deno` (3.x), run as
  `bids-validator-deno DIR --format json`. It prints `{"issues": {"issues": [...], "codeMessages": {...}},
  "summary": {...}}` on stdout and exits 0 when valid (warnings allowed), 16 when there are errors.
- `node`: npm's legacy `bids-validator` (1.x), run as `bids-validator DIR --json`. It prints
  `{"issues": {"errors": [...], "warnings": [...], "ignored": [...]}, "summary": {...}}` and exits 0 / 1.

The parser recognises either shape whatever the backend, because `bids-validator` on PATH may also be the
newer schema validator. Validity is decided from the parsed errors *and* the exit code: an exit code that
says "errors" with no error parsed is a parse we cannot trust, so it raises instead of passing.

The dataset given here is already de-identified, so validator messages and stderr may be shown as they are.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_write_json

BACKENDS = ("deno", "node")
EXECUTABLES = {"deno": "bids-validator-deno", "node": "bids-validator"}
PYPI_PACKAGE = "bids-validator-deno"

# Exit codes: the schema validator uses 16 for "dataset has errors", the legacy one 1.
_SCHEMA_ERROR_EXIT = 16
_LEGACY_ERROR_EXIT = 1

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION = re.compile(r"v?(\d+\.\d+(?:\.\d+)?\S*)")
_STDERR_LINES = 8
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Finding:
    """One validator issue. `location` is dataset-relative ("/sub-01/anat/...", ":line" for TSV rows);
    empty for dataset-level issues. `sub_code` names the field (e.g. the missing JSON key), `detail` is the
    issue-specific part of the message (e.g. "must be > 0"), when the validator gives one."""

    code: str
    severity: str
    location: str
    message: str
    sub_code: str = ""
    detail: str = ""


@dataclass
class ValidationResult:
    valid: bool
    errors: list[Finding]
    warnings: list[Finding]
    backend: str
    validator_version: str
    exit_code: int = 0
    seconds: float = 0.0
    files: int | None = None  # as counted by the validator's own summary
    subjects: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- running


def find_validator(backend: str) -> Path:
    """The validator executable: next to this Python first (the venv's own), then on PATH."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown validator backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    name = EXECUTABLES[backend]
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    hint = (
        "run `make setup` (it installs the PyPI package bids-validator-deno into .venv)"
        if backend == "deno"
        else "install npm's validator (`npm install -g bids-validator@1`, ~700 MB) or use --backend deno"
    )
    raise BidsafeError(f"BIDS validator `{name}` not found next to {sys.executable} or on PATH; {hint}")


def run_validator(
    bids_dir: Path, backend: str = "deno", timeout: int = 600, executable: str | Path | None = None
) -> ValidationResult:
    """Validate `bids_dir` with the chosen backend and return the parsed findings.

    Raises BidsafeError when the validator is missing, times out, crashes (an exit code that is neither
    "valid" nor "errors") or prints output that cannot be parsed; the message carries the exit code and
    the first lines of its stderr.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise BidsafeError("not a folder: nothing to validate", bids_dir)
    exe = Path(executable) if executable is not None else find_validator(backend)
    proc, seconds = _run(exe, bids_dir, backend, timeout)
    data = _load_json(proc.stdout)
    if data is None or not isinstance(data.get("issues"), dict):
        raise BidsafeError(
            f"BIDS validator ({backend}) gave no parseable JSON report (exit code {proc.returncode})"
            f"{_stderr_excerpt(proc.stderr)}",
            bids_dir,
        )
    shape, findings = parse_report(data)
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]

    _check_exit_code(proc, shape, bool(errors), backend, bids_dir)
    summary = data.get("summary")
    summary_block: dict[str, Any] = summary if isinstance(summary, dict) else {}
    return ValidationResult(
        valid=not errors,  # an error in the report fails even if the exit code said 0
        errors=errors,
        warnings=warnings,
        backend=backend,
        validator_version=validator_version(exe, backend),
        exit_code=proc.returncode,
        seconds=seconds,
        files=summary_block.get("totalFiles"),
        subjects=list(summary_block.get("subjects") or []),
    )


def _run(exe: Path, bids_dir: Path, backend: str, timeout: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """The validator's JSON report run on `bids_dir`, and how many seconds it took."""
    format_args = ["--format", "json"] if backend == "deno" else ["--json"]
    command = [str(exe), str(bids_dir), *format_args]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_quiet_env(), check=False
        )
    except FileNotFoundError:
        raise BidsafeError(f"BIDS validator executable not found: {exe}") from None
    except subprocess.TimeoutExpired:
        raise BidsafeError(f"BIDS validator ({backend}) did not finish within {timeout} s", bids_dir) from None
    return proc, round(time.monotonic() - started, 3)


def _check_exit_code(proc: subprocess.CompletedProcess[str], shape: str, any_error: bool, backend: str,
                     bids_dir: Path) -> None:
    """A crash (an exit code meaning neither "valid" nor "errors") or an "errors" exit with no error parsed
    from the report is an error of the validator run, not a finding."""
    error_exit = _SCHEMA_ERROR_EXIT if shape == "schema" else _LEGACY_ERROR_EXIT
    if proc.returncode not in (0, error_exit):
        raise BidsafeError(
            f"BIDS validator ({backend}) failed with exit code {proc.returncode}{_stderr_excerpt(proc.stderr)}",
            bids_dir,
        )
    if proc.returncode == error_exit and not any_error:
        # Fail closed: the validator says "invalid" and we found nothing, so our parse missed something.
        raise BidsafeError(
            f"BIDS validator ({backend}) exited {proc.returncode} (errors) but no error could be parsed "
            f"from its report{_stderr_excerpt(proc.stderr)}",
            bids_dir,
        )


def validator_version(exe: Path, backend: str) -> str:
    """The validator's version.

    The PyPI build of the schema validator answers `--version` with `git describe` of the folder it is
    installed in, which inside a git checkout (a venv in the repo) is the repo's own commit; so for the
    venv's copy the installed package's version is used instead.
    """
    if backend == "deno" and exe.parent == Path(sys.executable).parent:
        try:
            return importlib.metadata.version(PYPI_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        proc = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, timeout=60, env=_quiet_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    words = _ANSI.sub("", proc.stdout).split()
    if not words:
        return "unknown"
    match = _VERSION.fullmatch(words[-1])
    return match.group(1) if match else f"unknown (reports {words[-1]!r})"


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"  # plain stderr for error messages
    env["DENO_NO_UPDATE_CHECK"] = "1"
    return env


def _load_json(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    for candidate in (text, text[text.find("{") : text.rfind("}") + 1]):
        # The second try tolerates a stray line before or after the JSON (runtime notices).
        if not candidate:
            continue
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return data if isinstance(data, dict) else None
    return None


def _stderr_excerpt(stderr: str) -> str:
    lines = [line.rstrip() for line in _ANSI.sub("", stderr or "").splitlines() if line.strip()]
    if not lines:
        return "; stderr was empty"
    shown = [_shorten(line, 300) for line in lines[:_STDERR_LINES]]
    more = f"\n  ... ({len(lines) - _STDERR_LINES} more stderr lines)" if len(lines) > _STDERR_LINES else ""
    return "; stderr:\n  " + "\n  ".join(shown) + more


# ------------------------------------------------------------------------------------------- parsing


def parse_report(data: dict[str, Any]) -> tuple[str, list[Finding]]:
    """Findings from either JSON shape; returns ("schema" | "legacy", findings). Ignored issues are dropped."""
    issues = data.get("issues")
    if not isinstance(issues, dict):
        raise BidsafeError("validator report has no 'issues' object")
    if isinstance(issues.get("issues"), list):
        return "schema", _parse_schema(issues)
    if isinstance(issues.get("errors"), list) or isinstance(issues.get("warnings"), list):
        return "legacy", _parse_legacy(issues)
    raise BidsafeError(f"validator report has an unknown 'issues' shape (keys: {', '.join(sorted(issues))})")


def _parse_schema(issues: dict[str, Any]) -> list[Finding]:
    """Schema validator (3.x): issues.issues[] with code, subCode, severity, location or affects[],
    issueMessage, line; the general text per code lives in issues.codeMessages."""
    code_messages = issues.get("codeMessages") or {}
    findings = []
    for issue in issues["issues"]:
        severity = str(issue.get("severity", ""))
        if severity not in ("error", "warning"):
            continue
        code = str(issue.get("code", "UNKNOWN"))
        location = issue.get("location") or ", ".join(str(a) for a in issue.get("affects") or [])
        if issue.get("line"):
            location = f"{location}:{issue['line']}"
        issue_message = _first_paragraph(issue.get("issueMessage") or "")
        message = _first_paragraph(code_messages.get(code) or "") or issue_message or code
        # "Field description: ..." paragraphs explain the field in general, not what is wrong here.
        detail = "" if issue_message.startswith("Field description") or issue_message == message else issue_message
        if issue.get("suggestion"):
            detail = "; ".join(filter(None, [detail, f"suggestion: {_one_line(str(issue['suggestion']))}"]))
        findings.append(Finding(code, severity, str(location), message, str(issue.get("subCode") or ""), detail))
    return findings


def _parse_legacy(issues: dict[str, Any]) -> list[Finding]:
    """npm validator (1.x): issues.errors[] / issues.warnings[], each with key, reason and files[] whose
    file.relativePath locates it (file may be null for dataset-level issues)."""
    findings = []
    for group, severity in (("errors", "error"), ("warnings", "warning")):
        for issue in issues.get(group) or []:
            code = str(issue.get("key") or issue.get("code") or "UNKNOWN")
            message = _first_paragraph(issue.get("reason") or "") or code
            files = issue.get("files") or [{}]
            for entry in files:
                entry = entry or {}
                # `file` is null for dataset-level issues and a stack-trace string for INTERNAL ERROR.
                file_info = entry.get("file")
                location = str(file_info.get("relativePath") or "") if isinstance(file_info, dict) else ""
                if entry.get("line"):
                    location = f"{location}:{entry['line']}"
                reason = _first_paragraph(entry.get("reason") or "")
                detail = reason if reason and reason != message else ""
                evidence = str(entry.get("evidence") or "").strip().splitlines()
                if evidence:
                    detail = "; ".join(filter(None, [detail, f"evidence: {_shorten(evidence[0], 120)}"]))
                findings.append(Finding(code, severity, location, message, "", detail))
            extra = int(issue.get("additionalFileCount") or 0)
            if extra:
                findings.append(Finding(code, severity, f"({extra} more files)", message))
    return findings


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_paragraph(text: str) -> str:
    return _one_line(re.split(r"\n\s*\n", str(text).strip(), maxsplit=1)[0]) if text else ""


def _shorten(text: str, limit: int) -> str:
    text = _one_line(text)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut} ..."


# ------------------------------------------------------------------------------------------- summary


def format_finding(finding: Finding) -> str:
    """One line: "location: CODE (subCode): message (detail)"."""
    code = f"{finding.code} ({finding.sub_code})" if finding.sub_code else finding.code
    text = finding.message
    if len(text) > _MESSAGE_CHARS:  # long explanations: their first sentence says what is wrong
        text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    text = _shorten(text, _MESSAGE_CHARS)
    if finding.detail:
        text = f"{text} [{_shorten(finding.detail, 120)}]"
    return f"{finding.location or '(dataset)'}: {code}: {text}"


def summary(result: ValidationResult, max_errors: int = 25, max_warning_codes: int = 10) -> str:
    """A readable report: verdict, each error on its own line (capped), warnings counted per code."""
    verdict = "valid" if result.valid else "INVALID"
    lines = [
        f"BIDS validator ({result.backend} {result.validator_version}): {verdict}, "
        f"{len(result.errors)} errors, {len(result.warnings)} warnings"
    ]
    if result.errors:
        lines.append("errors:")
        lines += [f"  {format_finding(f)}" for f in result.errors[:max_errors]]
        if len(result.errors) > max_errors:
            lines.append(f"  ... and {len(result.errors) - max_errors} more errors")
    if result.warnings:
        counts = Counter(f.code for f in result.warnings).most_common()
        lines.append("warnings (by code):")
        lines += [f"  {code}: {count}" for code, count in counts[:max_warning_codes]]
        if len(counts) > max_warning_codes:
            rest = sum(count for _, count in counts[max_warning_codes:])
            lines.append(f"  ... and {rest} more warnings of {len(counts) - max_warning_codes} other codes")
    return "\n".join(lines)


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe validate DIR [--backend deno|node] [--report FILE.json]`: exit 0 valid, 1 invalid."""
    from bidsafe.progress import Progress

    with Progress("bidsafe validate: validator runs", 1, "done", every_s=0) as meter:
        result = run_validator(Path(args.bids_dir), backend=args.backend)
        meter.advance()
    if args.report:
        atomic_write_json(args.report, result.to_json())
    print(summary(result))
    return 0 if result.valid else 1
