"""The deid stage's entry points: one session's raw values harvested, and its files de-identified into the
session's folder (whole or not at all), the harvest and the report kept private. The workflow's deid and
harvest scripts call these; what a job does is testable without Snakemake (as for bidsafe.stages)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsafe.errors import SessionWithheld
from bidsafe.filelist import read_file_list
from bidsafe.fsutil import atomic_dir, remove_path
from bidsafe.sessionstatus import run_session_stage

if TYPE_CHECKING:  # imported where used: the harvest job never loads the rule engine
    from bidsafe.deid.ruleset import RuleSet

log = logging.getLogger("bidsafe")


def deid_session(
    *,
    files_txt: Path,
    inbox: Path,
    out_dir: Path,
    values_json: Path,
    report_json: Path,
    rules_path: Path,
    key_path: Path,
    subject: str,
    jobs: int = 1,
    vocabulary: Sequence[str | Path] = (),
    allow_weaker_rules: bool = False,
    profile_json: Path | None = None,
    subject_values: Sequence[Path] = (),
    scratch: Path | None = None,
) -> dict[str, int]:
    """De-identify one session's files into `out_dir` (whole or not at all); keep the harvest and report private.

    `scratch`: a private folder to build the tree in (files there hold text not yet cleaned of the harvested
    values: never a temporary sibling in work_dir); default: a temporary sibling of `out_dir`.

    The rule set is checked as `bidsafe check-rules` does first: a rejected one raises, unless
    `allow_weaker_rules`, which applies it but records the gaps in `profile_json` (publish then refuses).
    Raises SessionWithheld when no file of the session could be de-identified (every file withheld as
    burned-in, or failed): the harvest and the private report are written first. `subject_values`: the raw
    harvests of every session of the subject (`harvest_stage`), so text is cleaned of the patient's values
    as written in any of their visits."""
    from bidsafe.deid.engine import deidentify_tree, write_report
    from bidsafe.deid.vocabulary import vocabulary_for
    from bidsafe.keys import load_key
    from bidsafe.phi import load_values, save_values
    from bidsafe.private import ensure_private_dir

    gaps = _checked_rules(Path(rules_path), allow_weaker_rules, profile_json, vocabulary)
    key = load_key(key_path)  # created by the pseudonymise stage; never silently replaced here
    rules = _rules_to_apply(Path(rules_path), gaps)
    files = [Path(rel) for rel in read_file_list(files_txt)]  # relative to the inbox, as deidentify_tree takes them
    with contextlib.ExitStack() as stack:
        if scratch is None:
            dst = stack.enter_context(atomic_dir(out_dir))
        else:  # the finished tree is moved to out_dir (deidentify_tree requires a new folder there)
            remove_path(out_dir)
            dst = Path(out_dir)
        report = deidentify_tree(
            Path(inbox), dst, rules=rules, key=key, jobs=jobs, files=files, subject_key=subject,
            vocabulary=vocabulary_for(vocabulary),
            pooled=[value for path in subject_values for value in load_values(path)],
            scratch=None if scratch is None else ensure_private_dir(scratch),
        )
        report.weaker_rules = tuple(gaps)
        write_report(report, report_json)
        save_values(report.personal_values, values_json)
        counts = dict(report.counts)
        log.info("sub-%s: de-identified %s", subject, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if not counts.get("processed"):
            raise nothing_deidentified(report.entries)
    return counts


def _checked_rules(rules_path: Path, allow_weaker_rules: bool, profile_json: Path | None,
                   vocabulary: Sequence[str | Path]) -> tuple[str, ...]:
    """The rule set's check-rules gaps (a rejected set raises unless `allow_weaker_rules`), recorded with the
    files the session is run with in `profile_json`."""
    from bidsafe.deid.rules import require_checked_rules
    from bidsafe.deid.vocabulary import DEFAULT_VOCABULARY
    from bidsafe.profile import WEAKER_RULES, write_stage_profile

    gaps = require_checked_rules(rules_path, allow_weaker=allow_weaker_rules)
    if profile_json is not None:  # before the work: a session withheld below still records what it was run with
        write_stage_profile(
            profile_json, {"rules": rules_path, "vocabulary": [DEFAULT_VOCABULARY, *vocabulary]},
            **({WEAKER_RULES: list(gaps)} if gaps else {}),
        )
    return tuple(gaps)


def _rules_to_apply(rules_path: Path, gaps: Sequence[str]) -> RuleSet:
    """The rule set, weakened as check-rules' gaps say when they are allowed (the session is then not shareable)."""
    from bidsafe.deid.rules import load_rules, weakened

    rules = load_rules(rules_path)
    if gaps:
        rules = weakened(rules)
        log.warning("rule set %s: %d check-rules gap(s), applied because deid.allow_weaker_rules is set: this "
                    "session is NOT shareable and will not be published", rules_path.name, len(gaps))
    return rules


