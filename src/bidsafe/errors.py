"""Exceptions shared by every stage: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class BidsafeError(Exception):
    """An expected failure with a message fit for a user (no personal data in it)."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.message = message  # without the path: for a report that must not show work-area paths
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class ConfigError(BidsafeError):
    """The configuration or the command line is wrong."""

    exit_code = 2


class GuardError(BidsafeError):
    """A safety guard tripped: nothing was written (fail closed)."""

    exit_code = 3


class SessionWithheld(BidsafeError):
    """One session cannot be finished by a stage (nothing converts, every file withheld, ...): the stage
    withholds that session with `code` (stable, for tools) and the message (a sentence for the report), and
    the run goes on with the others (see bidsafe.sessionstatus)."""

    def __init__(self, code: str, message: str, path: str | Path | None = None) -> None:
        self.code = code
        super().__init__(message, path)
