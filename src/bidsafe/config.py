"""The pipeline configuration: checked against the one schema, defaults filled in from it, documented from it.

`workflow/schemas/config.schema.yaml` is the only place for a key's type, default, allowed values and meaning.
This module turns it into three things: `check_config` (one line per problem, naming the key and what is
allowed, with the schema's `errorMessage` saying why), `fill_defaults`, and `config_docs` (the text of
`config/README.md`, compared with the committed file by a test). The Snakefile and the CLI share it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bidsafe import resources
from bidsafe.errors import ConfigError
from bidsafe.fsutil import atomic_write_text

_JSON_TYPES = {
    "string": "text",
    "integer": "whole number",
    "number": "number",
    "boolean": "true/false",
    "array": "list",
    "object": "mapping",
    "null": "null",
}
_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "minItems", "maxItems",
           "minProperties")
_MAX_VALUE = 60  # characters of a refused value quoted in an error


def schema_path() -> Path:
    """The config schema shipped with the workflow (`workflow/schemas/config.schema.yaml`; see bidsafe.resources)."""
    return resources.path("workflow/schemas/config.schema.yaml")


@cache
def _load_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return schema


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The schema as a fresh mapping (callers may not change the cached copy)."""
    return copy.deepcopy(_load_schema(Path(path) if path else schema_path()))


