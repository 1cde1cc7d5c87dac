"""Ages: calendar-exact age between two dates, DICOM DA and AS values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Age:
    """An age in completed-calendar-unit terms (fractional parts below one unit)."""

    days: float
    months: float
    years: float

    def in_unit(self, unit: str) -> float:
        return {"years": self.years, "months": self.months, "weeks": self.days / 7.0, "days": self.days}[unit]


def convert_years(years: float, unit: str) -> float:
    return Age(days=years * 365.25, months=years * 12, years=years).in_unit(unit)


def parse_da(text: object) -> date | None:
    """A DICOM DA value (YYYYMMDD, also YYYY-MM-DD / YYYY.MM.DD) as a date, or None."""
    digits = re.sub(r"\D", "", str(text or ""))[:8]
    if len(digits) != 8:
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def _anniversary(birth: date, year: int, month: int) -> date:
    """The birth day in a given month, clamped to the month's end (a 29 February birthday, a 31st)."""
    for day in range(birth.day, 27, -1):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    return date(year, month, min(birth.day, 28))


def age_between(birth: date, scan: date) -> Age | None:
    """Age on `scan` for someone born on `birth`: calendar-exact completed years and months; None if negative.

    Fractions below one unit are kept (< 1), so flooring gives the completed years/months a person states.
    """
    if scan < birth:
        return None
    months = (scan.year - birth.year) * 12 + (scan.month - birth.month)
    if scan < _anniversary(birth, scan.year, scan.month):
        months -= 1
    years = months // 12
    month_index = birth.month - 1 + months
    month_start = _anniversary(birth, birth.year + month_index // 12, month_index % 12 + 1)
    year_start = _anniversary(birth, birth.year + years, birth.month)
    month_fraction = min((scan - month_start).days / 31.0, 0.999)
    year_fraction = min((scan - year_start).days / 366.0, 0.999)
    return Age(days=float((scan - birth).days), months=months + month_fraction, years=years + year_fraction)


def parse_dicom_age(text: object) -> Age | None:
    """A DICOM AS value (e.g. '034Y', '012W', '005D', '003M') as an Age, or None."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(text or "").upper())
    if not match:
        return None
    n, unit = float(match.group(1)), match.group(2)
    if unit == "D":
        return Age(days=n, months=n / 30.4375, years=n / 365.25)
    if unit == "W":
        return Age(days=7 * n, months=7 * n / 30.4375, years=7 * n / 365.25)
    if unit == "M":
        return Age(days=n * 30.4375, months=n, years=n / 12)
    return Age(days=n * 365.25, months=12 * n, years=n)


