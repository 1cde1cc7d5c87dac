"""Release manifests: `MANIFEST.sha256` (one `sha256sum -c` line per file) and `bidsafe verify RELEASE`.

The manifest lists every regular file of a release by its path relative to the release root, sorted, in the
exact format `sha256sum` writes (`<64 hex>  <path>`), so a recipient can check a download with either
`sha256sum -c MANIFEST.sha256` or `bidsafe verify`. `SHAREABLE.json` is written after the manifest and records
the manifest's own hash, so the pair cannot be swapped for another release's. It also records the hash of its
own content (`record_sha256`, see `shareable_digest`), so an edited gate summary, version or profile in it is
noticed by `bidsafe verify` like an edited data file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_write_text

MANIFEST_NAME = "MANIFEST.sha256"
SHAREABLE_NAME = "SHAREABLE.json"
# Files that describe the release rather than belong to it: never listed in the manifest.
RELEASE_MARKERS = frozenset({MANIFEST_NAME, SHAREABLE_NAME})
# Written by tools into folders they manage; never part of a dataset (Snakemake marks directory outputs so).
TOOL_DROPPINGS = frozenset({".snakemake_timestamp"})

# The key of SHAREABLE.json that holds the hash of the rest of the record.
RECORD_HASH_KEY = "record_sha256"

_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shareable_digest(record: Mapping[str, object]) -> str:
    """SHA-256 of a SHAREABLE.json record without its `record_sha256`, over canonical JSON (sorted keys, no
    spaces, UTF-8), so the hash does not depend on how the file was indented."""
    body = {key: value for key, value in record.items() if key != RECORD_HASH_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_bytes(text.encode("utf-8"))


def seal_shareable(record: Mapping[str, object]) -> dict[str, object]:
    """The record with its `record_sha256` (re)computed: call it on every write of SHAREABLE.json."""
    body = {key: value for key, value in record.items() if key != RECORD_HASH_KEY}
    return {**body, RECORD_HASH_KEY: shareable_digest(body)}


def scan_tree(root: str | Path, *, skip: Iterable[str] = TOOL_DROPPINGS) -> tuple[list[str], list[str]]:
    """(regular files, anything else: symlinks, sockets...) under `root`, as sorted relative POSIX paths."""
    root = Path(root)
    skipped = set(skip)
    files: list[str] = []
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                odd.append((here / name).relative_to(root).as_posix())
        for name in filenames:
            if name in skipped:
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            (files if path.is_file() and not path.is_symlink() else odd).append(rel)
    return sorted(files), sorted(odd)


def iter_release_files(root: str | Path, *, skip: Iterable[str] = TOOL_DROPPINGS) -> Iterator[str]:
    """Relative POSIX paths of every regular file under `root`, sorted; symlinks are refused.

    A release holds plain files only: a symlink could point outside the release (or at private data) and
    its target would escape the manifest.
    """
    files, odd = scan_tree(root, skip=skip)
    if odd:
        raise BidsafeError("a release may contain regular files only, no symbolic links: " + ", ".join(odd), root)
    return iter(files)


def hash_tree(root: str | Path, rel_paths: Iterable[str], *, threads: int = 2) -> dict[str, str]:
    """{relative path: sha256} for the given files (hashing releases the GIL, so threads help on big files)."""
    root = Path(root)
    rels = list(rel_paths)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = list(pool.map(lambda rel: sha256_file(root / rel), rels))
    return dict(zip(rels, digests, strict=True))


def format_manifest(digests: Mapping[str, str]) -> str:
    """`sha256sum` text-mode lines, sorted by path."""
    lines = []
    for rel in sorted(digests):
        # sha256sum escapes such names with a leading backslash; BIDS names never need it, so refuse them.
        if "\n" in rel or "\\" in rel or "\r" in rel:
            raise BidsafeError("file name with a newline or backslash cannot be listed in a manifest", rel)
        lines.append(f"{digests[rel]}  {rel}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_manifest(text: str, *, source: str | Path = MANIFEST_NAME) -> dict[str, str]:
    """Inverse of `format_manifest`; accepts `sha256sum`'s binary marker (`*`) too."""
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line)
        if match is None:
            raise BidsafeError(f"line {number} is not '<sha256>  <path>'", source)
        digest, rel = match.groups()
        if rel in digests:
            raise BidsafeError(f"line {number} lists a file twice", source)
        digests[rel] = digest
    return digests


def write_manifest(root: str | Path, *, threads: int = 2) -> tuple[Path, str, dict[str, str]]:
    """Hash every file under `root` (markers excluded) and write `root/MANIFEST.sha256` atomically.

    Returns (manifest path, sha256 of the manifest text, {path: sha256}).
    """
    root = Path(root)
    rels = [rel for rel in iter_release_files(root) if rel not in RELEASE_MARKERS]
    digests = hash_tree(root, rels, threads=threads)
    path, manifest_sha256 = save_manifest(root, digests)
    return path, manifest_sha256, digests


