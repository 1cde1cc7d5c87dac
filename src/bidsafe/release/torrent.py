"""Torrents of a published version (`bidsafe torrent`): the whole version, and one per configured subset.

Every torrent's folder is named `v<N>` and holds the version's files at their release paths, which is also
the layout of the S3 mirror (`prefix/v<N>/...`, see bidsafe.release.mirror). So a web seed (BEP 19) given as
the public HTTP URL of the mirror folder that holds `v<N>/` serves every file of every torrent, and the
subsets of one version unpack into the same `v<N>` folder side by side.

A subset (`release.torrent.subsets`) selects the files of some BIDS datatypes and/or a range of session
numbers (sessions are numbered 01, 02, ... per participant). Every subset also carries all files outside the
`sub-` folders (README and LICENSE with the data usage agreement, CHANGES, dataset_description.json,
participants.tsv, MANIFEST.sha256, SHAREABLE.json, ...), a participant's own files (`sub-S/sub-S_sessions.tsv`)
when it selects any of their sessions, and the files of a selected session that lie outside any datatype
folder (the scans table). `sha256sum -c --ignore-missing MANIFEST.sha256` checks a subset download.

Piece size: `auto_piece_size` (about 1,500 pieces, 16 KiB to 16 MiB, at least 8 MiB from 4 GiB on), or a
power of two given by the site. The library is torf; the torrent is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe import __version__
from bidsafe.errors import BidsafeError, ConfigError, GuardError
from bidsafe.fsutil import atomic_write_bytes
from bidsafe.release.manifest import (
    MANIFEST_NAME,
    RELEASE_MARKERS,
    parse_manifest,
    resolve_release,
    verify_release,
)
from bidsafe.release.mirror import version_label

log = logging.getLogger("bidsafe")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MIN_PIECE = 16 * KiB  # BEP 3 clients expect at least this
MAX_PIECE = 16 * MiB  # what common clients accept
LARGE_RELEASE = 4 * GiB  # from here on pieces are 8-16 MiB (fewer pieces: a smaller .torrent, less overhead)
LARGE_PIECE = 8 * MiB
TARGET_PIECES = 1500
_SIZE = re.compile(r"^\s*(\d+)\s*(|k|kib|kb|m|mib|mb)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "kib": KiB, "kb": KiB, "m": MiB, "mib": MiB, "mb": MiB}
_SUBSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def auto_piece_size(total: int) -> int:
    """The smallest power of two giving at most TARGET_PIECES pieces, within [16 KiB, 16 MiB], and at least
    8 MiB for a release of 4 GiB or more (1 GB: 1 MiB; 12 GB: 8 MiB; 24 GB and beyond: 16 MiB)."""
    wanted = -(-max(total, 1) // TARGET_PIECES)  # ceiling division
    size = 1 << (wanted - 1).bit_length()
    if total >= LARGE_RELEASE:
        size = max(size, LARGE_PIECE)
    return min(max(size, MIN_PIECE), MAX_PIECE)


def parse_piece_size(value: str | int | None) -> int | None:
    """None for `auto` (or nothing); else bytes from `8MiB`, `4M`, `512k`, `262144`: a power of two in
    [16 KiB, 16 MiB]."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ConfigError(f"piece size {value!r}: give auto or a size such as 8MiB, 4M, 512KiB or 262144")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < MIN_PIECE or size > MAX_PIECE or size & (size - 1):
        raise ConfigError(f"piece size {value!r}: must be a power of two from 16 KiB to 16 MiB")
    return size


