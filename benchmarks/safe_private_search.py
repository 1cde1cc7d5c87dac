"""Which private elements does dcm2niix need? Delta debugging on one series folder.

    .venv/bin/python benchmarks/safe_private_search.py SERIES [--files N] [--exclude CREATOR ...] [--rules FILE]

Every private element of the series (at any nesting level, functional groups and private sequences
included) is named by its block: (private creator, group, element offset), the key the rule file's
`safe_private` list uses. The series is rewritten keeping only a subset of those keys (standard elements
untouched) and converted with dcm2niix; a subset is "enough" when the conversion equals the one with every
private element kept: the same output files, byte-identical NIfTIs (voxels, geometry, scaling, header),
identical bvals/bvecs and an identical sidecar. Delta debugging (Zeller's ddmin, removing complements)
shrinks the full set to a 1-minimal one: removing any single element of the result changes the output.
For each element of that set it then prints what removing it changes (file, NIfTI or sidecar field), and
whether the rule file already keeps it. `--exclude` drops whole creators first (e.g. the CSA header, to
measure the fallback elements a converter reads when the CSA header is absent): the reference is then the
conversion without them, and the search finds what the remaining elements contribute.

Only keys, value representations, file names and field names are printed, never a value. Each test costs
one rewrite and one dcm2niix run (about a second on a small series); `--files N` converts N evenly spaced
files of the series instead of all of them, enough for header physics and much faster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

Key = tuple[str, int, int]  # (private creator, lower-cased and stripped; group; element offset)
DCM2NIIX = Path(sys.executable).with_name("dcm2niix")


def normalise_creator(creator: object) -> str:
    return str(creator).strip().lower()


def _creators(ds: Dataset) -> dict[tuple[int, int], str]:
    return {
        (elem.tag.group, elem.tag.element): normalise_creator(elem.value)
        for elem in ds
        if elem.tag.group & 1 and 0x10 <= elem.tag.element <= 0xFF
    }


def private_keys(ds: Dataset) -> dict[Key, str]:
    """Every private key in `ds` at any depth, with its value representation."""
    found: dict[Key, str] = {}
    creators = _creators(ds)
    for elem in ds:
        group, element = elem.tag.group, elem.tag.element
        if group & 1 and element >= 0x1000:
            creator = creators.get((group, element >> 8))
            if creator:
                found.setdefault((creator, group, element & 0xFF), elem.VR)
        if elem.VR == "SQ":
            for item in elem.value or ():
                for key, vr in private_keys(item).items():
                    found.setdefault(key, vr)
    return found


def strip_private(ds: Dataset, keep: frozenset[Key]) -> None:
    """Remove every private element whose key is not in `keep`, and creators left with no element
    (as the de-identification engine does); recurse into every kept sequence."""
    creators = _creators(ds)
    used: set[tuple[int, int]] = set()
    for elem in list(ds):
        group, element = elem.tag.group, elem.tag.element
        if group & 1 and element >= 0x1000:
            creator = creators.get((group, element >> 8))
            if not creator or (creator, group, element & 0xFF) not in keep:
                del ds[elem.tag]
                continue
            used.add((group, element >> 8))
        elif group & 1 and element < 0x10:
            del ds[elem.tag]  # private group lengths and reserved elements: never kept
            continue
        if elem.VR == "SQ":
            for item in elem.value or ():
                strip_private(item, keep)
    for group, slot in creators:
        if (group, slot) not in used:
            del ds[pydicom.tag.Tag(group, slot)]


class Series:
    """A series held in memory; writes variants and converts them."""

    def __init__(self, files: list[Path], work: Path) -> None:
        self.raw = [path.read_bytes() for path in files]
        self.work = work
        self.runs = 0

    def keys(self) -> dict[Key, str]:
        found: dict[Key, str] = {}
        for data in self.raw:
            for key, vr in private_keys(pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True)).items():
                found.setdefault(key, vr)
        return found

    def convert(self, keep: frozenset[Key]) -> dict[str, object]:
        """dcm2niix's output for the series keeping `keep`: file name -> JSON dict, or a digest."""
        self.runs += 1
        folder = self.work / f"run{self.runs}"
        (folder / "in").mkdir(parents=True)
        (folder / "out").mkdir()
        for index, data in enumerate(self.raw):
            ds = pydicom.dcmread(DicomBytesIO(data))
            strip_private(ds, keep)
            ds.save_as(folder / "in" / f"{index:05d}.dcm")
        subprocess.run(
            [str(DCM2NIIX), "-ba", "n", "-z", "n", "-f", "%s_%e", "-o", str(folder / "out"), str(folder / "in")],
            check=True,
            capture_output=True,
        )
        result: dict[str, object] = {}
        for path in sorted((folder / "out").iterdir()):
            if path.suffix == ".json":
                result[path.name] = json.loads(path.read_text())
            else:
                result[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.rmtree(folder)
        return result


def differences(expected: dict[str, object], got: dict[str, object]) -> list[str]:
    """What differs, by file and field name only."""
    found = []
    if sorted(expected) != sorted(got):
        found.append(f"output files {sorted(expected)} -> {sorted(got)}")
    for name in sorted(set(expected) & set(got)):
        a, b = expected[name], got[name]
        if isinstance(a, dict) and isinstance(b, dict):
            for field in sorted(set(a) | set(b)):
                if field not in b:
                    found.append(f"{name}: {field} lost")
                elif field not in a:
                    found.append(f"{name}: {field} appeared")
                elif a[field] != b[field]:
                    found.append(f"{name}: {field} changed")
        elif a != b:
            kind = "bytes" if name.endswith(".nii") else "values"
            found.append(f"{name}: {kind} differ")
    return found


def ddmin(items: list[Key], enough: Callable[[list[Key]], bool]) -> list[Key]:
    """Zeller's ddmin over complements: the smallest subset found such that `enough` holds and removing
    any one element breaks it (1-minimal). `enough(items)` must hold."""
    granularity = 2
    while len(items) >= 2:
        size = -(-len(items) // granularity)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        for chunk in chunks:
            complement = [item for item in items if item not in chunk]
            if enough(complement):
                items = complement
                granularity = max(granularity - 1, 2)
                break
        else:
            if granularity >= len(items):
                break
            granularity = min(len(items), granularity * 2)
    if len(items) == 1 and enough([]):
        return []
    return items


def safe_list_keys(rules_path: Path | None) -> frozenset[Key]:
    from bidsafe.deid.rules import load_rules

    rules = load_rules(rules_path)
    return frozenset((normalise_creator(s.creator), s.group, s.element) for s in rules.safe_private)


def pick(files: list[Path], count: int | None) -> list[Path]:
    if not count or count >= len(files):
        return files
    step = (len(files) - 1) / max(count - 1, 1)
    return [files[round(i * step)] for i in range(count)]


def describe(key: Key, vr: str) -> str:
    creator, group, element = key
    return f'{{creator: "{creator}", group: 0x{group:04X}, element: 0x{element:02X}}} {vr}'


def search(folder: Path, count: int | None, exclude: Iterable[str], rules_path: Path | None) -> int:
    files = pick(sorted(p for p in folder.iterdir() if p.is_file() and p.name not in ("README.md", "LICENSE")), count)
    excluded = {normalise_creator(c) for c in exclude}
    with tempfile.TemporaryDirectory(prefix="safe-private-") as temp:
        series = Series(files, Path(temp))
        vrs = series.keys()
        everything = sorted(vrs)
        candidates = [key for key in everything if key[0] not in excluded]
        full = series.convert(frozenset(everything))
        # With creators excluded, the reference is the conversion without them: what the remaining
        # elements give when those are absent (the fallback a converter uses), not what they replace.
        reference = series.convert(frozenset(candidates)) if excluded else full
        cache: dict[frozenset[Key], bool] = {}

        def enough(keep: list[Key]) -> bool:
            frozen = frozenset(keep)
            if frozen not in cache:
                cache[frozen] = not differences(reference, series.convert(frozen))
            return cache[frozen]

        print(f"{folder}: {len(files)} files, {len(everything)} private keys, {len(candidates)} candidates")
        print(f"without any private element: {len(differences(reference, series.convert(frozenset())))} differences")
        if excluded:
            print("without the excluded creators (the reference for the search below):")
            for line in differences(full, reference):
                print(f"    {line}")
        minimal = ddmin(candidates, enough)
        on_list = safe_list_keys(rules_path)
        print(f"1-minimal set: {len(minimal)} elements ({series.runs} conversions)")
        for key in minimal:
            status = "on the safe list" if key in on_list else "NEW"
            print(f"  {describe(key, vrs[key])}  [{status}]")
            for line in differences(reference, series.convert(frozenset(minimal) - {key})):
                print(f"    without it: {line}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("series", type=Path, help="one series folder")
    parser.add_argument("--files", type=int, help="convert N evenly spaced files of the series (default: all)")
    parser.add_argument("--exclude", action="append", default=[], help="leave out a private creator entirely")
    parser.add_argument("--rules", type=Path, help="rule file to compare with (default: the shipped profile)")
    args = parser.parse_args()
    if not DCM2NIIX.exists():
        print(f"dcm2niix not found next to {sys.executable}", file=sys.stderr)
        return 2
    return search(args.series, args.files, args.exclude, args.rules)


if __name__ == "__main__":
    sys.exit(main())
