"""Defacing children (a site's template pair, the guards' template-relative scale range) and --applyto.

A child's head is pydeface's template scaled to 0.65x; the matching pair is the same template, face mask and
(derived) brain mask scaled 0.65x, so the truth is known exactly. Outcomes use the accuracy benchmark's
definitions (benchmarks/deface_accuracy.py, run_case): brain removed = removed voxels inside the template brain
carried by the true transform; face left = face-mask tissue (reference face on the head) not removed.
Everything runs at 2-2.5 mm to stay fast.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from test_deface import LPS, PIR, dice, head_pose, make_head, raw_data

from bidsafe.cli import main as cli
from bidsafe.deface import engine, guards
from bidsafe.deface import template as tpl
from bidsafe.deface.register import rotation_matrix
from bidsafe.errors import ConfigError

slow = pytest.mark.slow
CHILD = 0.65


def scale_about_origin(factor: float) -> np.ndarray:
    return np.diag([factor, factor, factor, 1.0])


def write_mask(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data.astype(np.uint8), affine)
    img.set_sform(affine, code=1)
    img.to_filename(path)
    return path


@pytest.fixture(scope="module")
def child_pair(tmp_path_factory) -> tpl.TemplatePair:
    """pydeface's template, face mask and derived brain scaled 0.65x about the world origin, at every 2nd voxel."""
    folder = tmp_path_factory.mktemp("pair")
    assets = tpl.pair_assets(tpl.shipped_pair())
    affine = scale_about_origin(CHILD) @ assets.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    sub = (slice(None, None, 2),) * 3
    nib.Nifti1Image(assets.image[sub].astype(np.float32), affine).to_filename(folder / "child_T1w.nii.gz")
    write_mask(folder / "child_facemask.nii.gz", ~assets.face[sub], affine)
    write_mask(folder / "child_brainmask.nii.gz", assets.brain[sub] & ~assets.face[sub], affine)
    return tpl.site_pair("child065", folder / "child_T1w.nii.gz", folder / "child_facemask.nii.gz",
                         folder / "child_brainmask.nii.gz")


def outcome(removal: np.ndarray, affine: np.ndarray, to_template: np.ndarray) -> dict[str, float]:
    """Brain removed and face left (cm3), the benchmark's definitions, with the shipped template's masks
    carried by the true subject -> adult template transform."""
    assets = tpl.pair_assets(tpl.shipped_pair())
    vox = np.linalg.solve(assets.affine, to_template @ affine)

    def carry(mask: np.ndarray, mode: str) -> np.ndarray:
        return ndimage.affine_transform(mask.astype(np.float32), vox[:3, :3], vox[:3, 3],
                                        output_shape=removal.shape, order=1, mode=mode) > 0.5

    head = ndimage.affine_transform(assets.image, vox[:3, :3], vox[:3, 3], output_shape=removal.shape, order=1) > 60
    face_tissue = carry(assets.face, "nearest") & head
    voxel_cm3 = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return {
        "brain_removed_cm3": float((removal & carry(assets.brain, "constant")).sum() * voxel_cm3),
        "face_left_cm3": float((face_tissue & ~removal).sum() * voxel_cm3),
        "face_cm3": float(face_tissue.sum() * voxel_cm3),
        "dice": dice(removal & head, face_tissue),
    }


# --- the guards' scale range comes from the template in use ----------------------------------------------------


def test_scale_range_is_the_template_pairs(child_pair, tmp_path):
    child_head = np.linalg.inv(scale_about_origin(CHILD))  # template mm per subject mm = 1 / 0.65

    def failures(matrix: np.ndarray, pair: tpl.TemplatePair | None) -> list[str]:
        report = guards.GuardReport()
        with tpl.using(pair):
            guards.check_linear(matrix, report)
        return report.failures

    assert failures(child_head, None) == [guards.HEAD_SMALLER_THAN_ADULT]
    assert failures(np.eye(4), None) == []
    # the same head fits the child pair exactly (its own size is 0.65 adult) ...
    assert failures(scale_about_origin(CHILD) @ child_head, child_pair) == []
    # ... and the adult head is too large for it: the range is relative to the template's own head size
    assert failures(scale_about_origin(CHILD), child_pair) == [
        "head larger than template 'child065' allows (scale 0.650 < 0.8)"]
    assert failures(child_head, child_pair) == [
        "head smaller than template 'child065' allows (scale 1.538 > 1.25)"]
    # a pair for a fast-growing age band can widen its range; anisotropy beyond it stays a generic refusal
    wide = tpl.site_pair("band", child_pair.template, child_pair.facemask, child_pair.brainmask, [0.6, 1.7])
    assert failures(child_head, wide) == []
    squashed = np.diag([1.0, 1.0, 1.4, 1.0])
    assert len(failures(squashed, None)) == 1 and failures(squashed, None)[0].startswith("implausible scale")
    assert "reflection" in failures(np.diag([-1.0, 1.0, 1.0, 1.0]), None)[0]
    with pytest.raises(ConfigError, match="scale_range"):
        tpl.site_pair("bad", child_pair.template, child_pair.facemask, child_pair.brainmask, [1.1, 1.5])


