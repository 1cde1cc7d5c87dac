"""Assemble the release dataset in a staging folder: included sessions plus the dataset-level files.

The staging tree appears whole or not at all (built in a temporary sibling, then renamed). It is built from
de-identified, scrubbed, defaced session trees and from a fixed list of participant files; nothing else from
the work area is copied, so private lists (inbox paths, study UIDs) cannot slip in by accident.

Release-level configuration lives under `release:` (defaults and documentation of each key in the
workflow's config schema, copied into `RELEASE_DEFAULTS`).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe import __version__
from bidsafe.config import schema_defaults
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from bidsafe.release.changes import version_notes
from bidsafe.release.citation import (
    BIDSIGNORED,
    is_cc0,
    runtime_environment,
    source_datasets,
    write_citation_files,
    writes_citation,
)
from bidsafe.release.manifest import RELEASE_MARKERS, TOOL_DROPPINGS

log = logging.getLogger("bidsafe")

# The spec version the release claims. The bundled validator (bids-validator-deno 3.0, schema for BIDS
# 1.11.1) accepts every 1.x; 1.10.0 is the newest release that other readers (pybids etc.) also know, and
# every feature used here (GeneratedBy, sessions files, .bidsignore) predates it.
BIDS_VERSION = "1.10.0"
QC_PIPELINE = "bidsafe-qc"
LATEST = "latest"

# Public-domain dedications waive every right: they cannot carry a data usage agreement that forbids
# re-identification and passing the data on, so they are refused (see `release_config`) unless the audience is
# `open`: participants who consented to fully open sharing, released CC0 without an agreement.
PUBLIC_DOMAIN_LICENSES = frozenset({"cc0", "cc0-1.0", "pd", "pddl", "pddl-1.0", "unlicense"})

DEFAULT_DATA_USAGE_AGREEMENT = """\
By accessing or using these data you agree to the following terms:

1. You will not attempt to identify, re-identify or contact any participant, by any means, including by
   linking these data with other data, by reconstructing faces or by looking for identifying features.
2. You will not pass these data, or any part of them, on to anyone else (individuals, groups or
   repositories); every user must obtain them, and agree to these terms, through the data provider.
3. If you come across information that might identify a participant, you will stop using the affected
   files, tell the data provider without delay and delete any copy you made of that information.
4. You will keep the data secure, use them only for research, and acknowledge the dataset as requested.
"""

# The defaults of `release:` live in the workflow's config schema (the one place for them); this is a copy.
RELEASE_DEFAULTS: dict[str, Any] = schema_defaults("release")

# What each audience means, in words (`audience`, `k_anonymity`... are read by the consent stage).
AUDIENCES = {
    "named": "named individuals only",
    "members": "members of the centre",
    "public": "external researchers who accept the data usage agreement",
    "open": "anyone, without conditions (a CC0 public-domain dedication)",
}
OPEN = "open"
CC0_LICENSE_TEXT = """\
To the extent possible under law, the data provider has waived all copyright and related or neighboring rights
to this dataset under the Creative Commons CC0 1.0 Universal public domain dedication:
https://creativecommons.org/publicdomain/zero/1.0/legalcode

Every participant whose sessions are included consented to fully open sharing of their de-identified data.
"""

_LABEL = re.compile(r"^[0-9A-Za-z]+$")
_CHANGES_HEAD = re.compile(r"^(\d+)\.0\.0\s+\S+")


@dataclass(frozen=True)
class SessionInput:
    """One included session: `bids_dir` holds `sub-<subject>/ses-<session>/...` (defaced, scrubbed)."""

    subject: str
    session: str
    bids_dir: Path


# --------------------------------------------------------------------------------------------- config
def release_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `release:` settings with defaults filled in and checked.

    Accepts the whole pipeline config (with a `release` mapping) or the `release` mapping itself.
    """
    section = config.get("release") if isinstance(config.get("release"), Mapping) else config
    merged = {**RELEASE_DEFAULTS, **{k: v for k, v in dict(section).items() if v is not None}}
    for key in ("name", "license"):
        if not isinstance(merged[key], str) or not merged[key].strip():
            raise ConfigError(f"config: release.{key} must be a non-empty string")
    if merged.get("audience") == OPEN:
        _check_open(merged)
    elif merged["license"].strip().lower() in PUBLIC_DOMAIN_LICENSES:
        raise ConfigError(
            f"config: release.license '{merged['license']}' waives every right, so it cannot carry the data "
            "usage agreement (no re-identification, no passing on); use a custom identifier such as "
            "'LicenseRef-bidsafe-DUA' (the agreement is written to LICENSE and README)"
        )
    for key in ("authors", "funding", "ethics_approvals", "references_and_links"):
        value = merged[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"config: release.{key} must be a list of non-empty strings")
        merged[key] = list(value)
    changes = merged["changes"]
    merged["changes"] = [changes] if isinstance(changes, str) else list(changes)
    version = merged["version"]
    if not (version == "auto" or (isinstance(version, int) and not isinstance(version, bool) and version >= 1)):
        raise ConfigError("config: release.version must be 'auto' or a positive integer")
    if merged["link"] not in ("hardlink", "copy"):
        raise ConfigError("config: release.link must be 'hardlink' or 'copy'")
    return merged


