"""Deface structural images: carry pydeface's face mask onto the image and zero the face, or fail closed.

Engines: `fsl` runs pydeface itself (FSL FLIRT), `builtin` registers pydeface's template with SimpleITK
(bidsafe.deface.register), `auto` picks FSL when it is usable. Either way the same guards judge the transform
(bidsafe.deface.guards) and the same writer produces the output: the input's header bytes unchanged, its data
type and scaling kept, voxels outside the face untouched, face voxels set to zero. When a guard trips nothing
is written and GuardError (exit 3) is raised.

This module: one image (`deface_image`), a session (`deface_session`) and the command line. Where the face is
(registration, face mask, guards, `--applyto`): bidsafe.deface.estimate and bidsafe.deface.facemask; reading
and writing NIfTI: bidsafe.deface.nifti; records and the refusal error: bidsafe.deface.records.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

from bidsafe.bidsnames import image_suffix, known_suffix
from bidsafe.deface import template as tpl
from bidsafe.deface.estimate import (
    ENGINES,
    THREADS_ENV,
    applied_or_registered,
    choose_engine,
    estimate_applied,
    estimate_removal,
    resolve_threads,
)
from bidsafe.deface.facemask import FACE_MARGIN_MM, apply_guards, face_in_grid
from bidsafe.deface.nifti import (
    NIFTI_SUFFIXES,
    _check_output,
    defaced_bytes,
    load_nifti,
    mask_bytes,
    registration_volume,
)
from bidsafe.deface.records import (
    DefaceRecord,
    DefaceRefused,
    RemovalEstimate,
    guard_values_text,
    refused_record,
)
from bidsafe.errors import ConfigError, GuardError
from bidsafe.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json
from bidsafe.progress import Progress

# The engine's API as it was before the split into records, nifti, facemask and estimate (tests, benchmarks and
# bidsafe.deface import these names from here).
__all__ = [
    "ENGINES", "FACE_MARGIN_MM", "NIFTI_SUFFIXES", "THREADS_ENV", "DefaceRecord", "DefaceRefused",
    "RemovalEstimate", "applied_or_registered", "apply_guards", "choose_engine", "cli_main", "deface_image",
    "deface_session", "deface_targets", "defaced_bytes", "estimate_applied", "estimate_removal", "face_in_grid",
    "guard_values_text", "load_nifti", "mask_bytes", "refused_record", "registration_volume", "resolve_threads",
]


def deface_image(
    in_path: Path,
    out_path: Path,
    engine: str = "auto",
    qc_png: Path | None = None,
    mask_path: Path | None = None,
    threads: int | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    template: tpl.TemplatePair | None = None,
    estimate: RemovalEstimate | None = None,
) -> DefaceRecord:
    """Deface one image. Raises GuardError (and writes nothing) when a guard trips.

    `name` is how the record and messages call the image (default: the file name). `progress` counts the
    steps done (registration and guards, then writing). `template`: the pair to register (default: the shipped
    adult pair). `estimate`: one already made for this image (e.g. `applied_or_registered`), used as is.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    label = name or in_path.name
    _check_paths(in_path, out_path, mask_path, qc_png)
    started = time.monotonic()
    if estimate is None:
        estimate = estimate_removal(in_path, engine=engine, threads=threads, template=template)
    if progress is not None:
        progress.advance()
    if estimate.failures:
        raise DefaceRefused(
            f"deface refused ({estimate.engine}): " + "; ".join(estimate.failures) + " | "
            + guard_values_text(estimate.guard_values), label, [refused_record(label, estimate)],
        )
    img = load_nifti(in_path)
    data = defaced_bytes(in_path, img, estimate.removal, gzipped=out_path.name.endswith(".gz"))
    if qc_png is not None:
        from bidsafe.deface import qc

        qc.write_qc_png(img, estimate.removal, Path(qc_png), title=label)
    if mask_path is not None:
        atomic_write_bytes(mask_path, mask_bytes(estimate.removal, img, Path(mask_path).name.endswith(".gz")))
    atomic_write_bytes(out_path, data)
    if progress is not None:
        progress.advance()
    return _record(label, estimate, data, img.affine, time.monotonic() - started)


