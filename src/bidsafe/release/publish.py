"""Publish a gated staging tree as `release_dir/v<N>` and point `release_dir/latest` at it, atomically.

Order of events (each step fails closed; nothing is marked until everything before it succeeded):

1. every required gate passed, on exactly this staging tree (fingerprints match) -- else raise, touch nothing;
2. under an exclusive lock on `release_dir/.publish.lock`, N = 1 + the highest published version;
3. the staging files are hard-linked (or copied across filesystems) into `release_dir/.v<N>.tmp` and made
   read-only; the staging tree itself is left as it was;
4. `MANIFEST.sha256` is written from the files actually in `.v<N>.tmp`, then `SHAREABLE.json` last;
5. `.v<N>.tmp` is renamed to `v<N>` (one rename on one filesystem) and `latest` is replaced by a new symlink
   through `os.replace`.

A failure anywhere removes `.v<N>.tmp` (and a `v<N>` the failure left without a `latest`), so no partial
`v<N>` ever exists and the previous release and `latest` stay as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe import __version__
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_json
from bidsafe.profile import refuse_weaker, summarise_profiles
from bidsafe.release.assemble import (
    LATEST,
    changes_version,
    copy_tree,
    describe_profile,
    next_version,
    published_versions,
    version_label,
)
from bidsafe.release.gates import LEAK_SCAN, REQUIRED_GATES, GateResult, read_gate_report, staging_fingerprint
from bidsafe.release.manifest import (
    MANIFEST_NAME,
    RELEASE_MARKERS,
    SHAREABLE_NAME,
    iter_release_files,
    verify_release,
    write_manifest,
)

log = logging.getLogger("bidsafe")

LOCK_NAME = ".publish.lock"
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_READ_BITS = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
__all__ = ["publish", "verify_release", "check_gates"]


def check_gates(
    staging: Path, gate_results: Sequence[GateResult | str | Path], required: Sequence[str] = REQUIRED_GATES
) -> list[GateResult]:
    """The gate results, loaded and checked: every required gate present, passed, and run on this tree."""
    results = [r if isinstance(r, GateResult) else read_gate_report(r) for r in gate_results]
    names = [r.name for r in results]
    missing = [name for name in required if name not in names]
    failed = [r.name for r in results if not r.passed]
    if missing or failed or not results:
        reasons = []
        if failed:
            reasons.append("failed: " + ", ".join(failed))
        if missing:
            reasons.append("not run: " + ", ".join(missing))
        raise BidsafeError("not published; gates " + "; ".join(reasons or ["none given"]), staging)
    fingerprint = staging_fingerprint(staging)
    stale = [r.name for r in results if r.fingerprint != fingerprint]
    if stale:
        raise BidsafeError(
            "not published; the staging tree changed since these gates ran (rerun them): " + ", ".join(stale),
            staging,
        )
    return results


@contextlib.contextmanager
def _publish_lock(release_dir: Path) -> Iterator[None]:
    """One publisher at a time per release folder (a second run waits, then numbers its version after)."""
    with open(release_dir / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _make_read_only(root: Path) -> None:
    """Published files are 0444: an in-place write through another hard link then fails instead of
    silently changing a release (root ignores this; `bidsafe verify` still catches it)."""
    for rel in iter_release_files(root, skip=()):
        path = root / rel
        mode = stat.S_IMODE(os.stat(path).st_mode)
        os.chmod(path, (mode & ~_WRITE_BITS) | _READ_BITS)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point_latest(release_dir: Path, target_name: str) -> None:
    """Replace `latest` with a relative symlink to `target_name` in one rename."""
    tmp_link = release_dir / f".{LATEST}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(target_name, tmp_link)
    try:
        os.replace(tmp_link, release_dir / LATEST)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        raise


def shareable_record(
    version: int, gates: Sequence[GateResult], profile: str, manifest_sha256: str, digests: dict[str, str], root: Path,
    processing_profile: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of SHAREABLE.json; `processing_profile` is `summarise_profiles` of the sessions' profiles."""
    record: dict[str, Any] = {
        "shareable": True,
        "version": version,
        "version_label": version_label(version),
        "published_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bidsafe_version": __version__,
        "profile": profile,
        "gates": [
            {"name": g.name, "passed": g.passed, "summary": g.summary, "checked_utc": g.checked_utc} for g in gates
        ],
        # The site's leak-scan allow-list: how many reviewed false positives it accepts and which version of it
        # (sha256 of the entries' canonical JSON); the entries stay with the site. None: the gate did not say.
        "leak_scan_allow": _leak_scan_allow(gates),
        "manifest": {
            "file": MANIFEST_NAME,
            "sha256": manifest_sha256,
            "files": len(digests),
            "bytes": sum((root / rel).stat().st_size for rel in digests),
        },
    }
    if processing_profile is not None:
        record["processing_profile"] = dict(processing_profile)
    return record