@dataclass(frozen=True)
class Subset:
    """Files of some datatypes and/or a session-number range (inclusive); empty means "any"."""

    name: str
    datatypes: tuple[str, ...] = ()
    sessions: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Subset:
        name = str(entry.get("name", ""))
        if not _SUBSET_NAME.match(name):
            raise ConfigError(f"release.torrent.subsets: name {name!r} must be letters, digits, '.', '_' or '-'")
        datatypes = tuple(str(d) for d in entry.get("datatypes") or ())
        sessions = entry.get("sessions")
        span = None
        if sessions is not None:
            if len(sessions) != 2 or int(sessions[0]) > int(sessions[1]):
                raise ConfigError(f"release.torrent.subsets {name}: sessions must be [first, last], first <= last")
            span = (int(sessions[0]), int(sessions[1]))
        if not datatypes and span is None:
            raise ConfigError(f"release.torrent.subsets {name}: give datatypes, sessions or both")
        return cls(name, datatypes, span)

    def _session_selected(self, label: str) -> bool:
        if self.sessions is None:
            return True
        number = label.removeprefix("ses-")
        return number.isdigit() and self.sessions[0] <= int(number) <= self.sessions[1]

    def selects_data(self, subject: str, session: str, datatype: str) -> bool:
        del subject  # every participant: subsets select by datatype and session only
        return self._session_selected(session) and (not self.datatypes or datatype in self.datatypes)


def bids_place(rel: str) -> tuple[str | None, str | None, str | None]:
    """(`sub-S`, `ses-T`, datatype folder) a file lies in, each None when it lies outside one; found anywhere in
    the path, so `derivatives/<pipeline>/sub-S/ses-T/...` is placed like `sub-S/ses-T/...`."""
    parts = rel.split("/")[:-1]
    sub = next((i for i, part in enumerate(parts) if part.startswith("sub-")), None)
    if sub is None:
        return None, None, None
    ses = sub + 1 if sub + 1 < len(parts) and parts[sub + 1].startswith("ses-") else None
    if ses is None:
        return parts[sub], None, None
    return parts[sub], parts[ses], parts[ses + 1] if ses + 1 < len(parts) else None


def subset_files(files: Iterable[str], subset: Subset) -> list[str]:
    """The files of `subset` (see the module docstring), sorted: the data files it selects, the session-level
    files (scans table, QC) of sessions with a selected data file, the participant-level files of participants
    with one, and every file outside the `sub-` folders."""
    places = {rel: bids_place(rel) for rel in files}
    data = {rel for rel, (sub, ses, kind) in places.items()
            if sub and ses and kind and subset.selects_data(sub, ses, kind)}
    sessions = {places[rel][:2] for rel in data}
    subjects = {sub for sub, _ in sessions}
    chosen = set(data)
    for rel, (sub, ses, kind) in places.items():
        if sub is None or (ses is None and sub in subjects) or (ses and not kind and (sub, ses) in sessions):
            chosen.add(rel)
    return sorted(chosen)


def normalise_webseed(url: str) -> str:
    """An http(s) URL of the folder holding `v<N>/`, ending in `/` (BEP 19 then appends `v<N>/path`)."""
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"web seed {url!r}: give the http(s) URL of the mirror folder that holds v<N>/")
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class TorrentWritten:
    path: Path
    name: str  # the subset's name, "" for the whole version
    files: int
    bytes: int
    piece_size: int
    infohash: str


def build_torrent(
    root: Path, rels: Sequence[str], out: Path, *, label: str, webseeds: Sequence[str] = (),
    trackers: Sequence[str] = (), piece_size: int | None = None, comment: str = "", threads: int = 2,
) -> TorrentWritten:
    """Hash `rels` (paths under `root`) into a torrent whose folder is `label`, written to `out` atomically."""
    import torf

    paths = [root / rel for rel in rels]
    total = sum(p.stat().st_size for p in paths)
    if total == 0:
        raise ConfigError("a torrent needs at least one non-empty file", out)
    torrent = torf.Torrent(
        webseeds=[normalise_webseed(u) for u in webseeds] or None, trackers=list(trackers) or None,
        private=False, comment=comment or None, created_by=f"bidsafe {__version__}",
        creation_date=datetime.now(UTC).replace(microsecond=0),
    )
    torrent.path = root
    # The file list is set in the metainfo itself: torf's own selection always drops dot files (.bidsignore is
    # part of a BIDS release and listed in its manifest) and empty files. torf then hashes exactly this list.
    torrent.metainfo["info"]["files"] = [
        {"length": path.stat().st_size, "path": rel.split("/")} for rel, path in sorted(zip(rels, paths, strict=True))
    ]
    torrent.name = label
    torrent.piece_size = piece_size or auto_piece_size(total)
    try:
        torrent.generate(threads=max(1, threads))
        data = torrent.dump()
    except torf.TorfError as exc:
        raise BidsafeError(f"torrent not written: {exc}", out) from None
    atomic_write_bytes(out, data)
    return TorrentWritten(out, "", len(rels), total, torrent.piece_size, torrent.infohash)


