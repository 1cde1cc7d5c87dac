"""What defacing found and did: the per-image record, the refusal error and the estimate the guards judged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bidsafe.deface import guards
from bidsafe.deface import template as tpl
from bidsafe.errors import GuardError


@dataclass
class DefaceRecord:
    """What was done to one image and the guard values that allowed it (JSON-ready via as_dict)."""

    input: str
    output_sha256: str
    engine: str
    singular_values: list[float]
    shear: float
    agreement_dice: float | None
    brain_voxels_removed: int
    brain_cm3_removed: float
    metric: float | None
    removed_voxels: int
    removed_cm3: float
    volumes: int
    seconds: float
    matrix: list[list[float]] = field(default_factory=list)  # subject world -> template world (RAS mm)
    template_sha256: str = tpl.EXPECTED_TEMPLATE_SHA256
    notes: list[str] = field(default_factory=list)
    guards: dict[str, Any] = field(default_factory=dict)  # every guard's value, limit, failures (GuardReport.as_dict)
    refused: bool = False
    template: str = tpl.SHIPPED_NAME  # the template pair's name (config `deface.templates`)
    applied_from: str | None = None  # the image whose transform placed this face mask (`--applyto`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DefaceRefused(GuardError):
    """A guard tripped: nothing was written. `records` holds, for each image concerned, what the guards measured
    (for the pipeline's records.json); the message names the guard values too (exit 3 output)."""

    def __init__(self, message: str, path: str | Path | None, records: list[dict[str, Any]]) -> None:
        super().__init__(message, path)
        self.records = records


def guard_values_text(values: dict[str, Any]) -> str:
    """One line with every guard's value and its threshold, from GuardReport.as_dict()."""
    limits = values.get("limits") or {}

    def num(value: object, digits: int = 3) -> str:
        return "n/a" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]

    svs = ", ".join(num(v) for v in values.get("singular_values") or [])
    low, high = limits.get("singular_range") or (None, None)
    return (
        f"guard values: singular values {svs} (overall scale {num(values.get('scale'))} allowed [{low}, {high}], "
        f"ratio {num(values.get('anisotropy'))} max {limits.get('max_anisotropy')}); shear {num(values.get('shear'))} "
        f"(max {limits.get('max_shear')}); two-initialisation face-mask Dice {num(values.get('agreement_dice'))} "
        f"(min {limits.get('min_agreement_dice')}); eroded template brain removed "
        f"{values.get('brain_voxels_removed')} voxels (max {limits.get('max_brain_voxels_removed')}); "
        f"metric {num(values.get('metric'), 4)} (max {limits.get('max_metric')})"
    )


def refused_record(label: str, estimate: RemovalEstimate) -> dict[str, Any]:
    """The record of an image a guard refused: the same guard fields as a DefaceRecord, no output."""
    values = estimate.guard_values
    return {
        "path": label, "input": label, "refused": True, "engine": estimate.engine,
        "singular_values": values["singular_values"], "shear": values["shear"],
        "agreement_dice": values["agreement_dice"], "brain_voxels_removed": values["brain_voxels_removed"],
        "brain_cm3_removed": values["brain_cm3_removed"], "metric": values["metric"],
        "volumes": estimate.volumes, "seconds": round(estimate.seconds, 2),
        "matrix": [[round(float(v), 6) for v in row] for row in estimate.matrix],
        "notes": list(estimate.notes), "guards": values,
    }


@dataclass
class RemovalEstimate:
    """The removal mask on the input's grid and everything the guards found (nothing written yet)."""

    removal: np.ndarray  # bool, the input's first three dimensions; True = face, to be zeroed
    affine: np.ndarray
    matrix: np.ndarray  # subject world -> template world (RAS mm)
    engine: str
    report: guards.GuardReport
    volumes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    alternative: np.ndarray | None = None  # the transform from the other initialisation (builtin engine)
    pair: tpl.TemplatePair | None = None  # the template pair it was found with
    applied_from: str | None = None  # set when the transform was found on another image of the session

    @property
    def failures(self) -> list[str]:
        return self.report.failures

    @property
    def guard_values(self) -> dict[str, Any]:
        return self.report.as_dict()
