"""Per-subject date shifting: every date of a subject moves by the same number of days.

The shift is derived from the secret key and the subject's identity (the pipeline passes the subject's
pseudonym), so all sessions of a subject shift alike and intervals between them are preserved, while the
true dates cannot be recovered without the key. Times of day are left alone: a whole-day shift keeps them
consistent with their dates.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

from bidsafe.keys import keyed_digest

_PURPOSE = "dateshift"


def shift_days_for(key: bytes, subject: str, max_shift_days: int) -> int:
    """Days to add to every date of `subject`: in [-max, -1] or [1, max], never 0."""
    if max_shift_days < 1:
        raise ValueError("max_shift_days must be at least 1")
    number = int.from_bytes(keyed_digest(key, _PURPOSE, subject), "big") % (2 * max_shift_days)
    return number - max_shift_days if number < max_shift_days else number - max_shift_days + 1


def _shift_date_digits(digits: str, days: int) -> str | None:
    """Shift a YYYYMMDD, YYYYMM or YYYY string, keeping its precision; None when it is not a date."""
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return None
    year = int(digits[:4])
    month = int(digits[4:6]) if len(digits) >= 6 else 1
    day = int(digits[6:8]) if len(digits) == 8 else 1
    try:
        shifted = date(year, month, day) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"[: len(digits)]


def shift_da(value: str, days: int) -> str | None:
    """A DA value (possibly multi-valued) shifted by `days`; None if any value is not a date.

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
        shifted = _shift_date_digits(item, days)
        if shifted is None:
            return None
        out.append(shifted)
    return "\\".join(out)


_DT = re.compile(r"(\d{4}(?:\d{2}(?:\d{2})?)?)(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")


def shift_dt(value: str, days: int) -> str | None:
    """A DT value with its date part shifted; time, fraction and UTC offset kept. None if not a date-time."""
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
        shifted = _shift_date_digits(date_part, days)
        if shifted is None:
            return None
        out.append(shifted + time_part + offset)
    return "\\".join(out)
