"""The rule set's data model: actions, options, patterns, burned-in classes, and `RuleSet` (what the engine
applies; `bidsafe.deid.rules.load_rules` builds it from a rule file checked by `bidsafe.deid.rulefile`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bidsafe import resources

# --- vocabulary ---------------------------------------------------------------------------------------

SCHEMA_FILE = "data/deid_rules.schema.json"


@cache
def rules_schema() -> dict[str, Any]:
    """The rule file's JSON Schema (package data): the names of actions and patterns are stated there."""
    loaded: dict[str, Any] = json.loads(resources.package_file(SCHEMA_FILE).read_text(encoding="utf-8"))
    return loaded


def _schema_enum(name: str) -> tuple[str, ...]:
    return tuple(str(value) for value in rules_schema()["$defs"][name]["enum"])


ACTIONS: tuple[str, ...] = _schema_enum("action")
COMPOUND_ACTIONS: frozenset[str] = frozenset(a for a in ACTIONS if "/" in a)
# What `resolved_action_for` returns: a simple action, or "U*" for a kept sequence whose UIDs are remapped.
RESOLVED_ACTIONS: tuple[str, ...] = ("D", "Z", "X", "K", "C", "U", "U*")

# Privacy strength of an action: how much of the original value can survive.
#   3  X, Z, D and their compounds: the value is gone (removed, emptied or replaced by a dummy).
#   2  U (and X/Z/U*): the value is replaced by a keyed pseudonym; the original is gone but the linkage
#      between instances of the set survives (that is what U is for).
#   1  C: the value survives with the personal values found in the study removed.
#   0  K: the value survives as is.
# X, Z and D are deliberately equal: all three drop the original value; they differ only in whether the
# attribute is still present, which matters for IOD conformance, not for privacy.
STRENGTH: Mapping[str, int] = {
    "X": 3, "Z": 3, "D": 3, "Z/D": 3, "X/Z": 3, "X/D": 3, "X/Z/D": 3,
    "U": 2, "X/Z/U*": 2, "U*": 2,
    "C": 1,
    "K": 0,
}

# Option field names (as in table_e1_1.json) -> PS3.16 CID 7050 code (scheme DCM) and code meaning.
OPTION_CODES: Mapping[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel": ("113101", "Clean Pixel Data Option"),
    "clean_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graph": ("113103", "Clean Graphics Option"),
    "clean_struct_cont": ("113104", "Clean Structured Content Option"),
    "clean_desc": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modif_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_chars": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_ident": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_ident": ("113112", "Retain Institution Identity Option"),
}
# The option columns of Table E.1-1 (the others above have no column: they act on pixels).
TABLE_OPTIONS: tuple[str, ...] = (
    "retain_safe_private", "retain_uids", "retain_device_ident", "retain_institution_ident",
    "retain_patient_chars", "retain_long_full_dates", "retain_long_modif_dates", "clean_desc",
    "clean_struct_cont", "clean_graph",
)

PATTERNS: tuple[str, ...] = _schema_enum("pattern")
CURVE_PATTERN, OVERLAY_DATA_PATTERN, OVERLAY_COMMENTS_PATTERN, PRIVATE_PATTERN = PATTERNS  # the schema's order

METHOD_MAX_CHARS = 64  # DeidentificationMethod is LO

# Images withheld by default because their pixels may carry burned-in text or a face (judged by
# bidsafe.deid.burnedin.burned_in_findings). A rule file may allow a class, with its reason: `burned_in: {allow:
# {class: reason}}`. A DICOMDIR is always withheld and is no class.
BURNED_IN_CLASSES: Mapping[str, str] = {
    "burned_in_annotation": "BurnedInAnnotation (0028,0301) is YES",
    "recognizable_visual_features": "RecognizableVisualFeatures (0028,0302) is YES",
    "ultrasound": "an ultrasound SOP class or Modality US/IVUS",
    "visible_light": "a visible-light SOP class (1.2.840.10008.5.1.4.1.1.77.x: photographs, endoscopy, ...)",
    "secondary_capture": "a Secondary Capture SOP class (exactly .7, .7.1-.7.4), or ImageType SECONDARY with "
    "Modality OT/SC",
    "screen_save": "ImageType SCREEN SAVE / SCREENSAVE",
    "report": "ImageType naming a report or a dose screen (...REPORT, DOSE_INFO)",
    "colour": "an image whose PhotometricInterpretation is not MONOCHROME1/2",
    "no_geometry": "an image without ImagePositionPatient and ImageOrientationPatient (top level or functional "
    "groups)",
}

_TAG_RE = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$")


# --- data model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagRule:
    tag: str  # "(0010,0010)" or a pattern "(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)", PRIVATE_PATTERN
    keyword: str
    basic: str  # Basic Profile action from Table E.1-1
    action: str  # the action this profile applies: one of ACTIONS
    options: tuple[str, ...]  # option names that changed it, e.g. ("clean_desc",)
    reason: str | None


@dataclass(frozen=True)
class SafePrivate:
    creator: str  # private creator string, compared case-insensitively with surrounding spaces stripped
    group: int
    element: int  # element offset 0x00-0xFF within the block
    reason: str


