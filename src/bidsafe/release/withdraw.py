"""`bidsafe withdraw-from-releases PARTICIPANT`: take a withdrawn participant out of every published version.

A pipeline run withholds a withdrawn participant from the next version (and removes their data from
work_dir and private_dir: bidsafe.withdrawal); the versions published before still hold them. This command
rewrites each version `release_dir/v<N>` that names the participant (by pseudonym, `sub-S`):

- every file under a `sub-S` folder or named `sub-S_...` (images, sidecars, sessions and scans tables, QC);
- their rows in every other TSV (participants.tsv; any table with a cell naming `sub-S`);
- README's participant and session counts (the default text), SHAREABLE.json's session counts;
- a new CHANGES entry `N.0.k DATE` (a revision of release N) saying who was removed and asking holders of
  copies to delete theirs, a new MANIFEST.sha256, and SHAREABLE.json recording the manifest's new hash and
  the withdrawal, so `bidsafe verify` passes on the rewritten version.

With a DataLad dataset beside the versions (`release.datalad`, `release_dir/datalad/`), the rewritten
`latest` is committed there too and the participant's annexed content is dropped from the dataset's whole
history (its tags stay); each rewritten version's CHANGES entry says so (bidsafe.release.datalad_release).

Each version is rebuilt in a temporary sibling (`.v<N>.withdraw.tmp`: unchanged files hard-linked, changed
ones written new, never in place) and swapped in with one atomic exchange of names, under the publish lock,
so a reader or a crash sees either the old version or the new one, never a mix. Leftovers of a crash are
finished or removed by the next call. Copies already downloaded cannot be recalled.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe.bidsnames import is_label
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_write_text
from bidsafe.progress import Progress
from bidsafe.release import datalad_release
from bidsafe.release.assemble import LATEST, link_or_copy, published_versions, released_sessions
from bidsafe.release.manifest import RELEASE_MARKERS, SHAREABLE_NAME, iter_release_files, write_manifest
from bidsafe.release.publish import (  # one publisher or rewriter at a time per release folder
    _fsync_dir,
    _make_read_only,
    publish_lock,
    write_shareable,
)
from bidsafe.withdrawal import label_pattern

log = logging.getLogger("bidsafe")

TMP_SUFFIX = ".withdraw.tmp"
OLD_SUFFIX = ".withdraw.old"
_README_COUNTS = re.compile(r"MRI data of \d+ participants \(\d+ sessions\)")
# Images: binary and large; a label can only be in their names, never looked for inside.
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".png", ".gz")


def participant_label(text: str) -> str:
    """`sub-S` or `S` -> `S`; anything but letters and digits is refused (exit 2)."""
    label = text.strip().removeprefix("sub-")
    if not is_label(label):
        # not echoed: a mistyped argument may be a real name or ID
        raise ConfigError("PARTICIPANT must be a released pseudonym such as sub-ab12cd34 (letters and digits "
                          "after `sub-`)")
    return label


@dataclass
class VersionPlan:
    """What withdrawing one participant does to one version (release-relative paths; pseudonyms only)."""

    version: int
    path: Path
    sessions: list[str] = field(default_factory=list)  # the participant's session labels in this version
    removed: list[str] = field(default_factory=list)  # files dropped
    tables: dict[str, int] = field(default_factory=dict)  # TSV -> rows dropped

    def line(self, subject: str, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        tables = ", ".join(f"{rel} ({n} row{'s' if n != 1 else ''})" for rel, n in sorted(self.tables.items()))
        return (f"v{self.version}: {verb} sub-{subject} ({len(self.sessions)} session"
                f"{'s' if len(self.sessions) != 1 else ''}, {len(self.removed)} files"
                + (f"; rows from {tables}" if tables else "") + "); new CHANGES entry and manifest")


def _named(rel: str, pattern: re.Pattern[str]) -> bool:
    return any(pattern.search(part) for part in Path(rel).parts)


def _filtered_table(text: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """A TSV without the rows that have a cell naming the participant; other lines kept byte for byte."""
    lines = text.splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if not any(
        pattern.search(cell) for cell in line.rstrip("\r\n").split("\t"))]
    return "".join(kept), len(lines) - len(kept)


def plan_version(version_dir: Path, subject: str) -> VersionPlan | None:
    """What to change in one version; None when it does not name the participant."""
    pattern = label_pattern([subject])
    assert pattern is not None
    number = int(version_dir.name[1:])
    plan = VersionPlan(number, version_dir)
    plan.sessions = sorted(t for s, t in released_sessions(version_dir) if s == subject)
    for rel in iter_release_files(version_dir):
        if rel in RELEASE_MARKERS:
            continue
        if _named(rel, pattern):
            plan.removed.append(rel)
        elif rel.endswith(".tsv"):
            _, dropped = _filtered_table((version_dir / rel).read_text(encoding="utf-8"), pattern)
            if dropped:
                plan.tables[rel] = dropped
    return plan if (plan.removed or plan.tables or plan.sessions) else None


def _changes_entry(version: int, previous: str, date: str, subject: str, sessions: list[str],
                   notes: Sequence[str] = ()) -> str:
    """CHANGES with a new top entry `N.0.k DATE`: k = 1 + the highest revision of N recorded so far; `notes`
    (e.g. what the DataLad dataset dropped) are further items of the entry."""
    revisions = [int(m.group(1)) for m in re.finditer(rf"^{version}\.0\.(\d+)\s", previous, re.MULTILINE)]
    label = f"{version}.0.{max(revisions, default=0) + 1}"
    listed = ", ".join(f"sub-{subject}/ses-{t}" for t in sessions) or f"sub-{subject}"
    entry = (f"{label} {date}\n"
             f"  - Participant withdrawn: sub-{subject} removed from this version ({listed}).\n"
             "    Delete any copies of these files you hold.\n"
             + "".join(f"  - {note}\n" for note in notes))
    previous = previous.strip("\n")
    return entry + ("\n" + previous + "\n" if previous else "")


def _shareable(old: dict[str, Any], subject: str, sessions: int, when: str) -> dict[str, Any]:
    """SHAREABLE.json's record less the participant (the manifest fields are filled in after hashing)."""
    record = dict(old)
    profile = record.get("processing_profile")
    if isinstance(profile, dict):
        profile = dict(profile)
        pattern = label_pattern([subject])
        assert pattern is not None
        if isinstance(profile.get("profiles"), list):
            groups = []
            for group in profile["profiles"]:
                kept = [s for s in group.get("sessions", []) if not pattern.search(str(s))]
                if kept:
                    groups.append({**group, "sessions": kept})
            profile["profiles"] = groups
            profile["sessions"] = sum(len(g["sessions"]) for g in groups)
        elif isinstance(profile.get("sessions"), int):
            profile["sessions"] = max(0, profile["sessions"] - sessions)
        record["processing_profile"] = profile
    record["withdrawals"] = [*record.get("withdrawals", []),
                             {"participant": f"sub-{subject}", "sessions": sessions, "removed_utc": when}]
    return record


