"""The site's leak-scan allow-list (`release.leak_scan.allow`): reviewed false positives, each with its reason.

An entry is `{value: TEXT, reason: TEXT}` (the harvested value, compared whole, folded: case and accents
ignored) or `{pattern: REGEX, reason: TEXT}` (a Python regular expression matched against the whole harvested
value, as written; add `(?i)` for any case). A hit whose every value is allowed is no finding: the gate counts
it as allowed and lists it, with the entry that allowed it, in its private findings file only. Structural
findings (non-ASCII text, non-vocabulary tokens) carry no harvested value and cannot be allowed.

The entries themselves are site data kept in the site's config; what is shared is their number and a sha256
of their canonical JSON (`digest`), recorded in the gate report and SHAREABLE.json, so a reader of a release
knows that, and which version of, an allow-list was applied.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from bidsafe.errors import ConfigError
from bidsafe.release.leakforms import fold

_KEYS = frozenset({"value", "pattern", "reason"})


@dataclass(frozen=True)
class AllowEntry:
    """One entry; `index` is its position in the configured list (0-based), used to name it privately."""

    index: int
    reason: str
    value: str | None = None
    pattern: str | None = None

    def matches(self, value: str) -> bool:
        if self.value is not None:
            return fold(self.value).strip() == fold(value).strip()
        assert self.pattern is not None
        return re.fullmatch(self.pattern, value.strip()) is not None

    def to_dict(self) -> dict[str, str]:
        # exactly one of value and pattern is set (the reader checks it)
        kind = {"value": self.value} if self.value is not None else {"pattern": cast(str, self.pattern)}
        return {**kind, "reason": self.reason}


@dataclass(frozen=True)
class AllowList:
    entries: tuple[AllowEntry, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, value: str) -> AllowEntry | None:
        """The first entry that allows `value`, or None."""
        return next((entry for entry in self.entries if entry.matches(value)), None)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the entries (sorted keys, no spaces, UTF-8), in their order."""
        canonical = json.dumps([e.to_dict() for e in self.entries], sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What may be shared about the allow-list: its size and hash, never its entries."""
        return {"entries": len(self), "sha256": self.digest()}


def load_allow(raw: Any) -> AllowList:
    """An AllowList from the configured entries (a list of mappings), an AllowList, or None (empty).

    Raises ConfigError naming the entry (by position) and what is wrong; never echoes a value."""
    if isinstance(raw, AllowList):
        return raw
    if raw is None:
        return AllowList()
    if not isinstance(raw, Iterable) or isinstance(raw, str | bytes | Mapping):
        raise ConfigError("release.leak_scan.allow must be a list of {value|pattern, reason} entries")
    entries: list[AllowEntry] = []
    for index, item in enumerate(raw):
        where = f"release.leak_scan.allow[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: an entry is a mapping {{value|pattern, reason}}")
        unknown = sorted(str(k) for k in item if k not in _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: pattern, reason, value")
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where}: a reason is required (why this value is no personal data)")
        value, pattern = item.get("value"), item.get("pattern")
        if (value is None) == (pattern is None):
            raise ConfigError(f"{where}: give exactly one of value and pattern")
        text = value if value is not None else pattern
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: {'value' if value is not None else 'pattern'} must be a non-empty string")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}: pattern is not a regular expression ({exc.msg})") from exc
        entries.append(AllowEntry(index, reason.strip(), value=value, pattern=pattern))
    return AllowList(tuple(entries))


__all__ = ["AllowEntry", "AllowList", "load_allow"]
