"""Plan and write the demo exports: one study folder per fake patient's session, from the seed alone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from bidsafe.demo.dicomfiles import Context, da, planted_values
from bidsafe.demo.people import Patient, age, make_patients, staff_name
from bidsafe.demo.records import DemoSeries, DemoSession
from bidsafe.demo.session import write_junk, write_session
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_dir
from bidsafe.progress import Progress


def _plan(out_dir: Path, subjects: int, sessions: int, seed: int) -> list[tuple[Context, Path, Path]]:
    """Every session's shared context, patient folder and study folder, from the seed alone."""
    if subjects < 1 or sessions < 1:
        raise BidsafeError("--subjects and --sessions must be at least 1")
    planned = []
    for patient in make_patients(subjects, seed):
        rng = np.random.default_rng([seed, patient.index, 11])
        patient_folder = Path(out_dir) / f"{patient.family}_{patient.given}_{da(patient.birth)}"
        study_day = patient.first_study
        for s in range(1, sessions + 1):
            if s > 1:
                study_day = study_day + timedelta(days=int(rng.integers(90, 240)))
            ctx = _context(patient, s, seed, study_day, rng)
            planned.append((ctx, patient_folder, patient_folder / f"{da(study_day)}_{ctx.accession}"))
    return planned


def _context(patient: Patient, session_index: int, seed: int, study_day: date, rng: np.random.Generator) -> Context:
    """One visit's shared values; the draws from `rng` happen in this order (changing it changes every byte)."""
    start = datetime(study_day.year, study_day.month, study_day.day, int(rng.integers(8, 17)),
                     int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    ctx = Context(
        patient=patient,
        session_index=session_index,
        seed=seed,
        study_date=study_day,
        study_time=start,
        accession=f"RAD{int(rng.integers(10_000_000, 99_999_999))}",
        study_id=f"EX{int(rng.integers(100_000, 999_999))}",
        study_uid="",
        frame_uid="",
        operator=staff_name(rng),
        performing=f"{staff_name(rng)}^^DR",
        requested_procedure_id=f"RP{int(rng.integers(1_000_000, 9_999_999))}",
        step_id=f"SPS{int(rng.integers(1_000_000, 9_999_999))}",
    )
    ctx.study_uid = ctx.uid("study")
    ctx.frame_uid = ctx.uid("frame")
    return ctx


def _session_record(
    ctx: Context, patient_folder: Path, folder: Path, series: Sequence[DemoSeries] = (),
    junk: Sequence[Path] = (),
) -> DemoSession:
    p = ctx.patient
    return DemoSession(
        subject_index=p.index,
        session_index=ctx.session_index,
        family_name=p.family,
        given_name=p.given,
        patient_name=ctx.patient_name,
        patient_id=p.patient_id,
        birth_date=da(p.birth),
        sex=p.sex,
        age=age(p.birth, ctx.study_date),
        weight=f"{p.weight:.1f}",
        size=f"{p.size:.2f}",
        study_date=da(ctx.study_date),
        study_time=ctx.study_time.strftime("%H%M%S"),
        accession=ctx.accession,
        study_id=ctx.study_id,
        study_instance_uid=ctx.study_uid,
        patient_folder=patient_folder,
        folder=folder,
        series=tuple(series),
        planted=planted_values(ctx, patient_folder.name),
        junk=tuple(junk),
    )


def plan_sessions(out_dir: Path, subjects: int = 2, sessions: int = 1, seed: int = 0) -> list[DemoSession]:
    """What `generate` would write (identities, planted values, folders) without writing anything.

    `series` and `junk` are empty. Cheap: use it where only the identities matter (consent registries,
    expected labels). A patient does not depend on how many patients follow it.
    """
    return [_session_record(ctx, patient_folder, folder)
            for ctx, patient_folder, folder in _plan(Path(out_dir), subjects, sessions, seed)]


def generate(out_dir: Path, subjects: int = 2, sessions: int = 1, seed: int = 0,
             progress: Progress | None = None) -> list[DemoSession]:
    """Write `subjects` x `sessions` raw exports under `out_dir`; return what was planted where.

    Deterministic: the same arguments give the same bytes, and patient n's sessions do not depend on
    how many patients or later sessions are asked for. Each study folder appears whole (built in a
    temporary sibling, then renamed); an existing study folder of the same name is replaced. `progress`
    counts the sessions written (never a name: folders are named after the fake patients).
    """
    out_dir = Path(out_dir)
    planned = _plan(out_dir, subjects, sessions, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for ctx, patient_folder, final in planned:
        with atomic_dir(final) as tmp:
            series = write_session(ctx, tmp)
            junk = write_junk(ctx, tmp, series)
        result.append(_session_record(
            ctx, patient_folder, final,
            [_relocate(one, tmp, final) for one in series],
            [final / j.relative_to(tmp) for j in junk],
        ))
        if progress is not None:
            progress.advance()
    return result


def _relocate(series: DemoSeries, tmp: Path, final: Path) -> DemoSeries:
    return DemoSeries(
        series.number,
        series.description,
        final / series.folder.relative_to(tmp),
        tuple(final / f.relative_to(tmp) for f in series.files),
        series.expected_datatype,
        series.expected_suffix,
    )
