"""Keyed UID remapping: the same original UID always becomes the same new UID under the same key.

New UIDs are `2.25.` followed by the decimal integer of HMAC-SHA256(key, original UID), cut to the 64
characters a UI value may hold. The mapping is deterministic (files, runs and machines agree, so references
between instances still resolve and a series stays one series) and cannot be inverted without the key.
Registered UIDs (SOP classes, transfer syntaxes, well-known frames of reference, coding schemes: the DICOM
standard's own list, PS3.6 Annex A) identify no one and are never remapped. Being under the DICOM root
`1.2.840.10008.` is not enough: an instance UID (study, series, SOP instance, frame of reference) that a
device or a tool minted under the root would otherwise pass unchanged and link the release to its source.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

from bidsafe.keys import keyed_digest
from bidsafe.phi import DICOM_ROOT_UID

UID_PREFIX = "2.25."
MAX_UID_LENGTH = 64
_PURPOSE = "uid"


# pydicom's copy of PS3.6 Annex A (SOP classes, transfer syntaxes, well-known UIDs, coding schemes).
_REGISTERED: frozenset[str] = frozenset(UID_dictionary)


def is_registered_uid(uid: str) -> bool:
    """True for UIDs the DICOM standard registers (they name classes and syntaxes, not instances)."""
    return uid in _REGISTERED


def names_standard_class(uid: str) -> bool:
    """True for a UID in a class or transfer-syntax attribute that the DICOM root names (a class newer than
    pydicom's table included): it names what a file is, never whose."""
    return is_registered_uid(uid) or uid.startswith(DICOM_ROOT_UID)


def keyed_uid(key: bytes, uid: str) -> str:
    """The new UID for `uid` under `key` (at most 64 characters, digits only after `2.25.`)."""
    number = int.from_bytes(keyed_digest(key, _PURPOSE, uid), "big")
    return (UID_PREFIX + str(number))[:MAX_UID_LENGTH]


class UidMapper:
    """Remaps UIDs with a cache (a study repeats the same few UIDs in every file)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    def remap(self, uid: str, *, names_class: bool = False) -> str:
        """The new UID; registered UIDs and empty values are returned unchanged (with `names_class`, for a
        class or transfer-syntax attribute, every UID under the DICOM root too)."""
        uid = uid.strip(" \x00")
        if not uid or (names_standard_class(uid) if names_class else is_registered_uid(uid)):
            return uid
        new = self._cache.get(uid)
        if new is None:
            new = keyed_uid(self._key, uid)
            self._cache[uid] = new
        return new

    def remap_multi(self, value: str, *, names_class: bool = False) -> str:
        """A backslash-separated multi-valued UI string, each value remapped."""
        if "\\" not in value:
            return self.remap(value, names_class=names_class)
        return "\\".join(self.remap(part, names_class=names_class) for part in value.split("\\"))
