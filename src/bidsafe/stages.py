"""One function per pipeline stage: what a Snakemake job does, given its paths.

The workflow scripts only unpack the `snakemake` object and call these, so every stage can be run and tested
without Snakemake. Each function takes paths and plain values and returns what it decided. The pseudonymise
and deid stages keep theirs in their own packages (bidsafe.pseudonymise.stage, bidsafe.deid.stage).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsafe import filelist
from bidsafe.bidsnames import session_of
from bidsafe.errors import BidsafeError, GuardError, SessionWithheld
from bidsafe.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from bidsafe.profile import write_stage_profile
from bidsafe.sessionstatus import INCLUDED, WITHHELD, run_session_stage, upstream_withheld

if TYPE_CHECKING:  # imported where used: a stage's module loads only what that stage needs
    from bidsafe.release.gates import GateResult

log = logging.getLogger("bidsafe")


def read_file_list(files_txt: Path) -> list[str]:
    """The inbox-relative paths of one session, as written by the pseudonymise stage (escaped names decoded)."""
    return filelist.read_file_list(files_txt)


def convert_stage(
    *,
    dicom_dir: Path,
    out_bids: Path,
    summary_json: Path,
    status_json: Path,
    upstream_status: Path | None,
    subject: str,
    session: str,
    config: Path,
    log_dir: Path | None = None,
    deid_report: Path | None = None,
    scratch: Path | None = None,
    profile_json: Path | None = None,
) -> dict[str, Any]:
    """The convert job: `convert_session`, withholding the session when nothing converts, the mapping is
    ambiguous or dcm2bids fails; the series summary is written in every case (what was received and why
    it was left out) and told in the log. `out_bids` appears whole or not at all (a killed job leaves no
    folder that could pass for a finished one); `scratch`: a private folder for dcm2niix's and dcm2bids'
    work; `profile_json`: the mapping's hash (bidsafe.profile)."""
    from bidsafe.convert import convert_session, empty_summary, log_conversion_summary

    def work() -> dict[str, Any]:
        if scratch is not None:
            from bidsafe.private import ensure_private_dir

            ensure_private_dir(scratch)
        with atomic_dir(out_bids) as tmp:
            images = convert_session(Path(dicom_dir), tmp, subject, session, config=Path(config),
                                     log_dir=log_dir, summary_json=Path(summary_json), deid_report=deid_report,
                                     scratch_root=scratch)
        return {"images": len(images)}

    def write_empty() -> None:
        with atomic_dir(out_bids):
            pass
        if upstream_withheld(upstream_status) is not None or not Path(summary_json).exists():
            atomic_write_json(summary_json, empty_summary(deid_report))

    status = run_session_stage("convert", status_json, upstream_status, work, write_empty, "convert:failed")
    log.info("convert: %s", status)
    log_conversion_summary(log, Path(summary_json))
    if profile_json is not None:
        write_stage_profile(profile_json, {"dcm2bids_config": config})
    return status


