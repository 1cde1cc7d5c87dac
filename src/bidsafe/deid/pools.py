"""Which files share personal values and a date shift: patient keys, pools of studies, per-subject shifts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bidsafe.deid.dates import shift_days_for
from bidsafe.phi import (
    id_core,
)

if TYPE_CHECKING:
    from bidsafe.deid.ruleset import RuleSet


def shift_subject_key(patient_id: str) -> str:
    """The subject key of the date shift when no pseudonym is given: the PatientID as compared, not as
    typed (Unicode NFKC, case folded, separators and blanks dropped, leading zeros dropped), so that
    `0012345`, `12345` and ` 12345` shift alike."""
    folded = unicodedata.normalize("NFKC", patient_id).casefold()
    return "".join(c for c in folded if c.isalnum()).lstrip("0")


def patient_key(patient_id: str, subject: str | None = None) -> str:
    """The key under which a file's harvested values are pooled: the pipeline's subject when given (it has
    already told its participants apart), else the PatientID compared without separators, case or leading
    zeros ("PID 0012-345678" and "pid12345678" are one patient); empty when neither is known."""
    if subject is not None:
        return f"subject:{subject}"
    core = id_core(patient_id)
    return f"id:{core}" if core else ""


def patient_pools(studies: Iterable[str], patients: dict[str, set[str]]) -> dict[str, str]:
    """Study -> pool: studies sharing a patient key are one pool, and a study whose files carry two keys (one
    patient, two spellings) joins both; a study with no key is a pool of its own. Pools are named by their
    smallest study UID, so the grouping does not depend on file order."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for study in studies:
        root(f"study:{study}")
        for key in patients.get(study, ()):
            a, b = root(f"study:{study}"), root(f"patient:{key}")
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for node in list(parent):
        if node.startswith("study:"):
            members.setdefault(root(node), []).append(node[len("study:"):])
    return {study: min(group) for group in members.values() for study in group}


def study_shift_days(rules: RuleSet, key: bytes, subject: str) -> int | None:
    """The per-subject shift in days (None when dates are removed instead)."""
    if rules.date_mode != "shift":
        return None
    return shift_days_for(key, subject, int(rules.max_shift_days))