def _check_paths(in_path: Path, out_path: Path, mask_path: Path | None, qc_png: Path | None) -> None:
    """Refuse an output, mask or QC path that would overwrite the input or each other, or a mask not NIfTI."""
    _check_output(in_path, out_path)
    for extra in (mask_path, qc_png):
        if extra is not None and Path(extra).resolve() in {in_path.resolve(), out_path.resolve()}:
            raise ConfigError("mask/QC path collides with the input or output", extra)
    if mask_path is not None and not Path(mask_path).name.endswith(NIFTI_SUFFIXES):
        raise ConfigError("mask must end in .nii or .nii.gz", mask_path)


def _record(label: str, estimate: RemovalEstimate, data: bytes, affine: np.ndarray, seconds: float) -> DefaceRecord:
    """The record of an image written as `data`: its guard values, transform and what was removed."""
    report = estimate.report
    removed = int(estimate.removal.sum())
    return DefaceRecord(
        input=label,
        output_sha256=hashlib.sha256(data).hexdigest(),
        engine=estimate.engine,
        singular_values=[round(v, 4) for v in report.singular_values],
        shear=round(report.shear, 4),
        agreement_dice=None if report.agreement_dice is None else round(report.agreement_dice, 4),
        brain_voxels_removed=report.brain_voxels_removed,
        brain_cm3_removed=round(report.brain_cm3_removed, 3),
        metric=None if report.metric is None else round(report.metric, 4),
        removed_voxels=removed,
        removed_cm3=round(removed * float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0, 2),
        volumes=estimate.volumes,
        seconds=round(seconds, 2),
        matrix=[[round(float(v), 6) for v in row] for row in estimate.matrix],
        notes=estimate.notes,
        guards=estimate.guard_values,
        template_sha256=tpl.pair_assets(estimate.pair or tpl.active_pair()).sha256,
        template=(estimate.pair or tpl.active_pair()).name,
        applied_from=estimate.applied_from,
    )


# --- sessions -------------------------------------------------------------------------------------------------


def deface_targets(
    in_dir: Path, exempt: Iterable[str] = (), also: Iterable[str] = ()
) -> list[Path]:
    """Relative paths of the NIfTI images to deface: every image in an `anat` folder whatever its suffix, and
    every image elsewhere whose suffix is in `also`; suffixes in `exempt` are left alone (the site's documented
    choice, config `deface.exempt`) unless `also` names them too. The release's deface gate makes its own,
    independent choice of what needs a face removed."""
    exempt, also = set(exempt), set(also)
    found = []
    for path in sorted(Path(in_dir).rglob("*")):
        suffix = image_suffix(path)
        if suffix is None or not path.is_file():
            continue
        in_anat = "anat" in path.relative_to(in_dir).parts[:-1]
        if suffix in also or (in_anat and suffix not in exempt):
            found.append(path.relative_to(in_dir))
    return found


