"""Gate `leak scan`: look for every raw harvested personal value anywhere in a dataset, independently.

The gate shares no matching code with the stages it checks. It reads only the raw harvested rows
{category, field, value} (a saved harvest, or one it runs itself on the raw DICOM with
`bidsafe.phi.harvest_files`, which collects and does not match), renders them itself (`leakforms`: names in
every joining, transliterated, in ASCII spelling and as mojibake; identifiers without separators and with
leading zeros added or dropped; dates in every written form) and reads the descriptor vocabulary with its own
loader (`leakvocab`). `tests/unit/test_leakscan.py` fails if these modules import anything else from
`bidsafe.phi`, `bidsafe.deid` or `bidsafe.scrub`.

Two kinds of rule. Personal values, in every file and every path of the target and of `also` folders (logs):

| where            | what is scanned                                        | needles                          |
|------------------|--------------------------------------------------------|----------------------------------|
| `path`           | every path component (and symlink targets)             | all                              |
| `json:<key>`     | JSON keys and values, decoded (so `\\u00fc` escapes count) | all                              |
| `tsv:<column>`   | TSV cells; `tsv-header` for column names               | all                              |
| `text`           | any text file, decoded and as bytes (also JSON/TSV)    | all                              |
| `gzip-header`    | gzip FNAME/FCOMMENT/FEXTRA (pigz stores input names)   | all                              |
| `nifti-header:<field>` | NIfTI text fields (descrip, aux_file, ...)       | all                              |
| `nifti-extension`| NIfTI header extensions                                | all                              |
| `nifti-data`     | NIfTI voxel bytes (decompressed)                       | long only (>= VOXEL_NEEDLE_MIN)  |
| `bytes`          | any other binary file, and gzip members that are not text | >= BINARY_NEEDLE_MIN          |

Decoded text is compared `fold`ed (NFKC, case folding, diacritics removed) with folded forms; identifiers
also with separators removed on both sides; dates by recognising every written date and comparing the day.
Raw bytes are compared ASCII-lower-cased with the byte encodings (UTF-8, Latin-1, cp1252) of every form.

Structural rules, in released metadata (the target, not the logs): any text that is not ASCII is a finding
(`non-ascii`: JSON keys and string values, TSV cells and headers, NIfTI header text fields and extensions,
gzip header names, file and folder names); and in JSON sidecars under sub-*/ every string value may hold
vocabulary tokens only (`non-vocabulary token`; values naming a released file, as IntendedFor does, are path
tokens and checked as paths). Single-token forms of a harvested value that are vocabulary words (a patient
named Bold) are not searched: vocabulary text is allowed by construction. The report counts them.

Why voxel data gets long needles only: voxel bytes are close to random, so a short needle matches by chance
(a 5-letter needle, case-insensitive, matches ~1.5 times per 50 GB of random bytes, per needle; a release of
500 sessions holds ~10^11 voxel bytes and ~10^4 needles). At 8 characters chance hits drop below 10^-1 for
such a release, while a header or text block pasted into voxel data is still found.

Boundary rules per match: a digit may not continue a number on either side (nor a decimal point followed by
a digit: "0.19800417" is not a birth date; but a date may run on into a time, "20220627125713", and an
identifier may carry extra leading zeros), and a letter may not continue a short word (< UNBOUNDED_MIN
characters, ideographic forms excepted), so "Lee" is not found in "asleep" while "Quillfeather" is found in
"xQuillfeatherx"; digits and underscores are boundaries ("Johanna1", "Zqxwv_2"). UIDs are found by
tokenising dotted numbers and looking each component-aligned piece up in a set.

A hit names the file (the parts of path components that carry a value, and any non-ASCII run, are replaced
by `<withheld>`), where, the DICOM field (or `-` for a structural rule) and the category or rule, never the
value. Any hit fails the gate, unless the site's allow-list (`leakallow`, `release.leak_scan.allow`) allows
every value it found: then it is counted as allowed, not as a finding.

Triage: the private findings file (`write_findings`, 0600, in the private area) gives, for every finding and
every allowed hit, the values found, the sessions each value was harvested from (pseudonymous labels, when
the harvest was made per session: `harvest_sessions`) and the entry that allowed it. Only it holds values.

Values that are technical placeholders as a whole (`leakforms.PLACEHOLDER_VALUES`: PatientID `dicom`,
PatientName `QA^Phantom`, ...) are not searched: they name no one, and they match README text and log lines.

Modules (data flows down the list): `leakscan` (this entry point: one run, allow-list triage), `leaktree`
(the walk, labels, scan memory), `leakfile` (one file), `leakread` (byte sources), `leakmatch` (the
matcher), `leakhits` (results); beside them `leakharvest` (raw values from the inbox) and `leakcli`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bidsafe.errors import ConfigError
from bidsafe.progress import Progress
from bidsafe.release.leakallow import AllowList, load_allow
from bidsafe.release.leakcache import ScanMemory, scan_settings_key
from bidsafe.release.leakfile import safe_component
from bidsafe.release.leakforms import RawValue
from bidsafe.release.leakharvest import UNASSIGNED, harvest_sessions, harvest_source, load_origins, save_harvest
from bidsafe.release.leakhits import (
    NON_ASCII,
    NON_VOCABULARY,
    STRUCTURE,
    VALUE_WITHHELD,
    LeakHit,
    LeakReport,
    write_findings,
    write_leak_report,
)
from bidsafe.release.leakmatch import BINARY_NEEDLE_MIN, VOXEL_NEEDLE_MIN, Scanner
from bidsafe.release.leaktree import RememberedScan, scan_tree


def _open_memory(path: Path | None, scanner: Scanner) -> RememberedScan | None:
    if path is None:
        return None
    vocabulary = scanner.vocabulary
    settings = scan_settings_key(sorted(vocabulary.words) if vocabulary else [],
                                 [p.pattern for p in vocabulary.patterns] if vocabulary else [],
                                 scanner.scan_voxels)
    saved = ScanMemory.load(path, settings)
    new = saved.new_values(scanner.values)
    # a remembered file is searched again for the new values in its text, names and headers; a NIfTI image's
    # voxel data only when the image itself is new or changed
    delta = Scanner(new, scan_voxels=False, vocabulary=vocabulary) if new and saved.files else None
    return RememberedScan(saved, frozenset(scanner.values), delta)


def leak_scan(
    target: Path, values: Any, *, also: Sequence[Path] = (), scan_voxels: bool = True, vocabulary: Any = None,
    allow: Any = None, origins: Mapping[RawValue, Iterable[str]] | None = None, progress: Progress | None = None,
    memory: Path | None = None,
) -> LeakReport:
    """Scan `target` (and each `also` folder) for every raw harvested value; hits never hold values.

    `values`: raw harvested rows (see `leakforms.raw_values`). `vocabulary`: the vocabulary file paths (or a
    loaded `Vocabulary`); without one the non-vocabulary rule does not run (the report says so). Files under
    `also` folders are labelled `<folder name>/<relative path>` and get the value search only (they are logs,
    not released metadata). `allow`: the site allow-list (`leakallow.load_allow` input); a hit whose every
    value it allows moves to `allowed`. `origins`: value -> session labels it was harvested from (private
    findings only). `memory`: a private file (`leakcache.ScanMemory`) remembering each file's findings
    between runs, so that unchanged files are searched only for new values. Raises ConfigError when there is
    nothing to look for or a folder is missing: an empty scan must never pass for a clean one.
    """
    target = Path(target)
    for folder in (target, *also):
        if not Path(folder).is_dir():
            raise ConfigError("leak scan: not a folder", folder)
    allow_list = load_allow(allow)
    started = time.perf_counter()
    scanner = Scanner(values, scan_voxels=scan_voxels, vocabulary=vocabulary)
    if not scanner.values:
        raise ConfigError("leak scan: no personal values to look for (was the source harvested?)")
    found: dict[LeakHit, set[RawValue]] = {}
    hits, files, total = _scan_folders(target, also, scanner, found, progress, _open_memory(memory, scanner))
    rules = ["personal values", NON_ASCII] + ([NON_VOCABULARY] if scanner.vocabulary else [])
    findings, allowed, allowed_by = _triage(hits, found, allow_list)
    wanted = {v for h in hits for v in found.get(h, ())}
    return LeakReport(
        target=safe_component(target.name, scanner),
        also=[safe_component(Path(f).name, scanner) for f in also],
        values=len(scanner.values),
        needles=scanner.needle_count,
        files=files,
        bytes=total,
        seconds=time.perf_counter() - started,
        hits=findings,
        rules=rules,
        vocabulary=list(scanner.vocabulary.files) if scanner.vocabulary else [],
        vocabulary_words_not_searched=scanner.vocabulary_skipped,
        placeholder_values_not_searched=scanner.placeholders_skipped,
        allowed=allowed,
        allow=allow_list.summary(),
        found={h: sorted(found.get(h, ())) for h in sorted(hits)},
        allowed_by=allowed_by,
        origins={v: sorted(set(origins.get(v, ()))) for v in wanted} if origins else {},
    )


def _scan_folders(target: Path, also: Sequence[Path], scanner: Scanner, found: dict[LeakHit, set[RawValue]],
                  progress: Progress | None, remembered: RememberedScan | None) -> tuple[set[LeakHit], int, int]:
    """(hits, files, bytes) of the target (released metadata) and each `also` folder (logs: values only);
    the scan memory, when kept, is saved after all of them."""
    hits, files, total = scan_tree(target, scanner, found=found, progress=progress, memory=remembered,
                                   memory_prefix="0/")
    for number, folder in enumerate(also, start=1):
        prefix = safe_component(Path(folder).name, scanner) + "/"
        more_hits, more_files, more_bytes = scan_tree(Path(folder), scanner, label_prefix=prefix, structural=False,
                                                      found=found, progress=progress, memory=remembered,
                                                      memory_prefix=f"{number}:{Path(folder).name}/")
        hits |= more_hits
        files += more_files
        total += more_bytes
    if remembered is not None:
        remembered.saved.save(scanner.values)
    return hits, files, total


def _triage(hits: Iterable[LeakHit], found: Mapping[LeakHit, set[RawValue]],
            allow: AllowList) -> tuple[list[LeakHit], list[LeakHit], dict[RawValue, dict[str, Any]]]:
    """(findings, allowed hits, value -> the entry that allowed it). A hit is allowed when it has values and
    the allow-list allows every one of them; structural hits (no value) always stay findings."""
    findings: list[LeakHit] = []
    allowed: list[LeakHit] = []
    allowed_by: dict[RawValue, dict[str, Any]] = {}
    for hit in sorted(hits):
        values = found.get(hit, set())
        entries = {value: allow.match(value.value) for value in values} if allow.entries else {}
        for value, entry in entries.items():
            if entry is not None:
                allowed_by[value] = {"entry": entry.index, **entry.to_dict()}
        if values and entries and all(entry is not None for entry in entries.values()):
            allowed.append(hit)
        else:
            findings.append(hit)
    return findings, allowed, allowed_by


__all__ = [
    "BINARY_NEEDLE_MIN",
    "NON_ASCII",
    "NON_VOCABULARY",
    "STRUCTURE",
    "UNASSIGNED",
    "VOXEL_NEEDLE_MIN",
    "VALUE_WITHHELD",
    "AllowList",
    "LeakHit",
    "LeakReport",
    "Scanner",
    "ScanMemory",
    "harvest_sessions",
    "harvest_source",
    "leak_scan",
    "load_origins",
    "save_harvest",
    "scan_tree",
    "write_findings",
    "write_leak_report",
]
