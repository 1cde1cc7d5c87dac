"""A self-contained HTML report of a run: session status, series converted and left out, gate results, QC
table, deface pictures.

One file, no external assets (inline CSS, pictures as base64 data URIs), so it can be mailed or archived.
It is written to the work area beside the release, never inside it. It shows pseudonyms and
release-relative paths only; every text is HTML-escaped. The facts it shows (counts, reasons in words, QC
flags) come from `reportfacts`.
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
from bidsafe.release.reportfacts import (
    COM_SHIFT_IMPLAUSIBLE_MM,
    EXCLUDED_PREFIXES,
    QC_COLUMNS,
    REASON_WORDS,
    TSNR_IMPLAUSIBLE,
    UNFINISHED,
    is_true,
    k_anonymity_actions,
    nothing_published_reason,
    number_or_none,
    outcome_of,
    qc_flags,
    quarantine_counts,
    reason_in_words,
    session_counts,
)

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
figure img{max-width:100%;border:1px solid #ccc}figcaption{font-size:1em}
.summary{font-size:1.05em}.summary li{margin:.2em 0}td.flag{color:#a40e0e;font-weight:600}
summary{font-size:1.1em;font-weight:600;cursor:pointer}h4{margin:.8em 0 .3em}
details{margin:.3em 0}pre{white-space:pre-wrap;font-size:.85em;background:#f7f7f7;padding:.5em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


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


def _sessions_section(summary: Sequence[Mapping[str, Any]]) -> str:
    included = sum(1 for r in summary if is_true(r.get("included")))
    rows = []
    for r in _ordered(summary):
        ok = is_true(r.get("included"))
        label = "included" if ok else str(r.get("outcome") or outcome_of(str(r.get("reason", ""))))
        status = f'<span class="{"included" if ok else "withheld"}">{label}</span>'
        conversion = r.get("conversion")
        reason = "" if ok else r.get("words") or r.get("reason", "")
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
    tally = session_counts(summary)
    return (f"<p>{included} of {len(summary)} sessions included, {tally['withheld']} withheld, "
            f"{tally['excluded']} excluded.</p>{table}")


def _series_section(summary: Sequence[Mapping[str, Any]]) -> str:
    """Every series left out, whole or in part, per session, with the reasons dcm2bids and de-identification
    gave (de-identified series numbers and descriptions only)."""
    totals = {"received": 0, "converted": 0, "left_out": 0}
    rows = []
    warned = []
    missing = 0
    for r in _ordered(summary):
        conversion = r.get("conversion")
        if not isinstance(conversion, Mapping):
            missing += 1 if is_true(r.get("included")) else 0  # sessions never converted need none
            continue
        for key in totals:
            totals[key] += int(conversion.get(key, 0))
        if conversion.get("converter_warnings"):
            warned.append(f"<tr>{_labels(r)}<td>{_e(_warnings_text(conversion))}</td></tr>")
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
    if warned:
        # dcm2niix's own word that images were lost: series withheld as incomplete cause these too
        head += ("<p>dcm2niix reported lost data (series withheld as incomplete below cause these too; in the "
                 "private convert log with details):</p><table><thead><tr><th>subject</th><th>session</th>"
                 f"<th>dcm2niix messages</th></tr></thead><tbody>{''.join(warned)}</tbody></table>")
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


def _qc_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>No QC rows.</p>"
    prepared = [qc_flags(r) for r in rows]
    used = [c for c in QC_COLUMNS if any(cells.get(c[0]) for cells, _ in prepared)]
    head = "".join(f"<th>{_e(title)}</th>" for _, title, _ in used) + "<th>flags</th>"
    body = []
    for cells, flags in prepared:
        tds = "".join(
            f'<td class="num">{_e(cells[k])}</td>' if number_or_none(cells.get(k)) is not None
            else f"<td>{_e(cells[k])}</td>"
            for k, _, _ in used
        )
        flag = f'<td class="flag">{_e("; ".join(flags))}</td>' if flags else "<td></td>"
        body.append(f"<tr>{tds}{flag}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------------ deface numbers


def _deface_table(records: Sequence[Mapping[str, Any]]) -> str:
    if not records:
        return ""
    rows = []
    for r in records:
        values = [float(v) for v in r.get("singular_values") or [] if number_or_none(v) is not None]
        scale = f"{min(values):.3f}–{max(values):.3f}" if values else ""
        dice = r.get("agreement_dice")
        how = str(r.get("engine", ""))
        if r.get("template") and r.get("template") != "adult":  # a site's pair (deface.templates)
            how += f", template {r['template']}"
        if r.get("applied_from"):  # the face mask found on the session's T1w (deface.applyto)
            how += f", mask of {r['applied_from']}"
        if r.get("refused") is True:  # a withheld session's records keep what each guard measured
            how += " (refused)"
        rows.append(
            f"<tr><td>{_e(r.get('input', ''))}</td><td>{_e(how)}</td><td>{_e(scale)}</td>"
            f"<td class=\"num\">{_e(r.get('shear', ''))}</td>"
            f"<td class=\"num\">{_e('n/a' if dice is None else dice)}</td>"
            f"<td class=\"num\">{_e(r.get('brain_cm3_removed', ''))}</td>"
            f"<td class=\"num\">{_e(r.get('removed_cm3', ''))}</td></tr>"
        )
    return (
        "<table><thead><tr><th>image</th><th>engine</th><th>registration scale (singular values)</th>"
        "<th>shear</th><th>engine agreement (Dice)</th><th>brain removed (cm³)</th><th>face removed (cm³)</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _summary_block(*, sessions: Sequence[Mapping[str, Any]], gates: Sequence[GateResult],
                   published: str | None, why_not: str, quarantine: Mapping[str, int] | None,
                   k_anonymity: str, run_failed: bool, missing: Sequence[str]) -> str:
    counts = session_counts(sessions)
    if published:
        headline = f'<p class="banner pass">Published: {_e(published)}</p>'
    else:
        headline = f'<p class="banner fail">Nothing published: {_e(why_not)}</p>'
    if run_failed:
        headline += ('<p class="banner fail">The run failed: this report was written from what the run left; '
                     "see the terminal or the Snakemake log for the failing job.</p>")
    items = [
        f"<li><b>Sessions</b>: {counts['included']} included, {counts['withheld']} withheld, "
        f"{counts['excluded']} excluded"
        + (f", {counts[UNFINISHED]} unfinished" if counts[UNFINISHED] else "")
        + f" (of {len(sessions)})"
    ]
    out = [r for r in _ordered(sessions) if not is_true(r.get("included"))]
    if out:
        items[-1] += "<ul>" + "".join(
            f"<li>sub-{_e(str(r.get('subject', '')).removeprefix('sub-'))} "
            f"ses-{_e(str(r.get('session', '')).removeprefix('ses-'))}: "
            f"<b>{_e(r.get('outcome') or outcome_of(str(r.get('reason', ''))))}</b> — "
            f"{_e(r.get('words') or r.get('reason', ''))}</li>" for r in out) + "</ul>"
    items[-1] += "</li>"
    if quarantine is None:
        items.append("<li><b>Quarantined at ingest</b>: not known (the ingest report is missing)</li>")
    else:
        total = sum(quarantine.values())
        detail = "; ".join(f"{n} {reason}" for reason, n in quarantine.items())
        items.append(f"<li><b>Quarantined at ingest</b>: {total} file(s)" + (f" ({_e(detail)})" if total else "")
                     + "</li>")
    left_out = sum(int(r["conversion"].get("left_out", 0)) for r in sessions if isinstance(r.get("conversion"),
                                                                                          Mapping))
    partly = sum(int(r["conversion"].get("partly_left_out", 0)) for r in sessions
                 if isinstance(r.get("conversion"), Mapping))
    items.append(f"<li><b>Series left out</b> (by the mapping, by de-identification or as incomplete): "
                 f"{left_out} whole, {partly} in part (listed under Series, with the reason)</li>")
    items.append(f"<li><b>k-anonymity</b>: {_e(k_anonymity)}</li>")
    if gates:
        gate_items = "".join(
            f'<li><span class="{"pass" if g.passed else "fail"}">{"passed" if g.passed else "FAILED"}</span> '
            f"{_e(g.name)}: {_e(g.summary)}</li>" for g in gates)
        not_run = [n for n in REQUIRED_GATES if n not in {g.name for g in gates}]
        gate_items += "".join(f'<li><span class="fail">not run</span> {_e(n)}</li>' for n in not_run)
        items.append(f"<li><b>Gates</b><ul>{gate_items}</ul></li>")
    else:
        items.append("<li><b>Gates</b>: none ran</li>")
    if missing:
        items.append(f"<li><b>Missing inputs</b> (the report shows what exists): {_e(', '.join(missing))}</li>")
    return f'<div class="summary">{headline}<ul>{"".join(items)}</ul></div>'


# ------------------------------------------------------------------------------------------ per session


def _session_key(value: Any) -> tuple[str, str]:
    return tuple(str(v or "").removeprefix(p) for v, p in zip(value, ("sub-", "ses-"), strict=True))  # type: ignore[return-value]


def _warnings_text(conversion: Mapping[str, Any]) -> str:
    warnings = conversion.get("converter_warnings") or {}
    return "; ".join(f"{phrase} ({int(count)})" for phrase, count in sorted(warnings.items()))


def _series_rows(conversion: Mapping[str, Any]) -> str:
    rows = []
    for series in conversion.get("series", []):
        reasons = "; ".join(f"{i.get('reason', '')} ({i.get('count', 0)} {i.get('unit', '')})"
                            for i in series.get("left_out", []))
        images = ", ".join(Path(str(i)).name for i in series.get("images", []))
        rows.append(f"<tr><td class=\"num\">{_e(series.get('series', ''))}</td>"
                    f"<td>{_e(series.get('description', ''))}</td><td class=\"num\">{_e(series.get('files', ''))}</td>"
                    f"<td>{_e(series.get('status', ''))}</td><td>{_e(images)}</td><td>{_e(reasons)}</td></tr>")
    if not rows:
        return "<p>No series.</p>"
    warned = (f"<p>dcm2niix reported lost data: {_e(_warnings_text(conversion))}</p>"
              if conversion.get("converter_warnings") else "")
    return ("<table><thead><tr><th>series</th><th>description</th><th>files</th><th>outcome</th><th>images</th>"
            f"<th>left out</th></tr></thead><tbody>{''.join(rows)}</tbody></table>" + warned)


def _drilldown(sessions: Sequence[Mapping[str, Any]], qc_rows: Sequence[Mapping[str, Any]],
               pictures: Sequence[tuple[str, Path]], records: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
               ) -> str:
    parts = []
    used_pictures: set[str] = set()
    used_qc: set[int] = set()
    for r in _ordered(sessions):
        key = _session_key((r.get("subject"), r.get("session")))
        ok = is_true(r.get("included"))
        label = "included" if ok else str(r.get("outcome") or outcome_of(str(r.get("reason", ""))))
        body = [] if ok else [f"<p><b>Why</b>: {_e(r.get('words') or r.get('reason', ''))}</p>"]
        if isinstance(r.get("conversion"), Mapping):
            body.append("<h4>Series</h4>" + _series_rows(r["conversion"]))
        session_records = records.get(key) or []
        figures = [(c, p) for c, p in pictures if c.startswith(f"{key[0]}/{key[1]}:")]
        used_pictures.update(c for c, _ in figures)
        if session_records or figures:
            body.append("<h4>Defacing</h4>" + _deface_table(session_records) + _pictures_section(figures))
        rows = [(i, q) for i, q in enumerate(qc_rows)
                if _session_key((q.get("subject"), q.get("session"))) == key]
        used_qc.update(i for i, _ in rows)
        if rows:
            body.append("<h4>Image quality</h4>" + _qc_table([q for _, q in rows]))
        css = "included" if ok else "withheld"
        parts.append(f'<details{" open" if len(sessions) <= 4 else ""}><summary>sub-{_e(key[0])} ses-{_e(key[1])}: '
                     f'<span class="{css}">{_e(label)}</span></summary>{"".join(body) or "<p>Nothing more.</p>"}'
                     "</details>")
    rest_qc = [q for i, q in enumerate(qc_rows) if i not in used_qc]
    rest_pictures = [(c, p) for c, p in pictures if c not in used_pictures]
    if rest_qc or rest_pictures:
        parts.append("<h3>Other images</h3>" + (_qc_table(rest_qc) if rest_qc else "")
                     + (_pictures_section(rest_pictures) if rest_pictures else ""))
    return "".join(parts) or "<p>No session.</p>"


# ------------------------------------------------------------------------------------------ the page


def render_report(
    *,
    sessions_tsv_summary: Sequence[Mapping[str, Any]],
    gate_results: Sequence[GateResult | str | Path],
    qc_rows: Sequence[Mapping[str, Any]],
    deface_pngs: Sequence[str | Path] | Mapping[str, str | Path],
    title: str = "bidsafe run report",
    published: str | None = None,
    quarantine: Mapping[str, int] | None = None,
    k_anonymity: Mapping[str, Any] | None = None,
    deface_records: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
    missing: Sequence[str] = (),
    failed_rules: Sequence[str] = (),
    run_failed: bool = False,
) -> str:
    """The report as an HTML string: a summary block first (what a lab manager reads in a minute), then the
    sessions, series, gates and a drill-down per session."""
    gates = [g if isinstance(g, GateResult) else read_gate_report(g) for g in gate_results]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    drilldown = _drilldown(sessions_tsv_summary, qc_rows, _picture_list(deface_pngs), deface_records or {})
    why_not = nothing_published_reason(gates, sessions_tsv_summary, failed_rules, missing)
    summary = _summary_block(sessions=sessions_tsv_summary, gates=gates, published=published, why_not=why_not,
                             quarantine=quarantine, k_anonymity=k_anonymity_actions(k_anonymity),
                             run_failed=run_failed, missing=missing)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>bidsafe {_e(__version__)}, generated {_e(generated)}.</p>"
        f"<h2>Summary</h2>{summary}"
        f"<h2>Sessions</h2>{_sessions_section(sessions_tsv_summary)}"
        f"<h2>Series</h2>{_series_section(sessions_tsv_summary)}"
        f"<h2>Release gates</h2>{_gates_section(gates)}"
        f"<h2>Per session</h2>{drilldown}"
        "</body></html>\n"
    )


def write_run_report(path: str | Path, **kwargs: Any) -> Path:
    """Write the self-contained HTML report to `path` (atomically) and return it (arguments: `render_report`)."""
    return atomic_write_text(path, render_report(**kwargs))


__all__ = [
    "COM_SHIFT_IMPLAUSIBLE_MM",
    "EXCLUDED_PREFIXES",
    "REASON_WORDS",
    "TSNR_IMPLAUSIBLE",
    "UNFINISHED",
    "k_anonymity_actions",
    "nothing_published_reason",
    "outcome_of",
    "qc_flags",
    "quarantine_counts",
    "reason_in_words",
    "render_report",
    "session_counts",
    "write_run_report",
]