def save_manifest(root: str | Path, digests: Mapping[str, str]) -> tuple[Path, str]:
    """Write `root/MANIFEST.sha256` atomically from digests already computed; (its path, sha256 of its text)."""
    text = format_manifest(digests)
    path = atomic_write_text(Path(root) / MANIFEST_NAME, text)
    return path, sha256_bytes(text.encode("utf-8"))


@dataclass
class VerifyResult:
    """What `verify_release` found; every list holds release-relative paths."""

    release: Path | str  # a folder, or an s3:// location (see bidsafe.release.mirror)
    files_checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.problems)

    def summary(self) -> str:
        if self.ok:
            return f"{self.release}: OK, {self.files_checked} files match {MANIFEST_NAME}"
        parts = [f"{self.release}: FAILED"]
        for label, items in (("missing", self.missing), ("extra", self.extra), ("changed", self.changed)):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items))
        parts.extend(self.problems)
        return "\n".join(parts)


def resolve_release(path: str | Path) -> Path:
    """`release_dir/latest`, `release_dir/v<N>` or `release_dir` itself (then its `latest`)."""
    path = Path(path)
    if not (path / MANIFEST_NAME).exists() and (path / "latest" / MANIFEST_NAME).exists():
        path = path / "latest"
    return path.resolve()


def verify_release(release: str | Path, *, threads: int = 2) -> VerifyResult:
    """Recompute every file's SHA-256 against MANIFEST.sha256 and check SHAREABLE.json's record of it."""
    root = resolve_release(release)
    result = VerifyResult(release=Path(release))
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BidsafeError("not a release folder", release)
    if not manifest_path.is_file():
        result.problems.append(f"{MANIFEST_NAME} is missing")
        return result
    manifest_bytes = manifest_path.read_bytes()
    try:
        listed = parse_manifest(manifest_bytes.decode("utf-8"), source=manifest_path)
    except (UnicodeDecodeError, BidsafeError) as exc:
        result.problems.append(f"{MANIFEST_NAME} is unreadable: {exc}")
        return result

    files, odd = scan_tree(root, skip=())
    if odd:
        result.problems.append("not regular files (symbolic links?): " + ", ".join(odd))
    present = set(files) - RELEASE_MARKERS
    result.missing = sorted(set(listed) - present)
    result.extra = sorted(present - set(listed))
    common = sorted(set(listed) & present)
    digests = hash_tree(root, common, threads=threads)
    result.changed = [rel for rel in common if digests[rel] != listed[rel]]
    result.files_checked = len(common)

    shareable_path = root / SHAREABLE_NAME
    shareable_bytes = shareable_path.read_bytes() if shareable_path.is_file() else None
    result.problems.extend(shareable_problems(shareable_bytes, manifest_bytes))
    return result


def shareable_problems(shareable_bytes: bytes | None, manifest_bytes: bytes) -> list[str]:
    """What is wrong with a release's SHAREABLE.json (None: absent) given its MANIFEST.sha256's bytes: the
    manifest hash it records, its own seal, its `shareable` mark. Shared by local and mirror verification."""
    if shareable_bytes is None:
        return [f"{SHAREABLE_NAME} is missing: this folder was never marked shareable"]
    try:
        shareable = json.loads(shareable_bytes.decode("utf-8"))
        recorded = shareable["manifest"]["sha256"]
    except (ValueError, KeyError, TypeError):
        return [f"{SHAREABLE_NAME} is unreadable or lacks manifest.sha256"]
    problems = _shareable_record_problems(shareable)
    if recorded != sha256_bytes(manifest_bytes):
        problems.append(f"{MANIFEST_NAME} does not match the hash recorded in {SHAREABLE_NAME}")
    if shareable.get("shareable") is not True:
        problems.append(f"{SHAREABLE_NAME} does not mark the release shareable")
    return problems


def _shareable_record_problems(shareable: Mapping[str, object]) -> list[str]:
    """SHAREABLE.json's own content against its `record_sha256`. A missing hash fails too: deleting the key
    must not be a way round the check (releases published before bidsafe wrote it fail with this message)."""
    recorded = shareable.get(RECORD_HASH_KEY)
    if not isinstance(recorded, str):
        return [f"{SHAREABLE_NAME} carries no {RECORD_HASH_KEY}: its gate summaries and version cannot be checked"]
    if recorded != shareable_digest(shareable):
        return [f"{SHAREABLE_NAME} was edited after publishing: its content (gate summaries, version, profile) "
                f"does not match its {RECORD_HASH_KEY}"]
    return []


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe verify RELEASE`: exit 0 when every file matches the manifest, 1 otherwise. An `s3://` RELEASE
    is a mirrored version, read back by bidsafe.release.mirror (imported only then: boto3 is slow to load)."""
    if str(args.release).startswith("s3://"):
        from bidsafe.release.mirror import cli_verify

        return cli_verify(args)
    if getattr(args, "endpoint", None):
        raise ConfigError("--endpoint applies to an s3:// location only", args.release)
    result = verify_release(args.release)
    print(result.summary())
    return 0 if result.ok else 1
