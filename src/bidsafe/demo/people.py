"""The fake people of the demo data: patients, staff and the site, drawn from the seed alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

# Distinctive made-up names (>= 6 letters) so that a substring scan never hits them by chance.
FAMILY_NAMES = (
    "QUILLFEATHER", "VARDAKISSON", "OSTROWICZKA", "HAVERBROOKE", "LINDQVARSEN", "THISTLEWAITE",
    "MERRIWEDDER", "BRANDVOLDEN", "KAZIMIERSKA", "FENWHISTLE", "ABERNATHYX", "CROMWALLACE",
    "DELACROUXE", "GUNNARSDOTTIR", "PEMBERFIELD", "ZABRINSKIE",
)
GIVEN_NAMES_F = (
    "OTTOLINE", "WILHELMINA", "PERPETUA", "ROSAMUNDE", "LEOCADIA", "GWENLLIAN", "ISOLDINE", "MARGUERITTA",
)
GIVEN_NAMES_M = (
    "BARTHOLOMEW", "EVANDERUS", "THADDEUS", "LEOFRIC", "AMBROSIUS", "CORNELIUSZ", "PERCIVALE", "OSWINDAL",
)
STAFF_FAMILY = ("HOLLINGRAKE", "PRZYBYLSKA", "WETHERBEE", "OYELARAN", "STRATHMORE", "VILLENEUVEX")
STAFF_GIVEN = ("AUGUSTINA", "FLORIMOND", "HILDEGUND", "MAXIMILIAN", "SEPTIMUS", "CLEMENTINE")
STREETS = ("LARKSPUR CRESCENT", "BRAMBLEWICK LANE", "FOXGLOVE TERRACE", "WINTERBOURNE ROAD")
TOWNS = ("WEXBRIDGE", "MARLOWDEN", "CASTLEFORTH", "ELDERMOOR")

INSTITUTION = "ST ALDHELM NEUROIMAGING CENTRE"
INSTITUTION_ADDRESS = "4 CANONBURY WHARF, WEXBRIDGE WX7 3QP"
DEPARTMENT = "ALDHELM NEURORADIOLOGY"
STATION = "AWP167043"
ISSUER_OF_PATIENT_ID = "ALDHELM PAS"
DEVICE_SERIAL = "167043PRISMA"


@dataclass(frozen=True)
class Patient:
    index: int
    family: str
    given: str
    sex: str
    patient_id: str
    other_id: str
    birth: date
    weight: float
    size: float
    address: str
    phone: str
    referring: str
    first_study: date


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def staff_name(rng: np.random.Generator) -> str:
    """FAMILY^GIVEN of a made-up member of staff (two draws)."""
    return f"{pick(rng, STAFF_FAMILY)}^{pick(rng, STAFF_GIVEN)}"


def make_patients(subjects: int, seed: int) -> list[Patient]:
    rng = np.random.default_rng([seed, 7031])
    families = list(FAMILY_NAMES)
    rng.shuffle(families)
    return [_patient(i, families, rng) for i in range(subjects)]


def _patient(i: int, families: Sequence[str], rng: np.random.Generator) -> Patient:
    """Patient i (0-based); the draws from `rng` happen in this order, so changing it changes every byte."""
    # Pairs of participants share a sex (M, M, F, F, ...) so the demo's consenting pair (3 and 4) can form
    # a k-anonymous group once ages are generalised; the random draw stays so every other value is as before.
    rng.random()
    sex = "M" if (i // 2) % 2 == 0 else "F"
    given = pick(rng, GIVEN_NAMES_F if sex == "F" else GIVEN_NAMES_M)
    family = families[i % len(families)]
    if i >= len(families):  # more patients than names: make the family name unique again
        family = f"{family}{chr(ord('A') + (i // len(families)) % 26)}X"
    birth = date(1948, 1, 1) + timedelta(days=int(rng.integers(0, 52 * 365)))
    first_study = date(2021, 1, 4) + timedelta(days=int(rng.integers(0, 700)))
    return Patient(
        index=i + 1,
        family=family,
        given=given,
        sex=sex,
        patient_id=f"HX{int(rng.integers(1_000_000, 9_999_999))}",
        other_id=f"NHN{int(rng.integers(100_000_000, 999_999_999))}",
        birth=birth,
        weight=round(float(rng.uniform(52, 96)), 1),
        size=round(float(rng.uniform(1.55, 1.95)), 2),
        address=f"{int(rng.integers(3, 180))} {pick(rng, STREETS)}, {pick(rng, TOWNS)}",
        phone=f"+44 1632 {int(rng.integers(100000, 999999))}",
        referring=f"{staff_name(rng)}^^DR",
        first_study=first_study,
    )


def age(birth: date, on: date) -> str:
    """DICOM AS (e.g. 042Y): completed years on the day."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"
