"""Pseudonyms, the linkage table and the pseudonymise stage: now the `bidsafe.pseudonymise` package (kept for
its importers)."""

from __future__ import annotations

from bidsafe.pseudonymise.linkage import (
    HMAC_LABEL_LENGTH,
    LINKAGE_COLUMNS,
    LINKAGE_FILENAME,
    LOCK_FILENAME,
    MAX_LABEL_ATTEMPTS,
    MULTI_SEPARATOR,
    OPTIONAL_LINKAGE_COLUMNS,
    SEQUENTIAL_WIDTH,
    SESSION_WIDTH,
    LinkageRow,
    StudyIdentity,
    assign_labels,
    hmac_subject_label,
    linkage_lock,
    linkage_withdrawn,
    mark_withdrawn,
    new_subject_label,
    read_linkage,
    render_linkage,
    shares_identifier,
    update_linkage,
    withdrawn_subjects,
)
from bidsafe.pseudonymise.sessionlists import (
    SESSIONS_COLUMNS,
    SessionDecision,
    all_sessions,
    included_sessions,
)
from bidsafe.pseudonymise.settings import (
    StageSettings,
    read_settings,
)
from bidsafe.pseudonymise.stage import (
    PseudonymiseResult,
    run_pseudonymise,
)
from bidsafe.pseudonymise.studies import (
    REASON_CONFLICTING_IDS,
    REASON_NO_PATIENT_ID,
)

__all__ = [
    "HMAC_LABEL_LENGTH",
    "LINKAGE_COLUMNS",
    "LINKAGE_FILENAME",
    "LOCK_FILENAME",
    "LinkageRow",
    "MAX_LABEL_ATTEMPTS",
    "MULTI_SEPARATOR",
    "OPTIONAL_LINKAGE_COLUMNS",
    "PseudonymiseResult",
    "REASON_CONFLICTING_IDS",
    "REASON_NO_PATIENT_ID",
    "SEQUENTIAL_WIDTH",
    "SESSIONS_COLUMNS",
    "SESSION_WIDTH",
    "SessionDecision",
    "StageSettings",
    "StudyIdentity",
    "all_sessions",
    "assign_labels",
    "hmac_subject_label",
    "included_sessions",
    "linkage_lock",
    "linkage_withdrawn",
    "mark_withdrawn",
    "new_subject_label",
    "read_linkage",
    "read_settings",
    "render_linkage",
    "run_pseudonymise",
    "shares_identifier",
    "update_linkage",
    "withdrawn_subjects",
]
