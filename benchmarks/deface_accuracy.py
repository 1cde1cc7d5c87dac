"""Accuracy, speed and memory of bidsafe's built-in defacing on Colin27 heads under known transforms.

Every case is Colin27's `ch2.nii.gz` (a real full-head scan no one on the team made; Debian's `mricron-data`)
moved by a known head pose A (colin world -> case world) into a new voxel grid (orientation, field of view,
voxel size), with Rician noise and a smooth bias field. The reference removal mask is pydeface's face mask
carried through REFERENCE (colin world -> template world, see benchmarks/deface-reference.md) after A^-1.

Per case it prints: Dice of the removed head tissue vs the reference, brain removed (cm3) measured with the
template brain carried by the reference (and with Colin's own brain, ch2bet), face tissue left (cm3), the guard
verdict, seconds and peak RSS of the defacing process. Each case runs in a fresh process (`--worker`) so that
time and memory are those of one `bidsafe deface` call. It does not assert.

    nice python benchmarks/deface_accuracy.py [--cases N] [--seed S] [--keep DIR] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsafe.deface.register import rotation_matrix

REFERENCE = np.array(
    [
        [0.88268765, 0.07481036, 0.00121965, -4.60001574],
        [-0.07378957, 0.91978262, -0.12825953, 16.42175782],
        [-0.00746849, 0.07816575, 0.83740477, -3.23006124],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
COLIN_FILES = ("ch2.nii.gz", "ch2bet.nii.gz")
SYSTEM_TEMPLATES = Path("/usr/share/mricron/templates")


# --- Colin27 --------------------------------------------------------------------------------------------------


def colin_dir(cache: Path) -> Path:
    """Folder holding ch2.nii.gz and ch2bet.nii.gz: the installed package, a cache, or a fresh unpacked .deb."""
    for folder in (SYSTEM_TEMPLATES, cache / "usr/share/mricron/templates"):
        if all((folder / name).is_file() for name in COLIN_FILES):
            return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # apt-get download needs no root; the .deb is unpacked, not installed.
        subprocess.run(["apt-get", "download", "mricron-data"], cwd=tmp, check=True, capture_output=True)
        debs = sorted(Path(tmp).glob("mricron-data_*.deb"))
        if not debs:
            raise SystemExit("apt-get download mricron-data produced no .deb (run apt-get update?)")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(cache)], check=True)
    folder = cache / "usr/share/mricron/templates"
    if not all((folder / name).is_file() for name in COLIN_FILES):
        raise SystemExit(f"mricron-data did not contain {COLIN_FILES}")
    return folder


# --- cases ----------------------------------------------------------------------------------------------------


@dataclass
class CaseSpec:
    name: str
    orientation: str  # RAS, LPS, PIR (sagittal), oblique
    fov: str  # tight, offset, large
    voxel: tuple[float, float, float]
    pitch: float
    roll: float
    yaw: float
    shift: tuple[float, float, float]
    scale: float
    noise: float  # Rician sigma as a fraction of the 99th percentile
    bias: float  # peak-to-peak amplitude of the multiplicative bias field
    contrast: str = "T1"  # T1, or "inverted" (a crude T2-like contrast)
    volumes: int = 1
    dtype: str = "int16"


def pose_matrix(spec: CaseSpec, centre: np.ndarray) -> np.ndarray:
    """A: colin world -> case world; rotations and scale about the head centre, then a shift."""
    to_centre = np.eye(4)
    to_centre[:3, 3] = -centre
    back = np.eye(4)
    back[:3, 3] = centre + np.asarray(spec.shift)
    linear = rotation_matrix("x", spec.pitch) @ rotation_matrix("y", spec.roll) @ rotation_matrix("z", spec.yaw)
    linear = linear @ np.diag([spec.scale, spec.scale, spec.scale, 1.0])
    return back @ linear @ to_centre


ORIENTATIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    # sagittal 3D T1: i runs posterior->anterior... as many scanners store it: columns are world directions
    "PIR": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}


def orientation_matrix(name: str, rng: np.random.Generator) -> np.ndarray:
    if name != "oblique":
        return ORIENTATIONS[name]
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(12, 25))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    turn = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    return turn @ ORIENTATIONS["LPS"]


def case_grid(spec: CaseSpec, head_world: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """Grid affine and shape for the case: head points (world, 3xN) decide the field of view."""
    axes = orientation_matrix(spec.orientation, rng)
    voxel = np.asarray(spec.voxel, dtype=float)
    along = axes.T @ head_world  # head coordinates along the grid's axes (mm)
    low, high = along.min(axis=1), along.max(axis=1)
    if spec.fov == "tight":
        low, high = low - 3.0, high + 3.0
    elif spec.fov == "offset":
        extra = rng.uniform(10, 45, size=3)
        side = rng.integers(0, 2, size=3)
        low = low - 3.0 - extra * side
        high = high + 3.0 + extra * (1 - side)
    else:  # large: 280 mm field of view, head placed off centre; the cut below Colin's nose floats in air
        centre = (low + high) / 2 + rng.uniform(-15, 15, size=3)
        low, high = np.minimum(centre - 140.0, low - 3), np.maximum(centre + 140.0, high + 3)
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel) + 1)
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(voxel)
    affine[:3, 3] = axes @ low
    return affine, shape


def make_specs(count: int, seed: int) -> list[CaseSpec]:
    rng = np.random.default_rng(seed)
    orientations = ["RAS", "LPS", "oblique", "PIR"]
    fovs = ["tight", "offset", "large"]
    voxels = [(1.0, 1.0, 1.0), (0.8, 0.8, 0.8), (0.9, 0.9, 3.0), (1.0, 1.0, 1.0)]
    specs = []
    for index in range(count):
        orientation = orientations[index % 4]
        fov = fovs[index % 3]
        voxel = voxels[(index // 3) % 4]
        extra = index // 12  # cases beyond 12 vary contrast, volumes and dtype
        specs.append(
            CaseSpec(
                name=f"c{index:02d}",
                orientation=orientation,
                fov=fov,
                voxel=voxel,
                pitch=float(rng.uniform(-25, 25)),
                roll=float(rng.uniform(-10, 10)),
                yaw=float(rng.uniform(-10, 10)),
                shift=tuple(float(v) for v in rng.uniform(-20, 20, size=3)),
                # Colin27 lives in MNI space, already 9-19 % larger than the template along each axis (see
                # REFERENCE): shrink it more often than enlarge it, staying within human head sizes.
                scale=float(rng.uniform(0.90, 1.02)),
                noise=float(rng.uniform(0.01, 0.05)),
                bias=float(rng.uniform(0.0, 0.4)),
                contrast="inverted" if extra >= 1 and index % 3 == 0 else "T1",
                volumes=3 if extra >= 1 and index % 3 == 1 else 1,
                dtype="float32" if extra >= 1 and index % 3 == 2 else "int16",
            )
        )
    return specs


def thick_sample(data: np.ndarray, source_affine: np.ndarray, grid: np.ndarray, shape: tuple,
                 voxel: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample with partial-volume averaging along thick voxel axes (slices thicker than the source's 1 mm)."""
    offsets = [np.zeros(3)]
    for axis in range(3):
        if voxel[axis] > 1.5:
            n = int(math.ceil(voxel[axis]))
            offsets = [o + e for o in offsets for e in
                       [np.eye(3)[axis] * ((i + 0.5) / n - 0.5) for i in range(n)]]
    total = np.zeros(shape, dtype=np.float32)
    for offset in offsets:
        shifted = grid.copy()
        shifted[:3, 3] = grid[:3, 3] + grid[:3, :3] @ offset
        vox = np.linalg.solve(source_affine, shifted)
        total += ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=shape, order=order,
                                          mode="constant", cval=0.0)
    return total / len(offsets)


