"""Release metadata checked against the schemas repositories use: CITATION.cff against CFF 1.2.0 (a copy in
tests/unit/schemas/) and datacite.json against DataCite 4.5 (shipped by the `datacite` test extra; a test module
importing this one is skipped where that package is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

datacite_schema45 = pytest.importorskip("datacite.schema45", reason="the `datacite` test extra ships the schema")

CFF_SCHEMA = json.loads((Path(__file__).parents[1] / "unit" / "schemas" / "cff-1.2.0.schema.json")
                        .read_text(encoding="utf-8"))


def cff_errors(path: Path) -> list[str]:
    """The CFF 1.2.0 schema's complaints about the CITATION.cff at `path` (empty when valid)."""
    record = yaml.safe_load(path.read_text(encoding="utf-8"))
    validator = Draft7Validator(CFF_SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(record)]


def datacite_errors(record: dict) -> list[str]:
    """The DataCite 4.5 schema's complaints about a datacite.json record (empty when valid)."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in datacite_schema45.validator.iter_errors(record)]
