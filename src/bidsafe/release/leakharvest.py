"""The leak gate's harvest: the raw personal values of the inbox's DICOM headers, per session when the
pseudonymise stage's session lists are at hand, kept privately between runs (`leakcache.HarvestMemory`).

Collection only (`bidsafe.phi.harvest_files`): the gate reads the rows {category, field, value} and renders
and matches them itself.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from bidsafe.errors import ConfigError
from bidsafe.filelist import read_file_list
from bidsafe.ingest import regular_files
from bidsafe.phi import harvest_files  # collection only: the raw rows; matching is the gate's own
from bidsafe.private import private_write_text
from bidsafe.progress import Progress
from bidsafe.release.leakcache import HarvestMemory
from bidsafe.release.leakforms import RawValue, raw_values

UNASSIGNED = "inbox (no session)"


def harvest_source(raw_dir: Path, skip: Collection[str] = (), progress: bool = False) -> Any:
    """Every personal value of every readable DICOM file under `raw_dir` (header only), including strings
    of identity private blocks. Collection only (`bidsafe.phi.harvest_files`): the gate reads the rows
    {category, field, value} and renders and matches them itself. `skip`: paths relative to `raw_dir` not
    read (the files of QA/phantom sessions, which are never released)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError("leak scan: --source is not a folder", raw_dir)
    skipped = {Path(rel).as_posix() for rel in skip}
    # ingest's walk: no link followed, no FIFO opened, unreadable entries passed over, any file name
    paths = [raw_dir / rel for rel in regular_files(raw_dir) if rel not in skipped]
    if not progress:
        return harvest_files(paths, private_text=True)
    with Progress("bidsafe leak-scan: reading source headers", len(paths)) as meter:
        return harvest_files(meter.iterate(paths), private_text=True)


def harvest_sessions(
    raw_dir: Path, sessions_dir: Path | None, skip: Collection[str] = (), memory: Path | None = None
) -> tuple[list[RawValue], dict[RawValue, list[str]]]:
    """`harvest_source`, made per session so that each value can be tied to the sessions it came from:
    (rows, value -> pseudonymous session labels `sub-S_ses-T`).

    `sessions_dir`: the pseudonymise stage's private `sessions/` folder (sub-S/ses-T/files.txt: each session's
    inbox-relative paths). Every other inbox file is harvested too, labelled `inbox (no session)`: a value
    must never go unsearched because ingest set its file aside. `skip`: inbox-relative paths not read (the
    files of QA/phantom sessions, which are never released). `memory`: a private folder keeping each
    session's rows between runs (`leakcache.HarvestMemory`): a session whose files are unchanged is not read
    again.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError("leak scan: --source is not a folder", raw_dir)
    skipped = {raw_dir / rel for rel in skip}
    everything = [p for p in (raw_dir / rel for rel in regular_files(raw_dir)) if p not in skipped]
    groups: dict[str, list[Path]] = {}
    listed: set[Path] = set()
    if sessions_dir is not None and Path(sessions_dir).is_dir():
        for files_txt in sorted(Path(sessions_dir).glob("sub-*/ses-*/files.txt")):
            label = f"{files_txt.parent.parent.name}_{files_txt.parent.name}"
            paths = [raw_dir / rel for rel in read_file_list(files_txt)]
            groups[label] = [p for p in paths if p.is_file() and not p.is_symlink() and p not in skipped]
            listed.update(groups[label])
    rest = [p for p in everything if p not in listed]
    if rest:
        groups[UNASSIGNED] = rest
    origins: dict[RawValue, set[str]] = {}
    kept = HarvestMemory(Path(memory)) if memory is not None else None
    for label, paths in groups.items():
        for value in _harvest_group(label, paths, kept):
            origins.setdefault(value, set()).add(label)
    if kept is not None:
        kept.forget_others()
    return sorted(origins), {value: sorted(labels) for value, labels in origins.items()}


def _harvest_group(label: str, paths: list[Path], memory: HarvestMemory | None) -> list[RawValue]:
    if memory is None:
        return raw_values(harvest_files(paths, private_text=True))
    key = memory.key(paths)
    rows = memory.recall(label, key)
    if rows is None:
        rows = raw_values(harvest_files(paths, private_text=True))
        memory.remember(label, key, rows)
    return rows


def save_harvest(rows: Iterable[RawValue], origins: Mapping[RawValue, Iterable[str]], path: Path) -> Path:
    """The gate's harvest, privately (0600, atomic): rows {category, field, value, sessions}."""
    data = [{**value._asdict(), "sessions": sorted(origins.get(value, ()))} for value in rows]
    return private_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def load_origins(path: Path) -> dict[RawValue, list[str]]:
    """value -> session labels, from a harvest saved by `save_harvest` (rows without `sessions`: none)."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return {RawValue(r["category"], r["field"], r["value"]): list(r.get("sessions") or [])
            for r in rows if isinstance(r, dict) and {"category", "field", "value"} <= r.keys()}