def build_case(spec: CaseSpec, colin: Path, out_dir: Path, seed: int) -> dict:
    """Write the case image and its reference masks; return paths and sizes."""
    from bidsafe.deface.template import load_assets

    rng = np.random.default_rng(seed)
    ch2 = nib.load(colin / "ch2.nii.gz")
    data = np.asarray(ch2.dataobj, dtype=np.float32)
    bet = np.asarray(nib.load(colin / "ch2bet.nii.gz").dataobj) > 0
    head_vox = np.argwhere(data > 10)
    head_world_colin = ch2.affine[:3, :3] @ head_vox[::50].T + ch2.affine[:3, 3:4]
    centre = head_world_colin.mean(axis=1)
    pose = pose_matrix(spec, centre)
    head_world = pose[:3, :3] @ head_world_colin + pose[:3, 3:4]
    grid, shape = case_grid(spec, head_world, rng)
    voxel = np.asarray(spec.voxel)
    source = np.linalg.inv(pose) @ grid  # case voxel -> colin world

    image = thick_sample(data, ch2.affine, np.linalg.inv(pose) @ grid, shape, voxel)
    tissue = thick_sample((data > 10).astype(np.float32), ch2.affine, source, shape, voxel) > 0.5
    colin_brain = thick_sample(bet.astype(np.float32), ch2.affine, source, shape, voxel) > 0.5

    if spec.contrast == "inverted":
        # crude T2-like: bright fluid, dark white matter, fat kept bright-ish
        scaled = image / np.percentile(image[tissue], 99)
        image = np.where(tissue, np.clip(1.2 - scaled, 0, None) * 0.7 + 0.5 * (scaled > 0.9), 0) * 150

    scale = float(np.percentile(image[tissue], 99))
    ii, jj, kk = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij", sparse=True)
    coeffs = rng.uniform(-1, 1, size=6)
    field = coeffs[0] * ii + coeffs[1] * jj + coeffs[2] * kk + coeffs[3] * ii * jj + coeffs[4] * kk**2
    field = field - field.mean()
    field = field / max(float(np.abs(field).max()), 1e-6) * spec.bias / 2
    volumes = []
    for _ in range(spec.volumes):
        sigma = spec.noise * scale
        noisy = np.sqrt((image * np.exp(field) + rng.normal(0, sigma, shape)) ** 2
                        + rng.normal(0, sigma, shape) ** 2)
        volumes.append(noisy.astype(np.float32))
    stack = np.stack(volumes, axis=-1) if spec.volumes > 1 else volumes[0]
    if spec.dtype == "int16":
        stack = np.round(stack / scale * 1000).astype(np.int16)
    else:
        stack = (stack / scale * 1000).astype(np.float32)
    img = nib.Nifti1Image(stack, grid)
    img.set_qform(grid, code=1)
    img.set_sform(grid, code=1)
    img.header.set_xyzt_units("mm", "sec")
    case_path = out_dir / f"{spec.name}.nii.gz"
    img.to_filename(case_path)

    # Reference masks: case voxel -> template world = REFERENCE @ A^-1 @ grid.
    assets = load_assets()
    to_template = REFERENCE @ source
    vox = np.linalg.solve(assets.affine, to_template)
    face_keep = ndimage.affine_transform((~assets.face).astype(np.float32), vox[:3, :3], vox[:3, 3],
                                         output_shape=shape, order=1, mode="nearest")
    ref_face = face_keep < 0.5
    ref_brain = ndimage.affine_transform(assets.brain.astype(np.float32), vox[:3, :3], vox[:3, 3],
                                         output_shape=shape, order=1, mode="constant") > 0.5
    masks = {"tissue": tissue, "reference_face": ref_face, "reference_brain": ref_brain,
             "colin_brain": colin_brain}
    np.savez_compressed(out_dir / f"{spec.name}_ref.npz", **masks)
    return {"path": str(case_path), "shape": shape, "voxel_cm3": float(np.prod(voxel)) / 1000.0,
            "case_to_template": to_template.tolist(), "grid": grid.tolist()}


