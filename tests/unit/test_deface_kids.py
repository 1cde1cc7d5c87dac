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

from bidsafe.cli import main as cli
from bidsafe.deface import engine, guards
from bidsafe.deface import template as tpl
from bidsafe.deface.register import rotation_matrix
from bidsafe.errors import ConfigError

from helpers.deface_heads import LPS, PIR, dice, head_pose, make_head, raw_data

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


# Colin27 through its reference registration (../shared/design/deface-reference.md): template mm per subject mm.
COLIN_SINGULAR_VALUES = (0.9356, 0.8858, 0.8367)


def test_adult_heads_larger_than_colin_pass_the_adult_pair_and_a_child_is_still_refused():
    turn = rotation_matrix("x", 12.0) @ rotation_matrix("z", -7.0)

    def failures(factor: float, stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[str]:
        """A head `factor` times Colin27's size (and `stretch`ed along the template's axes), turned."""
        linear = np.diag([*(v * s / factor for v, s in zip(COLIN_SINGULAR_VALUES, stretch, strict=True)), 1.0])
        report = guards.GuardReport()
        guards.check_linear(linear @ turn, report)
        assert report.as_dict()["scale"] == pytest.approx(float(np.prod(np.diag(linear)[:3])) ** (1 / 3), abs=1e-4)
        return report.failures

    # ordinary and large adult heads: 10-20 % larger than Colin27 (smallest singular value down to 0.70)
    for factor in (0.9, 1.0, 1.1, 1.15, 1.2):
        assert failures(factor) == [], factor
    # a child's head (0.65x Colin27, 0.65x the template) is refused with the reason that says what to do
    assert failures(0.65) == [guards.HEAD_SMALLER_THAN_ADULT]
    assert failures(0.65 * 0.885) == [guards.HEAD_SMALLER_THAN_ADULT]
    # an adult-sized head stretched along one axis is not a head: refused for its shape, not its size
    stretched = failures(1.0, (1.3, 1.0, 1.0))  # 1.45x its narrowest axis
    assert len(stretched) == 1 and stretched[0].startswith("implausible scale") and "head shape" in stretched[0]

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


# --- --applyto: the T1w's face mask on the session's other images ----------------------------------------------


def t2_like(path: Path) -> None:
    """Rewrite a head made by make_head with a crude T2-like contrast (bright fluid, dark white matter), in place."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    tissue = data > 60
    scaled = data / np.percentile(data[tissue], 99)
    t2 = np.where(tissue, np.clip(1.2 - scaled, 0, None) * 0.7 + 0.5 * (scaled > 0.9), 0) * 600
    out = nib.Nifti1Image(np.round(t2).astype(np.int16), img.affine, img.header)
    out.to_filename(path)


@pytest.fixture(scope="module")
def session_heads(tmp_path_factory):
    """A T1w, a T2-like image on the same grid, one on another grid (sagittal, 2 mm) and one of the head moved
    between the scans; each with the truth (subject -> template) of its own head."""
    folder = tmp_path_factory.mktemp("applyto")
    pose = head_pose()
    moved = rotation_matrix("x", 12.0) @ np.array([[1, 0, 0, 0], [0, 1, 0, 15.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nudged = np.eye(4)
    nudged[1, 3] = 4.5  # 4.5 mm forward: the metric guard alone would not notice
    heads = {}
    for name, head_pose_, axes, voxel, seed in (
        ("sub-01_ses-1_T1w.nii.gz", pose, LPS, (2.5, 2.5, 2.5), 21),
        ("sub-01_ses-1_T2w.nii.gz", pose, LPS, (2.5, 2.5, 2.5), 22),
        ("sub-01_ses-1_FLAIR.nii.gz", pose, PIR, (2.0, 2.0, 3.0), 23),
        ("sub-01_ses-1_PD.nii.gz", moved @ pose, LPS, (2.5, 2.5, 2.5), 24),
        ("sub-01_ses-1_acq-nudged_T2w.nii.gz", nudged @ pose, PIR, (2.0, 2.0, 2.0), 25),
    ):
        path = folder / name
        _, truth = make_head(path, head_pose_, axes, voxel, fov_mm=(200.0, 240.0, 230.0), seed=seed)
        if "T1w" not in name:
            t2_like(path)
        heads[name] = {"path": path, "truth": truth}
    return heads


def assert_defaced(out: Path, src: Path, truth: np.ndarray) -> None:
    """No brain voxel changed; the face zeroed (a T2-like image has zeros of its own on the head: a face voxel
    left is one not zero in the output)."""
    defaced, original, affine = raw_data(out), raw_data(src), nib.load(src).affine
    assert outcome(defaced != original, affine, truth)["brain_removed_cm3"] == 0.0
    found = outcome(defaced == 0, affine, truth)
    assert found["face_left_cm3"] <= 0.05 * found["face_cm3"] and found["dice"] >= 0.9, found


@slow
def test_applyto_same_and_other_grid(session_heads, tmp_path, capsys):
    t1, t2, flair = (session_heads[n] for n in ("sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_T2w.nii.gz",
                                                "sub-01_ses-1_FLAIR.nii.gz"))
    out = tmp_path / "T1w_defaced.nii.gz"
    code = cli(["deface", str(t1["path"]), str(out), "--engine", "builtin", "--applyto", str(t2["path"]),
                str(flair["path"])])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("mask of sub-01_ses-1_T1w.nii.gz") == 2  # neither other image was registered
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "T1w_defaced.nii.gz", "sub-01_ses-1_FLAIR_defaced.nii.gz", "sub-01_ses-1_T2w_defaced.nii.gz"]
    for head, written in ((t1, out), (t2, tmp_path / "sub-01_ses-1_T2w_defaced.nii.gz"),
                          (flair, tmp_path / "sub-01_ses-1_FLAIR_defaced.nii.gz")):
        assert_defaced(written, head["path"], head["truth"])
    # a second run refuses to overwrite any of them without --force
    assert cli(["deface", str(t1["path"]), str(tmp_path / "new.nii.gz"), "--applyto", str(t2["path"])]) == 2


@slow
def test_applyto_head_moved_between_scans_is_registered_on_its_own(session_heads, tmp_path):
    t1, pd = session_heads["sub-01_ses-1_T1w.nii.gz"], session_heads["sub-01_ses-1_PD.nii.gz"]
    reference = engine.estimate_removal(t1["path"], engine="builtin")
    applied = engine.estimate_applied(reference, nib.load(t1["path"]), pd["path"], "T1w")
    assert applied is not None and any("poor image match" in f for f in applied.failures)
    chosen = engine.applied_or_registered(reference, t1["path"], "T1w", pd["path"], engine="builtin")
    assert chosen.applied_from is None and not chosen.failures
    assert any("does not fit" in note and "registered on its own" in note for note in chosen.notes)
    record = engine.deface_image(pd["path"], tmp_path / "pd.nii.gz", estimate=chosen)
    assert_defaced(tmp_path / "pd.nii.gz", pd["path"], pd["truth"])
    assert record.applied_from is None
    # a small movement between the scans: the metric still passes, the refit notices
    nudged = engine.estimate_applied(reference, nib.load(t1["path"]), session_heads[
        "sub-01_ses-1_acq-nudged_T2w.nii.gz"]["path"], "T1w")
    assert [f for f in nudged.failures if "moved between the scans" in f] == nudged.failures != []
    same = engine.estimate_applied(reference, nib.load(t1["path"]), session_heads[
        "sub-01_ses-1_T2w.nii.gz"]["path"], "T1w")
    assert same.failures == [] and same.applied_from == "T1w"
    # an image not in scanner coordinates never gets another image's mask
    unknown = nib.load(session_heads["sub-01_ses-1_T2w.nii.gz"]["path"])
    unknown.set_sform(unknown.affine, code=2)
    unknown.set_qform(unknown.affine, code=2)
    unknown.to_filename(tmp_path / "aligned.nii.gz")
    assert engine.estimate_applied(reference, nib.load(t1["path"]), tmp_path / "aligned.nii.gz", "T1w") is None


@slow
def test_session_applies_the_t1w_mask_and_the_gate_checks_each_output(session_heads, tmp_path):
    from bidsafe.release.gates import gate_deface

    session = tmp_path / "in" / "sub-01" / "ses-1"
    (session / "anat").mkdir(parents=True)
    for name in ("sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_T2w.nii.gz"):
        (session / "anat" / name).write_bytes(session_heads[name]["path"].read_bytes())
    out, records_json = tmp_path / "out" / "sub-01" / "ses-1", tmp_path / "records.json"
    records = engine.deface_session(session, out, records_json, None, engine="builtin")
    by_name = {r.input: r for r in records}
    assert by_name["anat/sub-01_ses-1_T1w.nii.gz"].applied_from is None
    assert by_name["anat/sub-01_ses-1_T2w.nii.gz"].applied_from == "anat/sub-01_ses-1_T1w.nii.gz"
    assert by_name["anat/sub-01_ses-1_T2w.nii.gz"].brain_voxels_removed == 0
    listed = json.loads(records_json.read_text())
    assert {e["path"]: e["applied_from"] for e in listed}["anat/sub-01_ses-1_T2w.nii.gz"].endswith("T1w.nii.gz")
    assert_defaced(out / "anat" / "sub-01_ses-1_T2w.nii.gz", session_heads["sub-01_ses-1_T2w.nii.gz"]["path"],
                   session_heads["sub-01_ses-1_T2w.nii.gz"]["truth"])
    release = tmp_path / "out"
    assert gate_deface(release, [records_json]).passed
    # the gate decides for itself: a T2w changed after defacing no longer matches its record
    t2 = out / "anat" / "sub-01_ses-1_T2w.nii.gz"
    t2.write_bytes(session_heads["sub-01_ses-1_T2w.nii.gz"]["path"].read_bytes())
    refused = gate_deface(release, [records_json])
    assert not refused.passed and refused.details["hash_mismatch"] == ["sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"]


@slow
def test_stage_uses_the_sites_pair_for_the_sessions_it_names(child_head, child_pair, tmp_path):
    """The deface job: a child's session is withheld with the adult pair, saying what to do, and defaced with
    the pair `deface.templates` names for it."""
    from bidsafe.stages import INCLUDED, WITHHELD, deface_stage

    session = tmp_path / "scrub" / "sub-01" / "ses-1"
    (session / "anat").mkdir(parents=True)
    (session / "anat" / "sub-01_ses-1_T1w.nii.gz").write_bytes(child_head["src"].read_bytes())
    entry = {"name": "child065", "template": str(child_pair.template), "facemask": str(child_pair.facemask),
             "brainmask": str(child_pair.brainmask)}

    def run(templates: list[dict], name: str) -> tuple[dict, Path]:
        stage_dir = tmp_path / name
        status = deface_stage(in_dir=tmp_path / "scrub", out_bids=stage_dir / "bids",
                              status_json=stage_dir / "status.json", records_json=stage_dir / "records.json",
                              pictures_dir=stage_dir / "qc", engine="builtin", templates=templates,
                              subject="01", session="1")
        return status, stage_dir

    status, _ = run([{**entry, "sessions": ["sub-02"]}], "adult")
    assert status["status"] == WITHHELD and guards.HEAD_SMALLER_THAN_ADULT in status["reason"]
    status, stage_dir = run([{**entry, "sessions": ["sub-01/ses-1"]}], "child")
    assert status["status"] == INCLUDED
    (record,) = json.loads((stage_dir / "records.json").read_text())
    assert record["template"] == "child065" and record["brain_voxels_removed"] == 0
    assert record["template_sha256"] == hashlib.sha256(Path(child_pair.template).read_bytes()).hexdigest()


def test_report_names_the_pair_and_the_mask_source():
    from bidsafe.release.report import _deface_table

    table = _deface_table([
        {"input": "anat/sub-01_ses-1_T1w.nii.gz", "engine": "builtin", "template": "adult", "applied_from": None},
        {"input": "anat/sub-01_ses-1_T2w.nii.gz", "engine": "builtin", "template": "child065",
         "applied_from": "anat/sub-01_ses-1_T1w.nii.gz"},
    ])
    rows = table.split("<tr>")[2:]
    assert "<td>builtin</td>" in rows[0]
    assert "<td>builtin, template child065, mask of anat/sub-01_ses-1_T1w.nii.gz</td>" in rows[1]
