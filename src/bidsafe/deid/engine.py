"""The de-identification engine: apply a rule set to every DICOM file of a tree (PS3.15 Annex E).

Each file is parsed once. Pass A, per file (in parallel): read; harvest its personal values
(`bidsafe.phi`); apply the resolved action of every standard element at every nesting level; keep only
safe private elements; remap UIDs with the key; shift dates by the subject's offset; add the
de-identification attributes; write the result to a staging file under a name built only from
de-identified values. Free text (action C) and kept private values cannot be cleaned yet: they must lose
every personal value found in *any* file of the patient (every study of theirs in the run: another study may
spell the name or ID otherwise), known only once every file was read; files are grouped by `patient_key` (the
pipeline's subject, else the PatientID without separators, case or leading zeros) and `patient_pools`. Pass A
notes where those elements sit in the staged file. Pass B, per file: clean them with the patient's values (kept
private values are overwritten by same-length filler in place, so binary structures such as Siemens CSA
headers stay valid) and move the file to its final name. The output folder appears whole at the end.

Speed comes from never decoding what is kept or removed unchanged: pydicom reads elements as raw bytes,
only the elements an action changes are decoded, and the output is encoded straight from the raw bytes.
Nothing identifying is printed or logged; the report (which names input paths) is private.

This module runs the two passes over a tree and is the package's public face (`__all__`). The parts: `reader`
(read a file once, fail or skip it), `actions` (the per-dataset de-identifier), `burnedin` (which images are
withheld), `writer` (the byte encoder and output names), `elements` (raw element primitives they share),
`pools` (who shares personal values and a date shift), `report` (each file's fate), `cli` (`bidsafe deid`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import BaseTag

from bidsafe.deid.actions import Deidentifier
from bidsafe.deid.burnedin import burned_in_findings, has_patient_geometry, withhold_reason
from bidsafe.deid.elements import (
    TAG_PATIENT_ID,
    TAG_SERIES_NUMBER,
    TAG_SOP_CLASS,
    TAG_SOP_INSTANCE,
    TAG_STUDY_UID,
    ascii_value,
    element_text,
    raw_element,
    text_of,
)
from bidsafe.deid.pools import patient_key, patient_pools, shift_subject_key, study_shift_days
from bidsafe.deid.reader import Incomplete, NotDicom, check_charset, check_complete, read_dicom
from bidsafe.deid.report import (
    DUPLICATE,
    FAILED,
    FILE_WITHHELD,
    NOT_DICOM,
    PROCESSED,
    STATUSES,
    DeidReport,
    FileEntry,
    write_report,
)
from bidsafe.deid.textclean import TextCleaner
from bidsafe.deid.vocabulary import Vocabulary, merge_counts, vocabulary_for
from bidsafe.deid.writer import Encoded, encode_file, finish_bytes, finish_file, output_relpath, output_transfer_syntax
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.fsutil import atomic_dir, move_dir_into_place
from bidsafe.phi import (
    PersonalValue,
    PersonalValues,
    harvest_dataset,
    quiet_pydicom,
)
from bidsafe.progress import Progress

if TYPE_CHECKING:
    from bidsafe.deid.ruleset import RuleSet


# --- one dataset, in memory -------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A de-identified dataset encoded, before its study-dependent cleaning."""

    encoded: Encoded
    relpath: str
    sop_instance_uid: str