def template_brain_check(colin: Path) -> str:
    """How the template brain bidsafe derives compares with Colin27's own brain carried by REFERENCE."""
    from bidsafe.deface.template import load_assets

    assets = load_assets()
    bet = nib.load(colin / "ch2bet.nii.gz")
    vox = np.linalg.solve(bet.affine, np.linalg.inv(REFERENCE) @ assets.affine)
    colin_brain = ndimage.affine_transform((np.asarray(bet.dataobj) > 0).astype(np.float32), vox[:3, :3],
                                           vox[:3, 3], output_shape=assets.brain.shape, order=1) > 0.5
    voxel_cm3 = abs(np.linalg.det(assets.affine[:3, :3])) / 1000.0
    dice = 2 * (assets.brain & colin_brain).sum() / (assets.brain.sum() + colin_brain.sum())
    return (f"template brain (derived) vs Colin27 brain via the reference: Dice {dice:.3f}, "
            f"{assets.brain.sum() * voxel_cm3:.0f} vs {colin_brain.sum() * voxel_cm3:.0f} cm3, Colin brain not "
            f"covered {(colin_brain & ~assets.brain).sum() * voxel_cm3:.0f} cm3, eroded template brain in the face "
            f"mask {(assets.brain_eroded & assets.face).sum()} voxels")


