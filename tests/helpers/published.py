"""A small published version for the mirror and torrent tests: the synthetic project of release_project (real
NIfTI files, tables, QC derivatives), published by the publish module itself, plus one file large enough to
need several upload parts and torrent pieces."""

from __future__ import annotations

import os
import random
from pathlib import Path

from bidsafe.release.publish import publish_release

from helpers.release_project import PROFILE, Project

BIG_FILE = "stimuli/noise.bin"
BIG_SIZE = 11 * (1 << 20) + 12345  # three 5 MiB upload parts, the last one short; an odd torrent tail


def published_version(root: Path, *, big: bool = True) -> Path:
    """Publish two participants (three sessions) under `root/release`; returns `root/release/v1`."""
    project = Project(root)
    project.add("a1", "01", seed=1)
    project.add("b2", "01", seed=3)
    project.add("b2", "02", seed=4)
    project.write_tables()
    project.assemble()
    if big:
        (project.staging / "stimuli").mkdir()
        (project.staging / BIG_FILE).write_bytes(random.Random(7).randbytes(BIG_SIZE))
    outcome = publish_release(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    return outcome.path


def tree_files(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found
