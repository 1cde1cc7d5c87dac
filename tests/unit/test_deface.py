"""Defacing: the built-in engine on heads moved by known transforms, the guards, FSL selection, sessions.

Test heads are pydeface's own template moved into new voxel grids by a known affine (with noise and a bias
field), so the face mask carried through that affine is the truth the engine must reproduce.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsafe.cli import main as cli
from bidsafe.deface import engine, fsl, guards
from bidsafe.deface import template as tpl
from bidsafe.errors import GuardError

from helpers.deface_heads import (
    LPS,
    PIR,
    dice,
    grid_affine,
    head_pose,
    make_head,
    make_session,
    raw_data,
    transform_error_mm,
)

slow = pytest.mark.slow  # the tests that run a registration (about 5-10 s of one core each)


def header_bytes(path: Path) -> bytes:
    with gzip.open(path, "rb") as handle:
        return handle.read(352)


# --- the engine on realistic heads -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """A 1.2 mm LPS head, scaled data (slope 2), defaced once through the command line."""
    folder = tmp_path_factory.mktemp("realistic")
    src = folder / "sub-01_T1w.nii.gz"
    expected, truth = make_head(src, head_pose(), LPS, (1.2, 1.2, 1.2), slope=2.0)
    out, mask, qc = folder / "defaced.nii.gz", folder / "mask.nii.gz", folder / "qc.png"
    code = cli(["deface", str(src), str(out), "--engine", "builtin", "--qc", str(qc), "--mask", str(mask)])
    return {"src": src, "out": out, "mask": mask, "qc": qc, "expected": expected, "truth": truth, "code": code}


@slow
def test_realistic_head_face_removed_where_the_known_transform_puts_it(realistic):
    assert realistic["code"] == 0
    removal = np.asarray(nib.load(realistic["mask"]).dataobj) > 0
    assert dice(removal, realistic["expected"]) >= 0.9
    defaced, original = raw_data(realistic["out"]), raw_data(realistic["src"])
    assert np.all(defaced[removal] == 0)
    assert np.array_equal(defaced[~removal], original[~removal])  # everything else untouched, bit for bit
    assert removal.sum() > 0.05 * removal.size  # a real face, not a sliver


@slow
def test_output_keeps_header_dtype_and_scaling(realistic):
    src, out = nib.load(realistic["src"]), nib.load(realistic["out"])
    assert header_bytes(realistic["out"]) == header_bytes(realistic["src"])
    assert out.get_data_dtype() == src.get_data_dtype() == np.int16
    assert out.dataobj.slope == 2.0 and np.allclose(out.affine, src.affine)
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"bidsafe deface test"


@slow
def test_qc_picture_is_small_png(realistic):
    data = realistic["qc"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) < 150_000


@slow
def test_recovers_known_transform(tmp_path):
    src = tmp_path / "head.nii.gz"
    pose = head_pose(pitch=-18.0, roll=6.0, yaw=-4.0, shift=(-8.0, 12.0, -5.0), scale=0.96)
    expected, truth = make_head(src, pose, np.eye(3), (1.5, 1.5, 1.5), seed=3)
    record = engine.deface_image(src, tmp_path / "out.nii.gz", engine="builtin", mask_path=tmp_path / "m.nii")
    assert transform_error_mm(np.array(record.matrix), truth) < 4.0
    removal = np.asarray(nib.load(tmp_path / "m.nii").dataobj) > 0
    assert dice(removal, expected) >= 0.9
    assert record.agreement_dice >= guards.MIN_AGREEMENT_DICE and record.brain_voxels_removed == 0
    assert all(0.8 <= v <= 1.25 for v in record.singular_values)
    assert record.output_sha256 == __import__("hashlib").sha256((tmp_path / "out.nii.gz").read_bytes()).hexdigest()


@slow
def test_4d_every_volume_masked_identically(tmp_path):
    src = tmp_path / "multi.nii.gz"
    expected, _ = make_head(src, head_pose(pitch=5.0), LPS, (2.0, 2.0, 2.0), volumes=3, seed=4)
    record = engine.deface_image(src, tmp_path / "out.nii.gz", engine="builtin")
    assert record.volumes == 3
    defaced, original = raw_data(tmp_path / "out.nii.gz"), raw_data(src)
    assert defaced.shape == original.shape
    face = engine.face_in_grid(np.array(record.matrix), nib.load(src).affine, original.shape[:3])
    assert face.sum() > 0.05 * face.size
    for t in range(3):
        assert np.all(defaced[..., t][face] == 0)
        assert np.array_equal(defaced[..., t][~face], original[..., t][~face])
    assert dice(face, expected) >= 0.9


@slow
def test_anisotropic_sagittal_input(tmp_path):
    src = tmp_path / "aniso.nii.gz"
    expected, truth = make_head(src, head_pose(pitch=-10.0, yaw=5.0), PIR, (1.0, 1.0, 4.0), seed=5)
    assert nib.load(src).header.get_zooms() == (1.0, 1.0, 4.0)
    record = engine.deface_image(src, tmp_path / "out.nii.gz", engine="builtin", mask_path=tmp_path / "m.nii.gz")
    removal = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj) > 0
    assert dice(removal, expected) >= 0.9
    assert transform_error_mm(np.array(record.matrix), truth) < 5.0


# --- guards ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known_grid():
    """A 2 mm grid and the exact subject -> template transform of a head in it (no registration needed)."""
    pose = head_pose()
    shape = (100, 125, 125)
    return {"affine": grid_affine(LPS, (2.0, 2.0, 2.0), shape), "shape": shape, "truth": np.linalg.inv(pose)}


def test_guards_pass_the_true_transform(known_grid):
    _, report = engine.apply_guards(known_grid["truth"], known_grid["affine"], known_grid["shape"],
                                    alternative=known_grid["truth"], metric=-0.6)
    assert report.failures == []
    assert report.agreement_dice == 1.0 and report.brain_voxels_removed == 0


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (np.diag([1.45, 1.45, 1.45, 1.0]), "head smaller than the adult template"),
        (np.diag([1.0, 1.45, 1.0, 1.0]), "implausible scale"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "reflection"),
        (np.array([[1, 0.35, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "implausible shear"),
    ],
)
def test_guards_trip_on_implausible_linear_part(known_grid, wrong, message):
    _, report = engine.apply_guards(wrong @ known_grid["truth"], known_grid["affine"], known_grid["shape"])
    assert any(message in failure for failure in report.failures)


def test_guards_trip_when_face_mask_slides_into_the_brain(known_grid):
    # The face mask moved 25 mm back and 20 mm up in the template: into the frontal lobe of the true head.
    slide = np.eye(4)
    slide[:3, 3] = (0.0, 25.0, -20.0)
    wrong = slide @ known_grid["truth"]
    _, report = engine.apply_guards(wrong, known_grid["affine"], known_grid["shape"],
                                    alternative=known_grid["truth"], metric=-0.6)
    assert report.brain_voxels_removed > 0
    assert any("reaches the brain" in f for f in report.failures)
    assert any("disagree" in f for f in report.failures)


def test_face_mask_is_grown_by_the_margin_and_no_further():
    # On the template's own grid (identity transform): the removal holds the whole face mask plus the voxels
    # within the margin of it, and nothing 1 voxel (1 mm) beyond the margin.
    assets = tpl.load_assets()
    zooms = np.sqrt((assets.affine[:3, :3] ** 2).sum(axis=0))
    distance = ndimage.distance_transform_edt(~assets.face, sampling=zooms)
    grown = engine.face_in_grid(np.eye(4), assets.affine, assets.face.shape)
    plain = engine.face_in_grid(np.eye(4), assets.affine, assets.face.shape, margin_mm=0.0)
    assert engine.FACE_MARGIN_MM >= 1.0
    assert np.array_equal(plain, assets.face)
    assert np.all(grown[distance <= engine.FACE_MARGIN_MM])
    assert not np.any(grown[distance > engine.FACE_MARGIN_MM + 1.0])
    assert grown.sum() > plain.sum() * 1.02


def test_agreement_guard_compares_the_face_masks_without_margin(known_grid):
    # Two placements 4 mm apart: the margin must not make them agree more than the masks themselves do.
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 4.0, 0.0)
    other = shift @ known_grid["truth"]
    _, report = engine.apply_guards(known_grid["truth"], known_grid["affine"], known_grid["shape"],
                                    alternative=other, metric=-0.6)
    a = engine.face_in_grid(known_grid["truth"], known_grid["affine"], known_grid["shape"], margin_mm=0.0)
    b = engine.face_in_grid(other, known_grid["affine"], known_grid["shape"], margin_mm=0.0)
    assert report.agreement_dice == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_guard_trips_on_poor_metric(known_grid):
    _, report = engine.apply_guards(known_grid["truth"], known_grid["affine"], known_grid["shape"], metric=-0.1)
    assert any("poor image match" in f for f in report.failures)


@pytest.fixture(scope="module")
def giant_head(tmp_path_factory):
    """A head 1.6 times the template's size: no plausible registration exists, a guard must trip."""
    folder = tmp_path_factory.mktemp("giant")
    src = folder / "sub-02_T1w.nii.gz"
    make_head(src, head_pose(scale=1.6), np.eye(3), (2.5, 2.5, 2.5), fov_mm=(320.0, 400.0, 400.0), seed=6)
    return src


