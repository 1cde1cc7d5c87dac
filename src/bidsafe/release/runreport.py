"""The run report from whatever a run left, and the five-line terminal summary at the end of every run.

`collect` reads the work area's public records (pseudonymise summary, per-session status files, conversion
summaries, gate reports, QC tables, deface records and pictures, publish record) and the private quarantine
report for its reason counts only. Every input may be missing: the report then says which ones are, so a
failed run still gets a report (the Snakefile's `onerror` hook calls `finish_run`). Nothing read here holds a
personal value except the quarantine report, of which only the ingest stage's fixed reasons are used.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bidsafe.bidsnames import session_of
from bidsafe.release.gates import GateResult, read_gate_report
from bidsafe.release.report import (
    UNFINISHED,
    nothing_published_reason,
    outcome_of,
    quarantine_counts,
    reason_in_words,
    session_counts,
    write_run_report,
)

# The per-session stages in pipeline order: a session's last status file is the one that counts.
SESSION_STAGES = ("deid", "convert", "scrub", "deface", "qc")
REPORT_NAME = "bidsafe-report.html"


def _key(path: Path) -> tuple[str, str] | None:
    return session_of(path)


def _json(path: Path | None) -> Any:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_status(status_dir: Path | None, key: tuple[str, str]) -> dict[str, Any] | None:
    if status_dir is None:
        return None
    for stage in reversed(SESSION_STAGES):
        status = _json(Path(status_dir) / stage / f"sub-{key[0]}" / f"ses-{key[1]}" / "status.json")
        if isinstance(status, dict):
            return status
    return None


def _session_rows(summary: Mapping[str, Any] | None, included_tsv: Path | None,
                  status_dir: Path | None) -> list[dict[str, Any]]:
    """One row per session: included or not, outcome, reason in words. included.tsv (assemble) is the final
    word; without it (a run that stopped earlier) each session's last stage status tells how far it got."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for s in (summary or {}).get("sessions", []):
        row = dict(s)
        if not row.get("included"):
            row["words"] = reason_in_words("", str(row.get("reason", "")))
            row["outcome"] = outcome_of(str(row.get("reason", "")))
        rows[(str(s["subject"]), str(s["session"]))] = row
    assembled: dict[tuple[str, str], dict[str, str]] = {}
    if included_tsv is not None and Path(included_tsv).is_file():
        with open(included_tsv, encoding="utf-8", newline="") as handle:
            assembled = {(r["subject"], r["session"]): r for r in csv.DictReader(handle, delimiter="\t")}
    for key, row in rows.items():
        if not row.get("included"):
            continue
        if key in assembled:
            status = assembled[key]
            if status.get("status") != "withheld":
                continue
        else:
            status = _last_status(status_dir, key) or {}
            if status.get("status") == "included" and status.get("stage") == SESSION_STAGES[-1]:
                continue
            if status.get("status") != "withheld":
                done = f"last stage finished: {status['stage']}" if status.get("stage") else "no stage finished"
                row |= {"included": False, "outcome": UNFINISHED, "reason": done,
                        "words": f"Not finished when the run stopped ({done})."}
                continue
        stage, code, detail = status.get("stage") or "", status.get("code") or "", status.get("reason") or ""
        row |= {"included": False, "outcome": "withheld", "code": code,
                "reason": f"at {stage}: {detail}" if stage else detail,
                "words": reason_in_words(code, detail, stage)}
    return list(rows.values())