def harvest_stage(*, files_txt: Path, inbox: Path, values_json: Path) -> int:
    """The raw personal values of one session's files (headers only; identity private blocks included),
    written privately (0600): the subject's other sessions are cleaned with them too (see `deid_session`).
    Returns the number of values."""
    from bidsafe.phi import harvest_files, save_values

    values = harvest_files([Path(inbox) / rel for rel in read_file_list(files_txt)], private_text=True)
    save_values(values, values_json)
    log.info("harvested %d values from %s", len(values), Path(files_txt).parent.name)
    return len(values)


_BURNED_IN_CLASS = re.compile(r"\[burned_in class ([a-z_]+)\]")


def nothing_deidentified(entries: Sequence[Any]) -> SessionWithheld:
    """Why no file of a session came out of de-identification, in words (classes and exception types only:
    a failure's message may quote a value)."""
    withheld = [e for e in entries if e.status == "withheld"]
    failed = [e for e in entries if e.status == "failed"]
    classes = sorted({m.group(1).replace("_", " ") for e in withheld if (m := _BURNED_IN_CLASS.search(e.reason))})
    if withheld and not failed and len(classes) and all(_BURNED_IN_CLASS.search(e.reason) for e in withheld):
        return SessionWithheld(
            "deid:all-burned-in",
            f"every file of the session ({len(withheld)}) was withheld as possibly holding burned-in text "
            f"({', '.join(classes)})",
        )
    kinds = sorted({_SAFE_WORD.sub("", e.reason.split(":", 1)[0])[:40] for e in failed} - {""})
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed" + (f" ({', '.join(kinds)})" if kinds else ""))
    if withheld:
        parts.append(f"{len(withheld)} withheld" + (f" ({', '.join(classes)})" if classes else ""))
    unreadable = sum(1 for e in entries if e.status == "not_dicom")
    if unreadable:
        parts.append(f"{unreadable} not DICOM or unreadable")
    duplicates = sum(1 for e in entries if e.status == "duplicate")
    if duplicates:
        parts.append(f"{duplicates} duplicates")
    return SessionWithheld(
        "deid:nothing-deidentified",
        "no file of the session could be de-identified: " + (", ".join(parts) or "no file listed"),
    )


_SAFE_WORD = re.compile(r"[^A-Za-z0-9 _-]")


def deid_stage(*, status_json: Path, **kwargs: Any) -> dict[str, Any]:
    """The deid job: `deid_session`, withholding the session (empty folder, status) when none of its files
    could be de-identified."""
    out_dir = Path(kwargs["out_dir"])
    values_json, report_json = Path(kwargs["values_json"]), Path(kwargs["report_json"])

    def write_empty() -> None:
        from bidsafe.phi import PersonalValues, save_values

        with atomic_dir(out_dir):
            pass
        if not values_json.exists():
            save_values(PersonalValues(), values_json)
        if not report_json.exists():
            from bidsafe.private import private_write_text

            private_write_text(report_json, json.dumps({"tool": "bidsafe deid", "counts": {}, "files": []}) + "\n")

    return run_session_stage("deid", status_json, None, lambda: {"files": deid_session(**kwargs)},
                             write_empty, "deid:failed")
