"""benchmarks/deface_robustness.py: its cases are the same for a seed, span what the issue asks for, and its
reference face mask is pydeface's face mask carried by the reference (and the pose) onto the case grid."""

from __future__ import annotations

import deface_robustness as bench  # benchmarks/ is on pytest's `pythonpath` (pyproject.toml)
import nibabel as nib
import numpy as np

from bidsafe.deface import template as tpl

COLIN_AFFINE = np.array([[1.0, 0, 0, -90.0], [0, 1.0, 0, -125.0], [0, 0, 1.0, -71.0], [0, 0, 0, 1.0]])


def test_cases_are_fixed_by_the_seed_and_span_real_exports():
    specs = bench.make_specs(60, 11)
    assert specs == bench.make_specs(60, 11)
    assert specs[:10] == bench.make_specs(10, 11)  # a case is the same whatever --cases is
    assert specs != bench.make_specs(60, 12)
    # adult head sizes by default: up to 12 % larger than Colin27 (itself larger than pydeface's template)
    assert bench.SIZE_RANGE == (0.92, 1.12)
    assert all(0.92 <= s.size <= 1.12 for s in specs) and len({s.size for s in specs}) > 40
    assert sum(s.size > 1.08 for s in specs if s.source == "colin") >= 4
    rigid = bench.make_specs(60, 11, (1.0, 1.0))
    assert {s.size for s in rigid} == {1.0}
    assert [(s.orientation, s.voxel, s.rotation) for s in rigid] == [
        (s.orientation, s.voxel, s.rotation) for s in specs]
    assert {s.orientation for s in specs} == set(bench.orientation_codes()) and len(bench.orientation_codes()) == 48
    assert {s.source for s in specs} == {"colin", "pydeface"}
    assert {s.fov for s in specs} == {"standard", "chin-cut", "nose-cut", "large"}
    assert {s.contrast for s in specs} == {"T1", "T2"} and {s.volumes for s in specs} == {1, 3}
    voxels = np.array([s.voxel for s in specs])
    assert voxels.min() >= 0.7 and voxels.max() <= 3.0 and voxels.min() < 0.8 and voxels.max() > 2.5
    assert any(len(set(v)) > 1 for v in voxels)  # anisotropic grids
    angles = np.array([s.rotation for s in specs])
    assert np.abs(angles).max() <= 20 and (np.abs(angles).max(axis=0) > 15).all()  # every axis turned


def test_orientation_codes_are_the_grids_axis_codes():
    for code in bench.orientation_codes():
        affine = np.eye(4)
        affine[:3, :3] = bench.axes_of(code) @ np.diag([0.9, 1.1, 2.0])
        assert "".join(nib.aff2axcodes(affine)) == code


def test_reference_mask_for_the_identity_pose_is_the_face_mask_through_the_reference():
    assets = tpl.load_assets()
    head = bench.Head(np.zeros((2, 2, 2), np.float32), COLIN_AFFINE, 10.0, bench.REFERENCE, -71.0, None)
    pose = bench.pose_matrix((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), np.array([3.0, -20.0, 10.0]))
    assert np.allclose(pose, np.eye(4))
    shape = (181, 217, 181)
    masks = bench.reference_masks(head, np.linalg.inv(pose) @ COLIN_AFFINE, shape)
    # independently: the keep mask's own grid expressed in Colin's world, resampled onto Colin's grid
    template_in_colin = np.linalg.inv(bench.REFERENCE) @ assets.affine
    keep = tpl.resample((~assets.face).astype(np.float32), template_in_colin, COLIN_AFFINE, shape, mode="nearest")
    expected = keep < 0.5
    assert expected.sum() > 100_000  # a face of > 100 cm3 at 1 mm
    assert (masks["reference_face"] != expected).sum() <= 10  # only voxels at the 0.5 level may differ
    # and a moved head moves its reference: the same voxel grid seen after a 10 mm shift along x
    moved = bench.pose_matrix((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), np.zeros(3))
    shifted = bench.reference_masks(head, np.linalg.inv(moved) @ COLIN_AFFINE, shape)["reference_face"]
    assert (shifted[10:] != masks["reference_face"][:-10]).sum() <= 10


def test_a_case_is_built_identically_for_a_seed(tmp_path):
    spec = next(s for s in bench.make_specs(8, 11) if s.source == "pydeface" and min(s.voxel) > 2.0)
    head = bench.load_head("pydeface", tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    case = bench.build_case(spec, head, first, seed=5)
    bench.build_case(spec, head, second, seed=5)
    name = f"{spec.name}.nii.gz"
    assert (first / name).read_bytes() == (second / name).read_bytes()
    img = nib.load(first / name)
    assert "".join(nib.aff2axcodes(img.affine)) == spec.orientation
    assert np.allclose(img.header.get_zooms()[:3], spec.voxel, atol=1e-3)
    ref = np.load(first / f"{spec.name}_ref.npz")
    assert ref["reference_face"].shape == tuple(case["shape"]) and ref["reference_face"].any()
    assert not (ref["reference_face"] & ref["reference_brain"]).any()  # the reference removes no brain