def collect(*, summary_json: Path | None, included_tsv: Path | None, gate_reports: Sequence[Path],
            qc_dirs: Sequence[Path], picture_dirs: Sequence[Path], conversion_summaries: Sequence[Path] = (),
            status_dir: Path | None = None, quarantine_tsv: Path | None = None,
            published_json: Path | None = None) -> dict[str, Any]:
    """The keyword arguments of `render_report` from the run's files; absent ones are listed in `missing`."""
    missing: list[str] = []
    summary = _json(summary_json)
    if not isinstance(summary, dict):
        missing.append("pseudonymise summary")
        summary = {}
    if included_tsv is None or not Path(included_tsv).is_file():
        missing.append("assembled session list")
    sessions = _session_rows(summary, included_tsv, status_dir)
    by_key = {(str(r["subject"]), str(r["session"])): r for r in sessions}
    for path in conversion_summaries:
        key, conversion = _key(Path(path)), _json(Path(path))
        if key in by_key and isinstance(conversion, dict):
            by_key[key]["conversion"] = conversion
    gates: list[GateResult] = []
    for path in gate_reports:
        if Path(path).is_file():
            gates.append(read_gate_report(path))
    qc_rows: list[dict[str, Any]] = []
    for qc_dir in qc_dirs:
        for tsv in sorted(Path(qc_dir).rglob("*.tsv")) if Path(qc_dir).is_dir() else []:
            with open(tsv, encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    key = _key(tsv) or ("", "")
                    qc_rows.append({"subject": key[0], "session": key[1], **row})
    pictures: dict[str, Path] = {}
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for folder in picture_dirs:
        key = _key(Path(folder))
        if key is None:
            continue
        for png in sorted(Path(folder).glob("*.png")) if Path(folder).is_dir() else []:
            pictures[f"{key[0]}/{key[1]}: {png.stem}"] = png
        found = _json(Path(folder).parent / "records.json")
        if isinstance(found, list):
            records[key] = [r for r in found if isinstance(r, dict)]
    quarantine = quarantine_counts(quarantine_tsv)
    if quarantine is None:
        missing.append("ingest quarantine report")
    published = _json(published_json)
    release = str(published["release"]) if isinstance(published, dict) and published.get("release") else None
    if release is not None and published.get("new_version") is False and published.get("note"):
        # nothing new was published: the report names the version that holds this release, and why
        release = f"{release} ({published['note']})"
    if release is None:
        missing.append("publish record")
    return {"sessions_tsv_summary": sessions, "gate_results": gates, "qc_rows": qc_rows, "deface_pngs": pictures,
            "published": release, "quarantine": quarantine, "k_anonymity": summary.get("k_anonymity"),
            "deface_records": records, "missing": missing}


def collect_from_work(work_dir: Path, private_dir: Path) -> dict[str, Any]:
    """`collect` over whatever the work area holds (for a run that failed: no job's input list to go by)."""
    work, private = Path(work_dir), Path(private_dir)
    quarantine = private / "ingest" / "quarantine.tsv"
    if not quarantine.is_file():
        quarantine = private / "ingest" / "quarantine-no-study.tsv"
    sessions = sorted((work / "deface").glob("sub-*/ses-*")) if (work / "deface").is_dir() else []
    return collect(
        summary_json=work / "pseudonymise" / "summary.json",
        included_tsv=work / "staging" / "included.tsv",
        gate_reports=[work / "gates" / f"{name}.json" for name in ("validator", "leak_scan", "deface", "consent")],
        qc_dirs=sorted((work / "qc").glob("sub-*/ses-*")) if (work / "qc").is_dir() else [],
        picture_dirs=[s / "qc" for s in sessions],
        conversion_summaries=sorted((work / "convert").glob("sub-*/ses-*/series.json")),
        status_dir=work / "status",
        quarantine_tsv=quarantine,
        published_json=work / "publish" / "published.json",
    )


def terminal_summary(facts: Mapping[str, Any], report: Path | None, *, failed: bool,
                     failed_rules: Sequence[str] = ()) -> list[str]:
    """Five lines for the end of a run: outcome, release, sessions, gates, report."""
    gates = [g if isinstance(g, GateResult) else read_gate_report(g) for g in facts.get("gate_results", [])]
    sessions = facts.get("sessions_tsv_summary", [])
    counts = session_counts(sessions)
    stopped = f" (failed job: {', '.join(sorted(set(failed_rules)))})" if failed_rules else ""
    release = (f"published {facts['published']}" if facts.get("published") else
               "nothing published: " + nothing_published_reason(gates, sessions, failed_rules,
                                                                 facts.get("missing", [])))
    gate_text = ", ".join(f"{g.name} {'passed' if g.passed else 'FAILED'}" for g in gates) or "none ran"
    return [
        f"bidsafe: run {'FAILED' + stopped if failed else 'finished'}",
        f"  release:  {release}",
        f"  sessions: {counts['included']} included, {counts['withheld']} withheld, {counts['excluded']} excluded"
        + (f", {counts[UNFINISHED]} unfinished" if counts[UNFINISHED] else "") + f" (of {len(sessions)})",
        f"  gates:    {gate_text}",
        f"  report:   {report if report is not None else 'not written'}",
    ]


def failed_rules_in(log: str | Path | Sequence[str | Path] | None) -> list[str]:
    """Rule names of the failed jobs, from the Snakemake log(s) ("Error in rule X:"); Snakemake hands the
    onerror hook one path or a list, depending on its version."""
    logs = [log] if isinstance(log, str | Path) else list(log or [])
    found: list[str] = []
    for path in logs:
        if Path(path).is_file():
            found += re.findall(r"Error in rule (\w+):", Path(path).read_text(encoding="utf-8", errors="replace"))
    return found


def finish_run(work_dir: Path, private_dir: Path, *, failed: bool, log: Any = None,
               stream: Any = None) -> list[str]:
    """The end-of-run hook: after a failure, write the report from what exists (the report job did not run);
    after a success, leave the report job's file. Then print the five-line summary. Never raises: a hook
    that crashes would hide the run's own outcome."""
    stream = stream if stream is not None else sys.stderr
    report = Path(work_dir) / "report" / REPORT_NAME
    rules: list[str] = []
    try:
        rules = failed_rules_in(log) if failed else []
        facts = collect_from_work(Path(work_dir), Path(private_dir))
        if failed or not report.is_file():
            write_run_report(report, **facts, failed_rules=rules, run_failed=failed)
        lines = terminal_summary(facts, report, failed=failed, failed_rules=rules)
    except Exception as exc:  # noqa: BLE001 (the hook reports its own failure in one line and lets the run end)
        lines = [f"bidsafe: run {'FAILED' if failed else 'finished'}; the run summary failed ({type(exc).__name__})"]
    print("\n".join(lines), file=stream)
    return lines