@slow
def test_guard_trip_writes_nothing_and_exits_3(giant_head, tmp_path, capsys):
    out, mask, qc = tmp_path / "out.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "qc.png"
    code = cli(["deface", str(giant_head), str(out), "--engine", "builtin", "--mask", str(mask), "--qc", str(qc)])
    assert code == 3
    assert "deface refused" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_exit_2(tmp_path):
    assert cli(["deface", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    with pytest.raises(SystemExit) as exc:
        cli(["deface", "a.nii.gz", "b.nii.gz", "--engine", "magic"])
    assert exc.value.code == 2


# --- FSL ------------------------------------------------------------------------------------------------------


def fake_tools(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tool = folder / name
        tool.write_text("#!/bin/sh\necho fake FSL tool must not run >&2\nexit 99\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


def test_auto_picks_fsl_only_when_fsldir_and_tools_exist(tmp_path, monkeypatch):
    fsldir = tmp_path / "fsl"
    fsldir.mkdir()
    both = fake_tools(tmp_path / "bin", ("flirt", "fsl"))
    only_flirt = fake_tools(tmp_path / "bin2", ("flirt",))
    empty = tmp_path / "none"
    empty.mkdir()
    base = {"PATH": f"{both}{os.pathsep}/usr/bin", "FSLDIR": str(fsldir)}
    assert fsl.fsl_available(base)
    assert not fsl.fsl_available({**base, "FSLDIR": ""})
    assert not fsl.fsl_available({**base, "FSLDIR": str(tmp_path / "absent")})
    assert not fsl.fsl_available({**base, "PATH": str(only_flirt)})
    assert not fsl.fsl_available({**base, "PATH": str(empty)})

    monkeypatch.setenv("PATH", f"{both}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FSLDIR", str(fsldir))
    assert engine.choose_engine("auto") == "fsl"
    assert engine.choose_engine("builtin") == "builtin"
    monkeypatch.delenv("FSLDIR")
    assert engine.choose_engine("auto") == "builtin"
    with pytest.raises(engine.ConfigError):
        engine.choose_engine("fsl")


def test_fsl_command_line_is_one_pydeface_accepts(tmp_path):
    command = fsl.fsl_command(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    program_len = len(fsl.pydeface_program())
    assert command[program_len] == str(tmp_path / "in.nii.gz")
    args = command[program_len + 1:]
    assert args[args.index("--outfile") + 1] == str(tmp_path / "out.nii.gz")
    assert {"--force", "--nocleanup"} <= set(args)
    assert args[args.index("--cost") + 1] == "mutualinfo"
    assert Path(args[args.index("--template") + 1]).name == "mean_reg2mean.nii.gz"
    assert Path(args[args.index("--facemask") + 1]).name == "facemask.nii.gz"
    # the installed pydeface knows every flag we pass
    helptext = subprocess.run([*fsl.pydeface_program(), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in helptext
    mask, mat = fsl.nocleanup_outputs(tmp_path / "in.nii.gz")
    assert (mask.name, mat.name) == ("in_pydeface_mask.nii.gz", "in_pydeface.mat")


def test_flirt_matrix_convention():
    # FSL coordinates ignore how the voxels are stored: a template and its left-right flipped storage share
    # them, so FLIRT's identity matrix between the two is the identity in world space.
    assets = tpl.load_assets()
    shape, zooms = assets.image.shape, (1.0, 0.9765625, 0.9765625)
    flipped = assets.affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    world = fsl.flirt_to_world(np.eye(4), (assets.affine, shape, zooms), (flipped, shape, zooms))
    assert np.allclose(world, np.eye(4), atol=1e-6)
    # and a FLIRT translation of +5 mm along FSL x is -5 mm along world x for this (det > 0) template
    shift = np.eye(4)
    shift[0, 3] = 5.0
    world = fsl.flirt_to_world(shift, (assets.affine, shape, zooms), (assets.affine, shape, zooms))
    assert np.allclose(world[:3, 3] @ (assets.affine[:3, 0] / np.linalg.norm(assets.affine[:3, 0])), -5.0)


# --- sessions -------------------------------------------------------------------------------------------------


@slow
def test_session_defaced_and_recorded(tmp_path, realistic):
    session = make_session(tmp_path / "in", {"sub-01_ses-1_T1w.nii.gz": realistic["src"]})
    out, records_json, qc_dir = tmp_path / "out" / "ses-1", tmp_path / "records.json", tmp_path / "qc"
    records = engine.deface_session(session, out, records_json, qc_dir, engine="builtin")
    assert [r.input for r in records] == ["anat/sub-01_ses-1_T1w.nii.gz"]
    released = out / "anat" / "sub-01_ses-1_T1w.nii.gz"
    assert dice(raw_data(released) != raw_data(realistic["src"]), realistic["expected"]) >= 0.85
    for relative in ("anat/sub-01_ses-1_T1w.json", "func/sub-01_ses-1_task-rest_bold.json",
                     "sub-01_ses-1_scans.tsv"):
        assert (out / relative).read_bytes() == (session / relative).read_bytes()
    listed = json.loads(records_json.read_text())
    assert listed[0]["path"] == "anat/sub-01_ses-1_T1w.nii.gz"
    assert listed[0]["sha256"] == __import__("hashlib").sha256(released.read_bytes()).hexdigest()
    assert (qc_dir / "sub-01_ses-1_T1w_deface.png").is_file()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary left behind


@slow
def test_session_withheld_when_a_guard_trips(tmp_path, realistic, giant_head):
    session = make_session(tmp_path / "in", {"sub-01_ses-1_T1w.nii.gz": realistic["src"],
                                             "sub-01_ses-1_T2w.nii.gz": giant_head})
    out, records_json = tmp_path / "out" / "ses-1", tmp_path / "records.json"
    with pytest.raises(GuardError) as exc:
        engine.deface_session(session, out, records_json, None, engine="builtin")
    assert "anat/sub-01_ses-1_T2w.nii.gz" in str(exc.value)
    assert "anat/sub-01_ses-1_T1w.nii.gz" not in str(exc.value)
    assert not out.exists() and not records_json.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_session_defaces_every_anat_image_whatever_its_suffix(tmp_path):
    session = tmp_path / "ses-1"
    for relative in ("anat/sub-1_T1w.nii.gz", "anat/sub-1_acq-x_FLAIR.nii", "anat/sub-1_T1w.json",
                     "anat/sub-1_angio.nii.gz", "anat/sub-1_UNIT1.nii.gz", "anat/sub-1_T1map.nii.gz",
                     "func/sub-1_task-a_bold.nii.gz", "fmap/sub-1_acq-3d_magnitude1.nii.gz"):
        (session / relative).parent.mkdir(parents=True, exist_ok=True)
        (session / relative).write_bytes(b"")

    def targets(**kwargs) -> list[str]:
        return sorted(p.as_posix() for p in engine.deface_targets(session, **kwargs))

    anat = ["anat/sub-1_T1map.nii.gz", "anat/sub-1_T1w.nii.gz", "anat/sub-1_UNIT1.nii.gz",
            "anat/sub-1_acq-x_FLAIR.nii", "anat/sub-1_angio.nii.gz"]
    assert targets() == anat
    assert targets(exempt=["angio"]) == [p for p in anat if "angio" not in p]
    assert targets(also=["magnitude1"]) == sorted([*anat, "fmap/sub-1_acq-3d_magnitude1.nii.gz"])
    assert targets(exempt=["angio"], also=["angio"]) == anat  # naming it to deface wins over the exemption
    assert not hasattr(engine, "DEFAULT_SUFFIXES")  # one place for defaults: the config schema


@slow
def test_pipeline_stage_withholds_the_session_and_says_why(tmp_path, giant_head):
    from bidsafe.stages import WITHHELD, deface_stage, read_included, sessions_passing_deface, write_included

    make_session(tmp_path / "scrub", {"sub-01_ses-1_T1w.nii.gz": giant_head})
    stage_dir = tmp_path / "deface" / "sub-01" / "ses-1"
    status = deface_stage(in_dir=tmp_path / "scrub", out_bids=stage_dir / "bids", status_json=stage_dir / "status.json",
                          records_json=stage_dir / "records.json", pictures_dir=stage_dir / "qc",
                          engine="builtin")
    assert status["status"] == WITHHELD and "deface guard" in str(status["reason"])
    (kept,) = json.loads((stage_dir / "records.json").read_text())  # the refused image: its guard values
    assert kept["refused"] is True and kept["guards"]["failures"] and "sha256" not in kept
    assert not any((stage_dir / "bids").rglob("*.nii.gz"))  # nothing of the session goes on
    included, withheld = sessions_passing_deface([stage_dir / "status.json"])
    assert included == [] and [(w.subject, w.session) for w, _ in withheld] == [("01", "1")]
    write_included(tmp_path / "included.tsv", included, withheld)
    (row,) = read_included(tmp_path / "included.tsv")
    assert row["status"] == WITHHELD and row["reason"].startswith("deface guard")


def test_config_schema_holds_the_only_deface_defaults(tmp_path):
    from snakemake.utils import validate

    schema = Path(__file__).parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    base = {"inbox": "i", "work_dir": "w", "private_dir": "p", "release_dir": "r"}
    config = dict(base)
    validate(config, str(schema))
    assert config["deface"]["suffixes"] == [] and config["deface"]["exempt"] == {}
    validate({**base, "deface": {"exempt": {"angio": "MIP slab above the orbits (checked)"}}}, str(schema))
    for bad in ({"exempt": {"angio": "  "}}, {"exempt": {"angio": 3}}, {"exempt": {"an gio": "x"}},
                {"suffixes": ["T1w_x"]}):
        with pytest.raises(Exception, match="deface|angio|T1w_x|pattern"):
            validate({**base, "deface": bad}, str(schema))


@pytest.mark.parametrize("suffix", ["angio", "UNIT1", "T1map"])
def test_gate_fails_when_the_stage_skips_an_anat_image(tmp_path, suffix):
    """The stage's protection switched off for one suffix (exempt in the stage's config only): the release
    gate, which decides for itself, still refuses the image until the gate is told the same, with a reason."""
    from bidsafe.release.gates import gate_deface
    from bidsafe.stages import INCLUDED, deface_stage

    session = tmp_path / "scrub" / "sub-01" / "ses-1"
    head = nib.Nifti1Image(np.ones((96, 112, 96), dtype=np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    (session / "anat").mkdir(parents=True)
    nib.save(head, session / "anat" / f"sub-01_ses-1_{suffix}.nii.gz")
    stage_dir = tmp_path / "deface" / "sub-01" / "ses-1"
    reason = "test: the site says this contrast shows no face"
    status = deface_stage(in_dir=tmp_path / "scrub", out_bids=stage_dir / "bids", status_json=stage_dir / "status.json",
                          records_json=stage_dir / "records.json", pictures_dir=stage_dir / "qc",
                          exempt={suffix: reason}, engine="builtin")
    assert status == {"status": INCLUDED, "stage": "deface", "images": 0}
    released = stage_dir / "bids"
    assert (released / "sub-01" / "ses-1" / "anat" / f"sub-01_ses-1_{suffix}.nii.gz").read_bytes() == (
        session / "anat" / f"sub-01_ses-1_{suffix}.nii.gz").read_bytes()  # copied with its face
    refused = gate_deface(released, [stage_dir / "records.json"])
    assert not refused.passed
    assert refused.details["no_record"] == [f"sub-01/ses-1/anat/sub-01_ses-1_{suffix}.nii.gz"]
    assert gate_deface(released, [stage_dir / "records.json"], {suffix: reason}).passed
