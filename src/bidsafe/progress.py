"""Progress lines and console verbosity for the `bidsafe` commands, in one place.

Progress is a single self-rewriting line on stderr: shown only when stderr is a terminal (a pipeline log or a
pipe gets nothing) unless BIDSAFE_PROGRESS=1 forces it (BIDSAFE_PROGRESS=0 turns it off), and never under
`bidsafe -q`. It shows a fixed label and counts, never a path or a value: inbox paths are named after patients.
`tqdm` is not a dependency; this is the small counter the stages already used, shared.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

LOGGER = "bidsafe"


def quiet() -> bool:
    """`bidsafe -q`: the `bidsafe` logger is above INFO, so progress and informational lines are not shown."""
    return logging.getLogger(LOGGER).getEffectiveLevel() > logging.INFO


def progress_enabled() -> bool:
    forced = os.environ.get("BIDSAFE_PROGRESS", "").strip()
    if forced in {"0", "1"}:
        return forced == "1" and not quiet()
    return sys.stderr.isatty() and not quiet()


def info(message: str) -> None:
    """An informational line on stderr (counts, where a key was read): hidden by `bidsafe -q`."""
    if not quiet():
        print(message, file=sys.stderr, flush=True)


class Progress:
    """`label: done/total unit` on one stderr line, rewritten at most every `every_s` seconds.

    Nothing is shown before `every_s` has passed, so a command that finishes quickly prints no progress.
    `label` must be a fixed text from the code: never a path, a name or a header value.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "files", *, every_s: float = 0.5,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.enabled = progress_enabled() if enabled is None else enabled
        self.count = 0
        self.started = self.last = time.monotonic()
        self.shown = False
        if self.enabled and every_s <= 0:  # a few long steps: show the count from the start
            self._show()

    def _line(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return f"\r{self.label}: {self.count}{of} {self.unit}"

    def update(self, count: int) -> None:
        self.count = count
        if self.enabled and (now := time.monotonic()) - self.last >= self.every_s:
            self.last = now
            self._show()

    def _show(self) -> None:
        self.shown = True
        sys.stderr.write(self._line() + "   ")
        sys.stderr.flush()

    def advance(self, step: int = 1) -> None:
        self.update(self.count + step)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting each one."""
        for item in items:
            yield item
            self.advance()

    def done(self) -> None:
        """End the line (only if one was shown): the next message starts on a fresh line."""
        if self.enabled and self.shown:
            sys.stderr.write(self._line() + f" ({time.monotonic() - self.started:.0f} s)\n")
            sys.stderr.flush()
            self.shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()


@contextmanager
def console_logging(verbosity: int) -> Iterator[None]:
    """Console logging for one `bidsafe` command: -q WARNING, default INFO, -v DEBUG (on the `bidsafe` logger).

    The logger's level and handlers are restored afterwards, so commands run one after another in a process
    (tests) neither double lines nor leave a -q behind.
    """
    logger = logging.getLogger(LOGGER)
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bidsafe: %(levelname)s: %(message)s"))
    handler.setLevel(level)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


__all__ = ["Progress", "console_logging", "info", "progress_enabled", "quiet"]