def _prepare(deidentifier: Deidentifier, ds: Dataset, shift_days: int | None, source: Path | None = None) -> _Prepared:
    """De-identify and encode `ds` (everything except the study-dependent cleaning).

    An instance named nowhere (no SOPInstanceUID, empty file meta) is named after the bytes of its
    `source` file, through the key like any UID: the same file always gets the same new UID.
    """
    meta = getattr(ds, "file_meta", None)
    meta_elements = meta._dict if meta is not None else {}
    original_sop = text_of(ds, TAG_SOP_INSTANCE)
    if not original_sop and 0x00020003 in meta_elements:
        original_sop = element_text(meta_elements[0x00020003])
    if not original_sop and source is not None:
        original_sop = "bidsafe-unnamed-instance-" + hashlib.sha256(source.read_bytes()).hexdigest()
    if not original_sop:
        raise BidsafeError("no SOPInstanceUID: cannot name the de-identified instance")
    sop_class = text_of(ds, TAG_SOP_CLASS)
    if not sop_class and 0x00020002 in meta_elements:
        sop_class = element_text(meta_elements[0x00020002])
    transfer_syntax = output_transfer_syntax(ds)
    pending = deidentifier.deidentify(ds, shift_days=shift_days)
    new_sop = text_of(ds, TAG_SOP_INSTANCE) or deidentifier.uids.remap(original_sop)
    # SOP Common is Type 1: an instance named only by its file meta gets its (new) UIDs in the data set too
    implicit, little = ds.original_encoding
    implicit, little = bool(implicit), little is not False
    if TAG_SOP_INSTANCE not in ds._dict:
        ds._dict[BaseTag(TAG_SOP_INSTANCE)] = raw_element(
            TAG_SOP_INSTANCE, "UI", ascii_value(new_sop, "UI"), implicit, little
        )
    if TAG_SOP_CLASS not in ds._dict and sop_class:
        ds._dict[BaseTag(TAG_SOP_CLASS)] = raw_element(
            TAG_SOP_CLASS, "UI", ascii_value(sop_class, "UI"), implicit, little
        )
    relpath = output_relpath(ds, new_sop)
    return _Prepared(encode_file(ds, sop_class, new_sop, transfer_syntax, pending), relpath, new_sop)


def deidentify_dataset(
    ds: Dataset,
    *,
    rules: RuleSet,
    key: bytes,
    shift_days: int | None,
    values: Iterable[PersonalValue] = (),
    vocabulary: Vocabulary | None = None,
) -> Dataset:
    """De-identify one dataset exactly as `deidentify_tree` does a file, and return the result read back.

    `ds` is changed in place on the way (do not reuse it). `values` are the study's personal values;
    `vocabulary` the descriptor vocabulary (default: the shipped one).
    """
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    with quiet_pydicom():
        prepared = _prepare(Deidentifier(rules, key, vocabulary), ds, shift_days)
        data = finish_bytes(prepared.encoded, TextCleaner(values, vocabulary))
        return pydicom.dcmread(DicomBytesIO(data))


# --- the two passes over files ----------------------------------------------------------------------------


@dataclass
class _Staged:
    """Pass A's result for one file: harvest, and the staged de-identified file awaiting its cleaning."""

    index: int
    status: str
    study: str = ""
    values: frozenset[PersonalValue] = frozenset()
    patient: str = ""
    output: str | None = None
    temp: str | None = None
    stub: Encoded | None = None
    reason: str = ""
    series: str = ""
    shift: int | None = None  # the date shift applied (one per study: see `_one_shift_per_study`)
    replaced: dict[str, int] | None = None  # vocabulary tokens replaced in this file (private)
    deid_study: str = ""  # the de-identified StudyInstanceUID


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