# --- worker: one defacing in its own process ------------------------------------------------------------------


def worker(in_path: Path, mask_path: Path, json_path: Path, threads: int) -> None:
    from bidsafe.deface.engine import defaced_bytes, estimate_removal, load_nifti

    started = time.monotonic()
    estimate = estimate_removal(in_path, threads=threads)
    if not estimate.failures:  # what `bidsafe deface` would write, so time and memory include it
        img = load_nifti(in_path)
        mask_path.with_name(mask_path.name.replace("_removal", "_defaced")).write_bytes(
            defaced_bytes(in_path, img, estimate.removal, gzipped=True))
    seconds = time.monotonic() - started
    nib.save(nib.Nifti1Image(estimate.removal.astype(np.uint8), estimate.affine), mask_path)
    json_path.write_text(json.dumps({
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "failures": estimate.failures,
        "record": estimate.guard_values,
        "matrix": estimate.matrix.tolist(),
    }))


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM); getrusage would include the parent's
    memory at fork time, which the kernel keeps across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(spec: CaseSpec, case: dict, work: Path, threads: int) -> dict:
    mask_path = work / f"{spec.name}_removal.nii.gz"
    json_path = work / f"{spec.name}_result.json"
    cmd = [sys.executable, __file__, "--worker", case["path"], str(mask_path), str(json_path),
           "--threads", str(threads)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        return {"name": spec.name, "error": f"worker exit status {status}", "wall": wall}
    result = json.loads(json_path.read_text())
    removal = np.asarray(nib.load(mask_path).dataobj) > 0
    ref = np.load(work / f"{spec.name}_ref.npz")
    tissue, ref_face = ref["tissue"], ref["reference_face"]
    voxel_cm3 = case["voxel_cm3"]
    removed_tissue, ref_tissue = removal & tissue, ref_face & tissue
    dice = 2 * (removed_tissue & ref_tissue).sum() / max(removed_tissue.sum() + ref_tissue.sum(), 1)
    return {
        "name": spec.name,
        "dice": float(dice),
        "brain_removed_cm3": float((removal & ref["reference_brain"]).sum() * voxel_cm3),
        "colin_brain_removed_cm3": float((removal & ref["colin_brain"]).sum() * voxel_cm3),
        "reference_colin_brain_removed_cm3": float((ref_face & ref["colin_brain"]).sum() * voxel_cm3),
        "face_left_cm3": float((ref_tissue & ~removal).sum() * voxel_cm3),
        "face_cm3": float(ref_tissue.sum() * voxel_cm3),
        "verdict": "pass" if not result["failures"] else "REFUSED: " + "; ".join(result["failures"]),
        "seconds": result["seconds"],
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": wall,
        "rss_mb": result["peak_rss_mb"],
        "guards": result["record"],
        "matrix_error_mm": matrix_error(np.array(result["matrix"]), np.array(case["case_to_template"]),
                                        np.array(case["grid"]), case["shape"]),
    }


def matrix_error(found: np.ndarray, reference: np.ndarray, grid: np.ndarray, shape: tuple) -> float:
    """Largest distance (template mm) between where the two transforms send the corners of a 200 mm cube
    centred on the case's field of view."""
    centre = grid @ np.array([(n - 1) / 2 for n in shape] + [1.0])
    # reference maps case voxels; convert to world
    ref_world = reference @ np.linalg.inv(grid)
    corners = np.array([[x, y, z, 0.0] for x in (-100, 100) for y in (-100, 100) for z in (-100, 100)])
    points = corners + centre
    return float(np.max(np.linalg.norm((found @ points.T - ref_world @ points.T)[:3], axis=0)))


# --- main -----------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()} {platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
            f"{os.cpu_count()} cpus, python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=15)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument("--keep", type=Path, help="keep cases and masks in this folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bidsafe")
    parser.add_argument("--json", type=Path, help="write per-case results here")
    parser.add_argument("--worker", nargs=3, metavar=("IN", "MASK", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]), args.threads)
        return 0

    print(f"machine: {machine()}")
    colin = colin_dir(args.cache / "mricron-data")
    print(template_brain_check(colin))
    specs = make_specs(args.cases, args.seed)
    if args.only:
        specs = [s for s in specs if s.name in args.only]
    work = args.keep or Path(tempfile.mkdtemp(prefix="deface-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    header = (f"{'case':4} {'orient':7} {'fov':6} {'voxel':13} {'extra':14} {'pose p/r/y deg':15} "
              f"{'Dice':>5} {'brain':>6} {'colin':>6} {'face':>5} {'err':>5} {'cpu':>5} {'wall':>5} {'RSS':>5}"
              "  verdict")
    print(header)
    try:
        for index, spec in enumerate(specs):
            case = build_case(spec, colin, work, seed=args.seed * 1000 + index)
            row = run_case(spec, case, work, args.threads)
            rows.append({"spec": asdict(spec), **row})
            extra = f"{spec.contrast}{'/4D' if spec.volumes > 1 else ''}/{spec.dtype}"
            if "error" in row:
                print(f"{spec.name:4} {row['error']}")
                continue
            print(f"{spec.name:4} {spec.orientation:7} {spec.fov:6} {'x'.join(f'{v:g}' for v in spec.voxel):13} "
                  f"{extra:14} {spec.pitch:+5.0f}/{spec.roll:+3.0f}/{spec.yaw:+3.0f}    "
                  f"{row['dice']:5.3f} {row['brain_removed_cm3']:6.2f} {row['colin_brain_removed_cm3']:6.2f} "
                  f"{row['face_left_cm3']:5.1f} {row['matrix_error_mm']:5.1f} {row['cpu']:5.1f} {row['wall']:5.1f} "
                  f"{row['rss_mb']:5.0f}  {row['verdict']}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    done = [r for r in rows if "error" not in r]
    if done:
        def med(key: str) -> float:
            return float(np.median([r[key] for r in done]))
        refused = sum(r["verdict"] != "pass" for r in done)
        print(f"median: Dice {med('dice'):.3f}, brain removed {med('brain_removed_cm3'):.2f} cm3, "
              f"face left {med('face_left_cm3'):.1f} cm3, cpu {med('cpu'):.1f} s, wall {med('wall'):.1f} s, "
              f"RSS {med('rss_mb'):.0f} MB; "
              f"refused {refused}/{len(done)}; max RSS {max(r['rss_mb'] for r in done):.0f} MB; "
              f"passed cases with brain removed > 2 cm3: "
              f"{sum(r['verdict'] == 'pass' and r['brain_removed_cm3'] > 2 for r in done)}")
        print("columns: Dice = removed head tissue vs reference; brain = cm3 of the template brain (carried by "
              "the reference) removed; colin = cm3 of Colin's own brain (ch2bet) removed; face = cm3 of "
              "reference face tissue left; err = largest transform error over a 200 mm cube (mm); cpu, wall = "
              "seconds of the whole defacing process (interpreter start, template, registration, guards, "
              "writing the output); RSS = its peak resident memory (MB)")
    print(f"peak RSS of this driver (builds the cases): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
