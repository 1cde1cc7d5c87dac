"""Per-subject date shifting: every date of a subject moves by the same number of days, into the past.

The shift is derived from the secret key and the subject's identity (the pipeline passes the subject's
pseudonym), so all sessions of a subject shift alike: intervals between sessions, and ages (a kept birth date
moves with the scan dates), stay exact to the day, while the true dates cannot be recovered without the key.
Times of day are left alone: a whole-day shift keeps them consistent with their dates.

Shifted dates live in a range no real date reaches. The shift is a fixed move back, BASE, plus a keyed jitter
of up to +-max_shift_days (never 0). BASE is chosen so that every real date up to REAL_UNTIL lands before
SHIFTED_BEFORE (1925-01-01, the year BIDS suggests for shifted dates) whatever the jitter:

    shift = jitter - BASE,  BASE = (REAL_UNTIL - SHIFTED_BEFORE) + 1 day + max_shift_days

so REAL_UNTIL + the largest shift = SHIFTED_BEFORE - 1 day. Assumption: real acquisition dates lie between
SHIFTED_BEFORE and REAL_UNTIL (MRI began in the late 1970s). A shifted date therefore never equals another
participant's real scan date, and the leak gate, which looks for every real date, cannot hit one. A date
after REAL_UNTIL (a clock set wrong) would land on or after SHIFTED_BEFORE: `shift_da`/`shift_dt` refuse it
(None; the engine then writes no date). The one real date that can coincide with a shifted one is a birth
date before 1925 (a centenarian's): basic-mr empties PatientBirthDate, so it is never written shifted.
With max_shift_days 3650, a 2024 scan lands between 1859 and 1879; a 1930 birth date around 1770.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

from bidsafe.keys import keyed_digest

_PURPOSE = "dateshift"

SHIFTED_BEFORE = date(1925, 1, 1)  # every shifted date lies before this day
REAL_UNTIL = date(2069, 12, 31)  # the latest real date guaranteed to land before SHIFTED_BEFORE
MAX_JITTER_DAYS = 36524  # ~100 years: more would push 20th-century birth dates towards year 1


def base_days(max_shift_days: int) -> int:
    """The fixed move back of every subject's dates (before the jitter), in days."""
    return (REAL_UNTIL - SHIFTED_BEFORE).days + 1 + max_shift_days


def jitter_days_for(key: bytes, subject: str, max_shift_days: int) -> int:
    """The keyed part of a subject's shift: in [-max, -1] or [1, max], never 0."""
    if not 1 <= max_shift_days <= MAX_JITTER_DAYS:
        raise ValueError(f"max_shift_days must be between 1 and {MAX_JITTER_DAYS}")
    number = int.from_bytes(keyed_digest(key, _PURPOSE, subject), "big") % (2 * max_shift_days)
    return number - max_shift_days if number < max_shift_days else number - max_shift_days + 1


def shift_days_for(key: bytes, subject: str, max_shift_days: int) -> int:
    """Days to add to every date of `subject`: -BASE plus the keyed jitter, so that every real date up to
    REAL_UNTIL lands before SHIFTED_BEFORE (module docstring)."""
    return jitter_days_for(key, subject, max_shift_days) - base_days(max_shift_days)


def _shift_date_digits(digits: str, days: int, before: date | None = None) -> str | None:
    """Shift a YYYYMMDD, YYYYMM or YYYY string, keeping its precision; None when it is not a date, or when
    `before` is given and the shifted date is not before it."""
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return None
    year = int(digits[:4])
    month = int(digits[4:6]) if len(digits) >= 6 else 1
    day = int(digits[6:8]) if len(digits) == 8 else 1
    try:
        shifted = date(year, month, day) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if before is not None and shifted >= before:
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"[: len(digits)]


def shift_da(value: str, days: int, before: date | None = None) -> str | None:
    """A DA value (possibly multi-valued) shifted by `days`; None if any value is not a date (or, with
    `before`, does not land before it: the engine passes SHIFTED_BEFORE).

    Also reads the ACR-NEMA form "YYYY.MM.DD" still met in old files (written back as YYYYMMDD).
    """
    out = []
    for item in value.split("\\"):
        item = item.strip(" \x00")
        if len(item) == 10 and item[4] == "." and item[7] == ".":
            item = item.replace(".", "")
        if not item:
            out.append("")
            continue
        if len(item) != 8:
            return None
        shifted = _shift_date_digits(item, days, before)
        if shifted is None:
            return None
        out.append(shifted)
    return "\\".join(out)


_DT = re.compile(r"(\d{4}(?:\d{2}(?:\d{2})?)?)(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")


def shift_dt(value: str, days: int, before: date | None = None) -> str | None:
    """A DT value with its date part shifted; time, fraction and UTC offset kept. None if not a date-time
    (or, with `before`, if the shifted date does not land before it)."""
    out = []
    for item in value.split("\\"):
        item = item.strip(" \x00")
        if not item:
            out.append("")
            continue
        match = _DT.fullmatch(item)
        if match is None:
            return None
        date_part, time_part, offset = match.group(1), match.group(2) or "", match.group(3) or ""
        if time_part and len(date_part) != 8:
            return None
        shifted = _shift_date_digits(date_part, days, before)
        if shifted is None:
            return None
        out.append(shifted + time_part + offset)
    return "\\".join(out)
