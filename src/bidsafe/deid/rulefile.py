"""Reading a rule file's content into a `RuleSet`, with every problem as one line naming the rule.

Two steps. The JSON Schema shipped as package data (`data/deid_rules.schema.json`) checks the shape: keys,
types, tag syntax, known actions, options and burned-in classes; each of its failures becomes the one-line
problem its `x-problem` states, placed at the rule it concerns (`table: (0010,0010) PatientName: ...`), never a
jsonschema dump. The semantic pass then checks what a schema cannot say: a keyword names its tag, options named
on a row are declared and codes follow the declared options, no duplicates, keep-list and extra stay out of the
table, the date shift's range, and builds the `RuleSet` from the entries the schema passed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bidsafe.deid.dates import MAX_JITTER_DAYS
from bidsafe.deid.ruleset import (
    METHOD_MAX_CHARS,
    OPTION_CODES,
    PATTERNS,
    RuleSet,
    SafePrivate,
    TagRule,
    format_tag,
    normalise_creator,
    parse_tag,
    resolve_action,
    rules_schema,
)

# Sections whose entries are checked one by one: an entry the schema rejects is left out of the rule set.
_ENTRY_SECTIONS = ("options", "codes", "table", "extra", "keep", "iod_types", "safe_private")
_REQUIRED = re.compile(r"^'(.+)' is a required property")


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """`node` with each local `$ref` replaced by the schema it names, the referring node's own keys winning (its
    `x-problem` over the one of what it refers to). jsonschema resolves a `$ref` slowly, once per value: the
    621 rows of a rule file took longer to check than to read."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    own = {key: _inline(value, defs) for key, value in node.items() if key not in ("$ref", "$defs")}
    if "$ref" not in node:
        return own
    referred = _inline(defs[str(node["$ref"]).removeprefix("#/$defs/")], defs)
    return {**referred, **own}


@cache
def _inlined_schema() -> dict[str, Any]:
    schema = rules_schema()
    inlined: dict[str, Any] = _inline(schema, schema["$defs"])
    return inlined


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_inlined_schema())


# --- the schema's failures as one line each ----------------------------------------------------------------


def _template(schema_path: list[str | int], missing: str | None) -> str:
    """The `x-problem` of the deepest schema node on the path; for a missing property, that property's."""
    node: Any = _inlined_schema()
    found = str(node["x-problem"])
    holders = [node]  # the nodes passed, deepest last: where a missing property's schema is looked up
    for step in schema_path:
        container: Any = node  # a mapping keyed by name or a list by position, as the schema path says
        node = container[step] if isinstance(node, (dict, list)) else None
        if isinstance(node, dict):
            found = str(node.get("x-problem", found))
            holders.append(node)
    if missing is None:
        return found
    holder = next(h for h in reversed(holders) if missing in h.get("properties", {}))
    return str(holder["properties"][missing].get("x-problem", f"missing {missing}"))


def _row_label(section: str, row: Any, index: int) -> str:
    if not isinstance(row, dict):
        return f"{section}[{index}]"
    tag_text = str(row.get("tag", "")).strip()
    if tag_text not in PATTERNS:
        with contextlib.suppress(ValueError):  # a bad tag is named as written
            tag_text = format_tag(parse_tag(tag_text))
    keyword = str(row.get("keyword") or "").strip()
    return f"{section}: {tag_text or f'{section}[{index}]'} {keyword}".rstrip()


def _keep_label(entry: Any, index: int) -> str:
    if not isinstance(entry, dict):
        return f"keep[{index}]"
    keyword = str(entry.get("keyword") or "").strip()
    try:
        tag = parse_tag(str(entry["tag"])) if entry.get("tag") is not None else _keyword_tag(keyword)
    except ValueError:
        tag = None
    return f"keep: {format_tag(tag)} {keyword}".rstrip() if tag is not None else f"keep[{index}]"


