"""Failure stays with its session: one convention for every per-session stage (deid, convert, scrub, deface, qc).

Each stage writes, beside its declared outputs, a small status file:

    {"status": "included", "stage": "convert"}
    {"status": "withheld", "stage": "convert", "code": "convert:ambiguous", "reason": "<a sentence>"}

When a stage cannot finish a session for a reason that belongs to that session (an expected failure: a
`BidsafeError` that is not a `ConfigError`, a tripped guard, dcm2bids/dcm2niix finding nothing to convert),
it writes its outputs in an empty-but-valid form and a "withheld" status with a reason code and a human
sentence, and the job succeeds. A later stage reads its predecessor's status first: a withheld session is
passed through (empty outputs, the same status, so the first reason is the one reported). The assemble stage
leaves withheld sessions out; the report shows the reason. A configuration error or a programming error
(any other exception) still fails the job loudly: it would fail every session the same way.

Status files hold pseudonymous labels, stage names and fixed sentences only (no paths into the inbox, no
personal value): they are read by the public report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError, SessionWithheld
from bidsafe.fsutil import atomic_write_json

log = logging.getLogger("bidsafe")

INCLUDED = "included"
WITHHELD = "withheld"


def included(stage: str, **facts: Any) -> dict[str, Any]:
    return {"status": INCLUDED, "stage": stage, **facts}


def withheld(stage: str, code: str, reason: str) -> dict[str, Any]:
    return {"status": WITHHELD, "stage": stage, "code": code, "reason": reason}


def is_session_failure(exc: BaseException) -> bool:
    """An expected failure of one session (withhold it) rather than a site-wide one or a bug (fail loudly)."""
    return isinstance(exc, BidsafeError) and not isinstance(exc, ConfigError)


def status_from_error(stage: str, exc: BidsafeError, default_code: str) -> dict[str, Any]:
    """The withheld status for an expected failure: its own code when it has one, its message (without the
    work-area path) as the reason."""
    code = exc.code if isinstance(exc, SessionWithheld) else default_code
    return withheld(stage, code, str(getattr(exc, "message", "") or exc))


def read_status(path: Path | str | None) -> dict[str, Any] | None:
    """A status file's content; None when no path is given (a stage run on its own, e.g. in a test)."""
    if path is None:
        return None
    status = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(status, dict) or status.get("status") not in (INCLUDED, WITHHELD):
        raise BidsafeError("not a session status file", path)
    return status


def upstream_withheld(path: Path | str | None) -> dict[str, Any] | None:
    """The predecessor's status when it withheld the session (to pass through), else None."""
    status = read_status(path)
    return status if status is not None and status["status"] == WITHHELD else None


def write_status(path: Path | str, status: dict[str, Any]) -> dict[str, Any]:
    atomic_write_json(Path(path), status)
    if status["status"] == WITHHELD:
        log.warning("session withheld at %s (%s): %s", status.get("stage"), status.get("code"), status.get("reason"))
    return status


def run_session_stage(
    stage: str,
    status_json: Path | str | None,
    upstream: Path | str | None,
    work: Callable[[], dict[str, Any]],
    write_empty: Callable[[], None],
    default_code: str,
) -> dict[str, Any]:
    """Run one per-session stage by the convention: pass a withheld session through, withhold on an expected
    failure, let anything else raise. `work` returns the included status's facts; `write_empty` writes the
    stage's declared outputs in their empty-but-valid form. Returns the status written."""
    passed = upstream_withheld(upstream)
    if passed is not None:
        write_empty()
        status = passed
    else:
        try:
            status = included(stage, **work())
        except BidsafeError as exc:
            if not is_session_failure(exc):
                raise
            write_empty()
            status = status_from_error(stage, exc, default_code)
    if status_json is not None:
        write_status(status_json, status)
    return status