def subset_path(out: Path, name: str) -> Path:
    """`OUT-<name>.torrent` beside OUT (`release.torrent` gives `release-anat.torrent`)."""
    suffix = out.suffix or ".torrent"
    return out.with_name(f"{out.stem if out.suffix else out.name}-{name}{suffix}")


def torrent_release(
    release: str | Path, out: str | Path, *, webseeds: Sequence[str] = (), trackers: Sequence[str] = (),
    piece_size: int | None = None, subsets: Sequence[Subset] = (), threads: int = 2,
) -> list[TorrentWritten]:
    """Verify a published version, then write OUT for all of it and `OUT-<name>.torrent` per subset.

    Raises GuardError, writing nothing, when the release fails its own verification, and ConfigError when a
    subset selects no data file or two subsets share a name."""
    webseeds = [normalise_webseed(url) for url in webseeds]  # a bad URL is refused before any reading
    root = resolve_release(release)
    out = Path(out)
    if out.resolve().is_relative_to(root):
        raise ConfigError("write torrents outside the version folder (a file added there fails its verification)",
                          out)
    check = verify_release(root, threads=min(threads, 2))
    if not check.ok:
        raise GuardError("no torrent written: the release fails its own verification\n" + check.summary(), release)
    label = version_label(root)
    listed = parse_manifest((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    every = sorted({*listed} | RELEASE_MARKERS)  # verified: exactly the files present
    names = [s.name for s in subsets]
    if len(set(names)) != len(names):
        raise ConfigError("release.torrent.subsets: two subsets share a name")
    plans: list[tuple[str, list[str], Path]] = [("", every, out)]
    for subset in subsets:
        chosen = subset_files(every, subset)
        if not any(bids_place(rel)[0] for rel in chosen):
            raise ConfigError(f"release.torrent.subsets {subset.name}: selects no participant's file in {label}")
        plans.append((subset.name, chosen, subset_path(out, subset.name)))
    written = []
    for name, rels, path in plans:
        comment = f"{label} of a bidsafe release" + (f", subset {name}" if name else "")
        result = build_torrent(root, rels, path, label=label, webseeds=webseeds, trackers=trackers,
                               piece_size=piece_size, comment=comment, threads=threads)
        written.append(TorrentWritten(result.path, name, result.files, result.bytes, result.piece_size,
                                      result.infohash))
        log.info("wrote %s: %d files, %d pieces of %d KiB", path.name, result.files,
                 -(-result.bytes // result.piece_size), result.piece_size // KiB)
    return written


def torrent_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`release.torrent` of --configfile (schema defaults when none), with the command line's additions."""
    settings: dict[str, Any] = {"webseeds": [], "trackers": [], "piece_size": "auto", "subsets": []}
    if args.configfile:
        from bidsafe.config import read_config_file

        settings.update(read_config_file(args.configfile).get("release", {}).get("torrent", {}))
    return {
        "webseeds": [*settings["webseeds"], *args.webseed],
        "trackers": [*settings["trackers"], *args.tracker],
        "piece_size": parse_piece_size(args.piece_size if args.piece_size is not None else settings["piece_size"]),
        "subsets": [Subset.from_config(entry) for entry in settings["subsets"]],
    }


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe torrent RELEASE OUT.torrent [--webseed URL] [--tracker URL] [--piece-size SIZE] [--configfile]`."""
    if not Path(args.release).is_dir():
        raise ConfigError("not a release folder", args.release)
    settings = torrent_settings(args)
    for written in torrent_release(args.release, args.out, threads=args.threads, **settings):
        what = f"subset {written.name}" if written.name else "whole version"
        print(f"torrent: {written.path} ({what}): {written.files} files, {written.bytes / MiB:.1f} MiB, "
              f"pieces of {written.piece_size // KiB} KiB, infohash {written.infohash}")
    return 0
