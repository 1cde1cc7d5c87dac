"""The pseudonymise stage's settings come from the config schema alone: defaults and constraints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bidsafe.config import check_config, load_schema, schema_defaults
from bidsafe.errors import ConfigError
from bidsafe.pseudonymise import settings as settings_mod
from bidsafe.pseudonymise.columns import parse_columns
from bidsafe.pseudonymise.kanonymity import enforce_k_anonymity
from bidsafe.pseudonymise.metadata import MetadataTables
from bidsafe.pseudonymise.settings import read_settings


def minimal_site(tmp_path: Path) -> dict[str, Any]:
    """A site config with only the required keys, read through the schema as the workflow reads it."""
    config = {name: str(tmp_path / name) for name in ("inbox", "work_dir", "private_dir", "release_dir")}
    return check_config(config)


def test_a_minimal_site_config_gives_the_stage_the_schema_defaults(tmp_path: Path) -> None:
    schema = load_schema()
    pseudonyms, release = schema_defaults("pseudonyms"), schema_defaults("release")
    columns = schema["properties"]["participants"]["properties"]["columns"]["default"]
    settings = read_settings(minimal_site(tmp_path))
    assert settings.scheme == pseudonyms["scheme"] == "hmac"
    assert settings.audience == release["audience"] == "public"
    assert settings.k == release["k_anonymity"] == 5
    assert settings.action == release["k_anonymity_action"] == "fail"
    assert settings.quasi_identifiers == tuple(release["quasi_identifiers"]) == ("sex", "age")
    assert settings.bins == tuple(float(b) for b in sorted(release["k_anonymity_bins"])) == (5.0, 10.0, 20.0, 50.0)
    assert settings.columns == parse_columns(columns)
    assert [(r.name, r.source, r.table, r.unit, r.precision) for r in settings.columns] == [
        ("sex", "sex", "participants", None, None), ("age", "age_at_scan", "both", "years", 1.0)]
    assert settings.consent is None and settings.demographics is None
    assert settings.site.rules == () and settings.site.qa == ()
    # a library caller passing nothing sees the same
    assert read_settings({}) == settings


def test_the_defaults_are_the_schemas_not_a_python_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = copy.deepcopy(load_schema())
    props = schema["properties"]
    props["pseudonyms"]["properties"]["scheme"]["default"] = "sequential"
    props["release"]["properties"]["k_anonymity"]["default"] = 3
    props["release"]["properties"]["k_anonymity_bins"]["default"] = [4, 2]
    props["participants"]["properties"]["columns"]["default"] = {"sex": {}}
    monkeypatch.setattr(settings_mod, "load_schema", lambda: schema)
    settings = read_settings({})
    assert (settings.scheme, settings.k, settings.bins) == ("sequential", 3, (2.0, 4.0))
    assert [r.name for r in settings.columns] == ["sex"]


def test_library_defaults_without_settings_are_the_schemas() -> None:
    # parse_columns(None) and enforce_k_anonymity without bins: the schema's defaults, not a second copy
    columns = load_schema()["properties"]["participants"]["properties"]["columns"]["default"]
    assert parse_columns(None) == parse_columns(columns)
    rules = parse_columns({"age": {"round_years": 1}})
    tables = MetadataTables(rules=rules, participants={"a": {"age": 31.0}, "b": {"age": 44.0}},
                            sessions={"a": {"01": {"age": 31.0}}, "b": {"01": {"age": 44.0}}})
    outcome = enforce_k_anonymity(tables, k=2, action="generalise", quasi_identifiers=["age"])
    # ages 31 and 44 part at bins of 5, 10 and 20 years and meet at 50: the schema's whole ladder, in order
    assert outcome.steps == ["age: bins of 5 years", "age: bins of 10 years", "age: bins of 20 years",
                             "age: bins of 50 years"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"pseudonyms": {"scheme": "md5"}}, "pseudonyms.scheme"),
        ({"release": {"k_anonymity": 0}}, "release.k_anonymity"),
        ({"release": {"k_anonymity_bins": [1]}}, "release.k_anonymity_bins"),
        ({"release": {"quasi_identifiers": "age"}}, "release.quasi_identifiers"),
        ({"participants": {"columns": {"age": {"precision": -1}}}}, "participants.columns.age.precision"),
    ],
)
def test_the_schema_refuses_what_the_stage_cannot_use(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        read_settings(config)