def _private_label(entry: Any, index: int) -> str:
    try:
        group, element = _as_int(entry.get("group"), "group"), _as_int(entry.get("element"), "element")
    except (ValueError, AttributeError):
        return f"safe_private[{index}]"
    return f"safe_private: {entry.get('creator')!r} ({group:04X},xx{element & 0xFF:02X})"


def _where(raw: Any, path: list[str | int]) -> str:
    """Which rule a failure at instance `path` concerns, as check-rules names it ("" for the file's keys)."""
    if len(path) < 2 or not isinstance(raw, dict):
        return ""
    section, entry = str(path[0]), path[1]
    value: Any = raw.get(section)
    if section in ("table", "extra") and isinstance(entry, int):
        return _row_label(section, value[entry], entry)
    if section == "keep" and isinstance(entry, int):
        return _keep_label(value[entry], entry)
    if section == "safe_private" and isinstance(entry, int):
        return _private_label(value[entry], entry)
    if section == "iod_types":
        return f"iod_types: {entry}"
    if section in ("options", "codes"):
        return section
    return "burned_in.allow" if section == "burned_in" else ""


def schema_problems(raw: Any) -> tuple[list[str], set[tuple[str, str | int]]]:
    """(one line per schema failure, the (section, entry) pairs that failed: left out of the rule set)."""
    errors = sorted(
        _validator().iter_errors(raw),
        key=lambda e: [f"{p:08d}" if isinstance(p, int) else str(p) for p in e.absolute_path],
    )
    problems: list[str] = []
    bad: set[tuple[str, str | int]] = set()
    for error in errors:
        path = list(error.absolute_path)
        required = _REQUIRED.match(error.message) if error.validator == "required" else None
        missing = required.group(1) if required else None
        template = _template(list(error.absolute_schema_path), missing)
        key = missing or (str(path[-1]) if path else "")
        allowed = [str(v) for v in error.validator_value] if error.validator == "enum" else []
        value = None if missing else error.instance
        text = template.format(value=value, key=key, allowed=", ".join(allowed), allowed_words=" ".join(allowed))
        where = _where(raw, path)
        line = f"{where}: {text}" if where else text
        if line not in problems:
            problems.append(line)
        # a row whose reason, keyword or options fail is still read (its problem is listed); any other entry
        # that fails is left out, and so is a whole section that fails as such
        soft = len(path) > 2 and path[0] in ("table", "extra") and path[2] in ("reason", "keyword", "options")
        if path and not soft:
            bad.add((str(path[0]), path[1] if len(path) > 1 else ""))
    return problems, bad


# --- what a schema cannot say ------------------------------------------------------------------------------


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


