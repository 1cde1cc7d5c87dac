"""Small private tables (TSV/CSV) the research team keeps: the consent registry and the demographics file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bidsafe.errors import BidsafeError


def read_table(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Read a small TSV/CSV (by extension, else sniffed): lower-cased stripped header, rows of stripped cells.

    Shared by the consent registry and the demographics file; `what` names the file kind in errors.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BidsafeError(f"{what} file not found", path) from None
    except UnicodeDecodeError:
        raise BidsafeError(f"{what} file is not UTF-8 text", path) from None
    delimiter = _delimiter(path, text)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    if not rows:
        raise BidsafeError(f"{what} file is empty (a header row is required)", path)
    header = [h.strip().lower() for h in rows[0]]
    seen: set[str] = set()
    for name in header:
        if name in seen and name:
            raise BidsafeError(f"{what} file: row 1 has column '{name}' twice", path)
        seen.add(name)
    records: list[dict[str, str]] = []
    for number, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            records.append({})  # keep row numbering aligned; blank rows are skipped by callers
            continue
        if len(cells) > len(header):
            raise BidsafeError(
                f"{what} file: row {number} has {len(cells)} cells but the header has {len(header)} columns",
                path,
            )
        cells = cells + [""] * (len(header) - len(cells))
        records.append({name: cell.strip() for name, cell in zip(header, cells, strict=True) if name})
    return header, records


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    first = text.splitlines()[0] if text else ""
    try:
        return csv.Sniffer().sniff(first, delimiters="\t,;").delimiter
    except csv.Error:
        return "\t" if "\t" in first else ","


