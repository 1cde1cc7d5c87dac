"""Fixtures several test files share (their builders live in tests/helpers/). Every pytest run loads this file,
so the helper modules are imported inside the fixtures: a run of unrelated tests does not pay for them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bidsafe.demo import DemoSession

    from helpers.release_project import Project


@pytest.fixture
def two_session_project(tmp_path: Path) -> Project:
    """A release project with sessions a1/01 (seed 1) and b2/01 (seed 3) and its tables written, not assembled."""
    from helpers.release_project import Project

    project = Project(tmp_path)
    project.add("a1", "01", seed=1)
    project.add("b2", "01", seed=3)
    project.write_tables()
    return project


@pytest.fixture(scope="module")
def published_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 of a small published release with one 11 MiB file (helpers/published.py), built once per test module."""
    from helpers.published import published_version

    return published_version(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="session")
def two_session_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DemoSession]]:
    """(inbox, sessions) of helpers/demo_inbox.py, generated once per run (about 40 s): tests only read it."""
    from helpers.demo_inbox import two_session_demo

    root = tmp_path_factory.mktemp("demo") / "inbox"
    return root, two_session_demo(root)
