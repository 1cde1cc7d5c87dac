"""Keyed UID remapping: the same original UID always becomes the same new UID under the same key.

New UIDs are `2.25.` followed by the decimal integer of HMAC-SHA256(key, original UID), cut to the 64
characters a UI value may hold. The mapping is deterministic (files, runs and machines agree, so references
between instances still resolve and a series stays one series) and cannot be inverted without the key.
Registered UIDs (SOP classes, transfer syntaxes, coding schemes under the DICOM root) identify no one and are
never remapped.
"""

from __future__ import annotations

from bidsafe.keys import keyed_digest
from bidsafe.phi import DICOM_ROOT_UID

UID_PREFIX = "2.25."
MAX_UID_LENGTH = 64
_PURPOSE = "uid"


def is_registered_uid(uid: str) -> bool:
    """True for UIDs the DICOM standard registers (they name classes and syntaxes, not instances)."""
    return uid.startswith(DICOM_ROOT_UID)


def keyed_uid(key: bytes, uid: str) -> str:
    """The new UID for `uid` under `key` (at most 64 characters, digits only after `2.25.`)."""
    number = int.from_bytes(keyed_digest(key, _PURPOSE, uid), "big")
    return (UID_PREFIX + str(number))[:MAX_UID_LENGTH]


class UidMapper:
    """Remaps UIDs with a cache (a study repeats the same few UIDs in every file)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    def remap(self, uid: str) -> str:
        """The new UID; registered UIDs and empty values are returned unchanged."""
        uid = uid.strip(" \x00")
        if not uid or is_registered_uid(uid):
            return uid
        new = self._cache.get(uid)
        if new is None:
            new = keyed_uid(self._key, uid)
            self._cache[uid] = new
        return new

    def remap_multi(self, value: str) -> str:
        """A backslash-separated multi-valued UI string, each value remapped."""
        if "\\" not in value:
            return self.remap(value)
        return "\\".join(self.remap(part) for part in value.split("\\"))
