"""The de-identification rule set: load it from YAML, resolve actions per tag, check it against PS3.15.

A rule file (default `config/deid/basic-mr.yaml`) states, for every row of PS3.15 Table E.1-1, the Basic
Profile action and the action the profile applies; a keep-list of standard attributes an MR image needs;
`extra` actions for a few standard attributes outside the table; the Type of attributes whose compound
action depends on it; and the Retain Safe Private allow-list. Everything else is removed (allow-list).

`load_rules()` gives a `RuleSet` whose `resolved_action_for(tag)` is a dictionary lookup for the engine's
hot loop. `check_rules()` (command `bidsafe check-rules`) verifies a rule file against the table: every
row present, none weaker than the Basic Profile plus the options the file declares.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bidsafe import resources
from bidsafe.deid.dates import MAX_JITTER_DAYS
from bidsafe.errors import ConfigError

# --- vocabulary ---------------------------------------------------------------------------------------

ACTIONS: tuple[str, ...] = ("D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*")
COMPOUND_ACTIONS: frozenset[str] = frozenset({"Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
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

CURVE_PATTERN = "(50xx,xxxx)"
OVERLAY_DATA_PATTERN = "(60xx,3000)"
OVERLAY_COMMENTS_PATTERN = "(60xx,4000)"
PRIVATE_PATTERN = "(gggg,eeee) where gggg is odd"
PATTERNS: tuple[str, ...] = (CURVE_PATTERN, OVERLAY_DATA_PATTERN, OVERLAY_COMMENTS_PATTERN, PRIVATE_PATTERN)

TABLE_EDITION = "2024b"
TABLE_ROWS = 621
TABLE_ENV = "BIDSAFE_PS315_TABLE"
METHOD_MAX_CHARS = 64  # DeidentificationMethod is LO

# Images withheld by default because their pixels may carry burned-in text or a face (judged by
# bidsafe.deid.engine.burned_in_findings). A rule file may allow a class, with its reason: `burned_in: {allow:
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

    def code_for(self, option: str) -> tuple[str, str]:
        return OPTION_CODES[option]

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


# --- loading ------------------------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The shipped rule set (`config/deid/basic-mr.yaml`, inside the package when installed from a wheel)."""
    return resources.path("config/deid/basic-mr.yaml")


def parse_tag(text: str) -> int:
    match = _TAG_RE.match(text.strip())
    if match is None:
        raise ValueError(f"bad tag syntax {text!r} (expected '(gggg,eeee)' in hex)")
    return int(match.group(1) + match.group(2), 16)


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rule file ({exc.strerror})", path) from exc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from exc


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        return int(text, 16) if text.startswith("0x") or re.fullmatch(r"[0-9a-f]+", text) else int(text)
    raise ValueError(f"{what} must be a number, not {type(value).__name__}")


def _keyword_tag(keyword: str) -> int | None:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)