def deface_session(
    in_dir: Path,
    out_dir: Path,
    records_json: Path,
    qc_dir: Path | None,
    engine: str = "auto",
    threads: int | None = None,
    *,
    exempt: Iterable[str] = (),
    also: Iterable[str] = (),
    template: tpl.TemplatePair | None = None,
    applyto: bool = True,
) -> list[DefaceRecord]:
    """Copy a session's BIDS tree to `out_dir` with every target image (`deface_targets`) defaced, atomically.

    With `applyto`, the session's T1w (`reference_image`) is registered and its face mask carried onto every
    other target in the same scanner frame (`applied_or_registered`: each judged by every guard on its own
    grid, registered on its own when the mask does not fit); without a T1w each image is registered.
    Every image is tried so the error names all that failed; if any guard trips nothing is written
    (`out_dir` and `records_json` stay as they were) and DefaceRefused names the images and carries every
    image's record (the refused ones with `refused: true`) for the caller to keep.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise ConfigError("session folder not found", in_dir)
    targets = set(deface_targets(in_dir, exempt, also))
    reference, reference_estimate = _session_reference(in_dir, targets, applyto, engine, threads, template)
    records: list[DefaceRecord] = []
    refused: list[str] = []
    refused_records: list[dict[str, Any]] = []
    with atomic_dir(out_dir) as staging:
        for path in sorted(in_dir.rglob("*")):
            relative = path.relative_to(in_dir)
            destination = staging / relative
            if path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            if relative not in targets:
                shutil.copyfile(path, destination)
                continue
            qc_png = None if qc_dir is None else Path(qc_dir) / (_stem(relative) + "_deface.png")
            try:
                estimate = _session_estimate(in_dir, relative, reference, reference_estimate, engine, threads)
                record = deface_image(path, destination, engine=engine, qc_png=qc_png, threads=threads,
                                      name=relative.as_posix(), template=template, estimate=estimate)
            except GuardError as exc:
                refused.append(f"{relative.as_posix()}: {exc.message}")  # its path once, not twice
                refused_records.extend(getattr(exc, "records", []))
                continue
            records.append(record)
        if refused:
            raise DefaceRefused("session withheld, defacing refused for " + " || ".join(refused), in_dir.name,
                                [*session_records(records), *refused_records])
    atomic_write_json(records_json, session_records(records))
    return records


def _session_reference(
    in_dir: Path, targets: set[Path], applyto: bool, engine: str, threads: int | None,
    template: tpl.TemplatePair | None,
) -> tuple[Path | None, RemovalEstimate | None]:
    """The session's reference image (`reference_image`, with `applyto`) and its estimate; (None, None) when
    there is none or it cannot be estimated."""
    reference = reference_image(targets) if applyto else None
    if reference is None:
        return None, None
    try:
        return reference, estimate_removal(in_dir / reference, engine=engine, threads=threads, template=template)
    except GuardError:
        return None, None  # an empty T1w: refused with its reason in the loop, the others registered on their own


def _session_estimate(
    in_dir: Path, relative: Path, reference: Path | None, reference_estimate: RemovalEstimate | None,
    engine: str, threads: int | None,
) -> RemovalEstimate | None:
    """The estimate an image of the session gets before deface_image: the reference's own, the reference's face
    mask carried onto it (or its own registration when that does not fit), or None (deface_image registers it)."""
    if relative == reference:
        return reference_estimate
    if reference_estimate is not None and not reference_estimate.failures:
        known = cast(Path, reference)  # reference_estimate is only set with a reference
        return applied_or_registered(reference_estimate, in_dir / known, known.as_posix(), in_dir / relative,
                                     engine=engine, threads=threads)
    return None


def session_records(records: list[DefaceRecord]) -> list[dict[str, Any]]:
    """records.json entries: each record with its released path and the output's SHA-256 up front."""
    return [{"path": r.input, "sha256": r.output_sha256, **r.as_dict()} for r in records]


REFERENCE_SUFFIX = known_suffix("T1w")  # policy: the image whose face mask the others get


def reference_image(targets: Iterable[Path]) -> Path | None:
    """The image whose face mask the session's other images get: its first T1w (the first run in name
    order) in an `anat` folder; None without one."""
    found = sorted(p for p in targets if image_suffix(p) == REFERENCE_SUFFIX and "anat" in p.parts[:-1])
    return found[0] if found else None


def _stem(relative: Path) -> str:
    name = relative.name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


# --- command line ---------------------------------------------------------------------------------------------


