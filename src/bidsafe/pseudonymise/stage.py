"""The `pseudonymise` stage: labels, consent gate, private session lists, released participant metadata.

The entry point reads the settings once (`settings.read_settings`) and hands each part what it needs; the parts
(linkage, consent, studies, metadata, k-anonymity, render, session lists) never read the config nor call back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.errors import ConfigError
from bidsafe.fsutil import atomic_dir, write_if_changed
from bidsafe.private import areas_overlap
from bidsafe.pseudonymise.consent import NONE_REQUIRED, REASON_WITHDRAWN, ConsentRegistry, decide, open_registry
from bidsafe.pseudonymise.kanonymity import KAnonymityOutcome, enforce_k_anonymity
from bidsafe.pseudonymise.linkage import linkage_withdrawn, update_linkage
from bidsafe.pseudonymise.metadata import (
    MetadataTables,
    SessionMetadataInput,
    build_tables,
    check_columns_against_demographics,
    facts_from_dataset,
    read_demographics,
)
from bidsafe.pseudonymise.render import render_metadata, write_metadata
from bidsafe.pseudonymise.sessionlists import SessionDecision, SessionFiles, write_private_session_lists
from bidsafe.pseudonymise.settings import StageSettings, read_settings
from bidsafe.pseudonymise.studies import Study, identity_of, read_studies, registry_record
from bidsafe.siteexclusions import site_decision

log = logging.getLogger("bidsafe")


@dataclass
class PseudonymiseResult:
    decisions: list[SessionDecision]
    k_anonymity: KAnonymityOutcome
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def included(self) -> list[tuple[str, str]]:
        return [(d.subject, d.session) for d in self.decisions if d.included]


def pseudonymise_stage(
    index_tsv: Path, inbox: Path, private_dir: Path, out_dir: Path, config: Mapping[str, Any],
    work_dir: Path | None = None,
) -> PseudonymiseResult:
    """The pseudonymise job: `run_pseudonymise` into `out_dir`, which appears whole (a killed job leaves no
    half-written folder), and one log line per session: its pseudonym and why it was withheld."""
    with atomic_dir(out_dir) as building:
        result = run_pseudonymise(index_tsv, inbox, private_dir, building, config, work_dir=work_dir)
    for decision in result.decisions:
        log.info("sub-%s ses-%s: %s", decision.subject, decision.session, decision.reason or "included")
    return result


def run_pseudonymise(
    index_tsv: Path, inbox: Path, private_dir: Path, out_dir: Path, config: Mapping[str, Any],
    work_dir: Path | None = None,
) -> PseudonymiseResult:
    """The `pseudonymise` stage: labels, consent gate, private session lists, released participant metadata.

    Writes (each only when its content changed, so finished sessions are not redone):
    - private_dir/linkage.tsv (under the lock), private_dir/secret.key (first run only);
    - private_dir/pseudonymise/sessions.tsv: subject, session, study_uid, included, reason, n_files;
    - private_dir/sessions/sub-<S>/ses-<T>/files.txt: the session's inbox-relative paths, sorted;
    - out_dir/participants.tsv/json, out_dir/sub-<S>/sub-<S>_sessions.tsv/json (included only, allow-listed);
    - out_dir/summary.json: per session pseudonym, included, reason, and the k-anonymity outcome (no real IDs).

    A participant the registry says withdrew is marked so in the linkage table; every session of a marked
    subject is withheld (consent:withdrawn) for good, and their data in `work_dir` and `private_dir` are
    removed (bidsafe.withdrawal), right after the mark, so that a later failure cannot skip it.
    """
    private_dir, out_dir = Path(private_dir), Path(out_dir)
    _check_apart(private_dir, out_dir)
    settings = read_settings(config)
    return run_stage(Path(index_tsv), Path(inbox), private_dir, out_dir, settings, work_dir)


def run_stage(index_tsv: Path, inbox: Path, private_dir: Path, out_dir: Path, settings: StageSettings,
              work_dir: Path | None = None) -> PseudonymiseResult:
    """The stage on settings already read (see `run_pseudonymise`)."""
    registry = open_registry(settings.consent)
    demographics = read_demographics(settings.demographics)
    check_columns_against_demographics(settings.columns, demographics)
    studies = read_studies(index_tsv, inbox)
    records = [registry_record(registry, study) for study in studies]
    identities = [identity_of(study, record) for study, record in zip(studies, records, strict=True)]
    withdrawn_uids = [s.uid for s, r in zip(studies, records, strict=True) if r is not None and r.withdrawn]

    _key, labels = update_linkage(private_dir, identities, settings.scheme, withdrawn_uids)
    withdrawn = linkage_withdrawn(private_dir)
    if withdrawn:
        from bidsafe.withdrawal import remove_withdrawn

        # without a work_dir (a direct call) only this stage's own folder is cleaned besides private_dir
        remove_withdrawn(Path(work_dir) if work_dir is not None else out_dir, private_dir, withdrawn)

    decisions, metadata_inputs = _decide(studies, labels, withdrawn, settings, registry)
    # Metadata and k-anonymity before any session list is written: a failing check leaves nothing half-done.
    tables = build_tables(metadata_inputs, settings.columns, demographics)
    outcome = enforce_k_anonymity(tables, k=settings.k, action=settings.action,
                                  quasi_identifiers=settings.quasi_identifiers, bins=settings.bins)
    rendered = render_metadata(tables, outcome)

    files = [SessionFiles(s.uid, *labels[s.uid], s.relpaths) for s in studies]
    write_private_session_lists(private_dir, files, decisions, withdrawn)
    write_metadata(out_dir, rendered)
    summary = _summary(settings, registry, decisions, outcome, tables)
    write_if_changed(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("pseudonymise: %d of %d sessions included", sum(d.included for d in decisions), len(decisions))
    return PseudonymiseResult(decisions=decisions, k_anonymity=outcome, summary=summary)


def _decide(studies: Sequence[Study], labels: Mapping[str, tuple[str, str]], withdrawn: set[str],
            settings: StageSettings, registry: ConsentRegistry | None
            ) -> tuple[list[SessionDecision], list[SessionMetadataInput]]:
    """Each session's decision (sorted by label) and the metadata inputs of the included ones."""
    decisions: list[SessionDecision] = []
    metadata_inputs: list[SessionMetadataInput] = []
    for study in studies:
        subject, session = labels[study.uid]
        included, reason = _decide_one(study, subject, session, withdrawn, settings, registry)
        decisions.append(SessionDecision(subject, session, included, "" if included else reason))
        if included:
            record = registry_record(registry, study)
            metadata_inputs.append(SessionMetadataInput(
                subject=subject, session=session, patient_id=study.patient_id, study_uid=study.uid,
                study_date=study.study_date, study_time=study.study_time,
                facts=facts_from_dataset(study.header),
                lookup_keys=(study.patient_id, *(record.study_ids if record else ())),
            ))
    decisions.sort(key=lambda d: (d.subject, d.session))
    return decisions, metadata_inputs