def _parse(raw: Any, path: Path) -> tuple[RuleSet | None, list[str]]:
    """Parse and validate a rule file's content; return the rule set (None if unusable) and every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        return None, ["the file must be a YAML mapping with profile, options, codes, table, keep, ..."]

    def text(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"'{key}' must be a non-empty text")
            return ""
        return value.strip()

    profile = text("profile")
    description = str(raw.get("description") or "").strip()
    method = text("method")
    if len(method) > METHOD_MAX_CHARS:
        problems.append(f"'method' is {len(method)} characters; DeidentificationMethod (LO) allows {METHOD_MAX_CHARS}")

    options_raw = raw.get("options") or []
    if not isinstance(options_raw, list):
        problems.append("'options' must be a list of option names")
        options_raw = []
    options: list[str] = []
    for option in options_raw:
        if option not in OPTION_CODES or option == "basic":
            problems.append(f"options: unknown option {option!r} (known: {', '.join(list(OPTION_CODES)[1:])})")
        elif option in options:
            problems.append(f"options: {option} listed twice")
        else:
            options.append(option)

    codes = _parse_codes(raw.get("codes"), options, problems)

    table: dict[int, TagRule] = {}
    patterns: list[TagRule] = []
    rows_raw = raw.get("table")
    if not isinstance(rows_raw, list) or not rows_raw:
        problems.append("'table' must be a non-empty list of rows")
        rows_raw = []
    seen_patterns: set[str] = set()
    for index, row in enumerate(rows_raw):
        rule = _parse_row(row, index, options, problems, section="table")
        if rule is None:
            continue
        if rule.tag in PATTERNS:
            if rule.tag in seen_patterns:
                problems.append(f"table: duplicate row {rule.tag}")
            seen_patterns.add(rule.tag)
            patterns.append(rule)
            continue
        tag = parse_tag(rule.tag)
        if tag in table:
            problems.append(f"table: duplicate row {rule.tag} {rule.keyword}")
        table[tag] = rule

    extra: dict[int, TagRule] = {}
    for index, row in enumerate(_list(raw, "extra", problems)):
        rule = _parse_row(row, index, options, problems, section="extra")
        if rule is None:
            continue
        if rule.tag in PATTERNS:
            problems.append(f"extra: {rule.tag}: patterns belong in the table")
            continue
        tag = parse_tag(rule.tag)
        if rule.action == "K":
            problems.append(f"extra: {rule.tag} {rule.keyword}: action K belongs on the keep-list")
        if not rule.reason:
            problems.append(f"extra: {rule.tag} {rule.keyword}: missing reason")
        if tag in table or tag in extra:
            problems.append(f"extra: {rule.tag} {rule.keyword}: duplicate (already a table or extra row)")
        extra[tag] = rule

    keep: dict[int, str] = {}
    for index, entry in enumerate(_list(raw, "keep", problems)):
        parsed = _parse_keep(entry, index, problems)
        if parsed is None:
            continue
        tag, name, reason = parsed
        where = f"keep: {format_tag(tag)} {name}"
        if tag in keep:
            problems.append(f"{where}: duplicate")
        elif tag in table:
            problems.append(f"{where}: is a Table E.1-1 row; its action belongs in the table")
        elif tag in extra:
            problems.append(f"{where}: also in extra")
        elif (tag >> 16) & 1:
            problems.append(f"{where}: private (odd group); private elements belong in safe_private")
        keep[tag] = reason

    iod_types = _parse_iod_types(raw.get("iod_types"), problems)
    safe_private = _parse_safe_private(raw.get("safe_private"), problems)

    date_mode, max_shift_days = "shift", 0
    dates = raw.get("dates")
    if not isinstance(dates, dict) or dates.get("mode") not in ("shift", "remove"):
        problems.append("'dates' must be {mode: shift, max_shift_days: N} or {mode: remove}")
    else:
        date_mode = dates["mode"]
        if date_mode == "shift":
            try:
                max_shift_days = _as_int(dates.get("max_shift_days"), "dates.max_shift_days")
            except ValueError as exc:
                problems.append(str(exc))
            else:
                if not 1 <= max_shift_days <= MAX_JITTER_DAYS:
                    # the jitter around the fixed move back before 1925 (bidsafe.deid.dates)
                    problems.append(f"dates.max_shift_days must be between 1 and {MAX_JITTER_DAYS}")
    if date_mode == "remove" and "retain_long_modif_dates" in options:
        problems.append(
            "dates: mode remove contradicts the declared option retain_long_modif_dates (its code says dates "
            "were kept, shifted): drop the option, its code and its rows' C actions"
        )
    burned_in = _parse_burned_in(raw.get("burned_in", "withhold"), problems)
    uids = raw.get("uids") or {}
    uid_root = uids.get("root") if isinstance(uids, dict) else None
    if uid_root != "2.25.":
        problems.append("'uids' must be {root: \"2.25.\"} (UUID-derived UIDs need no registered root)")
        uid_root = "2.25."

    if problems and not table:
        return None, problems

    resolved: dict[int, str] = {tag: "K" for tag in keep}
    for tag, rule in table.items():
        resolved[tag] = resolve_action(rule.action, iod_types.get(tag))
    for tag, rule in extra.items():
        resolved[tag] = resolve_action(rule.action, iod_types.get(tag))
    rules = RuleSet(
        path=path,
        profile=profile,
        options=tuple(options),
        codes=codes,
        method=method,
        table=table,
        patterns=tuple(patterns),
        keep=keep,
        iod_types=iod_types,
        safe_private=safe_private,
        date_mode=date_mode,
        max_shift_days=max_shift_days,
        burned_in=burned_in,
        extra=extra,
        uid_root=uid_root,
        description=description,
        resolved=resolved,
        safe_private_keys=frozenset((normalise_creator(s.creator), s.group, s.element) for s in safe_private),
    )
    return rules, problems


def _list(raw: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"'{key}' must be a list")
        return []
    return value


def _parse_burned_in(value: Any, problems: list[str]) -> dict[str, str]:
    """`withhold` (every class withheld) or `{allow: {class: reason}}`; returns the allowed classes."""
    if value == "withhold":
        return {}
    if not isinstance(value, dict) or set(value) - {"allow"}:
        problems.append("'burned_in' must be withhold or {allow: {class: reason}} (allowing every class at once, "
                        "'keep', is not accepted: allow classes one by one, each with its reason)")
        return {}
    allow = value.get("allow") or {}
    if not isinstance(allow, dict):
        problems.append("burned_in.allow must map a class to its reason")
        return {}
    allowed: dict[str, str] = {}
    for name, reason in allow.items():
        if name not in BURNED_IN_CLASSES:
            problems.append(f"burned_in.allow: unknown class {name!r} (known: {', '.join(BURNED_IN_CLASSES)})")
        elif not isinstance(reason, str) or not reason.strip():
            problems.append(f"burned_in.allow: class {name} needs a reason (why this site's images are safe)")
        else:
            allowed[name] = reason.strip()
    return allowed


def _parse_codes(value: Any, options: list[str], problems: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        problems.append("'codes' must list {value, meaning} for 113100 and each option")
        return ()
    codes: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str | int):
            problems.append(f"codes: bad entry {item!r} (expected {{value: \"113100\", meaning: ...}})")
            continue
        codes.append((str(item["value"]), str(item.get("meaning", ""))))
    expected = [OPTION_CODES["basic"]] + [OPTION_CODES[o] for o in options]
    if codes != expected:
        want = ", ".join(f"{v} {m}" for v, m in expected)
        problems.append(f"codes must be exactly, in order: {want} (113100, then one per declared option)")
    return tuple(codes)


def _parse_row(row: Any, index: int, options: list[str], problems: list[str], section: str) -> TagRule | None:
    where = f"{section}[{index}]"
    if not isinstance(row, dict):
        problems.append(f"{where}: a row must be a mapping with tag, keyword, basic, action")
        return None
    tag_text = str(row.get("tag", "")).strip()
    keyword = str(row.get("keyword") or "").strip()
    where = f"{section}: {tag_text or where} {keyword}".rstrip()
    if tag_text not in PATTERNS:
        try:
            tag = parse_tag(tag_text)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return None
        tag_text = format_tag(tag)
        known = _keyword_tag(keyword) if keyword else None
        if known is not None and known != tag:
            problems.append(f"{where}: keyword {keyword} is {format_tag(known)} in PS3.6, not {tag_text}")
    if not keyword:
        problems.append(f"{where}: missing keyword")
    action = row.get("action")
    basic = row.get("basic", "X" if section == "extra" else None)
    if action not in ACTIONS:
        problems.append(f"{where}: unknown action {action!r} (allowed: {' '.join(ACTIONS)})")
        return None
    if basic not in ACTIONS:
        problems.append(f"{where}: unknown basic action {basic!r} (allowed: {' '.join(ACTIONS)})")
        return None
    row_options = row.get("options") or []
    if isinstance(row_options, str):
        row_options = [row_options]
    for option in row_options:
        if option not in options:
            problems.append(f"{where}: option {option!r} is not declared in 'options'")
    reason = row.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        problems.append(f"{where}: empty reason")
        reason = None
    if row_options and not reason:
        problems.append(f"{where}: missing reason for an option's action")
    return TagRule(
        tag=tag_text,
        keyword=keyword,
        basic=basic,
        action=action,
        options=tuple(str(o) for o in row_options),
        reason=reason.strip() if isinstance(reason, str) else None,
    )


def _parse_keep(entry: Any, index: int, problems: list[str]) -> tuple[int, str, str] | None:
    if not isinstance(entry, dict):
        problems.append(f"keep[{index}]: an entry must be {{tag, keyword, reason}}")
        return None
    keyword = str(entry.get("keyword") or "").strip()
    tag_text = entry.get("tag")
    try:
        tag = parse_tag(str(tag_text)) if tag_text is not None else _keyword_tag(keyword)
    except ValueError as exc:
        problems.append(f"keep: {tag_text} {keyword}: {exc}")
        return None
    if tag is None:
        problems.append(f"keep[{index}]: unknown keyword {keyword!r} and no tag")
        return None
    where = f"keep: {format_tag(tag)} {keyword}".rstrip()
    known = _keyword_tag(keyword) if keyword else None
    if keyword and known is not None and known != tag:
        problems.append(f"{where}: keyword {keyword} is {format_tag(known)} in PS3.6")
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"{where}: missing reason (every keep-list entry says why the attribute is needed)")
        return None
    return tag, keyword, reason.strip()


def _parse_iod_types(value: Any, problems: list[str]) -> dict[int, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("'iod_types' must map keyword (or tag) -> 1, 2 or 3")
        return {}
    types: dict[int, int] = {}
    for key, typ in value.items():
        key_text = str(key).strip()
        try:
            tag = parse_tag(key_text) if key_text.startswith("(") else _keyword_tag(key_text)
        except ValueError as exc:
            problems.append(f"iod_types: {exc}")
            continue
        if tag is None:
            problems.append(f"iod_types: unknown keyword {key_text!r}")
            continue
        if typ not in (1, 2, 3):
            problems.append(f"iod_types: {key_text}: Type must be 1, 2 or 3, not {typ!r}")
            continue
        types[tag] = typ
    return types


def _parse_safe_private(value: Any, problems: list[str]) -> tuple[SafePrivate, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append("'safe_private' must be a list of {creator, group, element, reason}")
        return ()
    entries: list[SafePrivate] = []
    seen: set[tuple[str, int, int]] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.append(f"safe_private[{index}]: an entry must be {{creator, group, element, reason}}")
            continue
        creator = item.get("creator")
        try:
            group = _as_int(item.get("group"), "group")
            element = _as_int(item.get("element"), "element")
        except ValueError as exc:
            problems.append(f"safe_private[{index}] {creator!r}: {exc}")
            continue
        where = f"safe_private: {creator!r} ({group:04X},xx{element & 0xFF:02X})"
        if not isinstance(creator, str) or not creator.strip():
            problems.append(f"{where}: missing private creator")
            continue
        if not group & 1 or not 0x0009 <= group <= 0xFFFF:
            problems.append(f"{where}: group must be odd (a private group), not {group:04X}")
            continue
        if not 0 <= element <= 0xFF:
            problems.append(f"{where}: element must be the offset 0x00-0xFF within the block")
            continue
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where}: missing reason")
            continue
        key = (normalise_creator(creator), group, element)
        if key in seen:
            problems.append(f"{where}: duplicate")
            continue
        seen.add(key)
        entries.append(SafePrivate(creator=creator.strip(), group=group, element=element, reason=reason.strip()))
    return tuple(entries)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rule file (default: the shipped profile). Raises ConfigError naming the problem."""
    rules_path = Path(path) if path is not None else default_rules_path()
    rules, problems = _parse(read_yaml(rules_path), rules_path)
    if problems or rules is None:
        shown = "; ".join(problems[:5])
        more = f"; and {len(problems) - 5} more (run `bidsafe check-rules`)" if len(problems) > 5 else ""
        raise ConfigError(f"bad rule file: {shown}{more}", rules_path)
    return rules


