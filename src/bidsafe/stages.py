"""One function per pipeline stage: what a Snakemake job does, given its paths.

The workflow scripts only unpack the `snakemake` object and call these, so every stage can be run and tested
without Snakemake. Each function takes paths and plain values and returns what it decided.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsafe.errors import BidsafeError, GuardError
from bidsafe.fsutil import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger("bidsafe")

WITHHELD = "withheld"
INCLUDED = "included"


def read_file_list(files_txt: Path) -> list[str]:
    """The inbox-relative paths of one session, as written by the pseudonymise stage."""
    return [line for line in Path(files_txt).read_text(encoding="utf-8").splitlines() if line.strip()]


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
) -> dict[str, int]:
    """De-identify one session's files into `out_dir` (whole or not at all); keep the harvest and report private.

    The rule set is checked as `bidsafe check-rules` does first: a rejected one raises, unless
    `allow_weaker_rules`, which applies it but records the gaps in `profile_json` (publish then refuses)."""
    from bidsafe.deid.engine import deidentify_tree, write_report
    from bidsafe.deid.rules import load_rules, require_checked_rules, weakened
    from bidsafe.deid.vocabulary import DEFAULT_VOCABULARY, vocabulary_for
    from bidsafe.keys import load_key
    from bidsafe.phi import save_values
    from bidsafe.profile import WEAKER_RULES, write_stage_profile

    gaps = require_checked_rules(Path(rules_path), allow_weaker=allow_weaker_rules)
    key = load_key(key_path)  # created by the pseudonymise stage; never silently replaced here
    rules = load_rules(Path(rules_path))
    if gaps:
        rules = weakened(rules)
        log.warning("rule set %s: %d check-rules gap(s), applied because deid.allow_weaker_rules is set: this "
                    "session is NOT shareable and will not be published", Path(rules_path).name, len(gaps))
    files = [Path(rel) for rel in read_file_list(files_txt)]  # relative to the inbox, as deidentify_tree takes them
    with atomic_dir(out_dir) as tmp:
        report = deidentify_tree(
            Path(inbox), tmp, rules=rules, key=key, jobs=jobs, files=files, subject_key=subject,
            vocabulary=vocabulary_for(vocabulary),
        )
        report.weaker_rules = tuple(gaps)
        write_report(report, report_json)
        counts = dict(report.counts)
        log.info("sub-%s: de-identified %s", subject, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if not counts.get("processed"):
            # ingest listed these files as readable images: none processed means the inbox changed under us
            raise BidsafeError(f"sub-{subject}: no file of the session could be de-identified (see the private "
                               "deid report)", files_txt.name)
    save_values(report.personal_values, values_json)
    if profile_json is not None:
        write_stage_profile(
            profile_json, {"rules": rules_path, "vocabulary": [DEFAULT_VOCABULARY, *vocabulary]},
            **({WEAKER_RULES: list(gaps)} if gaps else {}),
        )
    return counts


def deface_stage(
    *,
    in_dir: Path,
    out_bids: Path,
    status_json: Path,
    records_json: Path,
    pictures_dir: Path,
    exempt: Mapping[str, str] | None = None,
    suffixes: Sequence[str] = (),
    engine: str = "auto",
) -> dict[str, object]:
    """Deface every anat image of a session (but `exempt` suffixes) and every image whose suffix is in
    `suffixes`; a tripped guard withholds the session instead of failing the run."""
    from bidsafe.deface.engine import deface_session

    pictures_dir = Path(pictures_dir)
    pictures_dir.mkdir(parents=True, exist_ok=True)
    try:
        records = deface_session(
            Path(in_dir), Path(out_bids), Path(records_json), pictures_dir, engine=engine,
            exempt=list(exempt or {}), also=list(suffixes),
        )
    except GuardError as exc:
        Path(out_bids).mkdir(parents=True, exist_ok=True)
        atomic_write_json(records_json, [])
        status = {"status": WITHHELD, "reason": f"deface guard: {exc}"}
        log.warning("session withheld: %s", status["reason"])
    else:
        status = {"status": INCLUDED, "images": len(records)}
    atomic_write_json(status_json, status)
    return status


@dataclass(frozen=True)
class SessionRef:
    subject: str
    session: str


def session_from_path(path: Path) -> SessionRef:
    """`.../sub-S/ses-T[/...]` -> SessionRef(S, T)."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith("sub-") and parts[i + 1].startswith("ses-"):
            return SessionRef(part[4:], parts[i + 1][4:])
    raise BidsafeError("path does not name a sub-/ses- pair", path)