def applyto_output(out_path: Path, other: Path) -> Path:
    """Where `--applyto` writes OTHER's defaced copy: next to OUT, OTHER's name with `_defaced` before .nii."""
    name = Path(other).name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return Path(out_path).parent / f"{name[: -len(ext)]}_defaced{ext}"
    raise ConfigError("--applyto images must be single-file NIfTI (.nii or .nii.gz)", other)


def cli_template(args: argparse.Namespace) -> tpl.TemplatePair | None:
    given = {k: getattr(args, k, None) for k in ("template", "facemask", "brainmask")}
    if not any(given.values()):
        if getattr(args, "scale_range", None):
            raise ConfigError("--scale-range applies to a --template of your own")
        return None
    missing = [f"--{k}" for k, v in given.items() if not v]
    if missing:
        raise ConfigError(f"--template, --facemask and --brainmask go together: {', '.join(missing)} missing")
    paths = cast(dict[str, str], given)  # each one given (checked above)
    return tpl.site_pair(Path(paths["template"]).name, paths["template"], paths["facemask"], paths["brainmask"],
                         getattr(args, "scale_range", None))


def cli_main(args: argparse.Namespace) -> int:
    in_path, out_path = Path(args.input), Path(args.output)
    others = [Path(o) for o in (getattr(args, "applyto", None) or [])]
    outputs = {other: applyto_output(out_path, other) for other in others}
    written = [out_path, *outputs.values()]
    if len({p.resolve() for p in written}) != len(written):
        raise ConfigError("--applyto: two images would be written to the same file (same names?)", out_path.parent)
    sources = {p.resolve() for p in (in_path, *others)}
    for target in outputs.values():
        if target.resolve() in sources:
            raise ConfigError("--applyto: an output would overwrite an input", target)
    for option, target in (("OUT", args.output), ("--qc", args.qc), ("--mask", args.mask),
                           *(("--applyto", str(t)) for t in outputs.values())):
        if target and Path(target).exists() and not getattr(args, "force", False):
            raise ConfigError(f"{option}: the file exists; give --force to replace it", target)
    template = cli_template(args)
    threads = getattr(args, "threads", None)
    with Progress("bidsafe deface", 2 * (1 + len(others)), "steps", every_s=0) as meter:
        estimates: dict[Path, RemovalEstimate | None] = {in_path: None}
        if others:
            # every estimate before any write: a refused OTHER leaves OUT unwritten too
            _check_output(in_path, out_path)
            reference = estimate_removal(in_path, engine=args.engine, threads=threads, template=template)
            if reference.failures:
                raise GuardError(f"deface refused ({reference.engine}): " + "; ".join(reference.failures), in_path.name)
            estimates[in_path] = reference
            refused = []
            for other in others:
                _check_output(other, outputs[other])
                estimate = applied_or_registered(reference, in_path, in_path.name, other,
                                                 engine=args.engine, threads=threads)
                estimates[other] = estimate
                if estimate.failures:
                    refused.append(f"{other.name}: " + "; ".join(estimate.failures))
            if refused:
                raise GuardError("deface refused for " + " | ".join(refused), in_path.name)
        records = [deface_image(
            in_path, out_path, engine=args.engine, qc_png=Path(args.qc) if args.qc else None,
            mask_path=Path(args.mask) if args.mask else None, threads=threads, progress=meter,
            template=template, estimate=estimates[in_path],
        )]
        for other in others:
            records.append(deface_image(other, outputs[other], engine=args.engine, threads=threads, progress=meter,
                                        template=template, estimate=estimates[other]))
    for record in records:
        how = f"mask of {record.applied_from}" if record.applied_from else record.engine
        print(
            f"{record.input}: defaced with {how} in {record.seconds:.1f} s, "
            f"{record.removed_cm3:.0f} cm3 of the field of view zeroed, agreement Dice "
            f"{'n/a' if record.agreement_dice is None else f'{record.agreement_dice:.3f}'}, "
            f"metric {record.metric if record.metric is not None else 'n/a'}"
        )
    return 0
