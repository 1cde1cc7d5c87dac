"""Write one session's export: every series of the protocol table, the screen save and the junk an inbox
really receives next to the images."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np

from bidsafe.demo.anatomy import sample_head, session_pose, t2_contrast, to_int16
from bidsafe.demo.dicomfiles import (
    Context,
    Diffusion,
    Slice,
    mr_file,
    screenshot_file,
    write_dataset,
)
from bidsafe.demo.people import STATION
from bidsafe.demo.protocol import (
    BOLD_VOLUMES,
    DWI_BVALUE,
    DWI_DIRECTIONS,
    LOCALIZER_PLANES,
    PROTOCOL,
    SCREENSHOT,
    MRSeries,
    SeriesSpec,
)
from bidsafe.demo.records import DemoSeries


@dataclasses.dataclass
class _Volumes:
    """The pixel volumes of one series, each (slices, rows, columns), and what varies between them."""

    volumes: list[np.ndarray]
    slice_times_s: list[float] | None = None  # per slice; also written as TriggerTime
    diffusion: list[Diffusion] | None = None  # per volume


class _Images:
    """The session's head sampled on a geometry, kept while consecutive series share it (the EPI slab)."""

    def __init__(self, pose: np.ndarray) -> None:
        self.pose = pose
        self._key: tuple[object, str] | None = None
        self._image: np.ndarray | None = None

    def get(self, spec: SeriesSpec) -> np.ndarray:
        key = (spec.series.geometry, spec.contrast)
        if self._key != key or self._image is None:
            self._image = None  # free the previous one first: a T1 volume is tens of MB
            head = sample_head(spec.series.geometry, self.pose)
            self._image = t2_contrast(head) if spec.contrast == "T2" else head
            self._key = key
        return self._image


def write_session(ctx: Context, study_folder: Path) -> list[DemoSeries]:
    """Every series of the protocol, then the screen save, under `study_folder`, in protocol order."""
    rng = np.random.default_rng([ctx.seed, ctx.patient.index, ctx.session_index, 2])
    images = _Images(session_pose(rng))
    written = []
    for spec in PROTOCOL:
        if spec.volumes == "localizer":
            folder, files = _write_localizer(ctx, study_folder, spec, images.pose, rng)
        else:
            made = _VOLUME_MAKERS[spec.volumes](spec, images.get(spec), rng)
            folder, files = _write_volume_series(ctx, study_folder, spec, made)
        written.append(DemoSeries(spec.series.number, spec.series.description, folder, files, spec.datatype,
                                  spec.suffix))
    folder = study_folder / SCREENSHOT.folder
    path = folder / SCREENSHOT.file.format(family=ctx.patient.family, instance=1)
    write_dataset(screenshot_file(ctx, SCREENSHOT), path)
    written.append(DemoSeries(SCREENSHOT.number, SCREENSHOT.description, folder, (path,), None, None))
    return written


def _single(spec: SeriesSpec, head: np.ndarray, rng: np.random.Generator) -> _Volumes:
    image = np.roll(head, spec.roll, axis=1) if spec.roll else head
    return _Volumes([to_int16(image, rng, spec.scale, spec.noise)])


def _bold(spec: SeriesSpec, head: np.ndarray, rng: np.random.Generator) -> _Volumes:
    """BOLD_VOLUMES volumes with a small global signal drift, slices interleaved within each TR."""
    slice_times = interleaved_slice_times(spec.series.geometry.slices, spec.series.repetition_time / 1000.0)
    drift = rng.normal(0.0, 0.01, size=BOLD_VOLUMES)
    volumes = [to_int16(head * (1.0 + drift[v]), rng, spec.scale, spec.noise) for v in range(BOLD_VOLUMES)]
    return _Volumes(volumes, slice_times_s=slice_times)


def _dwi(spec: SeriesSpec, head: np.ndarray, rng: np.random.Generator) -> _Volumes:
    """b0 then one volume per direction of DWI_DIRECTIONS, with CSF diffusing faster than tissue."""
    diffusion: list[Diffusion] = [(0.0, None)]
    diffusion += [(DWI_BVALUE, d) for d in DWI_DIRECTIONS]
    adc = np.where(head > 800, 2.5e-3, 0.8e-3).astype(np.float32)
    volumes = []
    for bvalue, direction in diffusion:
        weight = 1.0 if direction is None else 1.0 + 0.3 * abs(direction[0])  # a little anisotropy
        volumes.append(to_int16(head * np.exp(-bvalue * adc * weight), rng, spec.scale, spec.noise))
    return _Volumes(volumes, diffusion=diffusion)


_VOLUME_MAKERS: dict[str, Callable[[SeriesSpec, np.ndarray, np.random.Generator], _Volumes]] = {
    "single": _single,
    "bold": _bold,
    "dwi": _dwi,
}


