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
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bidsafe import resources
from bidsafe.deid.rulefile import parse_rules
from bidsafe.deid.ruleset import (
    ACTIONS,
    BURNED_IN_CLASSES,
    OPTION_CODES,
    PATTERNS,
    RESOLVED_ACTIONS,
    STRENGTH,
    TABLE_OPTIONS,
    RuleSet,
    SafePrivate,
    TagRule,
    format_tag,
    parse_tag,
    resolve_action,
)
from bidsafe.errors import ConfigError

TABLE_ENV = "BIDSAFE_PS315_TABLE"

# The model lives in bidsafe.deid.ruleset; importers of this module find it here too.
__all__ = [
    "ACTIONS",
    "BURNED_IN_CLASSES",
    "OPTION_CODES",
    "PATTERNS",
    "RESOLVED_ACTIONS",
    "RuleSet",
    "SafePrivate",
    "TagRule",
    "check_rules",
    "default_rules_path",
    "format_tag",
    "load_rules",
    "parse_tag",
    "read_yaml",
    "require_checked_rules",
    "resolve_action",
    "weakened",
]


# --- loading ------------------------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The shipped rule set (`config/deid/basic-mr.yaml`, inside the package when installed from a wheel)."""
    return resources.path("config/deid/basic-mr.yaml")


def read_yaml(path: Path) -> Any:
    return _yaml(path, _read_text(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rule file ({exc.strerror})", path) from exc


def _yaml(path: Path, text: str) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from exc


def _parsed(path: Path) -> tuple[RuleSet | None, tuple[str, ...]]:
    """The rule set in `path` and its problems. `bidsafe deid` and the deid stage check a file, then load it:
    the same text is read (and schema-checked) once per process."""
    return _parsed_text(path, _read_text(path))


@lru_cache(maxsize=4)
def _parsed_text(path: Path, text: str) -> tuple[RuleSet | None, tuple[str, ...]]:
    rules, problems = parse_rules(_yaml(path, text), path)
    return rules, tuple(problems)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rule file (default: the shipped profile). Raises ConfigError naming the problem."""
    rules_path = Path(path) if path is not None else default_rules_path()
    rules, problems = _parsed(rules_path)
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
    """Table E.1-1 as shipped inside the package (PS3.15 edition 2024b, 621 rows; provenance in its README.md)."""
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



@dataclass
class _RowTally:
    """The rows of Table E.1-1 checked so far: counts by action and option, and the gaps found."""

    basic: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)
    options: Counter[str] = field(default_factory=Counter)
    present: int = 0
    gaps: list[str] = field(default_factory=list)

    def check_row(self, row: Mapping[str, Any], rule: TagRule | None, declared: Iterable[str],
                  rules: RuleSet | None) -> None:
        """One row of the table against the file's rule for it (None: the file has no such row)."""
        key = _table_key(row["tag"])
        name = row.get("keyword") or row.get("name") or ""
        self.basic[row["basic_profile"]] += 1
        if rule is None:
            self.gaps.append(f"{key} {name}: Table E.1-1 row missing (Basic {row['basic_profile']})")
            return
        self.present += 1
        if rule.basic != row["basic_profile"]:
            self.gaps.append(f"{key} {name}: basic recorded as {rule.basic}, Table E.1-1 says {row['basic_profile']}")
            rule = TagRule(rule.tag, rule.keyword, row["basic_profile"], rule.action, rule.options, rule.reason)
        option_actions = {o: row[o] for o in TABLE_OPTIONS if row.get(o)}
        why = acceptable(rule, declared, option_actions)
        if why is not None:
            self.gaps.append(f"{key} {name}: {why}")
        for option in rule.options:
            if option_actions.get(option) != rule.action:
                self.gaps.append(
                    f"{key} {name}: names option {option}, but its column gives "
                    f"{option_actions.get(option) or 'nothing'}, not {rule.action}"
                )
        _count(rule, rules, self.applied, self.options)


def check_rules(rules_path: Path, table_path: Path | None = None) -> CheckResult:
    """Check one rule file against Table E.1-1 (`table_path`, else $BIDSAFE_PS315_TABLE, else the shipped copy)."""
    rules_path = Path(rules_path)
    gaps: list[str] = []
    rules, problems = _parsed(rules_path)
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

    tally = _RowTally()
    for row in table_rows:
        tally.check_row(row, file_rows.get(_table_key(row["tag"])), declared, rules)
    gaps.extend(tally.gaps)
    basic_counts, applied_counts, option_counts = tally.basic, tally.applied, tally.options
    rows_present = tally.present
    expected_keys = {_table_key(row["tag"]) for row in table_rows}
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
