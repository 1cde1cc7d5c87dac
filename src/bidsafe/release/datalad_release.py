"""DataLad versions of a release (`release.datalad: true`): `release_dir/datalad/`, one commit and tag per version.

Layout. Beside the version folders (`release_dir/v1`, `v2`, ..., `latest`) bidsafe keeps one DataLad dataset,
`release_dir/datalad/`, whose working tree holds the newest published version:

- each published `v<N>` becomes a commit whose tree is exactly the files of `v<N>` (MANIFEST.sha256 and
  SHAREABLE.json included, so a clone can be checked with `sha256sum -c MANIFEST.sha256`), and an annotated
  tag `v<N>` (the same N as the folder) on it; besides them the tree holds only DataLad's `.datalad/` and the
  `.gitattributes` below;
- images (`.nii`, `.nii.gz` and any other `.gz`, `.png`) are annexed (git-annex, SHA256E keys: the key carries
  the manifest's sha256); JSON, TSV and text files are committed to git;
- a version tag is never reused: a tag `v<N>` that names another publication of N (a different
  `SHAREABLE.json` `published_utc`) is refused, and nothing is tagged below the highest tag;
- a version folder rewritten later (`bidsafe withdraw-from-releases`) becomes an untagged commit on top, so the
  working tree always equals `latest`, and the next version's commit follows it;
- `withdraw_participant` (run by `bidsafe withdraw-from-releases`) drops the annexed content of the participant
  from the whole history: every key only their files use is dropped (`git annex drop --force`) and marked
  dead. The tags stay, so the file names (and their text files, kept in git) remain in the history; the image
  content is gone from this dataset. Copies already cloned elsewhere cannot be recalled.

The dataset is filled from the version folders, never the other way round, so `bidsafe verify v<N>` and the
seal of SHAREABLE.json are untouched. Annexed files are hard-linked from `v<N>` into the annex (one copy on
disk; read-only, like the published files), text files are copied. Everything runs under the publish lock,
and `sync_versions` is idempotent: a crash or a failure leaves the dataset behind, and the next call (the next
run or withdrawal) catches up.

Commits carry the git identity of the environment or git config; where none is configured, the dataset's own
config gets `bidsafe <bidsafe@localhost>`, so no made-up `user@host` of the publishing machine is published.
The annex is described as "bidsafe release" for the same reason (git-annex would record host and path).
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.release.assemble import LATEST, link_or_copy, published_versions, split_changes
from bidsafe.release.manifest import MANIFEST_NAME, SHAREABLE_NAME, iter_release_files, parse_manifest
from bidsafe.withdrawal import label_pattern

log = logging.getLogger("bidsafe")

DATASET_NAME = "datalad"
_TMP_NAME = ".datalad.tmp"
# Binary files go to the annex (droppable, fetched with `datalad get`); everything else is text kept in git.
ANNEXED_SUFFIXES = (".nii", ".gz", ".png")
GITATTRIBUTES = (
    "* annex.backend=SHA256E\n"
    "* annex.largefiles=(" + "or".join(f"(include=*{s})" for s in ANNEXED_SUFFIXES) + ")\n"
    "**/.git* annex.largefiles=nothing\n"
)
# Names in the dataset's top folder that are DataLad's or git's, never a release file.
_INFRASTRUCTURE = frozenset({".git", ".datalad", ".gitattributes"})
FALLBACK_IDENTITY = ("bidsafe", "bidsafe@localhost")
ANNEX_DESCRIPTION = "bidsafe release"
_KEY = re.compile(r"^SHA256E?-s(\d+)--([0-9a-f]{64})")
_TAG = re.compile(r"^v(\d+)$")


@dataclass
class DataladSync:
    """What `sync_versions` did: the versions committed and tagged now, whether `latest` was re-committed
    (rewritten since its tag), and the tags the dataset has afterwards."""

    dataset: Path
    tagged: list[int] = field(default_factory=list)
    revised: bool = False
    tags: list[int] = field(default_factory=list)

    def note(self) -> str:
        done = ", ".join(f"v{n}" for n in self.tagged)
        parts = [f"tagged {done}" if done else "no new tag"]
        if self.revised:
            parts.append("latest re-committed (rewritten since its tag)")
        return f"DataLad dataset {self.dataset.name}/: " + "; ".join(parts)

    def record(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset), "tagged": [f"v{n}" for n in self.tagged], "revised": self.revised,
                "tags": [f"v{n}" for n in self.tags]}


@dataclass
class DataladWithdrawal:
    """The participant in the dataset's history: tags whose tree names them, annexed keys only they use."""

    subject: str
    tags: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    dropped: int = 0

    def changes_note(self) -> str:
        """The line `bidsafe withdraw-from-releases` adds to each rewritten version's CHANGES entry."""
        tags = ", ".join(f"v{n}" for n in self.tags) or "none"
        return (f"DataLad dataset: the annexed files of sub-{self.subject} ({len(self.keys)}) were dropped from "
                f"its history; the tags naming them ({tags}) stay, without that content.")