class _StageWorker:
    """Pass A in one process: read once, harvest, de-identify, write a staged file."""

    def __init__(
        self, rules: RuleSet, key: bytes, subject_key: str | None, temp_root: Path, vocabulary: Vocabulary
    ) -> None:
        self.deidentifier = Deidentifier(rules, key, vocabulary)
        self.rules = rules
        self.key = key
        self.subject_key = subject_key
        self.temp_root = temp_root
        self._count = 0
        self._sent: dict[str, set[PersonalValue]] = {}

    def run(self, index: int, path: str, shift_override: int | None = None) -> _Staged:
        values: frozenset[PersonalValue] = frozenset()
        study = series = patient = ""
        try:
            with quiet_pydicom():
                ds = read_dicom(path)
                series = text_of(ds, TAG_SERIES_NUMBER)
                check_complete(ds)
                study = text_of(ds, TAG_STUDY_UID)
                check_charset(ds)
                patient = patient_key(text_of(ds, TAG_PATIENT_ID), self.subject_key)
                harvested = set(harvest_dataset(ds, private_identity=True))
                if getattr(ds, "file_meta", None) is not None:
                    harvested.update(harvest_dataset(ds.file_meta, prefix="meta>"))
                # Only values this process has not reported for this study yet: a study repeats the same
                # values in every file, and shipping them back once per file costs more than finding them.
                sent = self._sent.setdefault(study, set())
                values = frozenset(harvested - sent)
                sent.update(values)
                reason = withhold_reason(ds, self.rules.burned_in)
                if reason is not None:
                    return _Staged(index, FILE_WITHHELD, study, values, patient, reason=reason, series=series)
                if self.subject_key is not None:
                    subject = self.subject_key
                else:
                    subject = shift_subject_key(text_of(ds, TAG_PATIENT_ID))
                shift_days = study_shift_days(self.rules, self.key, subject)
                if shift_override is not None and shift_days is not None:
                    shift_days = shift_override
                self.deidentifier.take_replaced()  # nothing of an earlier, failed file
                prepared = _prepare(self.deidentifier, ds, shift_days, source=Path(path))
                replaced = dict(self.deidentifier.take_replaced())
                deid_study = text_of(ds, TAG_STUDY_UID)  # remapped: names the study in the private report
        except NotDicom as exc:
            return _Staged(index, NOT_DICOM, reason=str(exc))
        except Incomplete as exc:
            return _Staged(index, FAILED, study, values, reason=str(exc), series=series)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            return _Staged(
                index, FAILED, study, values, patient, reason=f"{type(exc).__name__}: {_short(exc)}", series=series
            )
        self._count += 1
        temp = self.temp_root / f"{os.getpid()}-{self._count}.tmp"
        temp.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as handle:
            handle.write(prepared.encoded.data)
        encoded = prepared.encoded
        stub = Encoded(b"", encoded.pending, encoded.implicit, encoded.little, encoded.deflate, encoded.body_offset)
        return _Staged(
            index, PROCESSED, study, values, patient, prepared.relpath, str(temp), stub, series=series,
            shift=shift_days, replaced=replaced, deid_study=deid_study,
        )


class _FinishWorker:
    """Pass B in one process: clean pending elements with the patient's values, move to the final name.

    `studies` maps a pool (see `patient_pools`) to its values; each file names its pool."""

    def __init__(self, studies: dict[str, tuple[PersonalValue, ...]], staging: Path, vocabulary: Vocabulary) -> None:
        self.studies = studies
        self.staging = staging
        self.vocabulary = vocabulary
        self._cleaners: dict[str, TextCleaner] = {}

    def cleaner_for(self, study: str) -> TextCleaner:
        cleaner = self._cleaners.get(study)
        if cleaner is None:
            cleaner = TextCleaner(self.studies.get(study, ()), self.vocabulary)
            self._cleaners[study] = cleaner
        return cleaner

    def run(self, index: int, temp: str, output: str, study: str, stub: Encoded) -> tuple[int, str, str]:
        try:
            final = self.staging / output
            final.parent.mkdir(parents=True, exist_ok=True)
            with quiet_pydicom():
                finish_file(Path(temp), final, stub, self.cleaner_for(study))
        except Exception as exc:  # noqa: BLE001
            Path(temp).unlink(missing_ok=True)
            return index, FAILED, f"{type(exc).__name__}: {_short(exc)}"
        return index, PROCESSED, ""


_STAGE_WORKER: _StageWorker | None = None
_FINISH_WORKER: _FinishWorker | None = None


def _init_stage(rules: RuleSet, key: bytes, subject_key: str | None, temp_root: Path, vocabulary: Vocabulary) -> None:
    global _STAGE_WORKER
    _STAGE_WORKER = _StageWorker(rules, key, subject_key, temp_root, vocabulary)