@dataclass(frozen=True, eq=False)
class RuleSet:
    path: Path
    profile: str
    options: tuple[str, ...]
    codes: tuple[tuple[str, str], ...]  # (code value, code meaning), 113100 first
    method: str  # text for DeidentificationMethod
    table: Mapping[int, TagRule]  # non-pattern rows, tag int -> rule
    patterns: tuple[TagRule, ...]
    keep: Mapping[int, str]  # tag int -> reason
    iod_types: Mapping[int, int]  # tag int -> 1/2/3
    safe_private: tuple[SafePrivate, ...]
    date_mode: str  # "shift" | "remove"
    max_shift_days: int
    burned_in: Mapping[str, str]  # burned-in classes allowed (not withheld) -> the site's reason; empty by default
    # Additions to the contract:
    extra: Mapping[int, TagRule] = field(default_factory=dict)  # standard, not in the table, not K
    uid_root: str = "2.25."
    description: str = ""
    # Precomputed for the engine's hot loop: every table, extra and keep-list tag -> resolved action.
    resolved: Mapping[int, str] = field(default_factory=dict)
    # (creator lower-stripped, group, element offset) for `is_safe_private`.
    safe_private_keys: frozenset[tuple[str, int, int]] = frozenset()
    # False for a rule set check-rules rejects, applied only on explicit request (allow_weaker_rules): the
    # output then says PatientIdentityRemoved NO and claims no de-identification method code.
    identity_removed: bool = True

    def action_for(self, tag: int) -> str:
        """The action for a tag as written in the rule file (compound actions unresolved).

        Standard tags: the table row, else `extra`, else the repeating-group patterns (50xx curve data,
        60xx overlay data and comments), else "K" on the keep-list, else "X". Private tags (odd group):
        "X"; the engine keeps an element only when `is_safe_private` says so for its block's creator.
        """
        if (tag >> 16) & 1:
            return "X"
        rule = self.table.get(tag) or self.extra.get(tag)
        if rule is not None:
            return rule.action
        pattern = self._pattern_rule(tag)
        if pattern is not None:
            return pattern.action
        if tag in self.keep:
            return "K"
        return "X"

    def resolved_action_for(self, tag: int) -> str:
        """One of D Z X K C U, or "U*" (kept sequence, cleaned, UIDs remapped). Private tags give "X"."""
        action = self.resolved.get(tag)
        if action is not None:
            return action
        if (tag >> 16) & 1:
            return "X"
        pattern = self._pattern_rule(tag)
        if pattern is not None:
            return resolve_action(pattern.action, None)
        return "X"

    def is_safe_private(self, creator: str, group: int, element_offset: int) -> bool:
        return (normalise_creator(creator), group, element_offset & 0xFF) in self.safe_private_keys

    def _pattern_rule(self, tag: int) -> TagRule | None:
        group = tag >> 16
        if group & 1:
            return self._patterns_by_tag.get(PRIVATE_PATTERN)  # the engine decides per creator
        high = group & 0xFF00
        if high == 0x5000:
            return self._patterns_by_tag.get(CURVE_PATTERN)
        if high == 0x6000:
            element = tag & 0xFFFF
            if element == 0x3000:
                return self._patterns_by_tag.get(OVERLAY_DATA_PATTERN)
            if element == 0x4000:
                return self._patterns_by_tag.get(OVERLAY_COMMENTS_PATTERN)
        return None

    @property
    def _patterns_by_tag(self) -> Mapping[str, TagRule]:
        cached = self.__dict__.get("_patterns_cache")
        if cached is None:
            cached = {rule.tag: rule for rule in self.patterns}
            object.__setattr__(self, "_patterns_cache", cached)
        return cached


def normalise_creator(creator: str) -> str:
    return creator.strip().lower()


def resolve_action(action: str, iod_type: int | None) -> str:
    """Resolve a compound action by the attribute's Type in the IOD (None: not listed, i.e. Type 3).

    PS3.15 E.1.1: the first action applies unless a later one is needed to keep the IOD conformant.
    A Type 1 value must be present and non-empty (dummy), a Type 2 value present (may be empty).
    """
    if action not in COMPOUND_ACTIONS:
        return action
    required = iod_type if iod_type in (1, 2) else 3
    if action == "X/Z":
        return {1: "D", 2: "Z"}.get(required, "X")
    if action == "X/D":
        return "D" if required in (1, 2) else "X"
    if action == "Z/D":
        return "D" if required == 1 else "Z"
    if action == "X/Z/D":
        return {1: "D", 2: "Z"}.get(required, "X")
    # X/Z/U*: a Type 1 sequence holding references is kept, cleaned, its UIDs remapped; Type 2 emptied.
    return {1: "U*", 2: "Z"}.get(required, "X")


def parse_tag(text: str) -> int:
    match = _TAG_RE.match(text.strip())
    if match is None:
        raise ValueError(f"bad tag syntax {text!r} (expected '(gggg,eeee)' in hex)")
    return int(match.group(1) + match.group(2), 16)


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"