def _check_open(merged: dict[str, Any]) -> None:
    """An `open` release is CC0 (what OpenNeuro publishes) with no agreement: the licence left at its default
    becomes CC0; any other licence or an agreement is refused."""
    if merged["license"] == RELEASE_DEFAULTS["license"]:
        merged["license"] = "CC0"
    if not is_cc0(merged["license"]):
        raise ConfigError(f"config: release.license '{merged['license']}' with audience 'open': an open release is "
                          "a CC0 dedication without a data usage agreement; use CC0")
    if merged.get("data_usage_agreement"):
        raise ConfigError("config: release.data_usage_agreement is set but audience is 'open': an open release "
                          "carries no agreement (it is CC0)")


def is_open(rc: Mapping[str, Any]) -> bool:
    """True for a CC0 release without a data usage agreement (audience `open`)."""
    return rc.get("audience") == OPEN


def describe_profile(profile: str | Path) -> str:
    """The de-identification rule profile as recorded in a release: file name plus content hash when a file."""
    path = Path(profile)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"{path.name} (sha256:{digest[:16]})"
    return str(profile)


# --------------------------------------------------------------------------------------------- versions
def published_versions(release_dir: str | Path | None) -> list[int]:
    """The N of every `v<N>` folder under `release_dir`, ascending."""
    if release_dir is None or not Path(release_dir).is_dir():
        return []
    found = []
    for entry in Path(release_dir).iterdir():
        match = re.fullmatch(r"v(\d+)", entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append(int(match.group(1)))
    return sorted(found)


def latest_version_dir(release_dir: str | Path | None) -> Path | None:
    """`release_dir/v<N>` of the highest published N, or None. Read this, not the `latest` link: a crash
    between publishing `v<N>` and moving `latest` leaves the link one version behind (publish repairs it)."""
    published = published_versions(release_dir)
    return Path(release_dir) / f"v{published[-1]}" if published and release_dir is not None else None


def next_version(release_dir: str | Path | None, requested: int | str | None = "auto") -> int:
    """1 + the highest published version, or `requested` when it is higher than every published one."""
    published = published_versions(release_dir)
    highest = published[-1] if published else 0
    if requested in (None, "auto"):
        return highest + 1
    if not isinstance(requested, int) or requested <= highest:
        raise BidsafeError(f"release version {requested} is not above the highest published v{highest}", release_dir)
    return requested


def version_label(version: int) -> str:
    """The CHANGES form of release N (CPAN style wants a version number, not `v<N>`)."""
    return f"{version}.0.0"


def changes_version(text: str) -> int | None:
    """N of the newest entry of a bidsafe CHANGES text (`N.0.0 DATE` on its first non-blank line)."""
    for line in text.splitlines():
        if line.strip():
            match = _CHANGES_HEAD.match(line.strip())
            return int(match.group(1)) if match else None
    return None


def changes_text(version: int, date: str, notes: Sequence[str], previous: str = "") -> str:
    """A CHANGES text: the new entry, then every earlier entry carried forward unchanged."""
    lines = [f"{version_label(version)} {date}"]
    for note in notes:
        first, *rest = [part.strip() for part in str(note).strip().splitlines()] or [""]
        lines.append(f"  - {first}")
        lines.extend(f"    {part}" for part in rest)
    entry = "\n".join(lines) + "\n"
    previous = previous.strip("\n")
    return entry + ("\n" + previous + "\n" if previous else "")


_AUTOMATIC_FIRST_NOTE = re.compile(r"^(Initial release|Release contents): \d+ participants, \d+ sessions\.$")


def split_changes(text: str) -> tuple[str, list[str], str]:
    """(header line, notes, earlier entries) of a CHANGES text as `changes_text` writes it: the newest entry
    runs to the first blank line; each note starts with `  - ` and continues on lines indented by 4."""
    lines = text.strip("\n").splitlines()
    if not lines:
        return "", [], ""
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    notes: list[str] = []
    for line in lines[1:end]:
        if line.startswith("  - "):
            notes.append(line[4:])
        elif notes:
            notes[-1] += "\n" + line.strip()
    history = "\n".join(lines[end:]).strip("\n")
    return lines[0].strip(), notes, (history + "\n" if history else "")


def site_notes(notes: Sequence[str]) -> list[str]:
    """The notes of an entry the site wrote (`release.changes`), without the automatic ones that follow them
    (`automatic_notes`: they start with the counts line)."""
    for i, note in enumerate(notes):
        if _AUTOMATIC_FIRST_NOTE.match(note):
            return list(notes[:i])
    return list(notes)


def continue_changes(
    staged: str, version: int, date: str, current: set[tuple[str, str]], previous_changes: str | None,
    previous_sessions: set[tuple[str, str]] | None, automatic: Sequence[str] | None = None,
) -> str:
    """The CHANGES of version `version` when the staged text was written for another version or against
    another previous release (a crash after publishing, two runs sharing release_dir): the site's notes of the
    staged entry kept, the automatic notes recomputed against the previous release (`automatic`, else the
    counts and the sessions added or removed), and the previous release's
    CHANGES carried forward whole, so CHANGES is continued and "Initial release" only ever heads version 1."""
    _, notes, _ = split_changes(staged)
    if automatic is None:
        automatic = automatic_notes(current, previous_sessions)
    return changes_text(version, date, [*site_notes(notes), *automatic], previous_changes or "")


def released_sessions(dataset: str | Path) -> set[tuple[str, str]]:
    """(subject, session) of every `sub-S/ses-T` folder in a dataset."""
    dataset = Path(dataset)
    found = set()
    if dataset.is_dir():
        for sub in dataset.glob("sub-*"):
            if sub.is_dir():
                found.update((sub.name[4:], ses.name[4:]) for ses in sub.glob("ses-*") if ses.is_dir())
    return found


def _session_list(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"sub-{s}/ses-{t}" for s, t in sorted(pairs))


def automatic_notes(current: set[tuple[str, str]], previous: set[tuple[str, str]] | None) -> list[str]:
    """Counts, plus which sessions were added or removed since the previous release (pseudonyms only)."""
    subjects = {s for s, _ in current}
    counts = f"{len(subjects)} participants, {len(current)} sessions."
    if previous is None:
        return [f"Initial release: {counts}"]
    notes = [f"Release contents: {counts}"]
    added, removed = current - previous, previous - current
    if added:
        notes.append(f"Added {len(added)} sessions: {_session_list(added)}.")
    if removed:
        notes.append(f"Removed {len(removed)} sessions (delete any copies you hold): {_session_list(removed)}.")
    if not added and not removed:
        # publish makes a version only when released bytes changed (bidsafe.release.publish): say so
        notes.append("Same sessions as the previous release; some of their files or the dataset files changed.")
    return notes


# --------------------------------------------------------------------------------------------- copying
def link_or_copy(src: Path, dst: Path, mode: str = "hardlink") -> str:
    """Hard-link `src` to `dst` when allowed and on the same filesystem, else copy; returns what was done."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink" and not src.is_symlink():
        try:
            os.link(src, dst)
            return "link"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copy2(src, dst)  # follows a symlink: the release gets the content, never a link
    return "copy"


def copy_tree(src: Path, dst: Path, mode: str = "hardlink", *, keep: Any = None) -> int:
    """Copy every file under `src` into `dst` (same relative paths); `keep(rel)` may veto files."""
    count = 0
    for dirpath, _dirnames, filenames in os.walk(src, followlinks=False):
        for name in sorted(filenames):
            if name in TOOL_DROPPINGS:
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(src)
            if keep is not None and not keep(rel):
                continue
            link_or_copy(path, dst / rel, mode)
            count += 1
    return count


# --------------------------------------------------------------------------------------------- TSVs
def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def _tsv_text(header: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(header), delimiter="\t", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("n/a" if row.get(k) in (None, "") else row[k]) for k in header})
    return out.getvalue()


def _filtered_tsv(src: Path, column: str, keep: set[str], prefix: str) -> str:
    header, rows = _read_tsv(src)
    if column not in header:
        raise BidsafeError(f"lacks the '{column}' column", src.name)
    kept = [row for row in rows if _with_prefix(row.get(column, ""), prefix) in keep]
    return _tsv_text(header, kept)


def _with_prefix(label: str, prefix: str) -> str:
    label = (label or "").strip()
    return label if label.startswith(prefix) else prefix + label


# --------------------------------------------------------------------------------------------- texts
def dataset_description(rc: Mapping[str, Any], versions: Mapping[str, str], profile: str) -> dict[str, Any]:
    """dataset_description.json for the raw release."""
    description: dict[str, Any] = {
        "Name": rc["name"],
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": rc["license"],
    }
    if rc["authors"] and not writes_citation(rc):
        # BIDS: Authors only when there is no CITATION.cff (which then names them)
        description["Authors"] = rc["authors"]
    if rc["how_to_acknowledge"]:
        description["HowToAcknowledge"] = rc["how_to_acknowledge"]
    if rc["funding"]:
        description["Funding"] = rc["funding"]
    if rc["ethics_approvals"]:
        description["EthicsApprovals"] = rc["ethics_approvals"]
    if rc["references_and_links"]:
        description["ReferencesAndLinks"] = rc["references_and_links"]
    if rc["dataset_doi"]:
        description["DatasetDOI"] = rc["dataset_doi"]
    description["GeneratedBy"] = generated_by(versions, profile, runtime_environment())
    if source_datasets(rc):
        description["SourceDatasets"] = source_datasets(rc)
    return description


def generated_by(
    versions: Mapping[str, str], profile: str, environment: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """bidsafe first (with the rule profile and where it ran: `runtime_environment()`, a BIDS `Container` or
    the Python environment in words), then every tool version it was given, by name."""
    bidsafe: dict[str, Any] = {
        "Name": "bidsafe",
        "Version": str(versions.get("bidsafe", __version__)),
        "Description": "De-identified DICOM headers, converted, scrubbed sidecars, defaced anatomical "
        f"images and gated the release. De-identification rule profile: {profile}.",
    }
    environment = environment or {}
    if environment.get("Container"):
        bidsafe["Container"] = dict(environment["Container"])
    elif environment.get("Environment"):
        bidsafe["Description"] += f" Ran in a {environment['Environment']}."
    entries: list[dict[str, Any]] = [bidsafe]
    for name in sorted(versions, key=str.lower):
        if name != "bidsafe" and versions[name]:
            entries.append({"Name": name, "Version": str(versions[name])})
    return entries


def data_usage_agreement(rc: Mapping[str, Any]) -> str:
    if is_open(rc):
        return ""
    text = rc.get("data_usage_agreement") or DEFAULT_DATA_USAGE_AGREEMENT
    return text.strip() + "\n"


def readme_text(rc: Mapping[str, Any], n_subjects: int, n_sessions: int, profile: str) -> str:
    """README: the configured body (or a default) and, always, the data usage agreement (an open release: the
    CC0 dedication instead)."""
    agreement = data_usage_agreement(rc)
    audience = AUDIENCES.get(str(rc.get("audience", "")), "as configured")
    body = rc.get("readme")
    if not body:
        body = (
            f"# {rc['name']}\n\n"
            f"MRI data of {n_subjects} participants ({n_sessions} sessions) in BIDS format, prepared for sharing "
            "with bidsafe.\n\n"
            "## How these data were prepared\n\n"
            f"- Only sessions of participants whose consent covers this release's audience ({audience}) are "
            "included.\n"
            "- Subject and session labels are pseudonyms; the key linking them to people is not shared.\n"
            f"- DICOM headers were de-identified (rule profile: {profile}) before conversion; dates are "
            "shifted; sidecar fields pass an allow-list.\n"
            "- Faces were removed from every anatomical image.\n"
            "- The release passed the BIDS validator, a scan for every personal value found in the source "
            "headers, a deface check and a consent check before it was published.\n"
            "- Image quality metrics are in derivatives/bidsafe-qc.\n\n"
            "## Integrity\n\n"
            "MANIFEST.sha256 lists every file's SHA-256: check a download with `sha256sum -c MANIFEST.sha256` "
            "or `bidsafe verify`. SHAREABLE.json records the version, the gates passed and the manifest's hash.\n"
        )
    body = body.rstrip() + "\n"
    if is_open(rc):
        return body + "\n## Licence\n\nCC0 1.0 Universal (public domain dedication); see LICENSE.\n"
    if agreement.strip() not in body:
        body += "\n## Data usage agreement\n\n" + agreement
    return body


def license_text(rc: Mapping[str, Any]) -> str:
    """LICENSE must correspond to the License field: name it, then the agreement that is the licence."""
    if is_open(rc):
        return f"License: {rc['license']}\n\n" + CC0_LICENSE_TEXT
    return (
        f"License: {rc['license']}\n\n"
        "These data are made available only under the following data usage agreement.\n\n" + data_usage_agreement(rc)
    )


BIDSIGNORE = "\n".join(sorted(RELEASE_MARKERS | BIDSIGNORED)) + "\n"


# --------------------------------------------------------------------------------------------- assemble
def assemble_release(
    staging: Path,
    *,
    sessions: Sequence[SessionInput],
    participants_dir: Path,
    qc_dirs: Sequence[Path],
    config: Mapping[str, Any],
    versions: Mapping[str, str],
    release_dir: Path | None = None,
    profile: str | Path | None = None,
    now: datetime | None = None,
    withheld: Mapping[tuple[str, str], str] | None = None,
) -> Path:
    """Build the release dataset in `staging` (replaced whole) and return it.

    `release_dir` (or `config["release_dir"]`) is read to number this version and carry CHANGES forward;
    `profile` (or `config["rules"]`/`config["profile"]`) names the de-identification rule profile; `withheld`
    ({(subject, session): reason code}) tells CHANGES which sessions left because their participant withdrew.
    """
    staging = Path(staging)
    rc = release_config(config)
    if release_dir is None and config.get("release_dir"):
        release_dir = Path(config["release_dir"])
    if profile is None:
        profile = config.get("profile") or config.get("rules") or (config.get("deid") or {}).get("rules")
    if not profile:
        raise ConfigError("assemble: the de-identification rule profile is not known (pass profile=...)")
    profile_text = describe_profile(profile)
    when = now or datetime.now(UTC)

    wanted = _check_sessions(sessions)
    subjects = sorted({s.subject for s in wanted})
    version = next_version(release_dir, rc["version"])
    latest = latest_version_dir(release_dir)
    previous_changes = ""
    if latest is not None and not latest.is_dir():
        latest = None
    if latest is not None and (latest / "CHANGES").is_file():
        previous_changes = (latest / "CHANGES").read_text(encoding="utf-8")
    current = {(s.subject, s.session) for s in wanted}
    date = when.strftime("%Y-%m-%d")

    with atomic_dir(staging) as tmp:
        links = 0
        for item in wanted:
            src = Path(item.bids_dir) / f"sub-{item.subject}" / f"ses-{item.session}"
            if not src.is_dir():
                raise BidsafeError(f"holds no sub-{item.subject}/ses-{item.session} folder", item.bids_dir)
            links += copy_tree(src, tmp / f"sub-{item.subject}" / f"ses-{item.session}", rc["link"])
        _copy_participants(Path(participants_dir), tmp, current)
        _copy_qc(qc_dirs, tmp / "derivatives" / QC_PIPELINE, current, rc["link"], versions)

        atomic_write_json(tmp / "dataset_description.json", dataset_description(rc, versions, profile_text))
        atomic_write_text(tmp / "README", readme_text(rc, len(subjects), len(current), profile_text))
        atomic_write_text(tmp / "LICENSE", license_text(rc))
        notes = [*rc["changes"], *version_notes(tmp, latest, profile_text, withheld)]
        atomic_write_text(tmp / "CHANGES", changes_text(version, date, notes, previous_changes))
        write_citation_files(tmp, rc, version, date, version_label(version),
                             int(latest.name[1:]) if latest is not None else None,
                             data_usage_agreement(rc) if not is_open(rc) else None)
        atomic_write_text(tmp / ".bidsignore", BIDSIGNORE)
        if is_open(rc):
            from bidsafe.release.openrelease import open_release_problems

            problems = open_release_problems(tmp)
            if problems:  # names files and keys only
                raise BidsafeError("not an open (CC0) release a repository such as OpenNeuro accepts: "
                                   + "; ".join(problems))
    log.info(
        "assembled release %s: %d participants, %d sessions, %d session files",
        version_label(version),
        len(subjects),
        len(current),
        links,
    )
    return staging


def _check_sessions(sessions: Sequence[SessionInput]) -> list[SessionInput]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in sessions:
        subject = item.subject.removeprefix("sub-")
        session = item.session.removeprefix("ses-")
        if not (_LABEL.match(subject) and _LABEL.match(session)):
            raise BidsafeError(f"session labels must be letters and digits: sub-{subject} ses-{session}")
        if (subject, session) in seen:
            raise BidsafeError(f"sub-{subject} ses-{session} is listed twice")
        seen.add((subject, session))
        out.append(SessionInput(subject, session, Path(item.bids_dir)))
    return sorted(out, key=lambda s: (s.subject, s.session))


def _copy_participants(participants_dir: Path, dataset: Path, current: set[tuple[str, str]]) -> None:
    """participants.tsv/json and per-subject sessions files, restricted to the included subjects/sessions.

    Only these named files are read: the pseudonymise work folder holds other lists that must not ship.
    """
    subjects = {s for s, _ in current}
    participants = participants_dir / "participants.tsv"
    if not participants.is_file():
        raise BidsafeError("participants.tsv is missing", participants_dir)
    table = _filtered_tsv(participants, "participant_id", {f"sub-{s}" for s in subjects}, "sub-")
    listed = {row["participant_id"] for row in csv.DictReader(io.StringIO(table), delimiter="\t")}
    unlisted = sorted(f"sub-{s}" for s in subjects if f"sub-{s}" not in listed)
    if unlisted:
        raise BidsafeError(f"participants.tsv has no row for {', '.join(unlisted)}", participants_dir)
    atomic_write_text(dataset / "participants.tsv", table)
    for name in ("participants.json", "sessions.json"):
        if (participants_dir / name).is_file():
            shutil.copyfile(participants_dir / name, dataset / name)
    for subject in sorted(subjects):
        sessions_tsv = participants_dir / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
        if sessions_tsv.is_file():
            keep = {f"ses-{t}" for s, t in current if s == subject}
            atomic_write_text(
                dataset / f"sub-{subject}" / sessions_tsv.name, _filtered_tsv(sessions_tsv, "session_id", keep, "ses-")
            )
        else:
            log.warning("sub-%s: no sessions file in the participants folder", subject)
        sidecar = sessions_tsv.with_suffix(".json")
        if sidecar.is_file():
            shutil.copyfile(sidecar, dataset / f"sub-{subject}" / sidecar.name)


def _session_of(path: Path) -> tuple[str, str] | None:
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i].startswith("sub-") and parts[i + 1].startswith("ses-"):
            return parts[i][4:], parts[i + 1][4:]
    return None


def _copy_qc(
    qc_dirs: Sequence[Path], out: Path, current: set[tuple[str, str]], mode: str, versions: Mapping[str, str]
) -> None:
    """QC outputs of the included sessions under derivatives/bidsafe-qc, in the same sub-/ses- layout.

    A folder that names a session (`.../sub-S/ses-T`) lands at `sub-S/ses-T/`; any other folder is taken as
    a derivatives root whose files are copied when they name no session or an included one.
    """
    copied = 0
    for qc_dir in map(Path, qc_dirs):
        if not qc_dir.is_dir():
            raise BidsafeError("QC folder is missing", qc_dir)
        named = _session_of(qc_dir)
        if named is not None:
            if named in current:
                copied += copy_tree(qc_dir, out / f"sub-{named[0]}" / f"ses-{named[1]}", mode)
            continue

        def keep(rel: Path) -> bool:
            from bidsafe.release.gates import path_entities

            subjects, sessions = path_entities(rel.as_posix())
            return all((s, t) in current for s in subjects for t in sessions) and (
                bool(sessions) or all(any(s == c for c, _ in current) for s in subjects)
            )

        copied += copy_tree(qc_dir, out, mode, keep=keep)
    if copied and not (out / "dataset_description.json").exists():
        from bidsafe.qc import write_qc_dataset_description

        write_qc_dataset_description(out, versions)
