"""The demo inbox the demo-data and consent-template tests read: one subject with two sessions, a fixed seed."""

from __future__ import annotations

from pathlib import Path

from bidsafe.demo import DemoSession, generate

DEMO_SEED = 3


def two_session_demo(root: Path) -> list[DemoSession]:
    """One demo subject's two sessions (seed DEMO_SEED) generated under `root`."""
    return generate(root, subjects=1, sessions=2, seed=DEMO_SEED)
