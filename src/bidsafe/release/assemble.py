"""Assemble the release dataset in a staging folder: included sessions plus the dataset-level files.

The staging tree appears whole or not at all (built in a temporary sibling, then renamed). It is built from
de-identified, scrubbed, defaced session trees and from a fixed list of participant files; nothing else from
the work area is copied, so private lists (inbox paths, study UIDs) cannot slip in by accident.

Release-level configuration lives under `release:` (defaults and documentation of each key in the
workflow's config schema, copied into `RELEASE_DEFAULTS`).

Beside it: `staging` (session trees, participants files and QC outputs copied into the staging tree) and
`versions` (version numbers and the CHANGES text).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
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
from bidsafe.release.manifest import RELEASE_MARKERS
from bidsafe.release.staging import (
    SessionInput,
    check_sessions,
    copy_participants,
    copy_qc,
    copy_sessions,
    copy_tree,
    link_or_copy,
)
from bidsafe.release.versions import (
    automatic_notes,
    changes_text,
    changes_version,
    continue_changes,
    latest_version_dir,
    next_version,
    published_versions,
    released_sessions,
    site_notes,
    split_changes,
    version_label,
)

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

# What each audience (consent.AUDIENCES, the schema's enum) means, in words, for the README.
AUDIENCE_WORDS = {
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


# --------------------------------------------------------------------------------------------- config
def release_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `release:` settings with defaults filled in and checked.

    Accepts the whole pipeline config (with a `release` mapping) or the `release` mapping itself.
    """
    section = config["release"] if isinstance(config.get("release"), Mapping) else config
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
    audience = AUDIENCE_WORDS.get(str(rc.get("audience", "")), "as configured")
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

    wanted = check_sessions(sessions)
    subjects = sorted({s.subject for s in wanted})
    version = next_version(release_dir, rc["version"])
    latest, previous_changes = _previous_release(release_dir)
    current = {(s.subject, s.session) for s in wanted}
    date = when.strftime("%Y-%m-%d")

    with atomic_dir(staging) as tmp:
        links = copy_sessions(wanted, tmp, rc["link"])
        copy_participants(Path(participants_dir), tmp, current)
        copy_qc(qc_dirs, tmp / "derivatives" / QC_PIPELINE, current, rc["link"], versions)

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
            _check_open_release(tmp)
    log.info("assembled release %s: %d participants, %d sessions, %d session files",
             version_label(version), len(subjects), len(current), links)
    return staging


def _previous_release(release_dir: Path | None) -> tuple[Path | None, str]:
    """The highest published version's folder (None when there is none) and its CHANGES text ("" if none)."""
    latest = latest_version_dir(release_dir)
    previous_changes = ""
    if latest is not None and not latest.is_dir():
        latest = None
    if latest is not None and (latest / "CHANGES").is_file():
        previous_changes = (latest / "CHANGES").read_text(encoding="utf-8")
    return latest, previous_changes


def _check_open_release(dataset: Path) -> None:
    from bidsafe.release.openrelease import open_release_problems

    problems = open_release_problems(dataset)
    if problems:  # names files and keys only
        raise BidsafeError("not an open (CC0) release a repository such as OpenNeuro accepts: " + "; ".join(problems))


__all__ = [
    "BIDS_VERSION",
    "BIDSIGNORE",
    "DEFAULT_DATA_USAGE_AGREEMENT",
    "LATEST",
    "QC_PIPELINE",
    "RELEASE_DEFAULTS",
    "SessionInput",
    "assemble_release",
    "automatic_notes",
    "changes_text",
    "changes_version",
    "continue_changes",
    "copy_tree",
    "data_usage_agreement",
    "describe_profile",
    "generated_by",
    "is_open",
    "latest_version_dir",
    "link_or_copy",
    "next_version",
    "published_versions",
    "release_config",
    "released_sessions",
    "site_notes",
    "split_changes",
    "version_label",
]