# --- checking against Table E.1-1 ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    rules_path: Path
    table_path: Path
    rows_expected: int
    rows_present: int
    basic_counts: Mapping[str, int]
    applied_counts: Mapping[str, int]
    option_counts: Mapping[str, int]
    keep_count: int
    extra_count: int
    safe_private_count: int
    options: tuple[str, ...]
    gaps: tuple[str, ...]
    burned_in_allowed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.gaps

    def render(self) -> str:
        lines = [f"check-rules: {self.rules_path}"]
        lines.append(f"  against Table E.1-1 ({self.table_path}, {self.rows_expected} rows)")
        lines.append(f"  options declared: {', '.join(self.options) or 'none'}")
        lines.append(f"  rows present: {self.rows_present}/{self.rows_expected}")
        lines.append(f"  {'action':<8}{'basic':>7}{'applied':>9}")
        for action in (*ACTIONS, "U*"):
            basic = self.basic_counts.get(action, 0)
            applied = self.applied_counts.get(action, 0)
            if basic or applied:
                lines.append(f"  {action:<8}{basic:>7}{applied:>9}")
        for option, count in sorted(self.option_counts.items()):
            lines.append(f"  rows changed by {option}: {count}")
        lines.append(
            f"  keep-list: {self.keep_count} attributes; extra: {self.extra_count}; "
            f"safe private: {self.safe_private_count} elements"
        )
        lines.append(f"  burned-in classes allowed: {', '.join(self.burned_in_allowed) or 'none (all withheld)'}")
        if self.gaps:
            lines.append(f"  FAILED: {len(self.gaps)} gap(s)")
            lines.extend(f"  gap: {gap}" for gap in self.gaps)
        else:
            lines.append("  OK: every row covered, none weaker than Basic plus the declared options")
        return "\n".join(lines)


