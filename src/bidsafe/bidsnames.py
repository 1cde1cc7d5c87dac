"""BIDS naming: the names BIDS defines, read from the official BIDS schema, and bidsafe's own labels.

What BIDS defines (entity keys and their order, datatypes, suffixes, NIfTI extensions) comes from the schema that
`bidsschematools` ships (`bidsschematools.schema.load_schema()`), never from a hand-written list: scrub, QC, the
release gates and deface name files through this module. Which suffixes a site defaces, exempts or releases is
policy (config); such lists are checked against the schema's names (`unknown_suffixes`, used by the config
checker for `format: bids-suffix`; `known_suffix`) instead of restating them.

bidsafe's own facts about names live here too, stated once:
- `LABEL`: a subject or session label bidsafe writes or accepts, letters and digits only. This is narrower than
  the BIDS label format (which also allows `+`): a pseudonym never needs one, and a `+` would read as two labels.
- `session_of`: the `sub-S/ses-T` pair a path names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from bidsafe.errors import ConfigError

# A subject or session label: the pseudonyms bidsafe writes and every label it accepts in a path or a table.
LABEL = "[A-Za-z0-9]+"
LABEL_RE = re.compile(LABEL)


def is_label(text: str | None) -> bool:
    """True for a bare subject or session label (`01`, `a7k2`): letters and digits, nothing else (not even the
    trailing newline that `^...$` lets through)."""
    return text is not None and LABEL_RE.fullmatch(text) is not None


@functools.cache
def _schema() -> Any:
    from bidsschematools.schema import load_schema

    return load_schema()


@functools.cache
def entity_order() -> tuple[str, ...]:
    """Every BIDS entity key (`sub`, `ses`, `task`, `acq`, ...) in the order a file name must give them."""
    schema = _schema()
    return tuple(str(schema.objects.entities[name].name) for name in schema.rules.entities)


@functools.cache
def datatypes() -> frozenset[str]:
    """Every BIDS datatype folder name (`anat`, `func`, `dwi`, `fmap`, ...)."""
    return frozenset(str(d.value) for d in _schema().objects.datatypes.values())


@functools.cache
def suffixes() -> frozenset[str]:
    """Every BIDS suffix (`T1w`, `bold`, `dwi`, `epi`, ...)."""
    return frozenset(str(s.value) for s in _schema().objects.suffixes.values())


@functools.cache
def structural_suffixes() -> frozenset[str]:
    """The suffixes of the schema's non-parametric (weighted, structural) anatomical images: `T1w`, `T2w`,
    `FLAIR`, ... (not the quantitative maps such as `T1map`)."""
    return frozenset(str(s) for s in _schema().rules.files.raw.anat.nonparametric.suffixes)


@functools.cache
def nifti_extensions() -> tuple[str, ...]:
    """The NIfTI file extensions, longest first (`.nii.gz` must be tried before `.nii`)."""
    extensions = _schema().objects.extensions
    return tuple(sorted((str(extensions[k].value) for k in ("nii_gz", "nii")), key=len, reverse=True))


# Evaluated once at import (the schema is read once per process, ~0.1 s): module constants for the callers.
NIFTI_EXTENSIONS: tuple[str, ...] = nifti_extensions()
ANAT = "anat"  # the datatype folder of anatomical images (checked against the schema below)
if ANAT not in datatypes():  # pragma: no cover - a schema that dropped `anat` would change every rule here
    raise ImportError("the BIDS schema has no 'anat' datatype")


def image_suffix(name: str | PurePath) -> str | None:
    """BIDS suffix of a NIfTI file name (`sub-1_ses-1_run-1_T1w.nii.gz` -> `T1w`); None for any other file."""
    text = PurePath(name).name
    for ext in NIFTI_EXTENSIONS:
        if text.endswith(ext):
            return text[: -len(ext)].rsplit("_", 1)[-1]
    return None


def split_nifti(name: str) -> tuple[str, str]:
    """(stem, extension) of a NIfTI file name; (name, "") for any other file."""
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def _session_at(parts: tuple[str, ...]) -> int | None:
    for i in range(len(parts) - 1):
        if parts[i].startswith("sub-") and parts[i + 1].startswith("ses-"):
            return i
    return None


def session_of(path: str | PurePath) -> tuple[str, str] | None:
    """(subject, session) labels of the first `sub-S/ses-T` folder pair in `path`, without prefixes; None when
    the path names no such pair."""
    parts = PurePath(path).parts
    i = _session_at(parts)
    return None if i is None else (parts[i][4:], parts[i + 1][4:])


def from_session(path: str | PurePath) -> str | None:
    """`path` from its first `sub-S/ses-T` pair on (`/w/deface/sub-1/ses-2/records.json` ->
    `sub-1/ses-2/records.json`), None when it names no such pair: a location without the folders above it."""
    parts = PurePath(path).parts
    i = _session_at(parts)
    return None if i is None else "/".join(parts[i:])


def unknown_suffixes(names: Iterable[str]) -> list[str]:
    """The names in `names` that are not BIDS suffixes, sorted (a policy list is checked with this)."""
    known = suffixes()
    return sorted({n for n in names if n not in known})


def known_suffix(name: str) -> str:
    """`name`, once checked to be a BIDS suffix (for a suffix stated as policy in code, e.g. deface's reference)."""
    if name not in suffixes():
        raise ConfigError(f"'{name}' is not a suffix of the BIDS schema")
    return name


__all__ = ["ANAT", "LABEL", "LABEL_RE", "NIFTI_EXTENSIONS", "datatypes", "entity_order", "from_session", "image_suffix",
           "is_label", "known_suffix", "nifti_extensions", "session_of", "split_nifti", "structural_suffixes",
           "suffixes", "unknown_suffixes"]
