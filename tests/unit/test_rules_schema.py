"""The rule file's JSON Schema (package data) against the tables the code applies: one list, not two."""

from __future__ import annotations

from pathlib import Path

from bidsafe.deid.rulefile import parse_rules, rules_schema
from bidsafe.deid.ruleset import ACTIONS, BURNED_IN_CLASSES, OPTION_CODES, PATTERNS


def test_schema_enumerations_are_the_code_tables() -> None:
    defs = rules_schema()["$defs"]
    assert defs["action"]["enum"] == list(ACTIONS)
    assert defs["option"]["enum"] == [o for o in OPTION_CODES if o != "basic"]
    assert defs["burned_in_class"]["enum"] == list(BURNED_IN_CLASSES)
    assert defs["pattern"]["enum"] == list(PATTERNS)
    assert PATTERNS[0] == "(50xx,xxxx)" and PATTERNS[-1] == "(gggg,eeee) where gggg is odd"  # the names' order


def test_every_schema_failure_is_one_line_naming_the_rule() -> None:
    raw = {
        "profile": " ", "method": "m", "dates": {"mode": "later"},
        "codes": [{"value": "113100", "meaning": "Basic Application Confidentiality Profile"}],
        "uids": {"root": "2.25."}, "burned_in": {"allow": {"ultrasound": ""}},
        "table": [{"tag": "(0010,0010)", "keyword": "PatientName", "basic": "Z", "action": "Q"}],
        "safe_private": [{"creator": "ACME", "group": "zz", "element": 1, "reason": "r"}],
    }
    _, problems = parse_rules(raw, Path("x.yaml"))
    assert problems == [
        "burned_in.allow: class ultrasound needs a reason (why this site's images are safe)",
        "'dates' must be {mode: shift, max_shift_days: N} or {mode: remove}",
        "'profile' must be a non-empty text",
        "safe_private[0]: group must be a number, not 'zz'",
        "table: (0010,0010) PatientName: unknown action 'Q' (allowed: D Z X K C U Z/D X/Z X/D X/Z/D X/Z/U*)",
    ]
