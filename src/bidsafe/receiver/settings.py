"""The receiver's settings, read from a checked site config, and the rules they hold (callers, expected series)."""

from __future__ import annotations

import fnmatch
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsafe.errors import ConfigError


@dataclass(frozen=True)
class Caller:
    ae_title: str
    hosts: frozenset[str] = frozenset()  # resolved addresses; empty: any host


@dataclass(frozen=True)
class Settings:
    ae_title: str
    bind: str
    port: int
    callers: tuple[Caller, ...]
    quiet_seconds: float
    max_wait_seconds: float
    expected_series: tuple[tuple[str, int], ...]
    private_dir: Path
    inbox: Path
    key: bytes
    fsync: bool = True

    @property
    def area(self) -> Path:
        return self.private_dir / "receiver"


def settings_from_config(config: Mapping[str, Any], key: bytes) -> Settings:
    """The receiver's settings from a checked site config (ConfigError without a `receiver:` section)."""
    section = config.get("receiver")
    if not section:
        raise ConfigError("config: no 'receiver' section; `bidsafe receive` needs receiver.allowed_callers (see "
                          "config/README.md, 'DICOM receiver')")
    callers = []
    for entry in section["allowed_callers"]:
        if isinstance(entry, str):
            callers.append(Caller(entry))
        else:
            callers.append(Caller(entry["ae_title"], frozenset(_resolve(h) for h in entry["hosts"])))
    return Settings(
        ae_title=section["ae_title"],
        bind=section["bind"],
        port=int(section["port"]),
        callers=tuple(callers),
        quiet_seconds=float(section["quiet_seconds"]),
        max_wait_seconds=float(section["max_wait_seconds"]),
        expected_series=tuple((r["description"], int(r.get("min_instances", 1)))
                              for r in section.get("expected_series", [])),
        private_dir=Path(config["private_dir"]),
        inbox=Path(config["inbox"]),
        key=key,
        fsync=bool(section["fsync"]),
    )


def _resolve(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except OSError:
        raise ConfigError(f"config: receiver.allowed_callers: host {host!r} cannot be resolved") from None


def caller_allowed(callers: Sequence[Caller], ae_title: str, address: str) -> bool:
    return any(c.ae_title == ae_title.strip() and (not c.hosts or address in c.hosts) for c in callers)


def expected_series_met(rules: Sequence[tuple[str, int]], series: Sequence[tuple[str, int]]) -> bool:
    """True when every (pattern, min_instances) rule is matched by one (description, count) series."""
    return bool(rules) and all(
        any(fnmatch.fnmatch(desc.lower(), pattern.lower()) and count >= need for desc, count in series)
        for pattern, need in rules
    )
