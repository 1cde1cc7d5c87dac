"""The research team's tables for the demo participants: consent registry and demographics."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bidsafe.demo.records import DemoSession
from bidsafe.fsutil import atomic_write_text


def consent_level(subject_index: int, subjects: int) -> str:
    """Consent level of the demo participant `subject_index` (1-based) among `subjects`.

    Rule: participant 1 gave no consent to share (`none`), participant 2 consented to sharing with
    members only (`members`), everyone else consented to public release (`public`). With fewer than three
    participants there is simply no `public` one.
    """
    del subjects  # the rule does not depend on the count; kept so callers state what they have
    return {1: "none", 2: "members"}.get(subject_index, "public")


def write_consent_registry(sessions: Sequence[DemoSession], path: Path) -> Path:
    """Write a consent registry TSV (patient_id, study_id, consent, consent_form_id, withdrawn).

    One row per participant, as a research team keeps it: the research study's participant ID, the consent
    level (`consent_level`: participant 1 `none`, 2 `members`, others `public`) and the consent form's ID;
    nobody has withdrawn (`withdrawn` empty).
    """
    subjects = len({s.subject_index for s in sessions})
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["patient_id", "study_id", "consent", "consent_form_id", "withdrawn"])
    for index, patient_id in sorted({(s.subject_index, s.patient_id) for s in sessions}):
        writer.writerow([
            patient_id, f"BSF-{index:04d}", consent_level(index, subjects), f"CF-2021-{index:04d}", "",
        ])
    return atomic_write_text(path, buffer.getvalue())


def write_demographics(sessions: Sequence[DemoSession], path: Path, seed: int = 0) -> Path:
    """Write a demographics TSV, one row per patient: patient_id, gestational_age_weeks, birth_weight_kg,
    head_circumference_cm, radiology_score (plausible values, deterministic for the patient IDs and seed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["patient_id", "gestational_age_weeks", "birth_weight_kg", "head_circumference_cm",
                     "radiology_score"])
    seen = set()
    for s in sessions:
        if s.patient_id in seen:
            continue
        seen.add(s.patient_id)
        rng = np.random.default_rng([seed, s.subject_index, 23])
        weeks = float(np.clip(rng.normal(39.0, 1.6), 32.0, 42.0))
        weight = float(np.clip(rng.normal(3.4, 0.45) - (39.0 - weeks) * 0.15, 1.6, 4.8))
        head = float(np.clip(rng.normal(56.0 if s.sex == "M" else 55.0, 1.5), 51.0, 61.0))
        writer.writerow([s.patient_id, f"{weeks:.1f}", f"{weight:.2f}", f"{head:.1f}", int(rng.integers(0, 4))])
    return atomic_write_text(path, buffer.getvalue())
