"""Byte sources for the leak gate: a file in chunks (memory-mapped), gzip members decompressed in growing
blocks, the gzip header's name fields, NIfTI header layout, and whether a file holds text.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

CHUNK_BYTES = 8 << 20
TEXT_SNIFF_BYTES = 1 << 16

TEXT_SUFFIXES = frozenset(
    {
        ".json", ".tsv", ".txt", ".bval", ".bvec", ".md", ".rst", ".log", ".html", ".htm", ".csv", ".yaml",
        ".yml", ".sha256", ".xdlm", ".bidsignore", ".cff", ".tex", ".xml", ".svg", ".py", ".sh", ".smk",
    }
)
TEXT_NAMES = frozenset({"README", "CHANGES", "LICENSE", "MANIFEST.sha256"})

NIFTI1_TEXT_FIELDS = {"data_type": (4, 10), "db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24),
                       "intent_name": (328, 16), "magic": (344, 4)}
NIFTI2_TEXT_FIELDS = {"magic": (4, 8), "descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}


def byte_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for start in range(0, len(mapped), CHUNK_BYTES):
                yield mapped[start : start + CHUNK_BYTES]


def gunzip_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every gzip member in `path`, in chunks (a truncated stream ends quietly)."""
    with open(path, "rb") as handle:
        decompressor = zlib.decompressobj(wbits=31)
        # Small first blocks, growing: telling a NIfTI from text and reading its header needs ~64 KB, not
        # 8 MB of voxels (a headers-only scan stops there).
        size = TEXT_SNIFF_BYTES // 4
        while True:
            block = handle.read(size)
            size = min(size * 4, CHUNK_BYTES // 2)
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


def gzip_header_text(data: bytes) -> bytes:
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


def nifti_version(head: bytes) -> tuple[int, int]:
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return 1, 348
        if size == 540:
            return 2, 540
    return 1, 348


def is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def float32(data: bytes, order: str) -> float:
    value: float = struct.unpack("<f" if order == "little" else ">f", data)[0]
    return value


def looks_text(name: str, head: bytes) -> bool:
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