@dataclass
class _Reading:
    """The semantic pass over a schema-checked file: `raw` and the entries the schema rejected."""

    raw: dict[str, Any]
    bad: set[tuple[str, str | int]]
    problems: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def section(self, name: str) -> list[tuple[int, Any]] | list[tuple[str, Any]]:
        """The entries of a list (or mapping) section the schema passed, with their index (or key)."""
        value = self.raw.get(name)
        if (name, "") in self.bad or not value:
            return []
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        return [(k, v) for k, v in items if (name, k) not in self.bad]

    def failed(self, name: str) -> bool:
        """Whether the schema rejected anything in section `name`."""
        return any(section == name for section, _ in self.bad)

    def text(self, name: str) -> str:
        value = self.raw.get(name)
        return value.strip() if not self.failed(name) and isinstance(value, str) else ""

    def read_options(self) -> None:
        for _, option in self.section("options"):
            if option in self.options:
                self.problems.append(f"options: {option} listed twice")
            else:
                self.options.append(option)

    def codes(self) -> tuple[tuple[str, str], ...]:
        codes = [(str(item["value"]), str(item.get("meaning", ""))) for _, item in self.section("codes")]
        expected = [OPTION_CODES["basic"]] + [OPTION_CODES[o] for o in self.options]
        if codes != expected and ("codes", "") not in self.bad:
            want = ", ".join(f"{v} {m}" for v, m in expected)
            self.problems.append(f"codes must be exactly, in order: {want} (113100, then one per declared option)")
        return tuple(codes)

    def row(self, section: str, index: int, row: dict[str, Any]) -> TagRule:
        """A schema-checked row: its keyword must name its tag, its options must be declared."""
        where = _row_label(section, row, index)
        tag_text = str(row["tag"]).strip()
        keyword = str(row.get("keyword") or "").strip()
        if tag_text not in PATTERNS:
            tag = parse_tag(tag_text)
            tag_text = format_tag(tag)
            known = _keyword_tag(keyword) if keyword else None
            if known is not None and known != tag:
                self.problems.append(f"{where}: keyword {keyword} is {format_tag(known)} in PS3.6, not {tag_text}")
        row_options = row.get("options") or []
        row_options = [row_options] if isinstance(row_options, str) else row_options
        row_options = row_options if isinstance(row_options, list) else []
        for option in row_options:
            if option not in self.options:
                self.problems.append(f"{where}: option {option!r} is not declared in 'options'")
        reason = row.get("reason")
        reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
        if row_options and not reason:
            self.problems.append(f"{where}: missing reason for an option's action")
        basic = row.get("basic", "X")
        return TagRule(tag_text, keyword, basic, row["action"], tuple(str(o) for o in row_options), reason)

    def table(self) -> tuple[dict[int, TagRule], list[TagRule]]:
        table: dict[int, TagRule] = {}
        patterns: list[TagRule] = []
        for index, row in self.section("table"):
            rule = self.row("table", int(index), row)
            if rule.tag in PATTERNS:
                if any(p.tag == rule.tag for p in patterns):
                    self.problems.append(f"table: duplicate row {rule.tag}")
                patterns.append(rule)
                continue
            tag = parse_tag(rule.tag)
            if tag in table:
                self.problems.append(f"table: duplicate row {rule.tag} {rule.keyword}")
            table[tag] = rule
        return table, patterns

    def extra(self, table: Mapping[int, TagRule]) -> dict[int, TagRule]:
        extra: dict[int, TagRule] = {}
        for index, row in self.section("extra"):
            rule = self.row("extra", int(index), row)
            where = f"extra: {rule.tag} {rule.keyword}"
            if rule.tag in PATTERNS:
                self.problems.append(f"extra: {rule.tag}: patterns belong in the table")
                continue
            tag = parse_tag(rule.tag)
            if rule.action == "K":
                self.problems.append(f"{where}: action K belongs on the keep-list")
            if not rule.reason:
                self.problems.append(f"{where}: missing reason")
            if tag in table or tag in extra:
                self.problems.append(f"{where}: duplicate (already a table or extra row)")
            extra[tag] = rule
        return extra

    def keep(self, table: Mapping[int, TagRule], extra: Mapping[int, TagRule]) -> dict[int, str]:
        keep: dict[int, str] = {}
        for index, entry in self.section("keep"):
            keyword = str(entry.get("keyword") or "").strip()
            tag = parse_tag(str(entry["tag"])) if entry.get("tag") is not None else _keyword_tag(keyword)
            if tag is None:
                self.problems.append(f"keep[{index}]: unknown keyword {keyword!r} and no tag")
                continue
            where = _keep_label(entry, int(index))
            known = _keyword_tag(keyword) if keyword else None
            if known is not None and known != tag:
                self.problems.append(f"{where}: keyword {keyword} is {format_tag(known)} in PS3.6")
            if tag in keep:
                self.problems.append(f"{where}: duplicate")
            elif tag in table:
                self.problems.append(f"{where}: is a Table E.1-1 row; its action belongs in the table")
            elif tag in extra:
                self.problems.append(f"{where}: also in extra")
            elif (tag >> 16) & 1:
                self.problems.append(f"{where}: private (odd group); private elements belong in safe_private")
            keep[tag] = entry["reason"].strip()
        return keep

    def iod_types(self) -> dict[int, int]:
        types: dict[int, int] = {}
        for key, typ in self.section("iod_types"):
            key_text = str(key).strip()
            try:
                tag = parse_tag(key_text) if key_text.startswith("(") else _keyword_tag(key_text)
            except ValueError as exc:
                self.problems.append(f"iod_types: {exc}")
                continue
            if tag is None:
                self.problems.append(f"iod_types: unknown keyword {key_text!r}")
                continue
            types[tag] = typ
        return types

    def safe_private(self) -> tuple[SafePrivate, ...]:
        entries: list[SafePrivate] = []
        seen: set[tuple[str, int, int]] = set()
        for index, item in self.section("safe_private"):
            group, element = _as_int(item["group"], "group"), _as_int(item["element"], "element")
            where = _private_label(item, int(index))
            if not group & 1 or not 0x0009 <= group <= 0xFFFF:
                self.problems.append(f"{where}: group must be odd (a private group), not {group:04X}")
                continue
            if not 0 <= element <= 0xFF:
                self.problems.append(f"{where}: element must be the offset 0x00-0xFF within the block")
                continue
            key = (normalise_creator(item["creator"]), group, element)
            if key in seen:
                self.problems.append(f"{where}: duplicate")
                continue
            seen.add(key)
            entries.append(SafePrivate(item["creator"].strip(), group, element, item["reason"].strip()))
        return tuple(entries)

    def dates(self) -> tuple[str, int]:
        dates = self.raw.get("dates")
        if self.failed("dates") or not isinstance(dates, dict):
            return "shift", 0
        mode, max_shift_days = str(dates["mode"]), 0
        if mode == "shift":
            max_shift_days = _as_int(dates["max_shift_days"], "dates.max_shift_days")
            if not 1 <= max_shift_days <= MAX_JITTER_DAYS:
                # the jitter around the fixed move back before 1925 (bidsafe.deid.dates)
                self.problems.append(f"dates.max_shift_days must be between 1 and {MAX_JITTER_DAYS}")
        elif "retain_long_modif_dates" in self.options:
            self.problems.append(
                "dates: mode remove contradicts the declared option retain_long_modif_dates (its code says dates "
                "were kept, shifted): drop the option, its code and its rows' C actions"
            )
        return mode, max_shift_days

    def burned_in(self) -> dict[str, str]:
        value = self.raw.get("burned_in", "withhold")
        if self.failed("burned_in") or not isinstance(value, dict):
            return {}
        return {name: reason.strip() for name, reason in (value.get("allow") or {}).items()}


