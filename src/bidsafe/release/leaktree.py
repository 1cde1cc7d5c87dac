"""The leak gate's tree walk: every path component and every file under a folder, each file scanned (or
replayed from the scan memory when unchanged), the hits labelled with sanitised relative paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsafe.progress import Progress
from bidsafe.release.leakcache import FileFindings, ScanMemory, file_identity, still_wanted
from bidsafe.release.leakfile import FileScan, safe_component
from bidsafe.release.leakforms import RawValue
from bidsafe.release.leakhits import NON_ASCII, STRUCTURE, LeakHit
from bidsafe.release.leakmatch import Scanner


def _walk(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every entry under `root` (folders too, symlinks not followed), with its relative path parts."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        relative = base.relative_to(root).parts
        for name in dirnames + sorted(filenames):
            yield base / name, (*relative, name)


def _names_file(root: Path, parts: Sequence[str]) -> Callable[[str], bool]:
    """Whether a sidecar string names a released file: `bids::sub-01/...`, or relative to the subject folder
    (IntendedFor). Those tokens are path tokens, checked as paths (needles, non-ASCII)."""

    def names(text: str) -> bool:
        relative = text.removeprefix("bids::")
        if not relative or relative.startswith("/") or ".." in relative.split("/") or "\\" in relative:
            return False
        return any((base / relative).is_file() for base in (root, root / parts[0]))

    return names


def _path_values(path: Path, name: str, scanner: Scanner) -> set[RawValue]:
    """Values in an entry's name, and in its target when it is a symlink (never followed)."""
    found = scanner.in_text(name)
    if path.is_symlink():
        found |= scanner.in_text(os.readlink(path))
    return found


def _is_image_sidecar(parts: Sequence[str]) -> bool:
    # Image sidecars (inside a datatype folder) hold scanner text: vocabulary only. The sessions/scans
    # data dictionaries beside sub-/ses- folders are written by bidsafe from its configuration.
    return (
        parts[0].startswith("sub-") and parts[-1].lower().endswith(".json")
        and len(parts) >= 3 and not parts[-2].startswith(("sub-", "ses-"))
    )


def scan_tree(root: Path, scanner: Scanner, label_prefix: str = "", *, structural: bool = True,
              found: dict[LeakHit, set[RawValue]] | None = None,
              progress: Progress | None = None, memory: RememberedScan | None = None,
              memory_prefix: str = "") -> tuple[set[LeakHit], int, int]:
    """(hits, files scanned, bytes scanned) for every path and file under `root`.

    `structural`: `root` is released metadata (the structural rules apply); False for logs (`also`).
    `found`, when given, receives the values behind each hit (for the private findings). `progress` counts
    the files scanned (a count only, never a name). `memory`: the last run's findings per file (see
    `leakcache`); a file it remembers unchanged is searched only for the values new since (`bytes scanned`
    counts what was read).
    """
    root = Path(root)
    hits: set[LeakHit] = set()
    found = {} if found is None else found
    files = total = 0
    safe: dict[str, str] = {}

    def sanitised(parts: Sequence[str]) -> str:
        shown = []
        for part in parts:
            if part not in safe:
                safe[part] = safe_component(part, scanner)
            shown.append(safe[part])
        return label_prefix + "/".join(shown)

    for path, parts in _walk(root):
        label = sanitised(parts)
        for value in _path_values(path, parts[-1], scanner):
            hit = LeakHit(label, "path", value.field, value.category)
            hits.add(hit)
            found.setdefault(hit, set()).add(value)
        if structural and not parts[-1].isascii():
            hits.add(LeakHit(label, "path", STRUCTURE, NON_ASCII))
        if path.is_symlink() or not path.is_file():
            continue
        descriptors = structural and _is_image_sidecar(parts)
        one = FileScan(scanner, label, structural=structural, descriptors=descriptors,
                       names_file=_names_file(root, parts) if descriptors else None)
        if memory is None:
            one.scan_path(path)
        else:
            _scan_remembered(one, path, memory_prefix + "/".join(parts), memory)
        hits |= one.hits
        for hit, values in one.values.items():
            found.setdefault(hit, set()).update(values)
        files += 1
        total += one.bytes
        if progress is not None:
            progress.advance()
    return hits, files, total


@dataclass
class RememberedScan:
    """A `leakcache.ScanMemory` with the scanners of this run: all values, and those new since it was saved."""

    saved: ScanMemory
    values: frozenset[RawValue]
    delta: Scanner | None


def _scan_remembered(one: FileScan, path: Path, key: str, memory: RememberedScan) -> None:
    """Scan one file, or replay what it held (for the values still searched) and search it only for the new
    values when the memory knows it unchanged; then remember it for the next run."""
    identity = file_identity(path)
    entry = memory.saved.recall(key, identity)
    if entry is None:
        one.scan_path(path)
    else:
        for where, value in still_wanted(entry.found, memory.values):
            one.add(where, (value,))
        for where, rule in entry.flags:
            one.flag(where, rule)
        if memory.delta is not None:
            extra = FileScan(memory.delta, one.label)  # values only: the structural rules were applied
            extra.scan_path(path)
            for hit, values in extra.values.items():
                one.add(hit.where, values)
            one.bytes += extra.bytes
    memory.saved.remember(key, FileFindings(
        identity=identity,
        found=sorted((hit.where, value) for hit, values in one.values.items() for value in values),
        flags=sorted((hit.where, hit.category) for hit in one.hits if hit.field == STRUCTURE),
    ))