def scrub_stage(*, in_bids: Path, out_bids: Path, status_json: Path, upstream_status: Path | None,
                values_json: Path, deid_dir: Path, allowlist: Path, vocabulary: Sequence[str | Path] = (),
                profile_json: Path | None = None) -> dict[str, Any]:
    """The scrub job: `scrub_session`, withholding the session when a guard refuses one of its files;
    `profile_json`: the hashes of the allow-list and the vocabularies it read (bidsafe.profile)."""
    from bidsafe.deid.vocabulary import DEFAULT_VOCABULARY, vocabulary_for
    from bidsafe.phi import load_values
    from bidsafe.scrub import scrub_session

    def work() -> dict[str, Any]:
        report = scrub_session(Path(in_bids), Path(out_bids), values=load_values(values_json),
                               deid_dir=Path(deid_dir), allowlist=Path(allowlist),
                               vocabulary=vocabulary_for(list(vocabulary)))
        log.info("scrub: %s", report)
        return {"files": len(report.files)}

    def write_empty() -> None:
        with atomic_dir(out_bids):
            pass

    status = run_session_stage("scrub", status_json, upstream_status, work, write_empty, "scrub:refused")
    log.info("scrub: %s", status)
    if profile_json is not None:
        write_stage_profile(profile_json, {"sidecar_allowlist": allowlist,
                                           "vocabulary": [DEFAULT_VOCABULARY, *vocabulary]})
    return status


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
    upstream_status: Path | None = None,
    templates: Sequence[Mapping[str, Any]] = (),
    applyto: bool = True,
    subject: str = "",
    session: str = "",
) -> dict[str, Any]:
    """Deface every anat image of a session (but `exempt` suffixes) and every image whose suffix is in
    `suffixes`; a tripped guard (or an image the engine cannot read) withholds the session instead of
    failing the run. `templates` (config `deface.templates`) may name a site's template pair for this
    session (`subject`, `session`: released labels); `applyto` carries the T1w's face mask onto the others."""
    from bidsafe.deface.engine import deface_session
    from bidsafe.deface.template import select_pair

    template = select_pair(templates, subject, session)

    kept: list[dict[str, Any]] = []  # a refused session's records: what each guard measured, kept for the report

    def work() -> dict[str, Any]:
        refused: GuardError | None = None
        # both folders appear whole (a killed job leaves neither half-made); the pictures of a refused session
        # are kept: they show why the guard tripped (QC area, not released)
        with atomic_dir(pictures_dir) as pictures:
            try:
                records = deface_session(
                    Path(in_dir), Path(out_bids), Path(records_json), pictures, engine=engine,
                    exempt=list(exempt or {}), also=list(suffixes), template=template, applyto=applyto,
                )
            except GuardError as exc:
                refused = exc
        if refused is not None:
            kept.extend(getattr(refused, "records", []))
            raise SessionWithheld("deface:refused", f"deface guard: {refused.message}") from refused
        return {"images": len(records)}

    def write_empty() -> None:
        with atomic_dir(out_bids):
            pass
        if not Path(pictures_dir).is_dir():
            with atomic_dir(pictures_dir):
                pass
        atomic_write_json(records_json, kept)

    status = run_session_stage("deface", status_json, upstream_status, work, write_empty, "deface:refused")
    log.info("deface: %s", status)
    return status


def qc_stage(*, in_bids: Path, out_dir: Path, status_json: Path, upstream_status: Path | None,
             subject: str, session: str) -> dict[str, Any]:
    """The qc job: metrics of every image of an included session; a withheld session gets an empty folder."""
    from bidsafe.imageqc import session_qc, write_qc

    def work() -> dict[str, Any]:
        rows = session_qc(Path(in_bids), subject, session)
        if rows:
            write_qc(rows, Path(out_dir))
        else:  # no image QC measures (none named as BIDS expects): nothing to table, nothing wrong
            with atomic_dir(out_dir):
                pass
        return {"images": len(rows)}

    def write_empty() -> None:
        with atomic_dir(out_dir):
            pass

    status = run_session_stage("qc", status_json, upstream_status, work, write_empty, "qc:failed")
    log.info("qc: %s", status)
    return status


@dataclass(frozen=True)
class SessionRef:
    subject: str
    session: str


def session_from_path(path: Path) -> SessionRef:
    """`.../sub-S/ses-T[/...]` -> SessionRef(S, T)."""
    labels = session_of(path)
    if labels is not None:
        return SessionRef(*labels)
    raise BidsafeError("path does not name a sub-/ses- pair", path)


def split_sessions(status_files: Sequence[Path]) -> tuple[list[SessionRef], list[tuple[SessionRef, dict[str, Any]]]]:
    """Split sessions by their last per-session status: (included, [(withheld, status)])."""
    included: list[SessionRef] = []
    withheld: list[tuple[SessionRef, dict[str, Any]]] = []
    for status_file in status_files:
        ref = session_from_path(Path(status_file))
        status = json.loads(Path(status_file).read_text(encoding="utf-8"))
        if status.get("status") == INCLUDED:
            included.append(ref)
        else:
            withheld.append((ref, status))
    return included, withheld