def sessions_passing_deface(status_files: Sequence[Path]) -> tuple[list[SessionRef], list[tuple[SessionRef, str]]]:
    """Split sessions by their deface status: (included, [(withheld, reason)])."""
    included: list[SessionRef] = []
    withheld: list[tuple[SessionRef, str]] = []
    for status_file in status_files:
        ref = session_from_path(Path(status_file))
        status = json.loads(Path(status_file).read_text(encoding="utf-8"))
        if status.get("status") == INCLUDED:
            included.append(ref)
        else:
            withheld.append((ref, str(status.get("reason", "withheld"))))
    return included, withheld


def write_included(path: Path, included: Sequence[SessionRef], withheld: Sequence[tuple[SessionRef, str]]) -> None:
    rows = ["subject\tsession\tstatus\treason"]
    rows += [f"{r.subject}\t{r.session}\t{INCLUDED}\t" for r in included]
    rows += [f"{r.subject}\t{r.session}\t{WITHHELD}\t{reason}" for r, reason in withheld]
    atomic_write_text(path, "\n".join(rows) + "\n")


def read_included(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def tool_versions() -> dict[str, str]:
    """Versions of bidsafe and the tools it drives, for GeneratedBy and SHAREABLE.json."""
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from bidsafe import __version__

    versions = {"bidsafe": __version__}
    for package in ("pydicom", "nibabel", "dcm2bids", "dcm2niix", "SimpleITK", "pydeface", "bids-validator-deno"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    dcm2niix = Path(sys.executable).parent / "dcm2niix"
    if dcm2niix.exists():
        out = subprocess.run([str(dcm2niix), "--version"], capture_output=True, text=True, check=False)
        text = (out.stdout + out.stderr).strip().splitlines()
        if text:
            versions["dcm2niix"] = text[-1].strip()
    return versions


def load_release_config(release: Mapping[str, object] | None) -> dict[str, object]:
    return dict(release or {})


def assemble_stage(
    *,
    staging: Path,
    included_tsv: Path,
    deface_status: Sequence[Path],
    qc_dirs: Sequence[Path],
    participants_dir: Path,
    release_config: Mapping[str, object],
    profile_parts: Sequence[Path],
    profiles_json: Path,
    release_dir: Path,
) -> list[SessionRef]:
    """Assemble the staging release from every session that passed deface; withheld ones are listed with why.

    `profile_parts` are the per-session stage profiles (work/profile/sub-S/ses-T/<stage>.json); those of the
    included sessions are collected into `profiles_json` for publish."""
    from bidsafe.profile import collect_profiles, rules_label
    from bidsafe.release.assemble import SessionInput, assemble_release

    included, withheld = sessions_passing_deface(deface_status)
    for ref, reason in withheld:
        log.warning("sub-%s ses-%s withheld: %s", ref.subject, ref.session, reason)
    status_of = {session_from_path(Path(p)): Path(p) for p in deface_status}
    # the defaced tree sits beside its status file (see workflow/rules/deface.smk)
    sessions = [SessionInput(r.subject, r.session, status_of[r].parent / "bids") for r in included]
    wanted = set(included)
    qc = [Path(p) for p in qc_dirs if session_from_path(Path(p) / "metrics") in wanted]
    profiles = collect_profiles(profile_parts, [f"sub-{r.subject}/ses-{r.session}" for r in included])
    assemble_release(
        Path(staging),
        sessions=sessions,
        participants_dir=Path(participants_dir),
        qc_dirs=qc,
        config=release_config,
        versions=tool_versions(),
        release_dir=Path(release_dir),
        profile=rules_label(profiles),
    )
    atomic_write_json(profiles_json, profiles)
    write_included(included_tsv, included, withheld)
    log.info("assembled %d sessions, %d withheld by deface", len(included), len(withheld))
    return included


def gate_stage(name: str, report: Path, **inputs: object) -> bool:
    """Run one release gate and write its report; a failed gate is a result, not an error (publish decides)."""
    from bidsafe.release import gates

    runners = {
        "validator": lambda: gates.gate_validator(inputs["staging"], str(inputs.get("backend", "deno"))),
        "leak_scan": lambda: _leak_gate(inputs),
        "deface": lambda: gates.gate_deface(inputs["staging"], _deface_records(inputs), inputs.get("exempt") or {}),
        "consent": lambda: gates.gate_consent(inputs["staging"], inputs["sessions_tsv"]),
    }
    try:
        result = runners[name]()
    except BidsafeError as exc:
        result = gates.GateResult(name=name, passed=False, summary=f"gate could not run: {exc}", details={})
    gates.write_gate_report(result, report)
    (log.info if result.passed else log.error)("gate %s: %s", name, result.summary)
    return result.passed


def _leak_gate(inputs: Mapping[str, object]):
    """The leak gate on a harvest made independently from the raw inbox (not from deid's own harvest), per
    session so that each value names its sessions; the harvest and the findings (values) stay private."""
    from bidsafe.release import gates
    from bidsafe.release.leakscan import harvest_sessions, save_harvest

    sessions_dir = inputs.get("sessions_dir")
    rows, origins = harvest_sessions(Path(str(inputs["inbox"])), Path(str(sessions_dir)) if sessions_dir else None)
    save_harvest(rows, origins, Path(str(inputs["values_json"])))
    findings = inputs.get("findings_json")
    return gates.gate_leak_scan(
        inputs["staging"], rows, inputs.get("also", ()), inputs.get("vocabulary") or None,
        allow=inputs.get("allow") or None, origins=origins, findings=Path(str(findings)) if findings else None,
    )


def _deface_records(inputs: Mapping[str, object]) -> list[Path]:
    included = [r for r in read_included(Path(str(inputs["included_tsv"]))) if r["status"] == INCLUDED]
    deface_dir = Path(str(inputs["deface_dir"]))
    return [deface_dir / f"sub-{r['subject']}" / f"ses-{r['session']}" / "records.json" for r in included]


def publish_stage(*, staging: Path, release_dir: Path, gate_reports: Sequence[Path], profiles_json: Path,
                  published_json: Path) -> Path:
    """Publish when every gate passed and no session was de-identified with a rule set check-rules rejects;
    otherwise raise naming why (release left untouched)."""
    from bidsafe.profile import read_profiles, refuse_weaker, rules_label
    from bidsafe.release.gates import read_gate_report
    from bidsafe.release.publish import publish

    profiles = read_profiles(profiles_json)
    refuse_weaker(profiles, staging)
    results = [read_gate_report(p) for p in gate_reports]
    failed = [r for r in results if not r.passed]
    if failed:
        raise BidsafeError(
            "not published: gate(s) failed: " + "; ".join(f"{r.name}: {r.summary}" for r in failed), staging
        )
    version_dir = publish(Path(staging), Path(release_dir), results, profile=rules_label(profiles), profiles=profiles)
    atomic_write_json(published_json, {"release": str(version_dir), "gates": [r.name for r in results]})
    log.info("published %s", version_dir.name)
    return version_dir


def report_stage(*, html: Path, summary_json: Path, included_tsv: Path, gate_reports: Sequence[Path],
                 qc_dirs: Sequence[Path], picture_dirs: Sequence[Path],
                 conversion_summaries: Sequence[Path] = ()) -> Path:
    """The run report: per-session status (pseudonyms only), series converted and left out, gates, QC table,
    deface pictures."""
    from bidsafe.release.report import write_report

    summary = json.loads(Path(summary_json).read_text(encoding="utf-8")) if Path(summary_json).exists() else {}
    rows = {(s["subject"], s["session"]): dict(s) for s in summary.get("sessions", [])}
    for row in read_included(included_tsv):
        if row["status"] == WITHHELD:
            rows[(row["subject"], row["session"])] |= {"included": False, "reason": row["reason"]}
    for path in conversion_summaries:  # the convert stage's series.json, one per session
        ref = session_from_path(Path(path))
        if (ref.subject, ref.session) in rows:
            rows[(ref.subject, ref.session)]["conversion"] = json.loads(Path(path).read_text(encoding="utf-8"))
    qc_rows = []
    for qc_dir in qc_dirs:
        for tsv in sorted(Path(qc_dir).rglob("*.tsv")):
            with open(tsv, encoding="utf-8", newline="") as handle:
                qc_rows.extend(csv.DictReader(handle, delimiter="\t"))
    pictures = {
        f"{session_from_path(png).subject}/{session_from_path(png).session}: {png.stem}": png
        for d in picture_dirs
        for png in sorted(Path(d).glob("*.png"))
    }
    return write_report(html, sessions_tsv_summary=list(rows.values()), gate_results=list(gate_reports),
                        qc_rows=qc_rows, deface_pngs=pictures)