def _leftover_mentions(root: Path, pattern: re.Pattern[str]) -> list[str]:
    """Files (other than CHANGES, whose entries name the withdrawal) that still name the participant."""
    found = []
    for rel in iter_release_files(root):
        if rel in ("CHANGES", SHAREABLE_NAME) or rel.endswith(_IMAGE_SUFFIXES):
            continue
        if _named(rel, pattern) or pattern.search((root / rel).read_bytes().decode("latin-1")):
            found.append(rel)
    return found


def build_version(plan: VersionPlan, subject: str, tmp: Path, now: datetime, notes: Sequence[str] = ()) -> None:
    """Write the rewritten version into `tmp` (new): unchanged files hard-linked, changed ones written new;
    `notes` go into the new CHANGES entry after the withdrawal line."""
    pattern = label_pattern([subject])
    assert pattern is not None
    src = plan.path
    dropped = set(plan.removed)
    rewritten = {*plan.tables, "CHANGES", "README", *RELEASE_MARKERS}
    tmp.mkdir()
    for rel in iter_release_files(src):
        if rel not in dropped and rel not in rewritten:
            link_or_copy(src / rel, tmp / rel, "hardlink")
    for rel in plan.tables:
        text, _ = _filtered_table((src / rel).read_text(encoding="utf-8"), pattern)
        atomic_write_text(tmp / rel, text)
    remaining = released_sessions(tmp)
    if (src / "README").is_file():
        readme = (src / "README").read_text(encoding="utf-8")
        subjects = {s for s, _ in remaining}
        atomic_write_text(tmp / "README", _README_COUNTS.sub(
            f"MRI data of {len(subjects)} participants ({len(remaining)} sessions)", readme, count=1))
    previous = (src / "CHANGES").read_text(encoding="utf-8") if (src / "CHANGES").is_file() else ""
    atomic_write_text(tmp / "CHANGES", _changes_entry(plan.version, previous, now.strftime("%Y-%m-%d"), subject,
                                                      plan.sessions, notes))
    left = _leftover_mentions(tmp, pattern)
    if left:
        raise BidsafeError(f"v{plan.version}: these files would still name sub-{subject} (not rewritten; remove "
                           f"the participant from them by hand): {', '.join(left)}")
    _make_read_only(tmp)
    _, manifest_sha256, digests = write_manifest(tmp)
    old = json.loads((src / SHAREABLE_NAME).read_text(encoding="utf-8"))
    record = _shareable(old, subject, len(plan.sessions), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    record["manifest"] = {**record.get("manifest", {}), "sha256": manifest_sha256, "files": len(digests),
                          "bytes": sum((tmp / rel).stat().st_size for rel in digests)}
    write_shareable(tmp, record)  # last, as publish does; sealed, so `bidsafe verify` notices an edit
    _fsync_dir(tmp)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in(final: Path, tmp: Path) -> None:
    """Put the complete `tmp` in place of `final`; the old content ends up removed."""
    old = final.with_name(f".{final.name}{OLD_SUFFIX}")
    if _exchange(tmp, final):
        shutil.rmtree(tmp)  # now holds the old version
    else:
        os.rename(final, old)  # a crash here is finished by recover_leftovers
        os.rename(tmp, final)
        shutil.rmtree(old)
    _fsync_dir(final.parent)


def recover_leftovers(release_dir: Path) -> None:
    """Finish or undo what a crashed call left: a complete rewrite whose version is missing is put in place;
    every other temporary or old copy (possibly still holding the participant) is removed."""
    for entry in sorted(release_dir.glob(f".v*{OLD_SUFFIX}")):
        final = release_dir / entry.name[1:].removesuffix(OLD_SUFFIX)
        tmp = release_dir / f".{final.name}{TMP_SUFFIX}"
        if not final.exists():
            if (tmp / SHAREABLE_NAME).is_file():
                os.rename(tmp, final)
            else:
                os.rename(entry, final)  # the rewrite never finished: the version stays as it was
                continue
        shutil.rmtree(entry)
    for entry in sorted(release_dir.glob(f".v*{TMP_SUFFIX}")):
        shutil.rmtree(entry)


def _already_withdrawn(release_dir: Path, subject: str) -> bool:
    for number in published_versions(release_dir):
        path = release_dir / f"v{number}" / SHAREABLE_NAME
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text(encoding="utf-8"))
            if any(w.get("participant") == f"sub-{subject}" for w in record.get("withdrawals", [])
                   if isinstance(w, dict)):
                return True
    return False


