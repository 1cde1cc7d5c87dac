"""Gate `leak scan`: look for every personal value of the raw DICOM anywhere in a dataset, independently.

The scan does not trust any earlier stage. It harvests every personal value from the raw headers
(`bidsafe.phi`: names and their components and orderings, IDs, dates in common renderings, addresses, phone
numbers, institutions, free-text identity fields, UIDs, and strings of identity private blocks) and looks
for them in every file and every path of the target (and of `also` folders such as the logs):

| where            | what is scanned                                        | needles                          |
|------------------|--------------------------------------------------------|----------------------------------|
| `path`           | every path component (and symlink targets)             | all (>= MIN_NEEDLE_LENGTH)       |
| `json:<key>`     | JSON keys and values, decoded (so `\\u00fc` escapes count) | all                              |
| `tsv:<column>`   | TSV cells; `tsv-header` for column names               | all                              |
| `text`           | any text file as bytes (also JSON/TSV, for the rest)   | all                              |
| `gzip-header`    | gzip FNAME/FCOMMENT/FEXTRA (pigz stores input names)   | all                              |
| `nifti-header:<field>` | NIfTI text fields (descrip, aux_file, ...)       | all                              |
| `nifti-extension`| NIfTI header extensions                                | all                              |
| `nifti-data`     | NIfTI voxel bytes (decompressed)                       | long only (>= VOXEL_NEEDLE_MIN)  |
| `bytes`          | any other binary file, and gzip members that are not text | >= BINARY_NEEDLE_MIN          |

Why voxel data gets long needles only: voxel bytes are close to random, so a short needle matches by chance
(a 5-letter needle, case-insensitive, matches ~1.5 times per 50 GB of random bytes, per needle; a release of
500 sessions holds ~10^11 voxel bytes and ~10^4 needles). At 8 characters chance hits drop below 10^-1 for
such a release, while a header or text block pasted into voxel data is still found.

Matching is one Aho-Corasick automaton per needle length class over ASCII-lower-cased bytes (non-ASCII
needles are added in lower, upper and title case, UTF-8 and Latin-1), then boundary rules per match: a digit
may not continue a number on either side (nor a decimal point followed by a digit: "0.19800417" is not a
birth date; but a date may run on into a time, "20220627125713"), and a letter may not continue a short
word (< UNBOUNDED_MIN letters), so "Lee" is not found in "asleep" while "Quillfeather" is found in
"xQuillfeatherx". UIDs (hundreds of thousands in a big release) are found by tokenising dotted numbers and
looking each component-aligned piece up in a set.

A hit names the file (the parts of path components that carry a value are replaced by `<withheld>`), where,
the DICOM field and the category, never the value. Any hit fails the gate.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick_rs

from bidsafe.errors import ConfigError
from bidsafe.fsutil import atomic_write_json
from bidsafe.phi import MIN_NEEDLE_LENGTH, PLACEHOLDERS, PersonalValue, PersonalValues, harvest_files

BINARY_NEEDLE_MIN = 5
VOXEL_NEEDLE_MIN = 8
UNBOUNDED_MIN = 7  # letter-edged needles this long match inside longer words too
NUMERIC_NEEDLE_MIN = 4  # "123" as a study ID is no identifier worth failing a release on; "1234" is
UID_MIN_LENGTH = 8
CHUNK_BYTES = 8 << 20
JSON_STRUCTURED_LIMIT = 64 << 20
TEXT_SNIFF_BYTES = 1 << 16
WITHHELD = "<withheld>"

TEXT_SUFFIXES = frozenset(
    {
        ".json", ".tsv", ".txt", ".bval", ".bvec", ".md", ".rst", ".log", ".html", ".htm", ".csv", ".yaml",
        ".yml", ".sha256", ".xdlm", ".bidsignore", ".cff", ".tex", ".xml", ".svg", ".py", ".sh", ".smk",
    }
)
TEXT_NAMES = frozenset({"README", "CHANGES", "LICENSE", "MANIFEST.sha256"})

_NIFTI1_TEXT_FIELDS = {"data_type": (4, 10), "db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24),
                       "intent_name": (328, 16), "magic": (344, 4)}
_NIFTI2_TEXT_FIELDS = {"magic": (4, 8), "descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+)+|[0-9]{16,}")
_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") | frozenset(range(0x80, 0x100))


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, order=True)
class LeakHit:
    """One personal value found: file (relative, sanitised), where in it, and the DICOM field. No value."""

    file: str
    where: str
    field: str
    category: str

    def line(self) -> str:
        return f"{self.file}: {self.where}: {self.field} ({self.category})"


@dataclass
class LeakReport:
    target: str
    also: list[str] = field(default_factory=list)
    values: int = 0
    needles: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    hits: list[LeakHit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.hits

    def speed(self) -> str:
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.files / seconds:.0f} files/s, {self.bytes / 1e6 / seconds:.1f} MB/s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "target": self.target,
            "also": self.also,
            "values": self.values,
            "needles": self.needles,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "hits": [vars(h) for h in self.hits],
        }


# ---------------------------------------------------------------------------------------------- needles


def _variants(form: str) -> set[bytes]:
    """Byte forms of a lower-cased rendering as they may appear in ASCII-lower-cased data."""
    if form.isascii():
        return {form.encode("ascii")}
    out: set[bytes] = set()
    for cased in {form, form.upper(), form.title()}:
        for encoding in ("utf-8", "latin-1"):
            try:
                out.add(cased.encode(encoding).lower())
            except UnicodeEncodeError:
                continue
    return out


def _is_noise(form: str) -> bool:
    stripped = form.strip()
    if stripped in PLACEHOLDERS or len(set(stripped)) <= 1:
        return True
    alnum = re.sub(r"[^0-9a-z]", "", stripped)
    if not alnum:
        return True
    return stripped.isdigit() and len(stripped) < NUMERIC_NEEDLE_MIN


class _Needles:
    """One automaton over byte needles, with the boundary rule of each."""

    def __init__(self, forms: dict[str, PersonalValue], min_length: int) -> None:
        patterns: dict[bytes, PersonalValue] = {}
        for form, value in forms.items():
            if len(form) < min_length:
                continue
            for variant in _variants(form):
                patterns.setdefault(variant, value)
        self.patterns = sorted(patterns)
        self.owners = [patterns[p] for p in self.patterns]
        self.unbounded = [len(p) >= UNBOUNDED_MIN for p in self.patterns]
        # A date may run on into a time ("20220627125713", DICOM DT and dcm2niix's %t in file names).
        self.open_right = [self.owners[i].category == "date" for i in range(len(self.patterns))]
        self.max_length = max((len(p) for p in self.patterns), default=0)
        self._automaton = (
            ahocorasick_rs.BytesAhoCorasick(self.patterns, implementation=ahocorasick_rs.Implementation.DFA)
            if self.patterns
            else None
        )

    def __len__(self) -> int:
        return len(self.patterns)

    def find(self, lowered: bytes | memoryview, final: bool = True) -> Iterator[tuple[int, int, PersonalValue]]:
        """(start, end, value) of every match in `lowered` that passes its boundary rule.

        With `final` False the buffer continues in the next window: matches touching its end are left for it.
        """
        if self._automaton is None:
            return
        size = len(lowered)
        for index, start, end in self._automaton.find_matches_as_indexes(lowered, overlapping=True):
            if not final and end >= size - 1:
                continue
            pattern = self.patterns[index]
            if _bounded_ok(lowered, start, end, pattern, self.unbounded[index], self.open_right[index]):
                yield start, end, self.owners[index]


def _bounded_ok(
    data: bytes | memoryview, start: int, end: int, pattern: bytes, unbounded: bool, open_right: bool = False
) -> bool:
    first, last = pattern[0], pattern[-1]
    before = data[start - 1] if start > 0 else None
    after = data[end] if end < len(data) else None
    if first in _DIGITS:
        if before is not None and (
            before in _DIGITS or (before == 0x2E and start >= 2 and data[start - 2] in _DIGITS)
        ):
            return False
    elif first in _LETTERS and not unbounded and before is not None and before in _LETTERS:
        return False
    if open_right:
        return True
    if last in _DIGITS:
        if after is not None and (
            after in _DIGITS or (after == 0x2E and end + 1 < len(data) and data[end + 1] in _DIGITS)
        ):
            return False
    elif last in _LETTERS and not unbounded and after is not None and after in _LETTERS:
        return False
    return True


class Scanner:
    """The needles of a set of personal values, ready to scan bytes, text, names and file trees."""

    def __init__(self, values: PersonalValues, *, scan_voxels: bool = True) -> None:
        forms = {f: v for f, v in values.needles().items() if v.category != "uid" and not _is_noise(f)}
        self.text = _Needles(forms, MIN_NEEDLE_LENGTH)
        self.binary = _Needles(forms, BINARY_NEEDLE_MIN)
        self.voxel = _Needles(forms, VOXEL_NEEDLE_MIN)
        self.uids: dict[bytes, PersonalValue] = {}
        for value in values:
            if value.category == "uid":
                for form in value.renderings():
                    if len(form) >= UID_MIN_LENGTH:
                        self.uids.setdefault(form.encode("ascii", "ignore"), value)
        self.scan_voxels = scan_voxels
        self.overlap = max(self.text.max_length, 66) + 4

    @property
    def needle_count(self) -> int:
        return len(self.text) + len(self.uids)

    # -- primitives -----------------------------------------------------------------------------------

    def in_bytes(self, data: bytes | memoryview, needles: _Needles, *, uids: bool = True,
                 final: bool = True) -> set[PersonalValue]:
        lowered = bytes(data).lower()
        found = {value for _, _, value in needles.find(lowered, final=final)}
        if uids and self.uids:
            found.update(value for _, _, value in self._uids_in(lowered, final))
        return found

    def in_text(self, text: str) -> set[PersonalValue]:
        return self.in_bytes(text.encode("utf-8"), self.text)

    def _uids_in(self, data: bytes, final: bool) -> Iterator[tuple[int, int, PersonalValue]]:
        size = len(data)
        for match in _UID_TOKEN.finditer(data):
            if not final and match.end() >= size - 1:
                continue
            token = match.group(0)
            if len(token) < UID_MIN_LENGTH:
                continue
            if b"." not in token:
                if token in self.uids:
                    yield match.start(), match.end(), self.uids[token]
                continue
            parts = token.split(b".")
            offsets = [0]
            for part in parts:
                offsets.append(offsets[-1] + len(part) + 1)
            for i in range(len(parts)):
                for j in range(i + 2, len(parts) + 1):
                    piece = b".".join(parts[i:j])
                    if len(piece) >= UID_MIN_LENGTH and piece in self.uids:
                        start = match.start() + offsets[i]
                        yield start, start + len(piece), self.uids[piece]

    def withhold(self, name: str) -> str:
        """`name` with every personal value in it replaced by `<withheld>` (for labels: paths, keys)."""
        data = name.encode("utf-8")
        lowered = data.lower()
        spans = sorted(
            [(start, end) for start, end, _ in self.text.find(lowered)]
            + [(start, end) for start, end, _ in self._uids_in(lowered, True)]
        )
        if not spans:
            return name
        merged: list[list[int]] = []
        for start, end in spans:  # overlapping renderings ("smith", "smith_john") become one span
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, position = [], 0
        for start, end in merged:
            out += [data[position:start], WITHHELD.encode()]
            position = end
        out.append(data[position:])
        return b"".join(out).decode("utf-8", errors="replace")

    def in_chunks(self, chunks: Iterable[bytes], needles: _Needles, *, uids: bool) -> set[PersonalValue]:
        """Scan a stream in windows that overlap by the longest needle, so nothing is lost at the seams."""
        found: set[PersonalValue] = set()
        tail = b""
        pending: bytes | None = None
        for chunk in chunks:
            if not chunk:
                continue
            if pending is not None:
                window = tail + pending
                found |= self.in_bytes(window, needles, uids=uids, final=False)
                tail = window[-self.overlap :]
            pending = chunk
        if pending is not None:
            found |= self.in_bytes(tail + pending, needles, uids=uids, final=True)
        return found


# ---------------------------------------------------------------------------------------------- files


class _FileScan:
    """Scan one file and report its hits under a sanitised label."""

    def __init__(self, scanner: Scanner, label: str) -> None:
        self.scanner = scanner
        self.label = label
        self.hits: set[LeakHit] = set()
        self.bytes = 0

    def add(self, where: str, found: Iterable[PersonalValue]) -> None:
        for value in found:
            self.hits.add(LeakHit(self.label, where, value.field, value.category))

    def fields(self) -> set[str]:
        return {h.field for h in self.hits}

    def add_new(self, where: str, found: Iterable[PersonalValue]) -> None:
        """Add only values not yet reported for this file (the raw pass after a structured one)."""
        known = self.fields()
        self.add(where, (v for v in found if v.field not in known))

    # -- dispatch -------------------------------------------------------------------------------------

    def scan_path(self, path: Path) -> None:
        size = path.stat().st_size
        self.bytes += size
        if size == 0:
            return
        with open(path, "rb") as handle:
            head = handle.read(TEXT_SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            self.scan_gzip(path)
        elif _is_nifti(head):
            self.scan_nifti(_file_chunks(path))
        elif _looks_text(path.name, head):
            self.scan_text(path.name, path.read_bytes())
        else:
            self.add("bytes", self.scanner.in_chunks(_file_chunks(path), self.scanner.binary, uids=True))

    def scan_gzip(self, path: Path) -> None:
        with open(path, "rb") as handle:
            header = handle.read(1 << 16)
        self.add("gzip-header", self.scanner.in_bytes(_gzip_header_text(header), self.scanner.text))
        inner_name = path.name[:-3] if path.name.endswith(".gz") else path.name
        chunks = _gunzip_chunks(path)
        head = b""
        for chunk in chunks:  # gather enough to tell what the member holds
            head += chunk
            if len(head) >= TEXT_SNIFF_BYTES:
                break
        rest = _prepend(head, chunks)
        if _is_nifti(head):
            self.scan_nifti(rest)
        elif _looks_text(inner_name, head):
            self.scan_text(inner_name, b"".join(rest))
        else:
            self.add("bytes", self.scanner.in_chunks(rest, self.scanner.binary, uids=True))

    def scan_nifti(self, chunks: Iterator[bytes]) -> None:
        buffer = b""
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= 544:
                break
        version, size = _nifti_version(buffer)
        fields = _NIFTI1_TEXT_FIELDS if version == 1 else _NIFTI2_TEXT_FIELDS
        order = "little" if int.from_bytes(buffer[:4], "little") == size else "big"
        raw_offset = _float32(buffer[108:112], order) if version == 1 else int.from_bytes(buffer[168:176], order)
        # A broken offset must not make the whole image "extension" text: bounded to what real files use.
        vox_offset = int(raw_offset) if raw_offset == raw_offset and 0 <= raw_offset < 1 << 26 else size
        vox_offset = max(vox_offset, size)
        while len(buffer) < vox_offset:
            chunk = next(chunks, b"")
            if not chunk:
                break
            buffer += chunk
        scanner = self.scanner
        for name, (offset, length) in fields.items():
            text = buffer[offset : offset + length].split(b"\x00", 1)[0]
            self.add(f"nifti-header:{name}", scanner.in_bytes(text, scanner.text))
        # Numeric header fields can only hold text by accident: long needles only, like voxels.
        self.add("nifti-header", scanner.in_bytes(buffer[:size], scanner.voxel, uids=False))
        if vox_offset > size + 4:
            self.add("nifti-extension", scanner.in_bytes(buffer[size + 4 : vox_offset], scanner.text))
        if scanner.scan_voxels:
            voxels = _prepend(buffer[vox_offset:], chunks)
            self.add("nifti-data", scanner.in_chunks(voxels, scanner.voxel, uids=False))

    def scan_text(self, name: str, data: bytes) -> None:
        scanner = self.scanner
        lowered_name = name.lower()
        if lowered_name.endswith(".json") and len(data) <= JSON_STRUCTURED_LIMIT:
            try:
                document = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                document = None
            if document is not None:
                for where, text in _json_items(document, scanner):
                    self.add(where, scanner.in_text(text))
        elif lowered_name.endswith(".tsv"):
            text = data.decode("utf-8", errors="replace")
            for where, cell in _tsv_cells(text, scanner):
                self.add(where, scanner.in_text(cell))
        self.add_new("text", scanner.in_chunks(_split(data), scanner.text, uids=True))


def _split(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for start in range(0, len(mapped), CHUNK_BYTES):
                yield mapped[start : start + CHUNK_BYTES]


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every gzip member in `path`, in chunks (a truncated stream ends quietly)."""
    with open(path, "rb") as handle:
        decompressor = zlib.decompressobj(wbits=31)
        while True:
            block = handle.read(CHUNK_BYTES // 2)
            if not block:
                break
            while block:
                try:
                    yield decompressor.decompress(block)
                except zlib.error:
                    return
                if decompressor.eof:
                    block = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                else:
                    block = b""
        try:
            yield decompressor.flush()
        except zlib.error:
            return


def _gzip_header_text(data: bytes) -> bytes:
    """FEXTRA, FNAME and FCOMMENT of the first gzip member (where pigz and gzip -N store the input name)."""
    if len(data) < 10:
        return b""
    flags = data[3]
    position = 10
    parts: list[bytes] = []
    if flags & 0x04 and len(data) >= position + 2:
        extra_length = int.from_bytes(data[position : position + 2], "little")
        parts.append(data[position + 2 : position + 2 + extra_length])
        position += 2 + extra_length
    for flag in (0x08, 0x10):
        if flags & flag:
            end = data.find(b"\x00", position)
            end = len(data) if end < 0 else end
            parts.append(data[position:end])
            position = end + 1
    return b"\n".join(parts)


def _nifti_version(head: bytes) -> tuple[int, int]:
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return 1, 348
        if size == 540:
            return 2, 540
    return 1, 348


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _float32(data: bytes, order: str) -> float:
    return struct.unpack("<f" if order == "little" else ">f", data)[0]


def _looks_text(name: str, head: bytes) -> bool:
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a multi-byte character cut by the sniff window
    return True


def _safe_component(text: str, scanner: Scanner) -> str:
    return scanner.withhold(text)


def _json_items(document: Any, scanner: Scanner, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, text) for every key and scalar of a JSON document; keys carrying a value are withheld."""
    if isinstance(document, dict):
        for key, value in document.items():
            shown = _safe_component(str(key), scanner)
            child = f"{path}.{shown}" if path else shown
            yield f"json:{child}", str(key)
            yield from _json_items(value, scanner, child)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from _json_items(item, scanner, f"{path}[{index}]")
    elif document is not None and not isinstance(document, bool):
        yield f"json:{path or '<root>'}", document if isinstance(document, str) else json.dumps(document)


def _tsv_cells(text: str, scanner: Scanner) -> Iterator[tuple[str, str]]:
    lines = text.splitlines()
    if not lines:
        return
    header = lines[0].split("\t")
    for cell in header:
        yield "tsv-header", cell
    columns = [_safe_component(c, scanner) for c in header]
    for line in lines[1:]:
        for index, cell in enumerate(line.split("\t")):
            column = columns[index] if index < len(columns) else f"column {index + 1}"
            yield f"tsv:{column}", cell


# ---------------------------------------------------------------------------------------------- trees


def _walk(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every entry under `root` (folders too, symlinks not followed), with its relative path parts."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        relative = base.relative_to(root).parts
        for name in dirnames + sorted(filenames):
            yield base / name, (*relative, name)


def scan_tree(root: Path, scanner: Scanner, label_prefix: str = "") -> tuple[set[LeakHit], int, int]:
    """(hits, files scanned, bytes scanned) for every path and file under `root`."""
    root = Path(root)
    hits: set[LeakHit] = set()
    files = total = 0
    safe: dict[str, str] = {}

    def sanitised(parts: Sequence[str]) -> str:
        shown = []
        for part in parts:
            if part not in safe:
                safe[part] = _safe_component(part, scanner)
            shown.append(safe[part])
        return label_prefix + "/".join(shown)

    for path, parts in _walk(root):
        label = sanitised(parts)
        for value in scanner.in_text(parts[-1]):
            hits.add(LeakHit(label, "path", value.field, value.category))
        if path.is_symlink():
            for value in scanner.in_text(os.readlink(path)):
                hits.add(LeakHit(label, "path", value.field, value.category))
            continue
        if not path.is_file():
            continue
        one = _FileScan(scanner, label)
        one.scan_path(path)
        hits |= one.hits
        files += 1
        total += one.bytes
    return hits, files, total


def leak_scan(
    target: Path, values: PersonalValues, *, also: Sequence[Path] = (), scan_voxels: bool = True
) -> LeakReport:
    """Scan `target` (and each `also` folder) for every personal value in `values`; hits never hold values.

    Files under `also` folders are labelled `<folder name>/<relative path>`. Raises ConfigError when there
    is nothing to look for or a folder is missing: an empty scan must never pass for a clean one.
    """
    target = Path(target)
    if len(values) == 0:
        raise ConfigError("leak scan: no personal values to look for (was the source harvested?)")
    for folder in (target, *also):
        if not Path(folder).is_dir():
            raise ConfigError("leak scan: not a folder", folder)
    started = time.perf_counter()
    scanner = Scanner(values, scan_voxels=scan_voxels)
    hits, files, total = scan_tree(target, scanner)
    for folder in also:
        prefix = _safe_component(Path(folder).name, scanner) + "/"
        more_hits, more_files, more_bytes = scan_tree(Path(folder), scanner, label_prefix=prefix)
        hits |= more_hits
        files += more_files
        total += more_bytes
    return LeakReport(
        target=_safe_component(target.name, scanner),
        also=[_safe_component(Path(f).name, scanner) for f in also],
        values=len(values),
        needles=scanner.needle_count,
        files=files,
        bytes=total,
        seconds=time.perf_counter() - started,
        hits=sorted(hits),
    )


def harvest_source(raw_dir: Path) -> PersonalValues:
    """Every personal value of every readable DICOM file under `raw_dir` (header only), via `bidsafe.phi`,
    including strings of identity private blocks."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError("leak scan: --source is not a folder", raw_dir)
    paths = sorted(p for p in raw_dir.rglob("*") if p.is_file() and not p.is_symlink())
    return harvest_files(paths, private_text=True)


def write_report(report: LeakReport, path: Path) -> Path:
    return atomic_write_json(path, report.to_dict())


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe leak-scan DIR --source RAW_DIR [--report FILE.json] [--also DIR ...]`: 0 clean, 1 hits."""
    values = harvest_source(Path(args.source))
    if len(values) == 0:
        raise ConfigError("leak scan: no readable DICOM with personal values under --source", args.source)
    report = leak_scan(Path(args.dir), values, also=[Path(a) for a in args.also])
    for hit in report.hits:
        print(hit.line())
    if args.report:
        write_report(report, Path(args.report))
    verdict = "clean" if report.clean else f"{len(report.hits)} hits"
    print(f"leak scan: {verdict}; {report.values} values, {report.needles} needles; {report.speed()}",
          file=sys.stderr)
    return 0 if report.clean else 1


__all__ = [
    "LeakHit",
    "LeakReport",
    "Scanner",
    "cli_main",
    "harvest_source",
    "leak_scan",
    "scan_tree",
    "write_report",
]