def _leak_scan_allow(gates: Sequence[GateResult]) -> dict[str, Any] | None:
    for gate in gates:
        allow = gate.details.get("allow") if gate.name == LEAK_SCAN else None
        if isinstance(allow, dict) and {"entries", "sha256"} <= allow.keys():
            allowed = gate.details.get("allowed_count", 0)
            return {"entries": allow["entries"], "sha256": allow["sha256"], "hits_allowed": allowed}
    return None


def _version_to_publish(staging: Path, release_dir: Path, version: int | None) -> int:
    """The N to publish: `version`, else the one the staging tree was assembled for (its CHANGES entry),
    else 1 + the highest published. A staging tree numbered for another N must be reassembled: its CHANGES
    would otherwise lie about the version and miss the entries of releases published since."""
    staged_for = None
    if (staging / "CHANGES").is_file():
        staged_for = changes_version((staging / "CHANGES").read_text(encoding="utf-8"))
    published = published_versions(release_dir)
    highest = published[-1] if published else 0
    number = next_version(release_dir, "auto" if version is None else version)
    if staged_for is not None and version is None and staged_for > highest:
        number = staged_for
    if staged_for is not None and staged_for != number:
        raise BidsafeError(
            f"staging was assembled as version {staged_for} but this would publish version {number} "
            f"(highest published: v{highest}); reassemble it",
            staging,
        )
    return number


def publish(
    staging: Path,
    release_dir: Path,
    gate_results: Sequence[GateResult | str | Path],
    *,
    profile: str | Path,
    version: int | None = None,
    link: str = "hardlink",
    required_gates: Sequence[str] = REQUIRED_GATES,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Publish `staging` as the next version under `release_dir`; returns `release_dir/v<N>`.

    Raises BidsafeError, with the release folder untouched, unless every required gate passed on this tree.
    `profiles` ({`sub-S/ses-T`: {stage: profile}}, see bidsafe.profile) go into SHAREABLE.json; a session
    de-identified with a rule set check-rules rejects refuses the whole release.
    """
    staging = Path(staging)
    release_dir = Path(release_dir)
    if not staging.is_dir():
        raise BidsafeError("staging folder is missing", staging)
    if profiles is not None:
        refuse_weaker(profiles, staging)
    gates = check_gates(staging, gate_results, required_gates)
    for marker in RELEASE_MARKERS:
        if (staging / marker).exists():
            raise BidsafeError(f"staging already holds {marker}; reassemble it", staging)
    profile_text = describe_profile(profile)

    release_dir.mkdir(parents=True, exist_ok=True)
    with _publish_lock(release_dir):
        number = _version_to_publish(staging, release_dir, version)
        final = release_dir / f"v{number}"
        tmp = release_dir / f".v{number}.tmp"
        if final.exists() or final.is_symlink():
            raise BidsafeError(f"v{number} already exists", release_dir)
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crashed earlier attempt, never published
        renamed = False
        try:
            mode = link if _same_filesystem(staging, release_dir) else "copy"
            copy_tree(staging, tmp, mode)
            _make_read_only(tmp)
            _, manifest_sha256, digests = write_manifest(tmp)
            record = shareable_record(
                number, gates, profile_text, manifest_sha256, digests, tmp,
                summarise_profiles(profiles) if profiles is not None else None,
            )
            atomic_write_json(tmp / SHAREABLE_NAME, record)  # last: its presence marks the release
            _fsync_dir(tmp)
            os.rename(tmp, final)
            renamed = True
            _point_latest(release_dir, final.name)
            _fsync_dir(release_dir)
        except BaseException:
            if renamed:
                # v<N> is complete but `latest` did not move: take it back so the failed publish leaves no trace.
                with contextlib.suppress(OSError):
                    os.rename(final, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("published %s: %d files", final.name, record["manifest"]["files"])
    return final


def read_shareable(release: Path) -> dict[str, Any]:
    return json.loads((Path(release) / SHAREABLE_NAME).read_text(encoding="utf-8"))