def withdraw_from_releases(release_dir: Path, participant: str, *, dry_run: bool = False,
                           now: datetime | None = None) -> list[VersionPlan]:
    """Remove the participant from every published version under `release_dir` (see the module docstring);
    returns what was (or, with `dry_run`, would be) changed, one plan per version touched.

    ConfigError (exit 2) when there is no published version or the participant is in none of them and was
    never withdrawn from one; nothing is changed then."""
    release_dir = Path(release_dir)
    subject = participant_label(participant)
    versions = published_versions(release_dir)
    if not versions:
        raise ConfigError("no published version (v<N> folder) here", release_dir)
    when = now or datetime.now(UTC)
    with publish_lock(release_dir):
        if not dry_run:
            recover_leftovers(release_dir)
        plans = [p for n in versions if (p := plan_version(release_dir / f"v{n}", subject)) is not None]
        if not plans:
            if _already_withdrawn(release_dir, subject):
                if not dry_run:  # finishes the DataLad step of an earlier call that failed after rewriting
                    datalad_release.withdraw_participant(release_dir, subject)
                return []
            raise ConfigError(f"sub-{subject} is in no published version", release_dir)
        if dry_run:
            return plans
        # a DataLad dataset (release.datalad) also loses the participant's annexed content, from its history too
        in_dataset = datalad_release.plan_withdrawal(release_dir, subject)
        notes = [in_dataset.changes_note()] if in_dataset is not None and in_dataset.tags else []
        with Progress("bidsafe withdraw-from-releases: rewriting", len(plans), "versions", every_s=0) as meter:
            for plan in plans:
                tmp = release_dir / f".v{plan.version}{TMP_SUFFIX}"
                try:
                    build_version(plan, subject, tmp, when, notes)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                swap_in(plan.path, tmp)
                log.info("%s", plan.line(subject, dry_run=False))
                meter.advance()
        if in_dataset is not None:
            datalad_release.withdraw_participant(release_dir, subject)
    return plans


