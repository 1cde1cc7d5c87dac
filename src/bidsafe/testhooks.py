"""Test-only switches. Never set these in production: they exist so tests can prove that a gate is independent.

`BIDSAFE_TEST_NO_TEXT_CLEANING=1` switches off ALL cleaning of kept text (the descriptor vocabulary and the
harvested-values layer) in `bidsafe deid` and in the sidecar scrub; nothing else changes (tags are still
removed, UIDs remapped, dates shifted). The leak gate must then refuse the release on its own.
"""

from __future__ import annotations

import os

NO_TEXT_CLEANING = "BIDSAFE_TEST_NO_TEXT_CLEANING"


def text_cleaning_disabled() -> bool:
    """True when a test switched off the cleaning of kept text (test-only; see the module docstring)."""
    return os.environ.get(NO_TEXT_CLEANING, "") == "1"
