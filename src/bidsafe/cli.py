"""The `bidsafe` command: a thin front over the library, one subcommand per task.

Each subcommand parses its arguments here (so names and flags stay stable in one place) and calls
`cli_main(args) -> int` in the module that owns the task. Modules are imported lazily so that
`bidsafe --help` is fast and one broken stage never breaks the others' commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from bidsafe import __version__
from bidsafe.errors import BidsafeError

Register = Callable[[argparse._SubParsersAction], None]


def _demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write realistic fake scanner exports (with fake personal data) for demos and tests",
        description="Write deterministic, realistic raw MR scanner exports: T1w/T2w heads with a face, "
        "BOLD, DWI, a field-map pair, a localizer and a burned-in screenshot per session, carrying fake "
        "personal data wherever real exports carry it, plus junk files an inbox really receives.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the exports into (created)")
    p.add_argument("--subjects", type=int, default=2, help="number of fake patients (default 2)")
    p.add_argument("--sessions", type=int, default=1, help="sessions per patient (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--consent", metavar="FILE", help="also write a consent registry TSV for these patients")
    p.add_argument("--demographics", metavar="FILE", help="also write a demographics TSV for these patients")
    p.set_defaults(handler="bidsafe.demo:cli_main")


def _ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="index an inbox of DICOM files by study (header-only), quarantining unreadable files",
        description="Index every file under INBOX with header-only reads, group DICOM files by "
        "StudyInstanceUID into sessions and write the private session index. The inbox is never modified. "
        "Symbolic links: INBOX itself may be a link (it is resolved once); links inside it are never followed "
        "(a link can lead out of the inbox or into a loop, and a file linked from inside the inbox is read "
        "where it lies) and each is listed in the quarantine report with the reason. Every other file that is "
        "not usable image DICOM is listed there too. Prints counts only. Exit 0 when at least one study was "
        "found, 1 when none was (the reports are still written; the message counts the quarantine reasons).",
    )
    p.add_argument("inbox", metavar="INBOX", help="folder of raw scanner exports (read only)")
    p.add_argument("--index", required=True, metavar="FILE.tsv", help="session index to write (private)")
    p.add_argument("--quarantine", required=True, metavar="FILE.tsv", help="quarantine report (private)")
    p.add_argument(
        "--cache",
        metavar="FILE.tsv",
        help="previous index (private): unchanged files (same path, size, mtime) are not re-read; "
        "refreshed with the new index afterwards",
    )
    p.set_defaults(handler="bidsafe.ingest:cli_main")


def _check_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="check a pipeline config file against the schema without running anything",
        description="Check a pipeline config (YAML) against workflow/schemas/config.schema.yaml: unknown keys at "
        "any level, wrong types and refused values are printed one per line with the key and what is allowed. "
        "Exit 0 when valid, 2 otherwise.",
    )
    p.add_argument("file", metavar="CONFIG.yaml", help="the config file a run would be given with --configfile")
    p.set_defaults(handler="bidsafe.config:cli_check")


def _config_docs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config-docs",
        help="write config/README.md from the config schema (or check that it agrees)",
        description="Generate the configuration reference (every key with type, default, allowed values and "
        "meaning) from workflow/schemas/config.schema.yaml. Prints it unless --write or --check is given; "
        "--check exits 1 when FILE differs from the schema.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--write", metavar="FILE", help="write the reference to FILE (replaced atomically)")
    where.add_argument("--check", metavar="FILE", help="exit 1 unless FILE equals the generated reference")
    p.set_defaults(handler="bidsafe.config:cli_docs")


def _consent_template(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consent-template",
        help="write a consent registry to fill in: one row per PatientID found in the inbox (private)",
        description="Index INBOX (header-only, like `ingest`) and write OUT, a consent registry with one row per "
        "DICOM PatientID: patient_id, consent (empty: fill in none, named, members or public), study_id, "
        "consent_form_id, withdrawn (empty), study_count, first_study, last_study (YYYY-MM-DD). OUT holds "
        "real identifiers: it is written with mode 0600 and belongs with the team's private files, never in "
        "the inbox, work or release folders. Only counts are printed. A registry with an empty consent cell is "
        "refused by the pipeline until every row is filled in.",
    )
    p.add_argument("inbox", metavar="INBOX", help="folder of raw scanner exports (read only)")
    p.add_argument("out", metavar="OUT.tsv", help="registry to write (.tsv, or .csv for comma-separated; private)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.set_defaults(handler="bidsafe.consent:cli_template")


def _deid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deid",
        help="de-identify every DICOM file under SRC into DST (PS3.15 Annex E rules)",
        description="De-identify every DICOM file under SRC into DST with the rule set (PS3.15 Annex E "
        "Basic Profile plus options). Output paths are built from de-identified values only. Dates shift by "
        "a keyed offset per patient (PatientID compared without case, blanks, separators or leading zeros); "
        "each study gets one shift, decided by its first file. An image without pixel data (a file cut short) "
        "fails. The rule set is checked as `bidsafe check-rules` does before anything is written. Exit 0 when "
        "every file was processed or deliberately withheld, 1 when any failed, 2 for bad arguments or a rule "
        "set check-rules rejects.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--rules", metavar="FILE", help="rule set YAML (default: the shipped profile)")
    p.add_argument("--key", metavar="FILE", help="secret key file (default: created in a private place)")
    p.add_argument("--report", metavar="FILE.json", help="write the per-file report here")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument(
        "--vocabulary",
        action="append",
        default=[],
        metavar="FILE",
        help="site vocabulary file extending the shipped descriptor vocabulary (repeatable)",
    )
    p.add_argument(
        "--allow-weaker-rules",
        action="store_true",
        help="apply a rule set that `bidsafe check-rules` rejects (refused otherwise, exit 2); the output is "
        "then stamped PatientIdentityRemoved NO and is not shareable",
    )
    p.set_defaults(handler="bidsafe.deid.engine:cli_main")


def _check_rules(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-rules",
        help="check a de-identification rule file against PS3.15 Table E.1-1",
        description="Check that every row of Table E.1-1 has an action no weaker than the Basic Profile "
        "plus the options the file declares, and that every keep-list entry has a reason. Prints a "
        "coverage table; exits non-zero on a gap.",
    )
    p.add_argument(
        "file", metavar="FILE", nargs="?", help="rule file or folder of *.yaml (default: the shipped profile)"
    )
    p.add_argument(
        "--table",
        metavar="FILE",
        help="Table E.1-1 JSON (default: $BIDSAFE_PS315_TABLE, else the copy shipped in the package, "
        "bidsafe/data/ps315/table_e1_1.json, DICOM edition 2024b)",
    )
    p.set_defaults(handler="bidsafe.deid.rules:cli_main")


def _deface(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deface",
        help="remove the face from a structural NIfTI image (fails closed)",
        description="Register pydeface's head template to the image, carry its face mask through the "
        "same transform and zero the face. Exit 3 with no OUT written when a safety guard trips.",
    )
    p.add_argument("input", metavar="IN.nii.gz")
    p.add_argument("output", metavar="OUT.nii.gz")
    p.add_argument("--engine", choices=["auto", "builtin", "fsl"], default="auto")
    p.add_argument("--qc", metavar="QC.png", help="write a before/after picture")
    p.add_argument("--mask", metavar="MASK.nii.gz", help="write the removal mask")
    p.add_argument("--threads", type=int, metavar="N",
                   help="registration threads (default: $BIDSAFE_DEFACE_THREADS or 1)")
    p.set_defaults(handler="bidsafe.deface.engine:cli_main")


def _validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="run the official BIDS validator and summarise its errors",
        description="Run the schema-based BIDS validator on DIR and print a readable summary "
        "(file, code, message). Exit 0 when valid (warnings allowed), 1 on errors.",
    )
    p.add_argument("bids_dir", metavar="DIR")
    p.add_argument("--backend", choices=["deno", "node"], default="deno")
    p.add_argument("--report", metavar="FILE.json", help="write the parsed result here")
    p.set_defaults(handler="bidsafe.validate:cli_main")


def _leak_scan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leak-scan",
        help="scan a dataset for any personal value found in the raw DICOM headers",
        description="Harvest every personal value from the raw DICOM under --source (or read a saved harvest "
        "with --values) and scan every file (bytes, NIfTI headers, JSON/TSV text) and every path of DIR, in "
        "the gate's own renderings; released metadata must also be ASCII, and sidecar strings under sub-*/ "
        "vocabulary text (with --vocabulary). Any hit fails, naming file and field but never the value.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--source", metavar="RAW_DIR", help="raw DICOM to harvest")
    p.add_argument("--values", metavar="FILE.json", help="a saved harvest: rows {category, field, value}")
    p.add_argument("--vocabulary", action="append", default=[], metavar="FILE.yaml",
                   help="descriptor vocabulary (repeatable: the shipped file, then site extensions)")
    p.add_argument("--report", metavar="FILE.json", help="the public report: files, fields, counts; no value")
    p.add_argument("--also", action="append", default=[], metavar="DIR", help="more folders (e.g. logs)")
    p.add_argument("--allow", metavar="FILE.yaml",
                   help="site allow-list: a list of {value|pattern, reason} entries (or a mapping with `allow:`); "
                   "hits whose every value is allowed are counted, not failed")
    p.add_argument("--findings", metavar="FILE.json",
                   help="PRIVATE: write each finding's values, their sessions (with a --values harvest saved by "
                   "the pipeline) and the allowing entry here (0600); keep it in the private area")
    p.set_defaults(handler="bidsafe.release.leakscan:cli_main")


def _verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a published release against its MANIFEST.sha256",
        description="Recompute every file's SHA-256 and compare with the release's manifest.",
    )
    p.add_argument("release", metavar="RELEASE")
    p.set_defaults(handler="bidsafe.release.manifest:cli_main")


def _run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline (the workflow shipped with bidsafe) with a site config",
        description="Check CONFIG, then run Snakemake on the workflow shipped inside the bidsafe package in the "
        "current folder (relative data areas in the config are relative to it), so no checkout of the repository "
        "is needed. Targets (e.g. `converted`) and further Snakemake options follow, the options after `--`: "
        "`bidsafe run --configfile site.yaml --cores 8 converted -- --forcerun convert`. Exit 2 for a config "
        "with problems (one line each, nothing run), else Snakemake's exit code (0 when every job finished).",
    )
    p.add_argument("--configfile", required=True, metavar="CONFIG.yaml", help="the site config (see config/README.md)")
    p.add_argument("--cores", default="all", metavar="N", help="cores Snakemake may use (default: all)")
    p.add_argument("-n", "--dry-run", action="store_true", help="list the jobs that would run, run none")
    p.add_argument(
        "snakemake",
        nargs=argparse.REMAINDER,
        metavar="[TARGET ...] [-- SNAKEMAKE_OPTION ...]",
        help="targets of the workflow (default: the whole release), then options passed to Snakemake as given",
    )
    p.set_defaults(handler="bidsafe.runner:cli_main")


COMMANDS: tuple[Register, ...] = (
    _run,
    _demo_data,
    _ingest,
    _consent_template,
    _check_config,
    _config_docs,
    _deid,
    _check_rules,
    _deface,
    _validate,
    _leak_scan,
    _verify,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidsafe",
        description="Turn raw MRI scanner DICOM sessions into a BIDS dataset that is safe to share. "
        "`bidsafe run --configfile SITE.yaml` runs the whole pipeline; the other subcommands are its parts.",
    )
    parser.add_argument("--version", action="version", version=f"bidsafe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except BidsafeError as exc:
        print(f"bidsafe {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A traceback may quote input paths or header values (personal data): show it only on request.
        if os.environ.get("BIDSAFE_DEBUG"):
            raise
        print(
            f"bidsafe {args.command}: internal error ({type(exc).__name__}); rerun with BIDSAFE_DEBUG=1 to see "
            "the traceback (it may contain personal data)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