def sessions_passing_deface(status_files: Sequence[Path]) -> tuple[list[SessionRef], list[tuple[SessionRef, str]]]:
    """Split sessions by their deface status: (included, [(withheld, reason)])."""
    included, withheld = split_sessions(status_files)
    return included, [(ref, str(status.get("reason", "withheld"))) for ref, status in withheld]


def _cell(text: object) -> str:
    return " ".join(str(text).split())  # one TSV cell: no tab or newline


def write_included(path: Path, included: Sequence[SessionRef],
                   withheld: Sequence[tuple[SessionRef, str | Mapping[str, Any]]]) -> None:
    """included.tsv: every session that reached assemble, included or withheld, with the stage, reason code
    and reason sentence of a withheld one."""
    rows = ["subject\tsession\tstatus\treason\tstage\tcode"]
    rows += [f"{r.subject}\t{r.session}\t{INCLUDED}\t\t\t" for r in included]
    for r, why in withheld:
        status = why if isinstance(why, Mapping) else {"reason": why}
        rows.append(f"{r.subject}\t{r.session}\t{WITHHELD}\t{_cell(status.get('reason', 'withheld'))}\t"
                    f"{_cell(status.get('stage', ''))}\t{_cell(status.get('code', ''))}")
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


def _decision_reasons(summary_json: Path) -> dict[tuple[str, str], str]:
    """{(subject, session): reason code} of every session pseudonymise withheld ({} without its summary)."""
    try:
        sessions = json.loads(summary_json.read_text(encoding="utf-8")).get("sessions") or []
    except (OSError, ValueError):
        return {}
    return {(str(d["subject"]), str(d["session"])): str(d.get("reason") or "")
            for d in sessions if isinstance(d, dict) and not d.get("included") and "subject" in d and "session" in d}


def assemble_stage(
    *,
    staging: Path,
    included_tsv: Path,
    session_status: Sequence[Path],
    defaced: Sequence[Path],
    qc_dirs: Sequence[Path],
    participants_dir: Path,
    release_config: Mapping[str, object],
    profile_parts: Sequence[Path],
    profiles_json: Path,
    release_dir: Path,
) -> list[SessionRef]:
    """Assemble the staging release from every session whose last per-session status (`session_status`, one
    file per session: the qc stage's) is included; withheld ones are listed in `included_tsv` with the stage
    and the reason. `defaced`: each session's defaced BIDS root (`.../sub-S/ses-T/bids`).

    `profile_parts` are the per-session stage profiles (work/profile/sub-S/ses-T/<stage>.json); those of the
    included sessions are collected into `profiles_json` for publish."""
    from bidsafe.profile import collect_profiles, rules_label
    from bidsafe.release.assemble import SessionInput, assemble_release

    included, withheld = split_sessions(session_status)
    # why each session is not released, for CHANGES (a withdrawal says so): pseudonymise's decisions (pseudonyms
    # and reason codes only; withdrawn participants never reach a later stage), then the later stages' statuses
    reasons = _decision_reasons(Path(participants_dir) / "summary.json")
    reasons.update({(ref.subject, ref.session): str(status.get("reason", "")) for ref, status in withheld})
    bids_of = {session_from_path(Path(p)): Path(p) for p in defaced}
    missing = [r for r in included if r not in bids_of]
    if missing:
        raise BidsafeError(f"no defaced folder for sub-{missing[0].subject} ses-{missing[0].session}")
    sessions = [SessionInput(r.subject, r.session, bids_of[r]) for r in included]
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
        withheld=reasons,
    )
    atomic_write_json(profiles_json, profiles)
    write_included(included_tsv, included, withheld)
    log.info("assembled %d sessions, %d withheld", len(included), len(withheld))
    for ref, status in withheld:
        log.warning("sub-%s ses-%s withheld at %s: %s", ref.subject, ref.session, status.get("stage", "?"),
                    status.get("reason", ""))
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
    if name == "leak_scan":
        _complete_private_outputs(inputs, result.summary)
    gates.write_gate_report(result, report)
    (log.info if result.passed else log.error)("gate %s: %s", name, result.summary)
    return result.passed


