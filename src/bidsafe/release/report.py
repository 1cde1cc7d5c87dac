"""A self-contained HTML report of a run: session status, series converted and left out, gate results, QC
table, deface pictures.

One file, no external assets (inline CSS, pictures as base64 data URIs), so it can be mailed or archived.
It is written to the work area beside the release, never inside it. It shows pseudonyms and
release-relative paths only; every text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe import __version__
from bidsafe.errors import BidsafeError
from bidsafe.fsutil import atomic_write_text
from bidsafe.release.gates import REQUIRED_GATES, GateResult, read_gate_report

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass,.included{color:#0a6b2a;font-weight:600}.fail,.withheld{color:#a40e0e;font-weight:600}
.banner{padding:.6em 1em;border-radius:4px;font-weight:600}
.banner.pass{background:#e4f4e8}.banner.fail{background:#fbe4e4}
figure{display:inline-block;margin:.5em;text-align:center}
figure img{max-width:480px;border:1px solid #ccc}figcaption{font-size:.85em}
details{margin:.3em 0}pre{white-space:pre-wrap;font-size:.85em;background:#f7f7f7;padding:.5em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in {"1", "true", "yes", "included"}


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>None.</p>"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            css = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
            if isinstance(value, float):
                value = f"{value:.4g}"
            cells.append(f"<td{css}>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _labels(r: Mapping[str, Any]) -> str:
    return (
        f"<td>sub-{_e(str(r.get('subject', '')).removeprefix('sub-'))}</td>"
        f"<td>ses-{_e(str(r.get('session', '')).removeprefix('ses-'))}</td>"
    )


def _ordered(summary: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(summary, key=lambda r: (str(r.get("subject")), str(r.get("session"))))


# Reasons of the pseudonymise stage that take a session out of the dataset for good (a QA or phantom
# session, one the site excluded), as opposed to withholding it from this release (see bidsafe.siteexclusions).
EXCLUDED_PREFIXES = ("excluded", "qa session")


def outcome_of(reason: str) -> str:
    """"excluded" or "withheld", from a session's reason."""
    return "excluded" if reason.lower().startswith(EXCLUDED_PREFIXES) else "withheld"


def _sessions_section(summary: Sequence[Mapping[str, Any]]) -> str:
    included = sum(1 for r in summary if _is_true(r.get("included")))
    rows = []
    for r in _ordered(summary):
        ok = _is_true(r.get("included"))
        label = "included" if ok else outcome_of(str(r.get("reason", "")))
        status = f'<span class="{"included" if ok else "withheld"}">{label}</span>'
        conversion = r.get("conversion")
        reason = "" if ok else r.get("reason", "")
        counts = "<td></td><td></td><td></td>"
        if isinstance(conversion, Mapping):
            left_out = int(conversion.get("left_out", 0))
            counts = "".join(
                f'<td class="num">{int(conversion.get(k, 0))}</td>' for k in ("received", "converted", "left_out")
            )
            if ok and (left_out or conversion.get("partly_left_out")):
                # an included session that lost series must say so where its status is read
                reason = f"{left_out} series left out, {int(conversion.get('partly_left_out', 0))} in part (below)"
        rows.append(f"<tr>{_labels(r)}<td>{status}</td><td>{_e(reason)}</td>{counts}</tr>")
    table = (
        "<table><thead><tr><th>subject</th><th>session</th><th>status</th><th>reason</th>"
        "<th>series received</th><th>converted</th><th>left out</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>None.</p>"
    )
    excluded = sum(1 for r in summary if not _is_true(r.get("included"))
                   and outcome_of(str(r.get("reason", ""))) == "excluded")
    withheld = len(summary) - included - excluded
    return (f"<p>{included} of {len(summary)} sessions included, {withheld} withheld, {excluded} excluded."
            f"</p>{table}")


