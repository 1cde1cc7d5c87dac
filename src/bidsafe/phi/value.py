"""A harvested personal value, the constants of what counts as one, and its classic renderings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

# Instance UIDs are identifying too: an original UID found in a release links it back to the source archive.
# Registered UIDs (SOP classes, transfer syntaxes) start with the DICOM root and are never personal.
DICOM_ROOT_UID = "1.2.840.10008."

# Needles shorter than this are not scanned for or cleaned: two letters match everywhere by chance.
MIN_NEEDLE_LENGTH = 3

# Values that say "nothing here": not personal, present in every dataset, never searched for or cleaned.
PLACEHOLDERS = frozenset(
    {
        "none", "null", "nil", "n/a", "na", "unknown", "anonymous", "anonymized", "anonymised", "anon",
        "removed", "deidentified", "de-identified", "not available", "not applicable", "empty", "blank",
        "redacted", "nobody", "patient", "research", "test", "phantom", "yes", "no",
    }
)

_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d-%m-%Y", "%d %b %Y")
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]+")


@dataclass(frozen=True, order=True)
class PersonalValue:
    """One personal value and where it was found (`field` is a keyword path, safe to print; `value` is not)."""

    category: str
    field: str
    value: str

    def renderings(self) -> set[str]:
        """The forms in which this value may appear elsewhere, lower-cased, at least MIN_NEEDLE_LENGTH long."""
        forms = RENDERERS.get(self.category, render_plain)(self.value)
        lowered = {f.lower() for f in forms if len(f.strip()) >= MIN_NEEDLE_LENGTH}
        return {f for f in lowered if f.strip() not in PLACEHOLDERS}


def render_plain(value: str) -> set[str]:
    value = value.strip()
    squashed = _NON_ALNUM.sub("", value)
    return {value, squashed} if len(squashed) >= MIN_NEEDLE_LENGTH + 1 else {value}


def _render_name(value: str) -> set[str]:
    """A PN value: every given/family/middle component, and the common orderings and joinings."""
    forms: set[str] = set()
    for group in value.split("="):  # alphabetic, ideographic, phonetic groups
        parts = group.split("^")
        components = [c.strip() for c in parts[:3] if c.strip()]  # family, given, middle (not prefix/suffix)
        words = [w for c in components for w in re.split(r"[\s,.'-]+", c) if w]
        forms.update(words)
        if len(components) >= 2:
            family, given = components[0], components[1]
            for a, b in ((family, given), (given, family)):
                forms.update({f"{a} {b}", f"{a}{b}", f"{a}_{b}", f"{a}^{b}", f"{a}, {b}", f"{a}.{b}"})
        if group.strip():
            forms.add(group.strip())
    return forms


def _render_date(value: str) -> set[str]:
    value = value.strip()
    forms = {value}
    parsed = parse_date(value)
    if parsed is not None:
        forms.update(parsed.strftime(fmt) for fmt in _DATE_FORMATS)
    return forms


def _render_phone(value: str) -> set[str]:
    forms = {value.strip()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 6:
        forms.add(digits)
    return forms


def _render_address(value: str) -> set[str]:
    forms = {value.strip()}
    for part in re.split(r"[\^,;\n]+", value):
        part = part.strip()
        if len(part) >= 5:
            forms.add(part)
    return forms


RENDERERS = {
    "name": _render_name,
    "date": _render_date,
    "phone": _render_phone,
    "address": _render_address,
}


def parse_date(value: str) -> date | None:
    digits = value.strip()[:8]
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None
