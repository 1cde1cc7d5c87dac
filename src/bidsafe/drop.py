"""Folder drops: a study copied into a watched folder is handed to the inbox once it has been quiet.

A drop folder (a USB export copied over, a share a scanner console writes to) gets the receiver's contract
(issue 12): a study enters the inbox only when complete, through `bidsafe.handoff.hand_over_study` (a new
`inbox/<study_key>/part-NNN/` with its manifest), and files that arrive after a hand-over form the next part.

When is a study complete? Nothing says so: it is *ready* when its files have been quiet for
`drop.quiet_seconds`. Quiet is judged by polling, with no inotify (it does not work on network shares):

- Each poll lists the drop (ingest's walk: no link followed, no special file opened) and reads the files'
  headers (never pixels) to group them by StudyInstanceUID; ingest's index of the drop, kept privately, spares
  re-reading a file whose path, size and mtime did not change (each copy handed over is checked against its
  own header, so a stale entry never names what goes). A study's *listing* is its files' names, sizes, mtimes
  and ctimes; the files that are not readable DICOM (yet) form one more listing, "unsorted".
- A listing that differs from the previous poll's has *changed now*, by this machine's clock (persisted in the
  private state, so `--once` from cron works like the loop). The file times themselves are compared only for
  change: on a share they may be coarse (2 s on FAT, 1 s elsewhere) or come from a server clock that is ahead
  (a time in the future would otherwise hold the study back until that moment), and `cp -p`/rsync keep old
  mtimes (ctime still moves when a file is written or renamed, which is why both are listed). A file time in the
  past but later than the recorded change still counts (the newest of both is used).
- A study is ready when its listing has not changed for `quiet_seconds` and neither has "unsorted": a file
  still being copied may not be readable DICOM yet and may belong to any study, so a changing unreadable file
  holds every study back. The first sight of a study is a change, so readiness always needs two polls at
  least `quiet_seconds` apart.

A ready study's files are copied into a private staging folder (private_dir, never the inbox: a crash mid-copy
must leave nothing ingest could read) and handed over. Only then, and only for files whose size, mtime and
ctime are still what was copied, are the drop's originals removed (unless `drop.keep_originals`). Files handed
over are remembered by a keyed fingerprint (path, size, mtime), so a kept original is never handed over twice,
and a file added later for the same study is handed over as its next part. Files that are not usable image
DICOM (notes, DICOMDIR, non-image objects, truncated or unreadable files, links) and duplicates (an instance
in another file of the drop, or in the inbox already: the same SOP Instance UID, as the receiver counts them)
are never handed over and never removed: they are listed with the reason in a private report
(`private_dir/drop/left-in-drop.tsv`), by count on the console. Folders whose name starts with '.' are not
looked into (ingest's walk skips them: that is where a hand-over is built).

Nothing identifying is printed or logged: studies are named by their keyed study key, never by UID, name
or path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.filelist import escape_name
from bidsafe.private import areas_overlap, ensure_private_dir, private_write_text
from bidsafe.progress import info

log = logging.getLogger(__name__)

DROP_PRIVATE = "drop"  # private_dir/drop: state, staging, the report of files left in the drop
STATE_NAME = "state.json"
REPORT_NAME = "left-in-drop.tsv"
STAGING_PREFIX = "staging-"
UNSORTED = "unsorted"
REASON_IN_INBOX = "duplicate: this SOP instance is in the inbox already (handed over before)"
_STATE_VERSION = 1

HandOver = Callable[[Sequence[Path], Path, str, Mapping[str, object]], Path]


@dataclass(frozen=True)
class DropFile:
    """A regular file of the drop as listed now (relpath '/'-separated, below the drop folder)."""

    relpath: str
    size: int
    mtime_ns: int
    ctime_ns: int
    # from the header, to name the copy in the inbox by keyed hashes (not part of the listing)
    study_uid: str = field(default="", compare=False)
    series_uid: str = field(default="", compare=False)
    sop_uid: str = field(default="", compare=False)

    @property
    def newest_s(self) -> float:
        return max(self.mtime_ns, self.ctime_ns) / 1e9


@dataclass(frozen=True)
class DropSettings:
    folder: Path
    inbox: Path
    private_dir: Path
    quiet_seconds: float
    keep_originals: bool
    poll_seconds: float


@dataclass
class PollResult:
    """What one poll did, as counts and study keys only (printable)."""

    handed: list[tuple[str, Path, int]] = field(default_factory=list)  # (study key, part folder, files)
    waiting: dict[str, float] = field(default_factory=dict)  # study key -> seconds until ready (at the earliest)
    left: int = 0  # files left in the drop and reported privately
    failed: list[str] = field(default_factory=list)  # study keys whose hand-over failed (kept, retried)
    removed: int = 0  # originals removed after their hand-over
    kept: int = 0  # originals kept after their hand-over (keep_originals, or changed since the copy)


# ------------------------------------------------------------------------------------------------ settings


def drop_settings(config: Mapping[str, Any]) -> DropSettings:
    """The `drop:` section of a checked site config, with the folder checked against the data areas."""
    from bidsafe.config import schema_defaults

    drop = {**schema_defaults("drop"), **(config.get("drop") or {})}  # the schema holds the defaults
    if not drop["folder"]:
        raise ConfigError("config: drop.folder is not set: name the folder to watch in the site config's `drop:` "
                          "section (see config/README.md)")
    settings = DropSettings(
        folder=Path(drop["folder"]),
        inbox=Path(config["inbox"]),
        private_dir=Path(config["private_dir"]),
        quiet_seconds=float(drop["quiet_seconds"]),
        keep_originals=bool(drop["keep_originals"]),
        poll_seconds=float(drop["poll_seconds"]),
    )
    check_drop_folder(settings.folder, {key: config[key] for key in ("inbox", "private_dir", "work_dir",
                                                                     "release_dir")})
    return settings


def check_drop_folder(folder: Path, areas: Mapping[str, str | Path]) -> None:
    """Refuse a drop folder that is missing or overlaps a data area (a drop inside the inbox would be ingested
    before it is complete; an area inside the drop would be handed over). The path is not shown: it may name a
    patient's export."""
    if not folder.is_dir():
        raise ConfigError("config: drop.folder does not exist or is not a folder (create it, or fix the path)")
    for name, area in areas.items():
        if areas_overlap(folder, area):
            raise ConfigError(f"config: drop.folder and '{name}' overlap; the drop folder must be a separate folder")