# ---------------------------------------------------------------------------------------------- git plumbing


def dataset_path(release_dir: Path) -> Path:
    return Path(release_dir) / DATASET_NAME


def has_dataset(release_dir: Path) -> bool:
    return (dataset_path(release_dir) / ".datalad" / "config").is_file()


def _git(dataset: Path, *args: str, input_text: str | None = None, check: bool = True) -> str:
    """Run git (or `git annex`) in the dataset; a failure raises BidsafeError with git's own message."""
    proc = subprocess.run(["git", "-C", str(dataset), *args], input=input_text, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise BidsafeError(f"git {args[0]}{' ' + args[1] if args[0] == 'annex' else ''} failed: "
                           + (message[-1] if message else f"exit {proc.returncode}"), dataset)
    return proc.stdout


def require_datalad_tools() -> None:
    """ConfigError (before a run starts) unless DataLad and git-annex are installed."""
    _datalad_api()


def _datalad_api() -> Any:
    try:
        import datalad.api as api  # optional: `pip install 'bidsafe[datalad]'`
    except ImportError:
        raise ConfigError("release.datalad is true but DataLad is not installed: pip install 'bidsafe[datalad]' "
                          "(and git-annex, e.g. apt-get install git-annex)") from None
    if shutil.which("git-annex") is None:
        raise ConfigError("release.datalad is true but git-annex is not installed (e.g. apt-get install git-annex)")
    return api


def _has_identity(dataset: Path) -> bool:
    """An identity set in the environment or any git config (not one git would make up from user and host)."""
    for kind in ("NAME", "EMAIL"):
        configured = (os.environ.get(f"GIT_AUTHOR_{kind}") and os.environ.get(f"GIT_COMMITTER_{kind}")) or _git(
            dataset, "config", f"user.{kind.lower()}", check=False).strip()
        if not configured:
            return False
    return True


def version_tags(dataset: Path) -> list[int]:
    """The N of every tag `v<N>` of the dataset, ascending."""
    found = [m for line in _git(dataset, "tag", "--list", "v*").splitlines() if (m := _TAG.match(line.strip()))]
    return sorted(int(m.group(1)) for m in found)


def _show(dataset: Path, ref: str, rel: str) -> bytes | None:
    proc = subprocess.run(["git", "-C", str(dataset), "show", f"{ref}:{rel}"], capture_output=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _publication(record_bytes: bytes | None) -> tuple[Any, Any] | None:
    """(version, published_utc) of a SHAREABLE.json: one publication of one version (a withdrawal keeps both)."""
    if record_bytes is None:
        return None
    try:
        record = json.loads(record_bytes)
    except ValueError:
        return None
    return (record.get("version"), record.get("published_utc")) if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------------------ the dataset


def ensure_dataset(release_dir: Path) -> Path:
    """`release_dir/datalad`, created when missing: built in a temporary sibling and renamed, so the dataset
    either exists complete (DataLad id, `.gitattributes`, identity) or not at all."""
    dataset = dataset_path(release_dir)
    if has_dataset(release_dir):
        return dataset
    if dataset.exists() or dataset.is_symlink():
        raise BidsafeError(f"{DATASET_NAME}/ exists but is no DataLad dataset; move it away", release_dir)
    api = _datalad_api()
    tmp = Path(release_dir) / _TMP_NAME
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed creation: never referred to
    try:
        tmp.mkdir()
        _git(tmp, "init", "--quiet")
        if not _has_identity(tmp):
            _git(tmp, "config", "user.name", FALLBACK_IDENTITY[0])
            _git(tmp, "config", "user.email", FALLBACK_IDENTITY[1])
        api.create(path=str(tmp), force=True, description=ANNEX_DESCRIPTION, result_renderer="disabled")
        (tmp / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
        api.Dataset(str(tmp)).save(path=[".gitattributes"], result_renderer="disabled",
                 message="bidsafe: images annexed (SHA256E), text in git")
        os.rename(tmp, dataset)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("created the DataLad dataset %s/", DATASET_NAME)
    return dataset


def annexed(rel: str) -> bool:
    """Whether the dataset annexes this file (the rule `.gitattributes` gives git-annex)."""
    return rel.endswith(ANNEXED_SUFFIXES)


def _worktree_files(dataset: Path) -> list[str]:
    """Every file or symlink of the working tree but git's and DataLad's own."""
    found = []
    for dirpath, dirnames, filenames in os.walk(dataset):
        here = Path(dirpath)
        if here == dataset:
            dirnames[:] = [d for d in dirnames if d not in _INFRASTRUCTURE]
        found += [(here / n).relative_to(dataset).as_posix() for n in filenames
                  if not (here == dataset and n in _INFRASTRUCTURE)]
        # a symlinked folder is listed as a name to remove, never entered
        found += [(here / d).relative_to(dataset).as_posix() for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return sorted(found)


def _holds(path: Path, source: Path, digest: str | None) -> bool:
    """Whether the working tree's `path` already has `source`'s content: an annex link by its key (SHA256E
    carries the manifest's sha256 and the size), a text file by its bytes."""
    if path.is_symlink():
        match = _KEY.match(os.path.basename(os.readlink(path)))
        return bool(match and digest and match.group(2) == digest
                    and int(match.group(1)) == source.stat().st_size)
    return path.is_file() and not annexed(path.name) and filecmp.cmp(path, source, shallow=False)


def populate(dataset: Path, version_dir: Path) -> list[str]:
    """Make the working tree hold exactly `version_dir`'s files; returns the paths changed (removed or new)."""
    wanted = list(iter_release_files(version_dir))
    digests = parse_manifest((version_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    changed = []
    for rel in sorted(set(_worktree_files(dataset)) - set(wanted)):
        (dataset / rel).unlink()
        changed.append(rel)
        with contextlib.suppress(OSError):  # empty folders left behind (git tracks none)
            os.removedirs((dataset / rel).parent)
    for rel in wanted:
        target = dataset / rel
        if _holds(target, version_dir / rel, digests.get(rel)):
            continue
        if target.is_symlink() or target.exists():
            target.unlink()
        if annexed(rel):
            # git-annex moves the link into .git/annex/objects: the object is the published file itself
            link_or_copy(version_dir / rel, target, "hardlink")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(version_dir / rel, target)  # git keeps its own copy; no link into a release
        changed.append(rel)
    return changed


def _commit_message(version_dir: Path, number: int, revised: bool) -> str:
    """`v<N>` (or `v<N> rewritten`) and the newest CHANGES entry."""
    changes = version_dir / "CHANGES"
    header, notes, _ = split_changes(changes.read_text(encoding="utf-8")) if changes.is_file() else ("", [], "")
    title = f"v{number} rewritten: {header}" if revised else f"v{number}"
    body = "\n".join(f"- {note}" for note in notes)
    return title + ("\n\n" + body if body else "")


def _save(dataset: Path, message: str) -> None:
    """Commit the whole working tree: `populate` made it exactly the version (a list of paths could outgrow a
    command line for a release of many thousand files)."""
    api = _datalad_api()
    try:
        api.Dataset(str(dataset)).save(message=message, result_renderer="disabled", on_failure="stop")
    except Exception as exc:  # datalad's IncompleteResultsError and friends: name the step, keep the cause
        raise BidsafeError(f"DataLad could not save the dataset: {exc}", dataset) from exc


def _check_tag(dataset: Path, release_dir: Path, number: int) -> None:
    """A tag `v<N>` must be this publication of `v<N>`: never reused for another."""
    tagged = _publication(_show(dataset, f"v{number}", SHAREABLE_NAME))
    folder = release_dir / f"v{number}" / SHAREABLE_NAME
    here = _publication(folder.read_bytes()) if folder.is_file() else None
    if tagged is None or tagged != here:
        raise BidsafeError(
            f"the DataLad dataset's tag v{number} names another release than v{number}/ (published "
            f"{tagged[1] if tagged else 'unknown'}); a version tag is never reused: publish under a new number "
            f"(release.version) or remove {DATASET_NAME}/ to start a new dataset", release_dir)


def sync_versions(release_dir: Path) -> DataladSync:
    """Bring `release_dir/datalad` up to the published versions (the caller holds the publish lock): each
    untagged `v<N>` above the highest tag becomes a commit and an annotated tag `v<N>`, then the working tree
    is re-committed (untagged) if `latest` was rewritten since. Raises BidsafeError when a tag would be
    reused; ConfigError when DataLad or git-annex is missing."""
    release_dir = Path(release_dir)
    dataset = ensure_dataset(release_dir)
    result = DataladSync(dataset)
    tags = version_tags(dataset)
    published = published_versions(release_dir)
    for number in published:
        if number in tags:
            _check_tag(dataset, release_dir, number)
            continue
        if tags and number < tags[-1]:
            log.warning("v%d is not in the DataLad dataset: it has tags up to v%d and never adds an older one",
                        number, tags[-1])
            continue
        version_dir = release_dir / f"v{number}"
        populate(dataset, version_dir)
        _save(dataset, _commit_message(version_dir, number, revised=False))
        published_utc = (_publication((version_dir / SHAREABLE_NAME).read_bytes()) or (None, "?"))[1]
        _git(dataset, "tag", "-a", f"v{number}", "-m", f"bidsafe release v{number}, published {published_utc}")
        tags.append(number)
        result.tagged.append(number)
        log.info("DataLad dataset: v%d committed and tagged", number)
    latest = (release_dir / LATEST).resolve() if (release_dir / LATEST).exists() else None
    if latest is not None and tags:
        number = int(latest.name[1:])
        changed = populate(dataset, latest)
        if changed or _show(dataset, "HEAD", SHAREABLE_NAME) != (latest / SHAREABLE_NAME).read_bytes():
            _save(dataset, _commit_message(latest, number, revised=True))
            result.revised = True
    result.tags = version_tags(dataset)
    return result


def release_to_datalad(release_dir: Path) -> DataladSync:
    """`sync_versions` under the publish lock: the publish stage's step after a version is published."""
    from bidsafe.release.publish import publish_lock

    with publish_lock(Path(release_dir)):
        result = sync_versions(Path(release_dir))
    log.info("%s", result.note())
    return result


# ------------------------------------------------------------------------------------------------- withdrawal


def _history_refs(dataset: Path) -> list[str]:
    """Every commit of the dataset's own history (branch and tags; not git-annex's branch)."""
    return _git(dataset, "rev-list", "HEAD", "--tags").split()


def _annexed_at(dataset: Path, ref: str) -> list[tuple[str, str]]:
    """(key, path) of every annexed file in the tree of `ref`, content present or not."""
    out = _git(dataset, "annex", "find", f"--branch={ref}", "--include=*", "--format=${key}\t${file}\n")
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if "\t" in line]  # type: ignore[misc]


def plan_withdrawal(release_dir: Path, subject: str) -> DataladWithdrawal | None:
    """Which tags name the participant and which annexed keys only their files use (read only); None when
    there is no dataset."""
    if not has_dataset(release_dir):
        return None
    require_datalad_tools()  # before any version is rewritten, not after
    dataset = dataset_path(release_dir)
    pattern = label_pattern([subject])
    assert pattern is not None
    plan = DataladWithdrawal(subject)
    theirs: set[str] = set()
    others: set[str] = set()
    commits = {ref: _annexed_at(dataset, ref) for ref in _history_refs(dataset)}
    for files in commits.values():
        for key, rel in files:
            (theirs if any(pattern.search(part) for part in Path(rel).parts) else others).add(key)
    for number in version_tags(dataset):
        names = _git(dataset, "ls-tree", "-r", "--name-only", f"v{number}").splitlines()
        if any(pattern.search(part) for rel in names for part in Path(rel).parts):
            plan.tags.append(number)
    plan.keys = sorted(theirs - others)  # a key another file also uses stays (identical content elsewhere)
    return plan


def withdraw_participant(release_dir: Path, subject: str) -> DataladWithdrawal | None:
    """After the version folders were rewritten (the caller holds the publish lock): commit the rewritten
    `latest`, then drop every annexed key only the participant's files use, from the whole history, and mark it
    dead (lost on purpose, so `git annex fsck` does not ask for it back). Idempotent."""
    if not has_dataset(release_dir):
        return None
    sync_versions(release_dir)
    plan = plan_withdrawal(release_dir, subject)
    assert plan is not None
    dataset = dataset_path(release_dir)
    if plan.keys:
        batch = "".join(f"{key}\n" for key in plan.keys)
        _git(dataset, "annex", "drop", "--force", "--batch-keys", input_text=batch)
        for key in plan.keys:
            _git(dataset, "annex", "dead", "--key", key)
    plan.dropped = len(plan.keys)
    log.info("DataLad dataset: %d annexed files of sub-%s dropped from the history (tags %s kept)",
             plan.dropped, subject, ", ".join(f"v{n}" for n in plan.tags) or "none")
    return plan


def copies_left(release_dir: Path, keys: Sequence[str]) -> dict[str, int]:
    """{key: number of copies git-annex knows of} (0 once dropped and dead): what `whereis` says."""
    dataset = dataset_path(release_dir)
    counts = {}
    for key in keys:
        out = _git(dataset, "annex", "whereis", "--json", "--key", key, check=False)
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        counts[key] = sum(len(r.get("whereis", [])) for r in records)
    return counts