def schema_defaults(*keys: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`{key: default}` of the object at `keys` (e.g. `schema_defaults("release")`)."""
    node = schema if schema is not None else load_schema()
    for key in keys:
        node = node["properties"][key]
    return {k: copy.deepcopy(v["default"]) for k, v in node.get("properties", {}).items() if "default" in v}


def schema_enum(*keys: str) -> tuple[str, ...]:
    """The allowed values of the key at `keys`, in the schema's order (e.g. `schema_enum("release", "audience")`)."""
    node: Mapping[str, Any] = _load_schema(schema_path())
    for key in keys:
        node = node["properties"][key]
    return tuple(str(value) for value in node["enum"])


# --------------------------------------------------------------------------------------------- checking
def config_problems(config: object, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of `config`, one line each: `config: <key>: <what is wrong>[: why] (allowed: ...)`."""
    from jsonschema import Draft202012Validator

    schema = schema if schema is not None else load_schema()
    if not isinstance(config, Mapping):
        return ["config: the configuration must be a mapping of keys (is the file empty?)"]
    errors = Draft202012Validator(schema, format_checker=_formats()).iter_errors(config)
    lines: list[str] = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        for line in _describe(error):
            if line not in lines:
                lines.append(line)
    return lines


def _formats() -> Any:
    """The formats the schema uses: `bids-suffix`, a name in the official BIDS schema (policy lists of suffixes
    are checked against it, not restated). Text that is not letters and digits is left to the key's pattern."""
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("bids-suffix")
    def _bids_suffix(value: object) -> bool:
        from bidsafe.bidsnames import unknown_suffixes

        return not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9]+", value) or not unknown_suffixes([value])

    return checker


def _describe(error: Any) -> Iterable[str]:
    """One line per problem of a jsonschema error (an unknown-key error can name several keys)."""
    path = _dotted(error.absolute_path)
    node, kind, value = error.schema, error.validator, error.instance
    if kind == "additionalProperties" and error.validator_value is False:
        allowed = sorted(node.get("properties", {}))
        if node.get("x-allowed-keys"):
            allowed.append(node["x-allowed-keys"])
        patterns = node.get("patternProperties", {})
        for key in value:
            if key not in node.get("properties", {}) and not any(re.search(p, str(key)) for p in patterns):
                close = difflib.get_close_matches(str(key), list(node.get("properties", {})), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                yield _line(_join(path, key), f"unknown key{hint}", None, ", ".join(allowed))
        return
    if kind == "required":
        for key in error.validator_value:
            if key not in value:
                yield _line(_join(path, key), "missing (a required key)", None, None)
        return
    why = _why(node, kind)
    if kind == "format":  # a name the official BIDS schema does not know (`format: bids-suffix`)
        yield _line(path, f"{_quote(value)} is not allowed", why, None)
        return
    if kind == "type":
        given = error.validator_value
        wanted: list[str] = given if isinstance(given, list) else [given]
        expected = " or ".join(_JSON_TYPES.get(t, t) for t in wanted)
        yield _line(path, f"expected {expected}, got {_kind_of(value)}", why, None)
        return
    if kind in ("enum", "not", "oneOf", "anyOf", "pattern", "const", *_BOUNDS):
        # A `propertyNames` failure reports the offending key itself as the instance, at the mapping's path.
        allowed_text: str | None = node.get("x-allowed") or (
            None if kind == "pattern" and why else _allowed_text(node))
        yield _line(path, f"{_quote(value)} is not allowed", why, allowed_text)
        return
    yield _line(path, error.message if len(error.message) <= 120 else f"{kind} check failed", why, None)


def _line(path: str, problem: str, why: str | None, allowed: str | None) -> str:
    text = f"config: {path or '(top level)'}: {problem}"
    if why:
        text += f": {why}"
    if allowed:
        text += f" (allowed: {allowed})"
    return " ".join(text.replace("`", "").split())


def _dotted(parts: Iterable[object]) -> str:
    """`deface.suffixes[0]` from jsonschema's path (keys and list positions)."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _why(node: Mapping[str, Any], kind: str) -> str | None:
    message = node.get("errorMessage")
    if isinstance(message, Mapping):
        return message.get(kind)
    return message


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "whole number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def fill_defaults(config: dict[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fill every missing key that has a schema default, at every level (in place; returns `config`)."""
    schema = schema if schema is not None else load_schema()
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict):
            fill_defaults(config[key], sub)
    return config


def check_config(config: dict[str, Any], schema: Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Check `config` against the schema (ConfigError listing every problem) and fill in the defaults."""
    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    problems = config_problems(config, schema)
    if problems:
        raise ConfigError("\n".join(problems))
    return fill_defaults(config, schema)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file, checked, with defaults filled in."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    return check_config(config)


# --------------------------------------------------------------------------------------------- documents
def config_docs(schema: Mapping[str, Any] | None = None) -> str:
    """The text of `config/README.md`: the schema's description, then one table per section."""
    schema = schema if schema is not None else load_schema()
    parts = [f"# {schema.get('title', 'Configuration')}", "", _GENERATED, "", schema.get("description", "").strip()]
    listed: set[str] = set()
    for section in schema.get("x-sections", []):
        parts += ["", f"## {section['title']}", "", _TABLE_HEAD, "|---|---|---|---|---|"]
        for key in section["keys"]:
            listed.add(key)
            node = schema["properties"][key]
            parts += [_row(name, sub, key in schema.get("required", [])) for name, sub in _flatten(key, node)]
        if section.get("text"):
            parts += ["", section["text"].strip()]
    missing = sorted(set(schema.get("properties", {})) - listed)
    if missing:
        raise ConfigError(f"config schema: keys in no x-sections entry: {', '.join(missing)}")
    return "\n".join(parts) + "\n"


_TABLE_HEAD = "| key | type | default | allowed | meaning |"
_GENERATED = "<!-- Generated from workflow/schemas/config.schema.yaml by `bidsafe config-docs`; do not edit. -->"


def _flatten(name: str, node: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(dotted key, schema) for a key and everything below it; `<name>` stands for a free mapping key."""
    yield name, node
    for key, sub in node.get("properties", {}).items():
        yield from _flatten(f"{name}.{key}", sub)
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping) and extra.get("properties"):
        for key, sub in extra["properties"].items():
            yield from _flatten(f"{name}.<name>.{key}", sub)
        if extra.get("x-allowed-keys"):
            yield f"{name}.<name>.round_<unit>", extra["patternProperties"][next(iter(extra["patternProperties"]))]


def _row(name: str, node: Mapping[str, Any], required: bool) -> str:
    if node.get("x-default"):
        default = node["x-default"]
    elif "default" in node:
        default = f"`{json.dumps(node['default'], ensure_ascii=False)}`"
    else:
        default = "required" if required else "—"
    cells = [f"`{name}`", _type_text(node), default, node.get("x-allowed") or _allowed_text(node) or "",
             " ".join(str(node.get("description", "")).split())]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _type_text(node: Mapping[str, Any]) -> str:
    if "oneOf" in node or "anyOf" in node:
        options = [_type_text(o) for o in node.get("oneOf", node.get("anyOf", []))]
        return " or ".join(dict.fromkeys(options))
    if "const" in node:
        return _kind_of(node["const"])
    types: list[str] = node.get("type", [])
    types = types if isinstance(types, list) else [types]
    texts = []
    for t in types:
        if t == "array" and isinstance(node.get("items"), Mapping) and node["items"].get("type"):
            texts.append(f"list of {_type_text(node['items'])}")
        elif t == "object" and isinstance(node.get("additionalProperties"), Mapping):
            texts.append("mapping name → " + _type_text(node["additionalProperties"]))
        else:
            texts.append(_JSON_TYPES.get(t, t))
    return " or ".join(texts)


def _allowed_text(node: Mapping[str, Any]) -> str | None:
    """What a key accepts, from its constraints (a key's `x-allowed` overrides this)."""
    if "enum" in node:
        return ", ".join(f"`{v}`" for v in node["enum"])
    bounds = []
    for keyword, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if keyword in node:
            bounds.append(f"{sign} {node[keyword]}")
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    if node.get("format") == "bids-suffix":
        bounds.append("a suffix of the BIDS schema")
    items = node.get("items")
    if isinstance(items, Mapping) and (inner := items.get("x-allowed") or _allowed_text(items)):
        bounds.append(f"items {inner}")
    if "minLength" in node:
        bounds.append("non-empty text" if node["minLength"] == 1 else f"at least {node['minLength']} characters")
    if "minItems" in node and node.get("maxItems") == node["minItems"]:
        bounds.append(f"exactly {node['minItems']} items")
    elif "minItems" in node:
        bounds.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
    if "minProperties" in node:
        bounds.append("not empty")
    return ", ".join(bounds) or None


# --------------------------------------------------------------------------------------------- CLI
def cli_check(args: argparse.Namespace) -> int:
    """`bidsafe check-config FILE`: exit 0 when valid, 2 (with one line per problem on stderr) otherwise."""
    read_config_file(Path(args.file))
    print(f"check-config: {args.file}: valid")
    return 0


def cli_docs(args: argparse.Namespace) -> int:
    """`bidsafe config-docs [--write FILE | --check FILE]`."""
    text = config_docs()
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).is_file() else ""
        if current != text:
            print(f"config-docs: {args.check} differs from the schema; run `bidsafe config-docs --write "
                  f"{args.check}`", file=sys.stderr)
            return 1
        print(f"config-docs: {args.check} agrees with the schema")
    elif args.write:
        atomic_write_text(Path(args.write), text)
    else:
        sys.stdout.write(text)
    return 0