def _complete_private_outputs(inputs: Mapping[str, object], summary: str) -> None:
    """The leak gate's private files are declared outputs: a scan that stopped early (nothing harvested, an
    unreadable input) still leaves both, saying so, and never a previous run's values or findings."""
    from bidsafe.private import private_write_text

    for key in ("values_json", "findings_json"):
        path = inputs.get(key)
        if path and not Path(str(path)).exists():
            empty: Any = [] if key == "values_json" else {"findings": [], "allowed": [], "scan": summary}
            private_write_text(Path(str(path)), json.dumps(empty, indent=1) + "\n")


def _leak_gate(inputs: Mapping[str, object]) -> GateResult:
    """The leak gate on a harvest made independently from the raw inbox (not from deid's own harvest), per
    session so that each value names its sessions; the harvest and the findings (values) stay private."""
    from bidsafe.release import gates
    from bidsafe.release.leakharvest import harvest_sessions, save_harvest
    from bidsafe.withdrawal import withdrawn_session_files

    sessions_dir = inputs.get("sessions_dir")
    # QA/phantom sessions (config `qa_sessions`; never released): their placeholder identities ("phantom",
    # "dicom") are no needles. Every released file is still scanned.
    skip = qa_session_files(inputs.get("sessions_tsv"), sessions_dir)
    # a withdrawn participant's files neither: their values must not be collected into private_dir again
    skip |= withdrawn_session_files(inputs.get("sessions_tsv"), inputs.get("index"), inputs.get("inbox"))
    # the gate's own memory between runs (private): unchanged sessions are not harvested again, unchanged
    # files are searched only for new values (bidsafe.release.leakcache)
    memory = Path(str(inputs["memory_dir"])) if inputs.get("memory_dir") else None
    rows, origins = harvest_sessions(
        Path(str(inputs["inbox"])), Path(str(sessions_dir)) if sessions_dir else None, skip=skip,
        memory=memory / "harvest" if memory else None,
    )
    save_harvest(rows, origins, Path(str(inputs["values_json"])))
    findings = inputs.get("findings_json")
    also = [Path(str(p)) for p in inputs.get("also", ())]  # type: ignore[attr-defined]
    if inputs.get("work_dir"):
        also += work_folders(Path(str(inputs["work_dir"])), Path(str(inputs["staging"])), also)
    return gates.gate_leak_scan(
        inputs["staging"], rows, also, inputs.get("vocabulary") or None,
        allow=inputs.get("allow") or None, origins=origins, findings=Path(str(findings)) if findings else None,
        memory=memory / "scan.json" if memory else None,
    )


# Written by the other gates while this one runs (atomic writes: temporary names come and go); gate reports
# hold counts and file names only.
_NOT_SCANNED_IN_WORK = frozenset({"gates"})


def work_folders(work_dir: Path, staging: Path, also: Sequence[Path] = ()) -> list[Path]:
    """Every folder of work_dir the leak gate scans besides the staging release and `also`: the intermediates
    of every stage and any leftover of a killed job (hidden temporary names included), so an identifying value
    in work_dir fails the gate like one in the release."""
    skip = {Path(p).resolve() for p in also}
    staging = Path(staging).resolve()
    return [
        folder for folder in sorted(Path(work_dir).iterdir())
        if folder.is_dir() and not folder.is_symlink() and folder.name not in _NOT_SCANNED_IN_WORK
        and folder.resolve() not in skip and not staging.is_relative_to(folder.resolve())
    ]


def qa_session_files(sessions_tsv: object, session_files: object) -> frozenset[str]:
    """Inbox-relative paths of every QA session (pseudonymise's private sessions.tsv and per-session file
    lists); nothing when either is not given."""
    from bidsafe.pseudonymise.sessionlists import all_sessions
    from bidsafe.siteexclusions import is_qa_reason

    if not sessions_tsv or not session_files:
        return frozenset()
    paths: set[str] = set()
    for row in all_sessions(Path(str(sessions_tsv))):
        if not row.included and is_qa_reason(row.reason):
            files = Path(str(session_files)) / f"sub-{row.subject}" / f"ses-{row.session}" / "files.txt"
            paths.update(read_file_list(files))
    return frozenset(paths)


