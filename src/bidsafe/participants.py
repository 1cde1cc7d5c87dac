"""Released participant metadata and k-anonymity: now the `bidsafe.pseudonymise` package (kept for its
importers)."""

from __future__ import annotations

from bidsafe.pseudonymise.ages import (
    Age,
    age_between,
    parse_da,
    parse_dicom_age,
)
from bidsafe.pseudonymise.columns import (
    AGE_UNITS,
    BUILTIN_COLUMNS,
    DEMOGRAPHICS_PREFIX,
    SOURCES,
    TABLES,
    TOP_CODE_YEARS,
    ColumnRule,
    parse_columns,
)
from bidsafe.pseudonymise.kanonymity import (
    KAnonymityOutcome,
    enforce_k_anonymity,
    equivalence_classes,
)
from bidsafe.pseudonymise.metadata import (
    NA,
    Demographics,
    HeaderFacts,
    MetadataTables,
    SessionMetadataInput,
    build_tables,
    check_columns_against_demographics,
    facts_from_dataset,
    read_demographics,
    release_value,
)
from bidsafe.pseudonymise.render import (
    RenderedMetadata,
    render_metadata,
    write_metadata,
)

__all__ = [
    "AGE_UNITS",
    "Age",
    "BUILTIN_COLUMNS",
    "ColumnRule",
    "DEMOGRAPHICS_PREFIX",
    "Demographics",
    "HeaderFacts",
    "KAnonymityOutcome",
    "MetadataTables",
    "NA",
    "RenderedMetadata",
    "SOURCES",
    "SessionMetadataInput",
    "TABLES",
    "TOP_CODE_YEARS",
    "age_between",
    "build_tables",
    "check_columns_against_demographics",
    "enforce_k_anonymity",
    "equivalence_classes",
    "facts_from_dataset",
    "parse_columns",
    "parse_da",
    "parse_dicom_age",
    "read_demographics",
    "release_value",
    "render_metadata",
    "write_metadata",
]
