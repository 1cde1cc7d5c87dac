"""Every defaced or refused image leaves what each guard measured: in records.json (accepted and refused
images alike) and in the refusal message (`bidsafe deface` exit 3, the withheld session's reason)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bidsafe.cli import main as cli
from bidsafe.deface import engine, guards

from helpers.deface_heads import LPS, head_pose, make_head, make_session

slow = pytest.mark.slow

LIMITS = {"singular_range": list(guards.SINGULAR_RANGE), "max_anisotropy": guards.MAX_ANISOTROPY,
          "max_shear": guards.MAX_SHEAR,
          "min_agreement_dice": guards.MIN_AGREEMENT_DICE,
          "max_brain_voxels_removed": guards.MAX_BRAIN_VOXELS_REMOVED, "max_metric": guards.MAX_METRIC}


@pytest.fixture(scope="module")
def withheld_session(tmp_path_factory):
    """The deface stage on a session with an ordinary head and a head 0.6 times the template's size (2.5 mm
    grids; the small head keeps its registration cheap)."""
    from bidsafe.stages import deface_stage

    root = tmp_path_factory.mktemp("records")
    ordinary, tiny = root / "ordinary.nii.gz", root / "tiny.nii.gz"
    make_head(ordinary, head_pose(), LPS, (2.5, 2.5, 2.5), seed=7)
    make_head(tiny, head_pose(scale=0.6, shift=(0.0, -4.0, 4.0)), LPS, (2.5, 2.5, 2.5), fov_mm=(130.0, 160.0, 160.0),
              seed=6)
    make_session(root / "scrub", {"sub-01_ses-1_T1w.nii.gz": ordinary, "sub-01_ses-1_T2w.nii.gz": tiny})
    stage_dir = root / "deface" / "sub-01" / "ses-1"
    status = deface_stage(in_dir=root / "scrub", out_bids=stage_dir / "bids", status_json=stage_dir / "status.json",
                          records_json=stage_dir / "records.json", pictures_dir=stage_dir / "qc",
                          engine="builtin")
    records = {r["path"]: r for r in json.loads((stage_dir / "records.json").read_text())}
    return {"status": status, "records": records, "tiny": tiny, "root": root}


@slow
def test_accepted_image_record_carries_every_guard_value(withheld_session):
    record = withheld_session["records"]["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]
    assert record["refused"] is False
    values = record["guards"]
    assert values["failures"] == [] and values["limits"] == LIMITS
    assert values["singular_values"] == record["singular_values"] and len(values["singular_values"]) == 3
    assert guards.SINGULAR_RANGE[0] <= values["scale"] <= guards.SINGULAR_RANGE[1]
    assert values["anisotropy"] <= guards.MAX_ANISOTROPY
    assert values["agreement_dice"] == record["agreement_dice"] >= guards.MIN_AGREEMENT_DICE
    assert values["metric"] == record["metric"] <= guards.MAX_METRIC
    assert values["brain_voxels_removed"] == 0 and values["shear"] == record["shear"]


@slow
def test_refused_image_record_and_reason_carry_the_guard_values(withheld_session):
    status, records = withheld_session["status"], withheld_session["records"]
    assert status["status"] == "withheld" and status["code"] == "deface:refused"
    record = records["sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"]
    assert record["refused"] is True and "sha256" not in record
    values = record["guards"]
    assert values["limits"] == LIMITS and values["failures"]
    assert values["scale"] > guards.SINGULAR_RANGE[1]  # a 0.6x head: template mm per subject mm
    assert values["failures"][0] == guards.HEAD_SMALLER_THAN_ADULT
    assert record["singular_values"] == values["singular_values"]
    # the reason names the refused image with its guard values, not the accepted one
    reason = status["reason"]
    assert f"anat/sub-01_ses-1_T2w.nii.gz: deface refused (builtin): {values['failures'][0]}" in reason
    assert "sub-01_ses-1_T1w" not in reason
    assert "singular values " + ", ".join(f"{v:.3f}" for v in values["singular_values"]) in reason
    assert f"overall scale {values['scale']:.3f} allowed [{guards.SINGULAR_RANGE[0]}, {guards.SINGULAR_RANGE[1]}]" \
        in reason
    assert f"two-initialisation face-mask Dice {values['agreement_dice']:.3f}" in reason


@slow
def test_cli_refusal_prints_the_guard_values(withheld_session, capsys):
    out = withheld_session["root"] / "cli-out.nii.gz"
    assert cli(["deface", str(withheld_session["tiny"]), str(out), "--engine", "builtin"]) == 3
    err = capsys.readouterr().err
    record = withheld_session["records"]["sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"]
    assert "deface refused (builtin): " + "; ".join(record["guards"]["failures"]) in err
    assert "guard values: singular values " + ", ".join(f"{v:.3f}" for v in record["singular_values"]) in err
    assert f"metric {record['metric']:.4f} (max {guards.MAX_METRIC})" in err
    assert not out.exists()


def test_guard_values_text_names_each_value_and_threshold():
    report = guards.GuardReport()
    guards.check_linear(np.diag([0.7, 0.9, 1.0, 1.0]), report)
    guards.check_agreement(None, report)  # FSL ran once: no second initialisation
    guards.check_metric(-0.41234, report)
    report.limits["max_brain_voxels_removed"] = guards.MAX_BRAIN_VOXELS_REMOVED
    text = engine.guard_values_text(report.as_dict())
    assert text == (
        f"guard values: singular values 1.000, 0.900, 0.700 (overall scale 0.857 allowed "
        f"[{guards.SINGULAR_RANGE[0]}, {guards.SINGULAR_RANGE[1]}], ratio 1.429 max {guards.MAX_ANISOTROPY}); "
        f"shear 0.000 (max {guards.MAX_SHEAR}); two-initialisation face-mask "
        f"Dice n/a (min {guards.MIN_AGREEMENT_DICE}); eroded template brain removed 0 voxels (max 0); "
        f"metric -0.4123 (max {guards.MAX_METRIC})"
    )


def test_run_report_marks_a_refused_image_in_the_deface_table():
    from bidsafe.release.report import _deface_table

    html = _deface_table([
        {"input": "anat/a_T1w.nii.gz", "engine": "builtin", "singular_values": [0.9, 1.0, 1.1], "refused": False},
        {"input": "anat/a_T2w.nii.gz", "engine": "builtin", "singular_values": [1.5, 1.6, 1.7], "refused": True},
    ])
    assert "<td>builtin</td><td>0.900–1.100</td>" in html
    assert "<td>builtin (refused)</td><td>1.500–1.700</td>" in html