def _deface_records(inputs: Mapping[str, object]) -> list[Path]:
    """The deface records (declared inputs: every session pseudonymise included) of the sessions the staged
    release holds (`included_tsv`); a staged session without a record is missing from the result, and the
    gate then fails it for itself."""
    included = {SessionRef(r["subject"], r["session"])
                for r in read_included(Path(str(inputs["included_tsv"]))) if r["status"] == INCLUDED}
    records = [Path(str(p)) for p in inputs["records"]]  # type: ignore[attr-defined]
    return sorted(p for p in records if session_from_path(p) in included)


def publish_stage(*, staging: Path, release_dir: Path, gate_reports: Sequence[Path], profiles_json: Path,
                  published_json: Path, release_config: Mapping[str, object] | None = None,
                  datalad: bool = False) -> Path:
    """Publish when every gate passed and no session was de-identified with a rule set check-rules rejects;
    otherwise raise naming why (release left untouched). A staged release equal to the highest published
    version publishes nothing new; `published_json` then names that version and says so in `note`.
    `datalad` (release.datalad): then bring `release_dir/datalad` up to the published versions, new or not
    (bidsafe.release.datalad_release; a failure there fails the step after the version folder is published,
    and the next run catches up)."""
    from bidsafe.profile import read_profiles, refuse_weaker, rules_label
    from bidsafe.release.gates import read_gate_report
    from bidsafe.release.publish import publish_release

    profiles = read_profiles(profiles_json)
    refuse_weaker(profiles, staging)
    results = [read_gate_report(p) for p in gate_reports]
    failed = [r for r in results if not r.passed]
    if failed:
        raise BidsafeError(
            "not published: gate(s) failed: " + "; ".join(f"{r.name}: {r.summary}" for r in failed), staging
        )
    outcome = publish_release(Path(staging), Path(release_dir), results, profile=rules_label(profiles),
                              profiles=profiles, config=release_config)
    extra: dict[str, object] = {}
    if datalad:
        from bidsafe.release.datalad_release import release_to_datalad

        extra["datalad"] = release_to_datalad(Path(release_dir)).record()
    # `note` says whether a new version was made ("published v3") or not ("no change since v3: ...")
    atomic_write_json(published_json, {**outcome.record(), "gates": [r.name for r in results], **extra})
    log.info("%s", outcome.note)
    return outcome.path


def _require_json_object(path: Path, what: str) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BidsafeError(f"{what} is missing", path) from None
    except (OSError, ValueError) as exc:
        raise BidsafeError(f"{what} is unreadable ({type(exc).__name__})", path) from None
    if not isinstance(data, dict):
        raise BidsafeError(f"{what} is not a JSON object", path)


def report_stage(*, html: Path, summary_json: Path, included_tsv: Path, gate_reports: Sequence[Path],
                 qc_dirs: Sequence[Path], picture_dirs: Sequence[Path],
                 conversion_summaries: Sequence[Path] = (), status_dir: Path | None = None,
                 quarantine_tsv: Path | None = None, published_json: Path | None = None) -> Path:
    """The run report: a summary block (release, sessions, quarantine, series, k-anonymity, gates), then
    per-session status (pseudonyms only, reasons in words), series, gates, deface numbers and pictures, QC.

    This is the report rule of a run that got through publish, so the pseudonymise summary must be there: a
    missing or unreadable `summary_json` is an error naming it (the report would otherwise list no session).
    Other missing inputs are named in the report. A failed run's report (the onerror hook) does not come
    here: `bidsafe.release.runreport.collect_from_work` takes whatever exists."""
    from bidsafe.release.report import write_run_report
    from bidsafe.release.runreport import collect

    _require_json_object(Path(summary_json), "the pseudonymise summary")
    facts = collect(summary_json=summary_json, included_tsv=included_tsv, gate_reports=gate_reports,
                    qc_dirs=qc_dirs, picture_dirs=picture_dirs, conversion_summaries=conversion_summaries,
                    status_dir=status_dir, quarantine_tsv=quarantine_tsv, published_json=published_json)
    return write_run_report(html, **facts)