def _decide_one(study: Study, subject: str, session: str, withdrawn: set[str], settings: StageSettings,
                registry: ConsentRegistry | None) -> tuple[bool, str]:
    """(included, reason): withdrawal first, then the site's exclusions, identity problems, then consent."""
    header = study.header
    site_reason = site_decision(
        settings.site, subject=subject, session=session, patient_ids=study.patient_ids, study_uid=study.uid,
        patient_name=str(header.get("PatientName", "") or "") if header is not None else "")
    if subject in withdrawn:
        # before the site's exclusions: withdrawal decides what is removed, whatever else applies
        return False, REASON_WITHDRAWN
    if site_reason is not None:
        return False, site_reason
    if study.problem is not None:
        return False, study.problem
    return decide(registry, study.patient_id, settings.audience)


def _check_apart(private_dir: Path, out_dir: Path) -> None:
    if areas_overlap(private_dir, out_dir):
        raise ConfigError("pseudonymise: the output folder and private_dir overlap; private data must stay apart")


def _summary(settings: StageSettings, registry: ConsentRegistry | None, decisions: Sequence[SessionDecision],
             outcome: KAnonymityOutcome, tables: MetadataTables) -> dict[str, object]:
    if registry is None:
        consent_state = "no-registry"
    elif registry.none_required:
        consent_state = NONE_REQUIRED
    else:
        consent_state = "registry"
    included = [d for d in decisions if d.included]
    return {
        "stage": "pseudonymise",
        "audience": settings.audience,
        "consent": consent_state,
        "pseudonym_scheme": settings.scheme,
        "counts": {
            "sessions": len(decisions),
            "included_sessions": len(included),
            "withheld_sessions": len(decisions) - len(included),
            "released_participants": len({d.subject for d in included}),
        },
        "sessions": [{"subject": d.subject, "session": d.session, "included": d.included, "reason": d.reason}
                     for d in decisions],
        "k_anonymity": outcome.to_json(),
        "metadata_notes": dict(sorted(tables.notes.items())),
    }
