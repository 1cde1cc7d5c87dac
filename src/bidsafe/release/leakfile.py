"""One file's leak scan: what each kind of file is searched for, and where in it (see the table in
`bidsafe.release.leakscan`): gzip header and member, NIfTI header fields, extensions and voxels, JSON keys
and values, TSV headers and cells, any other text, and raw bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from bidsafe.release.leakforms import RawValue
from bidsafe.release.leakhits import NON_ASCII, NON_VOCABULARY, STRUCTURE, LeakHit
from bidsafe.release.leakmatch import Scanner
from bidsafe.release.leakread import (
    NIFTI1_TEXT_FIELDS,
    NIFTI2_TEXT_FIELDS,
    TEXT_SNIFF_BYTES,
    byte_chunks,
    file_chunks,
    float32,
    gunzip_chunks,
    gzip_header_text,
    is_nifti,
    looks_text,
    nifti_version,
    prepend,
)

JSON_STRUCTURED_LIMIT = 64 << 20


class FileScan:
    """Scan one file and report its hits under a sanitised label.

    `structural`: the file is released metadata (not a log in an `also` folder): non-ASCII text in it is a
    finding. `descriptors`: a sidecar under sub-*/, whose string values may hold vocabulary text only
    (checked when the scanner has a vocabulary). `names_file(text)`: the text names a released file (an
    IntendedFor path), whose tokens are path tokens, checked as paths.
    """

    def __init__(self, scanner: Scanner, label: str, *, structural: bool = False, descriptors: bool = False,
                 names_file: Callable[[str], bool] | None = None) -> None:
        self.scanner = scanner
        self.label = label
        self.structural = structural
        self.descriptors = descriptors and scanner.vocabulary is not None
        self.names_file = names_file
        self.hits: set[LeakHit] = set()
        self.values: dict[LeakHit, set[RawValue]] = {}  # the values behind each hit (private findings)
        self.bytes = 0

    def add(self, where: str, found: Iterable[RawValue]) -> None:
        for value in found:
            hit = LeakHit(self.label, where, value.field, value.category)
            self.hits.add(hit)
            self.values.setdefault(hit, set()).add(value)

    def flag(self, where: str, rule: str) -> None:
        self.hits.add(LeakHit(self.label, where, STRUCTURE, rule))

    def non_ascii(self, where: str, text: str | bytes) -> None:
        if self.structural and not text.isascii():
            self.flag(where, NON_ASCII)

    def fields(self) -> set[str]:
        return {h.field for h in self.hits}

    def add_new(self, where: str, found: Iterable[RawValue]) -> None:
        """Add only values not yet reported for this file (the raw pass after a structured one)."""
        known = self.fields()
        self.add(where, (v for v in found if v.field not in known))

    def descriptor(self, where: str, text: str) -> None:
        vocabulary = self.scanner.vocabulary
        if not self.descriptors or vocabulary is None or not vocabulary.outside(text):
            return
        if self.names_file is not None and self.names_file(text):
            return
        self.flag(where, NON_VOCABULARY)

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
        elif is_nifti(head):
            self.scan_nifti(file_chunks(path))
        elif looks_text(path.name, head):
            self.scan_text(path.name, path.read_bytes())
        else:
            self.add("bytes", self.scanner.in_chunks(file_chunks(path), self.scanner.binary, uids=True))

    def scan_gzip(self, path: Path) -> None:
        with open(path, "rb") as handle:
            header = gzip_header_text(handle.read(1 << 16))
        self.add("gzip-header", self.scanner.in_bytes(header, self.scanner.raw))
        self.add("gzip-header", self.scanner.in_text(header.decode("latin-1")))
        self.non_ascii("gzip-header", header)
        inner_name = path.name[:-3] if path.name.endswith(".gz") else path.name
        chunks = gunzip_chunks(path)
        head = b""
        for chunk in chunks:  # gather enough to tell what the member holds
            head += chunk
            if len(head) >= TEXT_SNIFF_BYTES:
                break
        rest = prepend(head, chunks)
        if is_nifti(head):
            self.scan_nifti(rest)
        elif looks_text(inner_name, head):
            self.scan_text(inner_name, b"".join(rest))
        else:
            self.add("bytes", self.scanner.in_chunks(rest, self.scanner.binary, uids=True))

    def scan_nifti(self, chunks: Iterator[bytes]) -> None:
        buffer = b""
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= 544:
                break
        version, size = nifti_version(buffer)
        fields = NIFTI1_TEXT_FIELDS if version == 1 else NIFTI2_TEXT_FIELDS
        order: Literal["little", "big"] = "little" if int.from_bytes(buffer[:4], "little") == size else "big"
        raw_offset = float32(buffer[108:112], order) if version == 1 else int.from_bytes(buffer[168:176], order)
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
            self.add(f"nifti-header:{name}", scanner.in_bytes(text, scanner.raw))
            self.add(f"nifti-header:{name}", scanner.in_text(text.decode("utf-8", errors="replace")))
            self.non_ascii(f"nifti-header:{name}", text)
        # Numeric header fields can only hold text by accident: long needles only, like voxels.
        self.add("nifti-header", scanner.in_bytes(buffer[:size], scanner.voxel, uids=False))
        if vox_offset > size + 4:
            extension = buffer[size + 4 : vox_offset]
            self.add("nifti-extension", scanner.in_bytes(extension, scanner.raw))
            self.add("nifti-extension", scanner.in_text(extension.decode("utf-8", errors="replace")))
            self.non_ascii("nifti-extension", extension)
        if scanner.scan_voxels:
            voxels = prepend(buffer[vox_offset:], chunks)
            self.add("nifti-data", scanner.in_chunks(voxels, scanner.voxel, uids=False))

    def scan_text(self, name: str, data: bytes) -> None:
        scanner = self.scanner
        lowered_name = name.lower()
        structured = False
        if lowered_name.endswith(".json") and len(data) <= JSON_STRUCTURED_LIMIT:
            try:
                document = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                document = _UNREADABLE
            if document is not _UNREADABLE:
                structured = True
                for where, text, kind in _json_items(document, scanner):
                    self.add(where, scanner.in_text(text, numeric=kind == "number"))
                    if kind != "number":
                        self.non_ascii(where, text)
                    if kind == "string":
                        self.descriptor(where, text)
        elif lowered_name.endswith(".tsv"):
            structured = True
            text = data.decode("utf-8", errors="replace")
            for where, cell in _tsv_cells(text, scanner):
                self.add(where, scanner.in_text(cell, numeric=_NUMBER.fullmatch(cell.strip()) is not None))
                self.non_ascii(where, cell)
        if not structured:
            self.add("text", scanner.in_text(data.decode("utf-8", errors="replace")))
            if not data.isascii() and lowered_name.endswith((".json", ".tsv")):
                self.non_ascii("text", data)  # metadata that could not be parsed: its bytes, then
        self.add_new("text", scanner.in_chunks(byte_chunks(data), scanner.raw, uids=True))


_UNREADABLE = object()
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def safe_component(text: str, scanner: Scanner) -> str:
    return scanner.withhold(text)


def _json_items(document: Any, scanner: Scanner, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, text, kind) for every key and scalar of a JSON document (kind: key, string or number);
    keys carrying a value are withheld in `where`."""
    if isinstance(document, dict):
        for key, value in document.items():
            shown = safe_component(str(key), scanner)
            child = f"{path}.{shown}" if path else shown
            yield f"json:{child}", str(key), "key"
            yield from _json_items(value, scanner, child)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from _json_items(item, scanner, f"{path}[{index}]")
    elif isinstance(document, str):
        yield f"json:{path or '<root>'}", document, "string"
    elif document is not None and not isinstance(document, bool):
        yield f"json:{path or '<root>'}", json.dumps(document), "number"


def _tsv_cells(text: str, scanner: Scanner) -> Iterator[tuple[str, str]]:
    lines = text.splitlines()
    if not lines:
        return
    header = lines[0].split("\t")
    for cell in header:
        yield "tsv-header", cell
    columns = [safe_component(c, scanner) for c in header]
    for line in lines[1:]:
        for index, cell in enumerate(line.split("\t")):
            column = columns[index] if index < len(columns) else f"column {index + 1}"
            yield f"tsv:{column}", cell
