"""The pseudonymise stage's settings, read once from the config (the schema holds every default and constraint).

`read_settings` checks the stage's keys against `workflow/schemas/config.schema.yaml` and fills the schema's
defaults (`bidsafe.config`), then turns them into one typed object; the stage hands each part the fields it
needs. No part of the package reads the config itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bidsafe.config import check_config, load_schema
from bidsafe.pseudonymise.columns import ColumnRule, parse_columns
from bidsafe.siteexclusions import SiteExclusions, read_site_exclusions

# The top-level config keys the stage reads (the workflow passes exactly these).
STAGE_KEYS = ("consent", "demographics", "pseudonyms", "release", "participants", "sessions", "qa_sessions")


@dataclass(frozen=True)
class StageSettings:
    """Everything the stage takes from the config, checked and with the schema's defaults."""

    scheme: str  # pseudonyms.scheme
    audience: str  # release.audience
    k: int  # release.k_anonymity
    action: str  # release.k_anonymity_action
    quasi_identifiers: tuple[str, ...]  # release.quasi_identifiers
    bins: tuple[float, ...]  # release.k_anonymity_bins, ascending
    columns: list[ColumnRule]  # participants.columns
    consent: str | None  # the registry path, `none-required`, or None
    demographics: str | None  # the demographics file, or None
    site: SiteExclusions  # sessions and qa_sessions


def stage_schema(schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config schema cut down to the stage's keys (none required: the data areas are the workflow's)."""
    full = schema if schema is not None else load_schema()
    return {
        **{k: copy.deepcopy(v) for k, v in full.items() if k not in ("properties", "required")},
        "properties": {k: copy.deepcopy(full["properties"][k]) for k in STAGE_KEYS},
    }


def stage_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's keys of `config`, checked against the schema and with its defaults filled (a new mapping).

    A key given as None (as the workflow passes an unset one) means unset: the schema's default applies.
    """
    given = {k: copy.deepcopy(config[k]) for k in STAGE_KEYS if k in config and config[k] is not None}
    return check_config(given, stage_schema())


def read_settings(config: Mapping[str, Any]) -> StageSettings:
    """The stage's settings from `config` (a whole config or the stage's keys); ConfigError names every problem."""
    checked = stage_config(config)
    pseudonyms, release = checked["pseudonyms"], checked["release"]
    return StageSettings(
        scheme=str(pseudonyms["scheme"]),
        audience=str(release["audience"]),
        k=int(release["k_anonymity"]),
        action=str(release["k_anonymity_action"]),
        quasi_identifiers=tuple(release["quasi_identifiers"]),
        bins=tuple(float(b) for b in sorted(release["k_anonymity_bins"])),
        columns=parse_columns(checked["participants"]["columns"]),
        consent=checked["consent"],
        demographics=checked["demographics"],
        site=read_site_exclusions(checked),
    )