def _init_finish(studies: dict[str, tuple[PersonalValue, ...]], staging: Path, vocabulary: Vocabulary) -> None:
    global _FINISH_WORKER
    _FINISH_WORKER = _FinishWorker(studies, staging, vocabulary)


def _stage_task(task: tuple[int, str] | tuple[int, str, int | None]) -> _Staged:
    assert _STAGE_WORKER is not None
    return _STAGE_WORKER.run(*task)


def _finish_task(task: tuple[int, str, str, str, Encoded]) -> tuple[int, str, str]:
    assert _FINISH_WORKER is not None
    return _FINISH_WORKER.run(*task)


def _run_tasks(
    function: Callable[[Any], Any],
    tasks: list[Any],
    jobs: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> Iterator[Any]:
    """Results in task order; in this process for one job, else a process pool fed in chunks."""
    if jobs <= 1 or len(tasks) <= 1:
        initializer(*initargs)
        for task in tasks:
            yield function(task)
        return
    chunk = max(1, min(32, len(tasks) // (jobs * 8)))
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(jobs, initializer=initializer, initargs=initargs) as pool:
        yield from pool.imap(function, tasks, chunksize=chunk)


# --- the tree ---------------------------------------------------------------------------------------------


def _list_files(src: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file():
                found.append(path)
    return found


def _one_shift_per_study(
    results: list[_Staged], paths: Sequence[Path], jobs: int, stage_args: tuple[Any, ...]
) -> list[_Staged]:
    """One date shift per study and run: the study's first file (in input order) decides for every file of
    the study. Files whose PatientID normalises differently from it (a rare, malformed export) are staged
    again with that shift, so a study or series never carries two shifts; in the common case nothing is
    redone."""
    decided: dict[str, int | None] = {}
    for result in results:
        if result.status == PROCESSED:
            decided.setdefault(result.study, result.shift)
    redo = [r for r in results if r.status == PROCESSED and r.shift != decided[r.study]]
    if not redo:
        return results
    for result in redo:
        Path(result.temp or "").unlink(missing_ok=True)
    tasks = [(r.index, str(paths[r.index]), decided[r.study]) for r in redo]
    rules, key, subject_key, temp_root, vocabulary = stage_args
    again_args = (rules, key, subject_key, Path(temp_root) / "again", vocabulary)  # new workers: names of their own
    again = {r.index: r for r in _run_tasks(_stage_task, tasks, jobs, _init_stage, again_args)}
    return [again.get(r.index, r) for r in results]


def deidentify_tree(
    src: Path,
    dst: Path,
    *,
    rules: RuleSet | None = None,
    key: bytes,
    jobs: int = 1,
    files: Sequence[Path] | None = None,
    subject_key: str | None = None,
    report: Path | None = None,
    progress: bool = False,
    vocabulary: Vocabulary | None = None,
    pooled: Iterable[PersonalValue] = (),
    scratch: Path | None = None,
) -> DeidReport:
    """De-identify every file under `src` (or `files`) into the new folder `dst` (which appears whole).

    `dst` must not exist or be an empty folder; it must not overlap `src`. `subject_key` (the subject's
    pseudonym) sets the date shift; default: each file's PatientID as `shift_subject_key` normalises it,
    with one shift per study (its first file decides, see `_one_shift_per_study`). Returns the report; writes
    it (private, 0600) to `report` when given. `vocabulary`: the descriptor vocabulary (default: shipped).
    `pooled`: values of the same patient harvested elsewhere (the pipeline passes those of the subject's other
    sessions), removed from this tree's text too: another visit's spelling of a name must not survive here.
    `scratch`: the folder to build the tree in (default: a temporary sibling of `dst`). Files there still hold
    text not yet cleaned of the harvested values, so the pipeline passes a private folder; only the finished
    tree is moved to `dst` (a rename, or a copy into a sibling of `dst` then a rename across file systems).
    """
    src = Path(src)
    dst = Path(dst)
    if rules is None:
        from bidsafe.deid.rules import load_rules

        rules = load_rules()
    check_tree_arguments(src, dst, jobs)
    vocabulary = vocabulary if vocabulary is not None else vocabulary_for()
    paths = _list_files(src) if files is None else [Path(p) if Path(p).is_absolute() else src / p for p in files]
    entries = [FileEntry(input=str(p), status=FAILED, reason="not processed") for p in paths]
    harvest = _Harvest()
    with _staging_dir(dst, scratch) as staging, _fewer_collections():
        temp_root = staging / ".bidsafe-staging"
        # Pass A: read each file once; harvest; de-identify; stage.
        stage_args = (rules, key, subject_key, temp_root, vocabulary)
        results = _pass_a(paths, jobs, stage_args, progress)
        staged = harvest.sort(results, paths, entries)
        # Pass B: clean free text and kept private text with every value of the patient (all their studies).
        _pass_b(staged, harvest.pool_contexts(staged, pooled), paths, entries, jobs, (staging, vocabulary), progress)
        shutil.rmtree(temp_root, ignore_errors=True)
    all_values = PersonalValues(v for values in harvest.studies.values() for v in values)
    result_report = DeidReport(
        entries, all_values, rules_profile=getattr(rules, "profile", ""), replaced_tokens=harvest.replaced
    )
    if report is not None:
        write_report(result_report, report)
    return result_report


def _pass_a(paths: Sequence[Path], jobs: int, stage_args: tuple[Any, ...], progress: bool) -> list[_Staged]:
    """Stage every file (one date shift per study), in input order."""
    tasks = [(i, str(p)) for i, p in enumerate(paths)]
    meter = Progress("bidsafe deid: de-identifying", len(paths), enabled=progress)
    results: list[_Staged] = []
    for done, result in enumerate(_run_tasks(_stage_task, tasks, jobs, _init_stage, stage_args), 1):
        meter.update(done)
        results.append(result)
    results = _one_shift_per_study(results, paths, jobs, stage_args)
    meter.done()
    return results


@dataclass
class _Harvest:
    """What pass A found across files: personal values and patient keys by study, vocabulary replacements."""

    studies: dict[str, set[PersonalValue]] = field(default_factory=dict)
    replaced: dict[str, dict[str, int]] = field(default_factory=dict)  # deid study UID -> token -> count
    patients: dict[str, set[str]] = field(default_factory=dict)

    def sort(self, results: list[_Staged], paths: Sequence[Path], entries: list[FileEntry]) -> list[_Staged]:
        """Note each result's harvest; enter the files pass A ended (and duplicates) in `entries`; return
        the staged files pass B finishes."""
        staged: list[_Staged] = []
        claimed: set[str] = set()
        for result in results:
            if result.values:
                self.studies.setdefault(result.study, set()).update(result.values)
            if result.replaced:
                merge_counts(self.replaced.setdefault(result.deid_study, {}), result.replaced)
            if result.patient:
                self.patients.setdefault(result.study, set()).add(result.patient)
            path = str(paths[result.index])
            if result.status != PROCESSED:
                entries[result.index] = FileEntry(path, result.status, reason=result.reason, series=result.series)
                continue
            if result.output in claimed:  # same de-identified name: same SOPInstanceUID
                Path(result.temp or "").unlink(missing_ok=True)
                entries[result.index] = FileEntry(
                    path,
                    DUPLICATE,
                    output=result.output,
                    reason="same SOPInstanceUID as an earlier file; the earlier one was kept",
                    series=result.series,
                )
                continue
            claimed.add(result.output or "")
            staged.append(result)
        return staged

    def pool_contexts(
        self, staged: list[_Staged], pooled: Iterable[PersonalValue]
    ) -> tuple[dict[str, str], dict[str, tuple[PersonalValue, ...]]]:
        """(study -> pool, pool -> its sorted values): `pooled` (values from elsewhere) joins every pool."""
        pool_of = patient_pools(set(self.studies) | {s.study for s in staged}, self.patients)
        elsewhere = frozenset(pooled)
        pools: dict[str, set[PersonalValue]] = {}
        for study, values in self.studies.items():
            pools.setdefault(pool_of[study], set(elsewhere)).update(values)
        for study in {s.study for s in staged}:
            pools.setdefault(pool_of[study], set(elsewhere))
        return pool_of, {pool: tuple(sorted(values)) for pool, values in pools.items()}


def _pass_b(
    staged: list[_Staged],
    pooling: tuple[dict[str, str], dict[str, tuple[PersonalValue, ...]]],
    paths: Sequence[Path],
    entries: list[FileEntry],
    jobs: int,
    finish_args: tuple[Path, Vocabulary],
    progress: bool,
) -> None:
    """Clean and move every staged file to its final name; enter each file's fate in `entries`."""
    pool_of, contexts = pooling
    finish = [(s.index, s.temp, s.output, pool_of[s.study], s.stub) for s in staged]
    outputs = {s.index: s.output for s in staged}
    series_of = {s.index: s.series for s in staged}
    meter = Progress("bidsafe deid: cleaning text", len(finish), enabled=progress)
    for done, (index, status, reason) in enumerate(
        _run_tasks(_finish_task, finish, jobs, _init_finish, (contexts, *finish_args)), 1
    ):
        meter.update(done)
        output = outputs[index] if status == PROCESSED else None
        entries[index] = FileEntry(str(paths[index]), status, output=output, reason=reason, series=series_of[index])
    meter.done()


# Python's cyclic collector runs after every 700 new container objects by default; reading a header makes tens
# of thousands (a Dataset per sequence item), so it ran ~3000 times over the corpus and took 7 % of `bidsafe
# deid`. Every file's objects are dropped once it is written, so collecting less often keeps memory flat.
_GC_THRESHOLD_DURING_DEID = 10_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the collector less often while files are processed (pool workers forked inside inherit it)."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], _GC_THRESHOLD_DURING_DEID), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextlib.contextmanager
def _staging_dir(dst: Path, scratch: Path | None) -> Iterator[Path]:
    """Where `deidentify_tree` builds `dst`: a temporary sibling (`atomic_dir`), or a new folder under `scratch`
    moved to `dst` once finished; removed on error either way."""
    if scratch is None:
        with atomic_dir(dst) as staging:
            yield staging
        return
    import tempfile

    Path(scratch).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"deid-{dst.name}-", dir=scratch))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_dir_into_place(staging, dst)


def check_tree_arguments(src: Path, dst: Path, jobs: int) -> None:
    if not src.is_dir():
        raise ConfigError("SRC does not exist or is not a folder")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    src_resolved, dst_resolved = src.resolve(), dst.resolve()
    if dst_resolved == src_resolved or dst_resolved.is_relative_to(src_resolved):
        raise ConfigError("DST must not be inside SRC (the raw input is never written to)")
    if src_resolved.is_relative_to(dst_resolved):
        raise ConfigError("SRC must not be inside DST")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError("DST exists and is not an empty folder; bidsafe deid only writes a new folder")


# The package's public face: what callers and tests import from here, wherever it now lives.
__all__ = [
    "DUPLICATE",
    "FAILED",
    "NOT_DICOM",
    "PROCESSED",
    "STATUSES",
    "FILE_WITHHELD",
    "DeidReport",
    "Deidentifier",
    "FileEntry",
    "burned_in_findings",
    "deidentify_dataset",
    "deidentify_tree",
    "encode_file",
    "has_patient_geometry",
    "patient_key",
    "patient_pools",
    "shift_subject_key",
    "study_shift_days",
    "withhold_reason",
    "write_report",
]
