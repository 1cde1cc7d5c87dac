"""The de-identification report: each input file's fate (a status and its reason) and what the run harvested.

The report names input paths and replaced tokens: private, written 0600, never printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bidsafe import __version__
from bidsafe.phi import (
    PersonalValues,
)

PROCESSED = "processed"
FILE_WITHHELD = "withheld"
FAILED = "failed"
NOT_DICOM = "not_dicom"
DUPLICATE = "duplicate"
STATUSES: tuple[str, ...] = (PROCESSED, FILE_WITHHELD, FAILED, NOT_DICOM, DUPLICATE)


@dataclass
class FileEntry:
    """One input file's fate. `input` is an input path: private, never printed."""

    input: str
    status: str
    output: str | None = None  # path relative to DST, built from de-identified values only
    reason: str = ""
    series: str = ""  # SeriesNumber (kept as is by the rules): says which series lost a withheld/failed file


@dataclass
class DeidReport:
    entries: list[FileEntry]
    personal_values: PersonalValues
    key_path: Path | None = None
    rules_profile: str = ""
    # de-identified StudyInstanceUID -> token the vocabulary replaced -> count: private (tokens may be personal),
    # written to the private report so a site knows what to add to its vocabulary; never printed.
    replaced_tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    # check-rules gaps of a rule set applied anyway (allow_weaker_rules): the output is not shareable
    weaker_rules: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.entries:
            counts[entry.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when no file failed (processed, withheld, duplicate and non-DICOM files are all accounted for)."""
        return not any(entry.status == FAILED for entry in self.entries)


def write_report(report: DeidReport, path: str | Path) -> Path:
    """Write the report as JSON, 0600: it names input paths, so it belongs in the private area."""
    import json

    from bidsafe.fsutil import atomic_write_text
    from bidsafe.private import FILE_MODE, private_write_text

    payload = {
        "tool": "bidsafe deid",
        "version": __version__,
        "rules_profile": report.rules_profile,
        "key_path": str(report.key_path) if report.key_path else None,
        "counts": report.counts,
        "shareable": not report.weaker_rules,
        "weaker_rules": list(report.weaker_rules),
        "replaced_tokens": {
            study: dict(sorted(tokens.items(), key=lambda item: (-item[1], item[0])))
            for study, tokens in sorted(report.replaced_tokens.items())
        },
        "files": [
            {"input": e.input, "output": e.output, "status": e.status, "reason": e.reason, "series": e.series}
            for e in report.entries
        ],
    }
    text = json.dumps(payload, indent=1) + "\n"
    path = Path(path)
    if path.parent.is_dir():
        # An existing folder is left as it is (it may be the user's working folder); the file is 0600.
        return atomic_write_text(path, text, mode=FILE_MODE)
    return private_write_text(path, text)  # new folders are made 0700
