"""The leak gate's own reading of the descriptor vocabulary (config/deid/vocabulary.yaml plus site files).

Its own loader and tokeniser, on purpose: the gate checks the cleaner, so it must not reuse the cleaner's
reading of the same file (a bug there would be a bug here). The format:

    kind: vocabulary
    placeholder: "<token>"
    groups:
      <name>: {reason: "...", tokens: [ep2d, bold, ...]}
    patterns:
      <name>: {reason: "...", regex: "[0-9]{1,3}"}

A token is a maximal run of characters that are neither ASCII whitespace, nor ASCII punctuation
(`string.punctuation`), nor control characters. A token is allowed when it equals a group token
case-insensitively or a pattern matches all of it (case-insensitively). The placeholder's own tokens are
allowed (it is what the cleaner writes in place of anything else).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bidsafe.errors import ConfigError

_CONTROL = "".join(chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)])
_TOKEN = re.compile(r"[^" + re.escape(string.whitespace + string.punctuation + _CONTROL) + r"]+")


def tokens(text: str) -> list[str]:
    """The vocabulary tokens of `text` (see the module docstring)."""
    return _TOKEN.findall(text)


@dataclass
class Vocabulary:
    words: set[str] = field(default_factory=set)  # casefolded group tokens
    patterns: list[re.Pattern[str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def allows(self, token: str) -> bool:
        if token.casefold() in self.words:
            return True
        return any(p.fullmatch(token) for p in self.patterns)

    def outside(self, text: str) -> list[str]:
        """The tokens of `text` the vocabulary does not allow (callers report a count, never the tokens)."""
        return [t for t in tokens(text) if not self.allows(t)]

    def is_word(self, form: str) -> bool:
        """`form` is exactly one token, and an allowed one (a patient named Bold)."""
        found = tokens(form)
        return len(found) == 1 and found[0] == form.strip() and self.allows(found[0])


def _mapping(data: object, what: str, path: Path) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"vocabulary: `{what}` must be a mapping", path)
    return data


def load_vocabulary(paths: Sequence[str | Path] | str | Path) -> Vocabulary:
    """Merge one or more vocabulary files (the shipped one, then a site's extensions)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    vocabulary = Vocabulary()
    for raw_path in paths:
        path = Path(raw_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"vocabulary: cannot read ({exc.strerror})", path) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"vocabulary: not valid YAML ({type(exc).__name__})", path) from exc
        if not isinstance(data, dict) or data.get("kind") != "vocabulary":
            raise ConfigError("vocabulary: not a vocabulary file (kind: vocabulary)", path)
        placeholder = data.get("placeholder", "")
        if not isinstance(placeholder, str):
            raise ConfigError("vocabulary: `placeholder` must be a string", path)
        vocabulary.words.update(t.casefold() for t in tokens(placeholder))
        for name, group in _mapping(data.get("groups"), "groups", path).items():
            entries = _mapping(group, f"groups.{name}", path).get("tokens")
            if not isinstance(entries, list):
                raise ConfigError(f"vocabulary: group {name} has no `tokens` list", path)
            for entry in entries:
                if isinstance(entry, bool) or not isinstance(entry, str | int | float):
                    # YAML reads an unquoted yes/no/on/off as a boolean: its spelling is lost
                    raise ConfigError(f"vocabulary: group {name} has a token that is not text (quote it)", path)
                # an entry with punctuation ("ep2d_bold") allows its tokens: no released token has punctuation
                vocabulary.words.update(t.casefold() for t in tokens(str(entry)))
        for name, pattern in _mapping(data.get("patterns"), "patterns", path).items():
            regex = _mapping(pattern, f"patterns.{name}", path).get("regex")
            if not isinstance(regex, str):
                raise ConfigError(f"vocabulary: pattern {name} has no `regex`", path)
            try:
                vocabulary.patterns.append(re.compile(regex, re.IGNORECASE))
            except re.error as exc:
                raise ConfigError(f"vocabulary: pattern {name} does not compile ({exc.msg})", path) from exc
        vocabulary.files.append(path.name)
    return vocabulary


def vocabulary_from(source: Vocabulary | Iterable[str | Path] | str | Path | None) -> Vocabulary | None:
    if source is None or isinstance(source, Vocabulary):
        return source
    paths = [source] if isinstance(source, str | Path) else list(source)
    return load_vocabulary(paths) if paths else None


__all__ = ["Vocabulary", "load_vocabulary", "tokens", "vocabulary_from"]
