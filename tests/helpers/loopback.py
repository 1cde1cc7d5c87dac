"""Loopback network helpers for the receiver's tests (dcmtk's storescu sending to `bidsafe receive`)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

# dcmtk's sender; pynetdicom installs its own `storescu` into the venv: never that one
STORESCU = "/usr/bin/storescu"


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
