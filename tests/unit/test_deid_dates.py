"""Shifted dates live before 1925, where no real date is: they never coincide with a real date (so the leak
gate, which looks for every real date, cannot hit one), while intervals and ages stay exact."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidsafe.deid.dates import (
    MAX_JITTER_DAYS,
    REAL_UNTIL,
    SHIFTED_BEFORE,
    base_days,
    shift_da,
    shift_days_for,
    shift_dt,
)
from bidsafe.deid.engine import deidentify_dataset, deidentify_tree, study_shift_days
from bidsafe.deid.rules import load_rules

from helpers.deid_testing import KEY, OTHER_KEY, StubRules, mr_dataset, write


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _da(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def test_no_shifted_date_equals_a_real_date_of_a_dense_population():
    # A centre scanning most days: 800 participants, up to 4 sessions each, 2015-2024; with the former shift of
    # +-3650 days (the jitter alone) 366 shifted dates fell on other participants' real scan dates.
    rng = random.Random(16)
    start, span = date(2015, 1, 1), (date(2024, 12, 31) - date(2015, 1, 1)).days
    population = {f"sub-{i:03d}": [start + timedelta(days=rng.randrange(span)) for _ in range(rng.randint(1, 4))]
                  for i in range(800)}
    real = {d for days in population.values() for d in days}
    assert len(real) > 1400  # dense: about 40% of all days in the decade are someone's scan date
    shifted = set()
    for subject, days in population.items():
        shift = shift_days_for(KEY, subject, 3650)
        shifted |= {_day(shift_da(_da(d), shift, SHIFTED_BEFORE)) for d in days}
    assert len(shifted) > 1400
    assert not shifted & real
    assert max(shifted) < SHIFTED_BEFORE <= min(real)


def test_every_real_date_up_to_real_until_lands_before_1925_for_every_subject_and_jitter():
    for max_shift in (1, 30, 3650, MAX_JITTER_DAYS):
        shifts = [shift_days_for(KEY, f"sub-{i}", max_shift) for i in range(2000)]
        shifts += [shift_days_for(OTHER_KEY, f"sub-{i}", max_shift) for i in range(2000)]
        assert REAL_UNTIL + timedelta(days=max(shifts)) < SHIFTED_BEFORE
        # the bound is tight: the largest possible jitter lands REAL_UNTIL on the last day before 1925
        assert REAL_UNTIL + timedelta(days=max_shift - base_days(max_shift)) == SHIFTED_BEFORE - timedelta(days=1)
        # and a 1900 birth date still lands on a real calendar day (year 1 or later)
        assert shift_da("19000101", min(shifts), SHIFTED_BEFORE) is not None


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    subject=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
    max_shift=st.integers(min_value=1, max_value=MAX_JITTER_DAYS),
    offset=st.integers(min_value=0, max_value=(REAL_UNTIL - SHIFTED_BEFORE).days),
)
def test_any_key_subject_and_real_date_lands_before_every_real_date(key, subject, max_shift, offset):
    real = SHIFTED_BEFORE + timedelta(days=offset)
    shifted = shift_da(_da(real), shift_days_for(key, subject, max_shift), SHIFTED_BEFORE)
    assert shifted is not None and _day(shifted) < SHIFTED_BEFORE


def test_a_real_date_after_real_until_is_refused_not_written_into_the_real_range():
    shift = shift_days_for(KEY, "sub-01", 3650)
    late = _da(REAL_UNTIL + timedelta(days=4000))
    assert shift_da(late, shift, SHIFTED_BEFORE) is None
    assert shift_dt(late + "101500", shift, SHIFTED_BEFORE) is None
    assert shift_da(late, shift) is not None  # without the bound it is only arithmetic
    ds = mr_dataset(study_date=late)
    ds.AcquisitionDateTime = late + "101500"
    rules = StubRules({"StudyDate": "C", "AcquisitionDateTime": "C", "PatientName": "Z"}, max_shift_days=3650)
    out = deidentify_dataset(ds, rules=rules, key=KEY, shift_days=shift)
    assert str(out.StudyDate) == "" and str(out.AcquisitionDateTime) == ""


def test_intervals_between_sessions_and_ages_at_scan_are_exact(tmp_path):
    # Two sessions of one subject (one pseudonym) through the whole tree: both shifted by the same days.
    for name, study, when in (("ses1", "1.2.826.0.1.3680043.9.7777.10", "20190228"),
                              ("ses2", "1.2.826.0.1.3680043.9.7777.20", "20240229")):
        ds = mr_dataset(study_uid=study, series_uid=study + ".2", sop_uid=study + ".2.3", study_date=when)
        ds.AcquisitionDateTime = when + "235959"
        write(ds, tmp_path / "raw" / name / "img.dcm")
    report = deidentify_tree(tmp_path / "raw", tmp_path / "out", rules=load_rules(), key=KEY, subject_key="sub-07")
    first, second = sorted((pydicom.dcmread(tmp_path / "out" / e.output) for e in report.entries),
                           key=lambda d: d.StudyDate)
    assert _day(second.StudyDate) - _day(first.StudyDate) == date(2024, 2, 29) - date(2019, 2, 28)
    assert _day(first.StudyDate) < SHIFTED_BEFORE and _day(second.StudyDate) < SHIFTED_BEFORE
    assert second.AcquisitionDateTime.endswith("235959")  # times of day stay with their dates

    # A kept birth date moves with the scan dates: the age at each scan, in days, is the real one.
    rules = StubRules({"StudyDate": "C", "PatientBirthDate": "C", "PatientName": "Z"}, max_shift_days=3650)
    shift = study_shift_days(rules, KEY, "sub-07")
    for scan in ("20190228", "20240229", "20241231"):
        ds = mr_dataset(study_date=scan)
        ds.PatientBirthDate = "19520229"
        out = deidentify_dataset(ds, rules=rules, key=KEY, shift_days=shift)
        assert _day(out.StudyDate) - _day(out.PatientBirthDate) == _day(scan) - date(1952, 2, 29)
        assert _day(out.PatientBirthDate) < _day(out.StudyDate) < SHIFTED_BEFORE


def _scans_tree(root, population, shift_for) -> None:
    for subject, days in population.items():
        folder = root / subject
        folder.mkdir(parents=True)
        shift = timedelta(days=shift_for(subject))
        lines = ["filename\tacq_time"] + [
            f"ses-{i}/anat/{subject}_ses-{i}_T1w.nii.gz\t{(d + shift).isoformat()}T10:15:00"
            for i, d in enumerate(days, start=1)
        ]
        (folder / f"{subject}_scans.tsv").write_text("\n".join(lines) + "\n")


def test_leak_gate_finds_no_real_date_in_shifted_scans_tables(tmp_path):
    """The gate looks for every participant's real dates in every written form; the shifted acq_time of a
    dense population holds none of them (with the former +-10-year shift it held many)."""
    from bidsafe.release.leakforms import RawValue
    from bidsafe.release.leakscan import leak_scan

    rng = random.Random(9)
    start, span = date(2019, 1, 1), (date(2023, 12, 31) - date(2019, 1, 1)).days
    population = {f"sub-{i:03d}": [start + timedelta(days=rng.randrange(span)) for _ in range(rng.randint(1, 3))]
                  for i in range(150)}
    values = [RawValue("date", "StudyDate", _da(d)) for days in population.values() for d in days]
    _scans_tree(tmp_path / "new", population, lambda s: shift_days_for(KEY, s, 3650))
    assert leak_scan(tmp_path / "new", values).clean
    # the test has teeth: jitter alone (the former shift) lands shifted dates on real ones
    from bidsafe.deid.dates import jitter_days_for

    _scans_tree(tmp_path / "old", population, lambda s: jitter_days_for(KEY, s, 3650))
    assert len(leak_scan(tmp_path / "old", values).hits) >= 5


def test_rule_files_keep_their_format_and_bound_the_jitter(tmp_path):
    from bidsafe.deid.rules import default_rules_path
    from bidsafe.errors import ConfigError

    shipped = default_rules_path()
    assert load_rules(shipped).max_shift_days == 3650  # `dates: {mode: shift, max_shift_days: N}` unchanged
    text = shipped.read_text(encoding="utf-8")
    assert "dates: {mode: shift, max_shift_days: 3650}" in text
    for days, ok in ((MAX_JITTER_DAYS, True), (MAX_JITTER_DAYS + 1, False), (0, False)):
        edited = tmp_path / f"rules-{days}.yaml"
        edited.write_text(text.replace("max_shift_days: 3650}", f"max_shift_days: {days}}}"), encoding="utf-8")
        if ok:
            assert load_rules(edited).max_shift_days == days
        else:
            with pytest.raises(ConfigError, match="max_shift_days must be between 1 and"):
                load_rules(edited)