def _series_section(summary: Sequence[Mapping[str, Any]]) -> str:
    """Every series left out, whole or in part, per session, with the reasons dcm2bids and de-identification
    gave (de-identified series numbers and descriptions only)."""
    totals = {"received": 0, "converted": 0, "left_out": 0}
    rows = []
    missing = 0
    for r in _ordered(summary):
        conversion = r.get("conversion")
        if not isinstance(conversion, Mapping):
            missing += 1 if _is_true(r.get("included")) else 0  # sessions never converted need none
            continue
        for key in totals:
            totals[key] += int(conversion.get(key, 0))
        for series in conversion.get("series", []):
            if not series.get("left_out"):
                continue
            reasons = "; ".join(
                f"{item.get('reason', '')} ({item.get('count', 0)} {item.get('unit', '')})"
                for item in series.get("left_out", [])
            )
            whole = series.get("status") != "converted"
            outcome = '<span class="withheld">left out</span>' if whole else "converted in part"
            rows.append(
                f"<tr>{_labels(r)}<td class=\"num\">{_e(series.get('series', ''))}</td>"
                f"<td>{_e(series.get('description', ''))}</td><td class=\"num\">{_e(series.get('files', ''))}</td>"
                f"<td>{outcome}</td><td>{_e(reasons)}</td></tr>"
            )
    head = (
        f"<p>{totals['received']} series received: {totals['converted']} converted, "
        f"{totals['left_out']} left out.</p>"
    )
    if missing:
        head += f'<p class="banner fail">{missing} session(s) without a conversion summary.</p>'
    if not rows:
        return head + "<p>No series left out.</p>"
    return (
        head
        + "<table><thead><tr><th>subject</th><th>session</th><th>series</th><th>description</th><th>files</th>"
        "<th>outcome</th><th>reason</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _gates_section(gates: Sequence[GateResult]) -> str:
    if not gates:
        return '<p class="banner fail">No gate results: nothing may be published.</p>'
    missing = [name for name in REQUIRED_GATES if name not in {g.name for g in gates}]
    if not all(g.passed for g in gates):
        banner = '<p class="banner fail">A gate failed: the release was not published.</p>'
    elif missing:
        banner = f'<p class="banner fail">Gates not run: {_e(", ".join(missing))}. Nothing may be published.</p>'
    else:
        banner = '<p class="banner pass">Every gate passed.</p>'
    rows = []
    for g in gates:
        verdict = '<span class="pass">passed</span>' if g.passed else '<span class="fail">FAILED</span>'
        details = ""
        if g.details:
            details = (
                "<details><summary>details</summary>"
                f"<pre>{_e(json.dumps(g.details, indent=1, sort_keys=True))}</pre></details>"
            )
        rows.append(f"<tr><td>{_e(g.name)}</td><td>{verdict}</td><td>{_e(g.summary)}{details}</td></tr>")
    return (
        banner
        + "<table><thead><tr><th>gate</th><th>result</th><th>summary</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _pictures_section(pictures: Sequence[tuple[str, Path]]) -> str:
    if not pictures:
        return "<p>No deface pictures.</p>"
    figures = []
    for caption, path in pictures:
        data = Path(path).read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise BidsafeError("deface picture is not a PNG", Path(path).name)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figures.append(f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
    return "".join(figures)


def _picture_list(deface_pngs: Sequence[str | Path] | Mapping[str, str | Path]) -> list[tuple[str, Path]]:
    if isinstance(deface_pngs, Mapping):
        return [(str(k), Path(v)) for k, v in sorted(deface_pngs.items())]
    return [(Path(p).name, Path(p)) for p in sorted(deface_pngs, key=lambda p: Path(p).name)]


def render_report(
    *,
    sessions_tsv_summary: Sequence[Mapping[str, Any]],
    gate_results: Sequence[GateResult | str | Path],
    qc_rows: Sequence[Mapping[str, Any]],
    deface_pngs: Sequence[str | Path] | Mapping[str, str | Path],
    title: str = "bidsafe run report",
) -> str:
    """The report as an HTML string."""
    gates = [g if isinstance(g, GateResult) else read_gate_report(g) for g in gate_results]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>bidsafe {_e(__version__)}, generated {_e(generated)}.</p>"
        f"<h2>Sessions</h2>{_sessions_section(sessions_tsv_summary)}"
        f"<h2>Series</h2>{_series_section(sessions_tsv_summary)}"
        f"<h2>Release gates</h2>{_gates_section(gates)}"
        f"<h2>Image quality</h2>{_table(qc_rows)}"
        f"<h2>Defacing</h2>{_pictures_section(_picture_list(deface_pngs))}"
        "</body></html>\n"
    )


def write_report(
    path: str | Path,
    *,
    sessions_tsv_summary: Sequence[Mapping[str, Any]],
    gate_results: Sequence[GateResult | str | Path],
    qc_rows: Sequence[Mapping[str, Any]],
    deface_pngs: Sequence[str | Path] | Mapping[str, str | Path],
    title: str = "bidsafe run report",
) -> Path:
    """Write the self-contained HTML report to `path` (atomically) and return it."""
    text = render_report(
        sessions_tsv_summary=sessions_tsv_summary,
        gate_results=gate_results,
        qc_rows=qc_rows,
        deface_pngs=deface_pngs,
        title=title,
    )
    return atomic_write_text(path, text)