def _name(pattern: str, ctx: Context, series: MRSeries, instance: int = 0, uid: str = "") -> str:
    """Fill a folder or file name pattern of the protocol table (fields: see `SeriesSpec`)."""
    return pattern.format(number=series.number, words="_".join(series.description.split()), instance=instance,
                          uid=uid, family=ctx.patient.family, given=ctx.patient.given)


def _write_volume_series(
    ctx: Context, study_folder: Path, spec: SeriesSpec, made: _Volumes,
) -> tuple[Path, tuple[Path, ...]]:
    """Write 3D volumes (each (slices, rows, columns)) as one file per slice, volumes one after the other."""
    series = spec.series
    folder = study_folder / _name(spec.folder, ctx, series)
    series_uid = ctx.uid(series.key, "series")
    series_start = ctx.study_time + timedelta(seconds=series.start_offset_s)
    n_vol = len(made.volumes)
    tr_s = series.repetition_time / 1000.0
    # 2D series acquire their slices one after another within each TR (interleaved); a 3D volume at once.
    if made.slice_times_s is not None:
        times = list(made.slice_times_s)
    elif series.acquisition_type == "2D":
        times = interleaved_slice_times(series.geometry.slices, tr_s)
    else:
        times = [0.0] * series.geometry.slices
    files = []
    instance = 0
    for v, volume in enumerate(made.volumes):
        for k in range(series.geometry.slices):
            instance += 1
            where = Slice(
                index=k, instance=instance, acquired=series_start + timedelta(seconds=v * tr_s + times[k]),
                temporal=(v + 1, n_vol) if n_vol > 1 else None,
                trigger_time_ms=times[k] * 1000.0 if made.slice_times_s is not None else None,
                diffusion=made.diffusion[v] if made.diffusion is not None else None,
            )
            ds = mr_file(ctx, series, series_uid, volume[k], where)
            path = folder / _name(spec.file, ctx, series, instance, ds.SOPInstanceUID)
            write_dataset(ds, path)
            files.append(path)
    return folder, tuple(files)


def interleaved_slice_times(slices: int, tr_s: float) -> list[float]:
    """Interleaved ascending order: even-indexed slices first, then odd ones."""
    order = list(range(0, slices, 2)) + list(range(1, slices, 2))
    step = tr_s / slices
    times = [0.0] * slices
    for position, k in enumerate(order):
        times[k] = round(position * step, 4)
    return times


def _write_localizer(
    ctx: Context, study_folder: Path, spec: SeriesSpec, pose: np.ndarray, rng: np.random.Generator,
) -> tuple[Path, tuple[Path, ...]]:
    """One series over the planes of LOCALIZER_PLANES, images 0.8 s apart from the study start."""
    folder = study_folder / _name(spec.folder, ctx, spec.series)
    series_uid = ctx.uid(spec.series.key, "series")
    files = []
    instance = 0
    for g in LOCALIZER_PLANES:
        plane_series = dataclasses.replace(spec.series, geometry=g)
        volume = to_int16(sample_head(g, pose), rng, spec.scale, spec.noise)
        for k in range(g.slices):
            instance += 1
            where = Slice(index=k, instance=instance, acquired=ctx.study_time + timedelta(seconds=instance * 0.8))
            ds = mr_file(ctx, plane_series, series_uid, volume[k], where)
            path = folder / _name(spec.file, ctx, spec.series, instance, ds.SOPInstanceUID)
            write_dataset(ds, path)
            files.append(path)
    return folder, tuple(files)


def write_junk(ctx: Context, study_folder: Path, series: Sequence[DemoSeries]) -> tuple[Path, ...]:
    """What real inboxes receive next to the images: a DICOMDIR, a note, an empty file, a cut-off file."""
    junk = []
    dicomdir = study_folder / "DICOMDIR"
    dicomdir.write_bytes(_dicomdir_bytes(ctx, series))
    junk.append(dicomdir)
    note = study_folder / "export_note.txt"
    note.write_text(
        f"Export for {ctx.patient.given.title()} {ctx.patient.family.title()} ({ctx.patient.patient_id})\n"
        f"Accession {ctx.accession}, burned by {STATION}\n",
        encoding="utf-8",
    )
    junk.append(note)
    empty = study_folder / "LOCKFILE"
    empty.write_bytes(b"")
    junk.append(empty)
    source = series[1].files[0]
    truncated = series[1].folder / "IM_TRUNCATED"
    truncated.write_bytes(source.read_bytes()[:300])
    junk.append(truncated)
    return tuple(junk)


def _dicomdir_bytes(ctx: Context, series: Sequence[DemoSeries]) -> bytes:
    """A Media Storage Directory (DICOMDIR) referencing the first file of each series, written by pydicom."""
    import tempfile

    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fileset = FileSet()
    fileset.ID = "DEMOEXPORT"
    fileset.UID = ctx.uid("fileset")
    for one in series:
        fileset.add(dcmread(one.files[0]))
    with tempfile.TemporaryDirectory() as tmp:
        fileset.write(tmp)
        return (Path(tmp) / "DICOMDIR").read_bytes()