def _areas(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(release_dir, private_dir or None) from --release-dir or the site config."""
    if args.release_dir:
        return Path(args.release_dir), None
    from bidsafe.config import read_config_file

    config = read_config_file(args.configfile)
    if not config.get("release_dir"):
        raise ConfigError("the config names no release_dir", args.configfile)
    private = config.get("private_dir")
    return Path(str(config["release_dir"])), Path(str(private)) if private else None


def _warn_unless_marked(private_dir: Path | None, subject: str) -> None:
    """The next run would publish the participant again unless the linkage table marks them withdrawn."""
    from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, linkage_withdrawn

    if private_dir is None or not (private_dir / LINKAGE_FILENAME).is_file():
        return
    if subject not in linkage_withdrawn(private_dir):
        log.warning("sub-%s is not marked withdrawn yet: set their `withdrawn` date in the consent registry, or "
                    "the next run publishes them again", subject)


def _datalad_line(release_dir: Path, plan: datalad_release.DataladWithdrawal, dry_run: bool) -> str:
    tags = ", ".join(f"v{n}" for n in plan.tags)
    if dry_run:
        return (f"DataLad dataset: would drop the {len(plan.keys)} annexed files of sub-{plan.subject} from its "
                f"history (tags {tags} stay)")
    left = sum(datalad_release.copies_left(release_dir, plan.keys).values())
    return (f"DataLad dataset: the {len(plan.keys)} annexed files of sub-{plan.subject} were dropped from its history "
            f"({left} copies left here); tags {tags} stay, without that content")


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe withdraw-from-releases PARTICIPANT (--release-dir DIR | --configfile SITE.yaml) [--dry-run]`."""
    release_dir, private_dir = _areas(args)
    subject = participant_label(args.participant)
    plans = withdraw_from_releases(release_dir, args.participant, dry_run=args.dry_run)
    _warn_unless_marked(private_dir, subject)
    if not plans:
        print(f"withdraw-from-releases: sub-{subject} was already removed from every published version")
    elif args.dry_run:
        for plan in plans:
            print(plan.line(subject, dry_run=True))
        print(f"withdraw-from-releases: dry run, nothing changed ({len(plans)} version(s) would be rewritten)")
    else:
        latest = (release_dir / LATEST).resolve().name if (release_dir / LATEST).exists() else "?"
        print(f"withdraw-from-releases: sub-{subject} removed from {', '.join(f'v{p.version}' for p in plans)} "
              f"(latest is {latest}); each has a new CHANGES entry and manifest. Copies already downloaded cannot "
              "be recalled: tell their holders to delete them.")
    in_dataset = datalad_release.plan_withdrawal(release_dir, subject)
    if in_dataset is not None and in_dataset.tags:
        print(_datalad_line(release_dir, in_dataset, args.dry_run))
    return 0