def test_site_pair_files_are_checked(child_pair, tmp_path):
    with pytest.raises(ConfigError, match="brainmask file not found"):
        tpl.site_pair("x", child_pair.template, child_pair.facemask, tmp_path / "missing.nii.gz")
    brain = nib.load(child_pair.brainmask)
    moved = write_mask(tmp_path / "moved_brain.nii.gz", np.asarray(brain.dataobj) > 0,
                       brain.affine @ np.diag([1.0, 1.0, 1.1, 1.0]))
    with pytest.raises(ConfigError, match="do not share a grid"):
        tpl.pair_assets(tpl.site_pair("x", child_pair.template, child_pair.facemask, moved))
    # a face mask that reaches the brain mask is refused: the brain guard would be meaningless
    face = np.asarray(nib.load(child_pair.facemask).dataobj) < 0.5
    overlap = write_mask(tmp_path / "overlap_brain.nii.gz", (np.asarray(brain.dataobj) > 0) | face, brain.affine)
    with pytest.raises(ConfigError, match="misses the brain"):
        tpl.pair_assets(tpl.site_pair("x", child_pair.template, child_pair.facemask, overlap))
    assets = tpl.pair_assets(child_pair)  # landmarks scale with the brain: 0.65 of the adult ones
    assert assets.chin_z == pytest.approx(CHILD * tpl.CHIN_Z_MM, abs=4.0)
    assert assets.skull_base_z == pytest.approx(CHILD * tpl.SKULL_BASE_Z_MM, abs=4.0)
    assert assets.sha256 == hashlib.sha256(Path(child_pair.template).read_bytes()).hexdigest()
    # --template without its masks is an argument error
    assert cli(["deface", "a.nii.gz", str(tmp_path / "o.nii.gz"), "--template", str(child_pair.template)]) == 2


def test_select_pair_by_released_session_label(child_pair):
    entries = [{"name": "infant", "template": str(child_pair.template), "facemask": str(child_pair.facemask),
                "brainmask": str(child_pair.brainmask), "sessions": ["sub-02/ses-1", "sub-07"],
                "scale_range": [0.7, 1.4]}]
    assert tpl.select_pair(entries, "01", "1") is None
    assert tpl.select_pair(entries, "02", "2") is None
    chosen = tpl.select_pair(entries, "02", "1")
    assert chosen is not None and chosen.name == "infant" and chosen.scale_range == (0.7, 1.4)
    assert tpl.select_pair(entries, "07", "3").name == "infant"
    assert not chosen.shipped and tpl.shipped_pair().shipped


def test_config_schema_templates_and_applyto():
    from snakemake.utils import validate

    schema = Path(__file__).parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    base = {"inbox": "i", "work_dir": "w", "private_dir": "p", "release_dir": "r"}
    config = dict(base)
    validate(config, str(schema))
    assert config["deface"]["templates"] == [] and config["deface"]["applyto"] is True
    entry = {"name": "infant", "template": "t.nii.gz", "facemask": "f.nii.gz", "brainmask": "b.nii.gz",
             "sessions": ["sub-01", "sub-02/ses-1"]}
    validate({**base, "deface": {"templates": [entry, {**entry, "scale_range": [0.7, 1.4]}]}}, str(schema))
    no_brain = {k: v for k, v in entry.items() if k != "brainmask"}
    for bad in ({**entry, "sessions": ["01"]}, {**entry, "sessions": []}, no_brain,
                {**entry, "scale_range": [0.7]}, {**entry, "max_age_years": 2}):
        with pytest.raises(Exception, match="deface|sessions|brainmask|scale_range|max_age|sub-S"):
            validate({**base, "deface": {"templates": [bad]}}, str(schema))


# --- a 0.65x head: refused with the adult pair, defaced with a matching pair ----------------------------------


@pytest.fixture(scope="module")
def child_head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("child")
    src = folder / "sub-01_T1w.nii.gz"
    expected, truth = make_head(src, head_pose(scale=CHILD), LPS, (2.5, 2.5, 2.5), fov_mm=(140.0, 170.0, 170.0),
                                seed=11)
    return {"src": src, "expected": expected, "truth": truth}


@slow
def test_small_head_refused_with_the_adult_pair(child_head, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    assert cli(["deface", str(child_head["src"]), str(out), "--engine", "builtin"]) == 3
    assert "head smaller than the adult template: configure an age-appropriate template" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@slow
def test_small_head_defaced_with_a_matching_pair(child_head, child_pair, tmp_path):
    out, mask = tmp_path / "out.nii.gz", tmp_path / "mask.nii.gz"
    code = cli(["deface", str(child_head["src"]), str(out), "--engine", "builtin", "--mask", str(mask),
                "--template", str(child_pair.template), "--facemask", str(child_pair.facemask),
                "--brainmask", str(child_pair.brainmask)])
    assert code == 0
    removal = np.asarray(nib.load(mask).dataobj) > 0
    found = outcome(removal, nib.load(child_head["src"]).affine, child_head["truth"])
    assert found["brain_removed_cm3"] == 0.0
    assert found["face_left_cm3"] <= 0.05 * found["face_cm3"] and found["dice"] >= 0.9, found
    defaced, original = raw_data(out), raw_data(child_head["src"])
    assert np.all(defaced[removal] == 0) and np.array_equal(defaced[~removal], original[~removal])