def parse_rules(raw: Any, path: Path) -> tuple[RuleSet | None, list[str]]:
    """Check a rule file's content; return the rule set (None if unusable) and every problem, one line each."""
    problems, bad = schema_problems(raw)
    if not isinstance(raw, dict):
        return None, problems
    reading = _Reading(raw, bad)
    reading.read_options()
    method = reading.text("method")
    if len(method) > METHOD_MAX_CHARS:
        reading.problems.append(
            f"'method' is {len(method)} characters; DeidentificationMethod (LO) allows {METHOD_MAX_CHARS}"
        )
    codes = reading.codes()
    table, patterns = reading.table()
    extra = reading.extra(table)
    keep = reading.keep(table, extra)
    iod_types = reading.iod_types()
    safe_private = reading.safe_private()
    date_mode, max_shift_days = reading.dates()
    problems += reading.problems
    if problems and not table:
        return None, problems
    resolved: dict[int, str] = {tag: "K" for tag in keep}
    for tag, rule in (*table.items(), *extra.items()):
        resolved[tag] = resolve_action(rule.action, iod_types.get(tag))
    rules = RuleSet(
        path=path, profile=reading.text("profile"), options=tuple(reading.options), codes=codes, method=method,
        table=table, patterns=tuple(patterns), keep=keep, iod_types=iod_types, safe_private=safe_private,
        date_mode=date_mode, max_shift_days=max_shift_days, burned_in=reading.burned_in(), extra=extra,
        uid_root="2.25.", description=str(raw.get("description") or "").strip(), resolved=resolved,
        safe_private_keys=frozenset((normalise_creator(s.creator), s.group, s.element) for s in safe_private),
    )
    return rules, problems