# ------------------------------------------------------------------------------------------------ state


def state_dir(private_dir: Path) -> Path:
    return Path(private_dir) / DROP_PRIVATE


def load_state(private_dir: Path) -> dict[str, Any]:
    """The watcher's memory between polls (private; only keyed digests and times, no names or UIDs)."""
    path = state_dir(private_dir) / STATE_NAME
    state: dict[str, Any]
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        state = {}
    except (OSError, ValueError):
        raise BidsafeError("the drop watcher's state cannot be read; move it aside to start over (every study "
                           "then waits one quiet period again)", path) from None
    if state and state.get("version") != _STATE_VERSION:
        raise BidsafeError("the drop watcher's state has an unknown version", path)
    state.setdefault("version", _STATE_VERSION)
    state.setdefault("listings", {})  # study key or "unsorted" -> {signature, first_seen, changed_at}
    state.setdefault("handed", [])  # fingerprints of files handed over and still in the drop
    return state


def save_state(private_dir: Path, state: Mapping[str, Any]) -> None:
    private_write_text(state_dir(private_dir) / STATE_NAME, json.dumps(state, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ listing


def file_fingerprint(key: bytes, item: DropFile) -> str:
    """A handed-over file, remembered without its name: path, size and mtime under the site key."""
    from bidsafe.keys import keyed_digest

    return keyed_digest(key, "drop-file", f"{escape_name(item.relpath)}\t{item.size}\t{item.mtime_ns}").hex()[:32]


def listing_signature(key: bytes, files: Iterable[DropFile]) -> str:
    """One digest of a listing (names, sizes, mtimes, ctimes): any change of any of them changes it."""
    from bidsafe.keys import keyed_digest

    lines = sorted(f"{escape_name(f.relpath)}\t{f.size}\t{f.mtime_ns}\t{f.ctime_ns}" for f in files)
    return keyed_digest(key, "drop-listing", "\n".join(lines)).hex()[:32]


def in_inbox(inbox: Path, key: bytes, skey: str, item: DropFile) -> bool:
    """Whether this SOP instance of the study is in one of its parts already (handed over from the drop or by
    the receiver: both name an instance by its keyed hash, `bidsafe.handoff`)."""
    from bidsafe.handoff import instance_filename, series_dirname

    name = Path(series_dirname(key, item.series_uid), instance_filename(key, item.sop_uid))
    return any((part / name).exists() for part in (Path(inbox) / skey).glob("part-*"))


def _stat(folder: Path, relpath: str, study_uid: str = "", series_uid: str = "",
          sop_uid: str = "") -> DropFile | None:
    try:
        st = os.lstat(folder / relpath)
    except OSError:  # vanished since the walk: the next poll sees the change
        return None
    return DropFile(relpath, st.st_size, st.st_mtime_ns, st.st_ctime_ns, study_uid, series_uid, sop_uid)


def scan_drop(folder: Path, private: Path | None = None
              ) -> tuple[dict[str, list[DropFile]], list[tuple[DropFile, str]]]:
    """The drop's image DICOM files by StudyInstanceUID, and every other entry with why it is not handed over.

    Ingest's own header read decides (one rule for both): what ingest would quarantine stays in the drop. With
    `private` (the watcher's private folder) ingest's index of the drop is kept there and is the next look's
    cache: a file whose (path, size, mtime) did not change is not opened again.
    """
    from bidsafe.ingest import index_inbox, read_index, read_quarantine, scan_inbox

    if private is None:
        rows, quarantine, _summary = scan_inbox(folder)
    else:
        index, quarantined = private / "index.tsv", private / "quarantine.tsv"
        index_inbox(folder, index, quarantined, cache=index if index.exists() else None)
        rows, quarantine = read_index(index), read_quarantine(quarantined)
    studies: dict[str, list[DropFile]] = {}
    for row in rows:
        item = _stat(folder, row.relpath, row.study_uid, row.series_uid, row.sop_uid)
        if item is not None:
            studies.setdefault(row.study_uid, []).append(item)
    others = []
    for q in quarantine:
        item = _stat(folder, q.relpath) or DropFile(q.relpath, -1, 0, 0)
        others.append((item, q.reason))
    return studies, others


# ------------------------------------------------------------------------------------------------ readiness


def observe(listings: dict[str, Any], name: str, signature: str, newest_s: float, now: float) -> float:
    """Record a listing seen at `now` (this machine's clock) and return when it last changed.

    A new or different signature changed now. A file time later than the recorded change counts too, but only
    when it is not in the future: a share whose clock runs ahead must not hold a study back until then.
    """
    entry = listings.get(name)
    if entry is None or entry["signature"] != signature:
        entry = {"signature": signature, "first_seen": entry["first_seen"] if entry else now, "changed_at": now}
        listings[name] = entry
    if newest_s <= now and newest_s > entry["changed_at"]:
        entry["changed_at"] = newest_s
    return float(entry["changed_at"])


def quiet_left(changed_at: float, now: float, quiet_seconds: float) -> float:
    """Seconds still to wait (0 when quiet long enough). A clock that went back counts as no time passed."""
    return max(0.0, quiet_seconds - max(0.0, now - changed_at))


# ------------------------------------------------------------------------------------------------ one poll


def poll_drop(
    settings: DropSettings,
    key: bytes,
    *,
    now: float | None = None,
    hand_over: HandOver | None = None,
) -> PollResult:
    """Look at the drop once: note what changed, hand over every ready study, write the private report.

    `now` is this machine's clock (time.time() unless given: tests pass it). The caller holds the watcher lock.
    """
    from bidsafe.handoff import hand_over_study, study_key

    hand_over = hand_over or hand_over_study
    now = time.time() if now is None else now
    if not settings.folder.is_dir():
        # an unmounted share looks like this: nothing is forgotten or handed over, the next look tries again
        raise BidsafeError("drop.folder cannot be reached (an unmounted share?); nothing was done")
    private = ensure_private_dir(state_dir(settings.private_dir))
    _remove_stale_staging(private)
    state = load_state(settings.private_dir)
    studies, others = scan_drop(settings.folder, private)

    present = {file_fingerprint(key, f) for files in studies.values() for f in files}
    handed = set(state["handed"]) & present  # forget files no longer in the drop
    result = PollResult()
    pending = _new_files(settings, key, studies, handed, others, study_key)
    listings = _observe_listings(settings, key, state["listings"], pending, others, now, result)
    state["listings"] = listings
    state["handed"] = sorted(handed)
    save_state(settings.private_dir, state)
    _hand_over_quiet(settings, key, pending, listings, state, private, hand_over, result)
    result.left = len(others)
    _write_report(settings.private_dir, others)
    return result


Pending = dict[str, tuple[str, list[DropFile]]]  # study key -> (StudyInstanceUID, files not handed over yet)


def _new_files(settings: DropSettings, key: bytes, studies: Mapping[str, list[DropFile]], handed: set[str],
               others: list[tuple[DropFile, str]], study_key: Callable[[bytes, str], str]) -> Pending:
    """Each study's files not handed over yet; an instance the inbox already holds joins `others`."""
    pending: Pending = {}
    for uid, files in studies.items():
        skey = study_key(key, uid)
        new = []
        for item in files:
            if file_fingerprint(key, item) in handed:
                continue  # a kept original (keep_originals, or a removal that failed): handed over already
            if in_inbox(settings.inbox, key, skey, item):
                others.append((item, REASON_IN_INBOX))  # the same instance again: never a part of its own
                continue
            new.append(item)
        if new:
            pending[skey] = (uid, new)
    return pending


def _observe_listings(settings: DropSettings, key: bytes, previous: Mapping[str, Any], pending: Pending,
                      others: list[tuple[DropFile, str]], now: float, result: PollResult) -> dict[str, Any]:
    """This look's listings (each study's, and the unsorted files'), with when each last changed; a study
    still changing, or waiting for the unsorted files to settle, goes into `result.waiting`."""
    listings: dict[str, Any] = {}
    unsorted = [item for item, _reason in others]
    listings[UNSORTED] = previous.get(UNSORTED)
    unsorted_changed = observe(listings, UNSORTED, listing_signature(key, unsorted),
                               max((f.newest_s for f in unsorted), default=0.0), now)
    unsorted_wait = quiet_left(unsorted_changed, now, settings.quiet_seconds)
    for skey, (_uid, files) in sorted(pending.items()):
        if skey in previous:
            listings[skey] = previous[skey]
        changed = observe(listings, skey, listing_signature(key, files), max(f.newest_s for f in files), now)
        wait = max(quiet_left(changed, now, settings.quiet_seconds), unsorted_wait)
        if wait > 0:
            result.waiting[skey] = wait
    return listings


def _hand_over_quiet(settings: DropSettings, key: bytes, pending: Pending, listings: Mapping[str, Any],
                     state: dict[str, Any], private: Path, hand_over: HandOver, result: PollResult) -> None:
    """Hand over every study that has been quiet long enough; one that fails stays in the drop for the next
    look. Counts go into `result`."""
    for skey, (_uid, files) in sorted(pending.items()):
        if skey in result.waiting:
            continue
        entry = listings[skey]
        info_ = {"source": "drop", "calling_ae": None,
                 "first_receipt": _iso(entry["first_seen"]), "last_receipt": _iso(entry["changed_at"])}
        try:
            part, kept = _hand_over_one(settings, key, skey, files, info_, hand_over, state)
        except (OSError, ValueError, BidsafeError) as exc:
            # the originals stay; the study is tried again at the next poll
            log.error("drop: study %s could not be handed over (%s); its files stay in the drop",
                      skey, _reason(exc))
            (private / "index.tsv").unlink(missing_ok=True)  # the next look reads every header afresh
            result.failed.append(skey)
            continue
        result.handed.append((skey, part, len(files)))
        result.kept += kept
        result.removed += len(files) - kept


def _hand_over_one(settings: DropSettings, key: bytes, skey: str, files: list[DropFile],
                   info_: Mapping[str, object], hand_over: HandOver, state: dict[str, Any]) -> tuple[Path, int]:
    """Copy, hand over, remember, then remove the originals that are unchanged. Returns (part, originals kept)."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=state_dir(settings.private_dir)))
    try:
        copies = _copy_to_staging(settings.folder, files, staging, key)
        part = hand_over(copies, settings.inbox, skey, info_)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Remembered before any original is removed: if this process dies now, no file is handed over twice.
    state["handed"] = sorted(set(state["handed"]) | {file_fingerprint(key, f) for f in files})
    state["listings"].pop(skey, None)  # a later file of this study starts a new listing (its next part)
    save_state(settings.private_dir, state)
    log.debug("drop: study %s handed over as %s (%d files)", skey, part.name, len(files))
    if settings.keep_originals:
        return part, len(files)
    kept = 0
    for item in files:
        if _stat(settings.folder, item.relpath) != item:
            kept += 1  # changed since it was copied: not what was handed over, so it is not ours to remove
            continue
        try:
            os.unlink(settings.folder / item.relpath)
        except OSError:
            kept += 1  # a read-only share: kept, and remembered as handed over
            continue
        _remove_empty_parents(settings.folder, item.relpath)
    return part, kept


def _copy_to_staging(folder: Path, files: Sequence[DropFile], staging: Path, key: bytes) -> list[Path]:
    """Copy each file as `<series hash>/<instance hash>.dcm` (the handoff keeps the last two parts of a name, and
    drop names may be a patient's), refusing one that changed while it was read."""
    from bidsafe.handoff import instance_filename, series_dirname

    copies = []
    for item in sorted(files, key=lambda f: f.relpath):
        target = staging / series_dirname(key, item.series_uid) / instance_filename(key, item.sop_uid)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        source = folder / item.relpath
        with open(source, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        if _stat(folder, item.relpath) != item or target.stat().st_size != item.size:
            raise BidsafeError("a file changed while it was copied; the study waits for the next poll")
        if _uids(target) != (item.study_uid, item.series_uid, item.sop_uid):
            # the index (a cache keyed on path, size and mtime) was stale: what goes is what was read now
            raise BidsafeError("a file is not the instance indexed; the study waits for the next poll")
        copies.append(target)
    return copies


def _uids(path: Path) -> tuple[str, str, str]:
    """The copy's own Study, Series and SOP Instance UIDs (header only)."""
    import pydicom

    from bidsafe.phi import quiet_pydicom

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - whatever it now is, it is not the instance indexed (message may quote it)
        return ("", "", "")
    return (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")))


def _remove_empty_parents(folder: Path, relpath: str) -> None:
    """Remove the folders a removal left empty, up to (never including) the drop folder itself."""
    parts = relpath.split("/")[:-1]
    while parts:
        try:
            os.rmdir(folder.joinpath(*parts))
        except OSError:  # not empty (or not ours to remove): stop
            return
        parts.pop()


def _remove_stale_staging(private: Path) -> None:
    """Staging folders a killed watcher left (the caller holds the watcher lock, so none is in use)."""
    for path in private.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _write_report(private_dir: Path, others: Sequence[tuple[DropFile, str]]) -> None:
    """PRIVATE: every file left in the drop with why (names may be a patient's), replaced at every poll."""
    lines = ["relpath\treason\n"] + [f"{escape_name(item.relpath)}\t{reason}\n"
                                     for item, reason in sorted(others, key=lambda o: o[0].relpath)]
    private_write_text(state_dir(private_dir) / REPORT_NAME, "".join(lines))


def _reason(exc: Exception) -> str:
    """What went wrong, without a path (an OSError's message names the file)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, BidsafeError):
        return exc.message
    return str(exc)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ command


def summary_line(result: PollResult) -> str:
    """Counts and study keys only."""
    parts = [f"{len(result.handed)} studies handed over"]
    parts += [f"{skey} as {part.name} ({n} files)" for skey, part, n in result.handed]
    if result.handed:
        parts.append(f"{result.removed} originals removed, {result.kept} kept")
    if result.waiting:
        soonest = min(result.waiting.values())
        parts.append(f"{len(result.waiting)} waiting for the quiet period (the first in {soonest:.0f} s)")
    if result.failed:
        parts.append(f"{len(result.failed)} failed and stay in the drop")
    if result.left:
        parts.append(f"{result.left} files left in the drop (not image DICOM; see the private report "
                     f"{DROP_PRIVATE}/{REPORT_NAME} in private_dir)")
    return "bidsafe watch-drop: " + "; ".join(parts)


def site_key(private_dir: Path) -> bytes:
    """The pipeline's key (created by the rule every stage shares when the watcher is the first to run)."""
    from bidsafe.keys import load_or_create_key, resolve_key_path
    from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, linkage_lock

    with linkage_lock(private_dir):
        return load_or_create_key(resolve_key_path(private_dir=private_dir),
                                  dependents=[Path(private_dir) / LINKAGE_FILENAME])


def cli_main(args: argparse.Namespace) -> int:
    from bidsafe.config import read_config_file
    from bidsafe.runlock import DROP_WATCH_LOCK, exclusive_lock

    configfile = Path(args.configfile)
    try:
        config = read_config_file(configfile)
        settings = drop_settings(config)
    except ConfigError as exc:
        raise ConfigError(exc.message, configfile) from None
    ensure_private_dir(settings.private_dir)
    key = site_key(settings.private_dir)
    lock = ensure_private_dir(state_dir(settings.private_dir)) / DROP_WATCH_LOCK
    with exclusive_lock(lock, what="another bidsafe watch-drop on this site"):
        while True:
            try:
                result = poll_drop(settings, key)
            except (BidsafeError, OSError) as exc:
                if args.once:
                    raise BidsafeError(f"the look at the drop failed: {_reason(exc)}") from None
                # the loop outlives a share that is briefly away; the next look tries again
                log.error("watch-drop: this look failed (%s); trying again in %d s", _reason(exc),
                          settings.poll_seconds)
            else:
                if args.once or result.handed or result.failed:
                    info(summary_line(result))
                if args.once:
                    return 1 if result.failed else 0
            time.sleep(settings.poll_seconds)


__all__ = ["DropFile", "DropSettings", "PollResult", "check_drop_folder", "drop_settings", "file_fingerprint",
           "listing_signature", "load_state", "observe", "poll_drop", "quiet_left", "scan_drop", "summary_line"]
