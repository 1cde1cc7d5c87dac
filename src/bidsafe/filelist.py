"""Inbox-relative file names in line-based private files (session file lists, ingest TSVs), losslessly.

A file name may hold any byte but '/' and NUL: a newline (which split one name into two lines, so a slice and
then its series went missing), a tab (which splits a TSV cell), an escape sequence, or bytes that are not
UTF-8 (exports from old systems; Python carries them as surrogate escapes, which a strict UTF-8 write
refuses). Every such name is written in one escaped form and every reader decodes it with `unescape_name`:

- a backslash is written `\\\\`;
- a byte that is not UTF-8 (a surrogate escape) is written `\\xNN`;
- a control character, a line or paragraph separator (anything `str.splitlines` would split on) or another
  lone surrogate is written `\\uNNNN`.

Every other name is written as it is, so lists of ordinary names keep their bytes (and nothing reruns).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

# What `escape_name` must not leave in a line: controls (Cc: newline, tab, escape, \x1c-\x1e, \x85),
# line/paragraph separators (Zl, Zp) and surrogates (Cs).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
_SURROGATE_BYTES = range(0xDC80, 0xDD00)  # how os.fsdecode carries the bytes 0x80-0xFF that are not UTF-8
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def escape_name(name: str) -> str:
    """One line of printable text for any file name (see the module docstring); `unescape_name` inverts it."""
    if name.isprintable() and "\\" not in name:  # the common case, fast
        return name
    out = []
    for char in name:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif code in _SURROGATE_BYTES:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def unescape_name(line: str) -> str:
    """The file name `escape_name` wrote as `line` (non-UTF-8 bytes come back as surrogate escapes)."""
    if "\\" not in line:
        return line

    def decode(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "\\":
            return "\\"
        if token[0] == "x":
            return chr(0xDC00 + int(token[1:], 16))
        return chr(int(token[1:], 16))

    return _ESCAPE.sub(decode, line)


def file_list_text(names: Iterable[str]) -> str:
    """A file list: one escaped name per line, each line ending in a newline (UTF-8 safe)."""
    return "".join(f"{escape_name(name)}\n" for name in names)


def read_file_list(path: Path) -> list[str]:
    """The names of a list written with `file_list_text` (the one reader of the session file lists)."""
    text = Path(path).read_text(encoding="utf-8")
    return [unescape_name(line) for line in text.split("\n") if line]  # a name of spaces is a name