def packaged_table() -> Path:
    """Table E.1-1 as shipped inside the package (PS3.15 edition TABLE_EDITION; provenance in its README.md)."""
    return resources.package_file("data/ps315/table_e1_1.json")


def find_table(explicit: Path | None = None) -> Path:
    """The Table E.1-1 JSON: --table, else $BIDSAFE_PS315_TABLE, else the copy shipped in the package.

    Never None: a check without the table cannot see a missing row, so it would pass whatever was deleted.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(TABLE_ENV)
    if env:
        return Path(env)
    return packaged_table()


def load_table(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Table E.1-1 JSON ({exc})", path) from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "tag" in r for r in rows):
        raise ConfigError("not a Table E.1-1 JSON (expected a list of rows with 'tag')", path)
    return rows


def _table_key(tag_text: str) -> str:
    return tag_text if tag_text in PATTERNS else format_tag(parse_tag(tag_text))


def acceptable(rule: TagRule, declared: Iterable[str], option_actions: Mapping[str, str]) -> str | None:
    """Why `rule.action` is too weak for its row, or None when it is acceptable.

    Acceptable: at least as strong as the Basic action (STRENGTH), or exactly the action that a declared
    option's column of Table E.1-1 gives for this row.
    """
    if STRENGTH[rule.action] >= STRENGTH[rule.basic]:
        return None
    declared = set(declared)
    allowed = {o for o, a in option_actions.items() if a == rule.action and o in declared}
    if allowed:
        return None
    if any(a == rule.action for a in option_actions.values()):
        needed = ", ".join(sorted(o for o, a in option_actions.items() if a == rule.action))
        return f"{rule.action} needs option {needed}, which the file does not declare"
    return f"{rule.action} is weaker than Basic {rule.basic} and no option's column gives {rule.action}"


def check_rules(rules_path: Path, table_path: Path | None = None) -> CheckResult:
    """Check one rule file against Table E.1-1 (`table_path`, else $BIDSAFE_PS315_TABLE, else the shipped copy)."""
    rules_path = Path(rules_path)
    gaps: list[str] = []
    raw = read_yaml(rules_path)
    rules, problems = _parse(raw, rules_path)
    gaps.extend(problems)
    table_file = find_table(table_path)
    if not table_file.is_file():
        raise ConfigError("Table E.1-1 JSON not found", table_file)
    table_rows = load_table(table_file)

    file_rows: dict[str, TagRule] = {}
    if rules is not None:
        file_rows = {rule.tag: rule for rule in rules.table.values()}
        file_rows.update({rule.tag: rule for rule in rules.patterns})
    declared = rules.options if rules is not None else ()

    basic_counts: Counter[str] = Counter()
    applied_counts: Counter[str] = Counter()
    option_counts: Counter[str] = Counter()
    rows_present = 0
    expected_keys = set()
    for row in table_rows:
        key = _table_key(row["tag"])
        expected_keys.add(key)
        name = row.get("keyword") or row.get("name") or ""
        basic_counts[row["basic_profile"]] += 1
        rule = file_rows.get(key)
        if rule is None:
            gaps.append(f"{key} {name}: Table E.1-1 row missing (Basic {row['basic_profile']})")
            continue
        rows_present += 1
        if rule.basic != row["basic_profile"]:
            gaps.append(f"{key} {name}: basic recorded as {rule.basic}, Table E.1-1 says {row['basic_profile']}")
            rule = TagRule(rule.tag, rule.keyword, row["basic_profile"], rule.action, rule.options, rule.reason)
        option_actions = {o: row[o] for o in TABLE_OPTIONS if row.get(o)}
        why = acceptable(rule, declared, option_actions)
        if why is not None:
            gaps.append(f"{key} {name}: {why}")
        for option in rule.options:
            if option_actions.get(option) != rule.action:
                gaps.append(
                    f"{key} {name}: names option {option}, but its column gives "
                    f"{option_actions.get(option) or 'nothing'}, not {rule.action}"
                )
        _count(rule, rules, applied_counts, option_counts)
    for key, rule in file_rows.items():
        if key not in expected_keys:
            gaps.append(f"{key} {rule.keyword}: not a row of Table E.1-1 (put it in keep or extra)")
    rows_expected = len(table_rows)
    for option in declared:
        if option in TABLE_OPTIONS and not option_counts.get(option):
            gaps.append(f"option {option} is declared (code {OPTION_CODES[option][0]}) but applied to no row")
    if rules is not None:
        for tag, rule in rules.extra.items():
            if STRENGTH[rule.action] < STRENGTH["U"] and rule.action != "C":
                gaps.append(f"extra: {format_tag(tag)} {rule.keyword}: action {rule.action} keeps the value")
    return CheckResult(
        rules_path=rules_path,
        table_path=table_file,
        rows_expected=rows_expected,
        rows_present=rows_present,
        basic_counts=dict(basic_counts),
        applied_counts=dict(applied_counts),
        option_counts=dict(option_counts),
        keep_count=len(rules.keep) if rules is not None else 0,
        extra_count=len(rules.extra) if rules is not None else 0,
        safe_private_count=len(rules.safe_private) if rules is not None else 0,
        options=tuple(declared),
        gaps=tuple(gaps),
        burned_in_allowed=tuple(sorted(rules.burned_in)) if rules is not None else (),
    )


def weakened(rules: RuleSet) -> RuleSet:
    """The rule set marked as not removing identity: what a rejected rule set may honestly stamp."""
    return replace(
        rules, identity_removed=False, codes=(),
        method=f"{rules.method} (weaker than the PS3.15 Basic Profile; not de-identified)",
    )


def require_checked_rules(rules_path: Path, *, allow_weaker: bool = False,
                          table_path: Path | None = None) -> tuple[str, ...]:
    """The check `bidsafe check-rules` runs, applied before a rule set is used.

    Returns the gaps (empty when the file passes). A rejected file raises ConfigError naming the file and its
    first gaps, unless `allow_weaker`: then the gaps are returned and the caller marks its output not shareable.
    """
    result = check_rules(Path(rules_path), table_path)
    if result.ok or allow_weaker:
        return result.gaps
    shown = "; ".join(result.gaps[:3])
    more = f"; and {len(result.gaps) - 3} more" if len(result.gaps) > 3 else ""
    raise ConfigError(
        f"rule set rejected by `bidsafe check-rules` ({len(result.gaps)} gap(s)): {shown}{more}. Fix the file "
        "(run `bidsafe check-rules` on it), or allow it explicitly (`--allow-weaker-rules`, config "
        "`deid.allow_weaker_rules: true`): its output is then marked not shareable and never published",
        rules_path,
    )


def _count(rule: TagRule, rules: RuleSet | None, applied: Counter[str], options: Counter[str]) -> None:
    if rule.tag in PATTERNS or rules is None:
        applied[resolve_action(rule.action, None)] += 1
    else:
        applied[rules.resolved.get(parse_tag(rule.tag), rule.action)] += 1
    for option in rule.options:
        options[option] += 1
