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
import textwrap
from collections.abc import Callable, Sequence
from typing import TypeAlias

from bidsafe import __version__
from bidsafe.errors import BidsafeError
from bidsafe.progress import console_logging

# a string: argparse's subparsers action is generic only in the type stubs, not at run time
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register = Callable[[Subparsers], None]


class _Formatter(argparse.HelpFormatter):
    """Wraps paragraphs like argparse does, but keeps the epilog's one-line-per-exit-code layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line.startswith("  "):  # an exit code: wrapped under its own text
                lines.append(textwrap.fill(line.strip(), width, initial_indent=indent + "  ",
                                           subsequent_indent=indent + "       "))
            else:
                lines.append(super()._fill_text(line, width, indent) if line.strip() else "")
        return "\n".join(lines)


def exit_codes(*codes: tuple[int, str]) -> str:
    """The `exit codes:` epilog every subcommand's help ends with (tests/unit/test_cli.py checks each one).

    The shared meanings: 0 done, 1 a finding or a failed check (or an input that cannot be read), 2 bad
    arguments or configuration (argparse's own usage errors are 2 too), 3 a safety guard refused, 130
    interrupted. Each command lists the codes it can return with what they mean for it.
    """
    listed = dict(codes)
    listed.setdefault(2, "bad arguments or configuration (the message says which)")
    listed.setdefault(130, "interrupted (Ctrl-C)")
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in sorted(listed.items()))


def _verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity", default=default,
                      help="also show debug messages of the `bidsafe` logger")
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=default,
                      help="only warnings and errors: no progress, no informational lines")


def _add(sub: Subparsers, name: str, **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand parser with the shared help layout and -v/-q (accepted before or after the command)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=_Formatter, **kwargs)  # type: ignore[arg-type]
    _verbosity(parser, argparse.SUPPRESS)  # SUPPRESS: a subcommand without -v/-q keeps the top-level choice
    return parser


PRIVATE = "PRIVATE (names input paths or values; mode 0600, keep it in the private area)"


def _demo_data(sub: Subparsers) -> None:
    p = _add(
        sub, "demo-data",
        help="write realistic fake scanner exports (with fake personal data) for demos and tests",
        description="Write deterministic, realistic raw MR scanner exports: T1w/T2w heads with a face, "
        "BOLD, DWI, a field-map pair, a localizer and a burned-in screenshot per session, carrying fake "
        "personal data wherever real exports carry it, plus junk files an inbox really receives. OUT_DIR must "
        "be new or empty unless --force is given.",
        epilog=exit_codes((0, "the exports were written"),
                          (1, "an error while writing (disk full, permissions)"),
                          (2, "bad arguments, or OUT_DIR (or --consent/--demographics) exists without --force")),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the exports into (created)")
    p.add_argument("--subjects", type=int, default=2, help="number of fake patients (default 2)")
    p.add_argument("--sessions", type=int, default=1, help="sessions per patient (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--consent", metavar="FILE", help="also write a consent registry TSV for these patients")
    p.add_argument("--demographics", metavar="FILE", help="also write a demographics TSV for these patients")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty OUT_DIR (study folders of the same name are replaced) and "
                   "replace existing --consent/--demographics files (default: refuse)")
    p.set_defaults(handler="bidsafe.demo.cli:cli_main")


def _ingest(sub: Subparsers) -> None:
    p = _add(
        sub, "ingest",
        help="index an inbox of DICOM files by study (header-only), quarantining unreadable files",
        description="Index every file under INBOX with header-only reads, group DICOM files by "
        "StudyInstanceUID into sessions and write the private session index. The inbox is never modified. "
        "Symbolic links: INBOX itself may be a link (it is resolved once); links inside it are never followed "
        "(a link can lead out of the inbox or into a loop, and a file linked from inside the inbox is read "
        "where it lies) and each is listed in the quarantine report with the reason. Every other file that is "
        "not usable image DICOM is listed there too, as are FIFOs, sockets, devices, unreadable files and "
        "folders that cannot be listed. File names with control characters or bytes that are not UTF-8 are "
        "written escaped (\\\\, \\xNN, \\uNNNN), one name per row. Prints counts only. Exit 0 when at least "
        "one study was found, 1 when none was (the reports are still written; the message counts the "
        "quarantine reasons). "
        "The index and quarantine report are derived files: they are replaced on every run.",
        epilog=exit_codes((0, "at least one DICOM study was indexed"),
                          (1, "no study was found (the reports are still written), or a file could not be written"),
                          (2, "bad arguments, or an output inside the inbox")),
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
    p.set_defaults(handler="bidsafe.ingest.cli:cli_main")


def _check_config(sub: Subparsers) -> None:
    p = _add(
        sub, "check-config",
        help="check a pipeline config file against the schema without running anything",
        description="Check a pipeline config (YAML) against workflow/schemas/config.schema.yaml: unknown keys at "
        "any level, wrong types and refused values are printed one per line with the key and what is allowed. "
        "Exit 0 when valid, 2 otherwise.",
        epilog=exit_codes((0, "the config is valid"),
                          (2, "the config is invalid or unreadable (one line per problem)")),
    )
    p.add_argument("file", metavar="CONFIG.yaml", help="the config file a run would be given with --configfile")
    p.set_defaults(handler="bidsafe.config:cli_check")


def _config_docs(sub: Subparsers) -> None:
    p = _add(
        sub, "config-docs",
        help="write config/README.md from the config schema (or check that it agrees)",
        description="Generate the configuration reference (every key with type, default, allowed values and "
        "meaning) from workflow/schemas/config.schema.yaml. Prints it unless --write or --check is given; "
        "--check exits 1 when FILE differs from the schema.",
        epilog=exit_codes((0, "printed, written, or FILE agrees with the schema"),
                          (1, "--check: FILE differs from the schema")),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--write", metavar="FILE", help="write the reference to FILE (replaced atomically)")
    where.add_argument("--check", metavar="FILE", help="exit 1 unless FILE equals the generated reference")
    p.set_defaults(handler="bidsafe.config:cli_docs")


def _consent_template(sub: Subparsers) -> None:
    p = _add(
        sub, "consent-template",
        help="write a consent registry to fill in: one row per PatientID found in the inbox (private)",
        description="Index INBOX (header-only, like `ingest`) and write OUT, a consent registry with one row per "
        "DICOM PatientID: patient_id, consent (empty: fill in none, named, members, public or open), study_id, "
        "consent_form_id, withdrawn (empty), study_count, first_study, last_study (YYYY-MM-DD). OUT holds "
        "real identifiers: it is written with mode 0600 and belongs with the team's private files, never in "
        "the inbox, work or release folders. Only counts are printed. A registry with an empty consent cell is "
        "refused by the pipeline until every row is filled in.",
        epilog=exit_codes((0, "OUT was written"), (1, "the inbox could not be read or OUT not written"),
                          (2, "bad arguments, OUT inside the inbox, or OUT exists without --force")),
    )
    p.add_argument("inbox", metavar="INBOX", help="folder of raw scanner exports (read only)")
    p.add_argument("out", metavar="OUT.tsv", help="registry to write (.tsv, or .csv for comma-separated); " + PRIVATE)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.set_defaults(handler="bidsafe.pseudonymise.consent:cli_template")


def _deid(sub: Subparsers) -> None:
    p = _add(
        sub, "deid",
        help="de-identify every DICOM file under SRC into DST (PS3.15 Annex E rules)",
        description="De-identify every DICOM file under SRC into DST with the rule set (PS3.15 Annex E "
        "Basic Profile plus options). Output paths are built from de-identified values only. Dates shift by "
        "a keyed offset per patient (PatientID compared without case, blanks, separators or leading zeros); "
        "each study gets one shift, decided by its first file. An image without pixel data (a file cut short) "
        "fails. The rule set is checked as `bidsafe check-rules` does before anything is written. Exit 0 when "
        "every file was processed or deliberately withheld, 1 when any failed, 2 for bad arguments or a rule "
        "set check-rules rejects.\n"
        "The secret key (pseudonyms, UIDs, date shifts) is found by the rule the pipeline follows too: --key FILE "
        "wins; else --configfile SITE.yaml or --private-dir DIR gives PRIVATE_DIR/secret.key, the pipeline's key "
        "(created there, 0600, only when no linkage table exists yet); with none of them the command refuses, "
        "so it never uses a key other than the pipeline's by accident.",
        epilog=exit_codes((0, "every file was de-identified or deliberately withheld"),
                          (1, "a file failed (see --report), or an input could not be read"),
                          (2, "bad arguments, no key given, DST not new/empty, or a rule set `bidsafe "
                           "check-rules` rejects (without --allow-weaker-rules)")),
    )
    p.add_argument("src", metavar="SRC", help="folder of raw DICOM files (read only)")
    p.add_argument("dst", metavar="DST", help="folder to write the de-identified files into (new or empty; "
                   "bidsafe deid never writes into a folder that has files)")
    p.add_argument("--rules", metavar="FILE", help="rule set YAML (default: the shipped profile)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", metavar="FILE", help="secret key file (must exist)")
    key.add_argument("--configfile", metavar="SITE.yaml",
                     help="the site config a pipeline run gets: its private_dir's secret.key is used")
    key.add_argument("--private-dir", metavar="DIR", help="use DIR/secret.key, the pipeline's key")
    p.add_argument("--report", metavar="FILE.json",
                   help="write the per-file report here; " + PRIVATE)
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
    p.set_defaults(handler="bidsafe.deid.cli:cli_deid")


def _check_rules(sub: Subparsers) -> None:
    p = _add(
        sub, "check-rules",
        help="check a de-identification rule file against PS3.15 Table E.1-1",
        description="Check that every row of Table E.1-1 has an action no weaker than the Basic Profile "
        "plus the options the file declares, and that every keep-list entry has a reason. Prints a "
        "coverage table; exits non-zero on a gap.",
        epilog=exit_codes((0, "every file covers Table E.1-1 and every keep-list entry has a reason"),
                          (1, "a gap, a keep-list entry without reason, or a vocabulary problem"),
                          (2, "bad arguments, or a file that cannot be read as a rule set")),
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
    p.set_defaults(handler="bidsafe.deid.cli:cli_check_rules")


def _deface(sub: Subparsers) -> None:
    p = _add(
        sub, "deface",
        help="remove the face from a structural NIfTI image (fails closed)",
        description="Register pydeface's head template (or --template) to the image, carry its face mask "
        "through the same transform and zero the face. Exit 3 with no OUT written when a safety guard trips; "
        "a head clearly smaller than pydeface's adult template is refused: give an age-appropriate --template.",
        epilog=exit_codes((0, "OUT (and every --applyto output) was written"),
                          (1, "IN cannot be read as a NIfTI image"),
                          (2, "bad arguments, or OUT (or --qc/--mask/an --applyto output) exists without --force"),
                          (3, "a safety guard refused (registration implausible, head smaller than the template's, "
                              "empty image): nothing written")),
    )
    p.add_argument("input", metavar="IN.nii.gz", help="structural image to deface (read only)")
    p.add_argument("output", metavar="OUT.nii.gz", help="defaced image to write")
    p.add_argument("--engine", choices=["auto", "builtin", "fsl"], default="auto",
                   help="registration: builtin (Python), fsl (FLIRT), auto (fsl when installed; default)")
    p.add_argument("--force", action="store_true", help="replace OUT, --qc and --mask if they exist (default: refuse)")
    p.add_argument("--qc", metavar="QC.png", help="write a before/after picture")
    p.add_argument("--mask", metavar="MASK.nii.gz", help="write the removal mask")
    p.add_argument("--threads", type=int, metavar="N",
                   help="registration threads (default: $BIDSAFE_DEFACE_THREADS or 1)")
    p.add_argument("--applyto", nargs="+", metavar="OTHER",
                   help="also deface these images of the same session with IN's face mask (IN's transform carried "
                   "onto each one's grid; both must be in scanner coordinates, as dcm2niix writes them), each "
                   "judged by every guard on its own and registered on its own when the mask does not fit; "
                   "each is written next to OUT as OTHER's file name with _defaced before .nii/.nii.gz. "
                   "Nothing is written unless IN and every OTHER pass")
    p.add_argument("--template", metavar="FILE",
                   help="a head template to register instead of pydeface's adult one (e.g. age-appropriate); "
                   "needs --facemask and --brainmask on the same grid")
    p.add_argument("--facemask", metavar="FILE", help="the template's face mask (0 = face, 1 = keep; as pydeface's)")
    p.add_argument("--brainmask", metavar="FILE",
                   help="the template's brain mask (1 = brain): the guard that no brain is removed needs it")
    p.add_argument("--scale-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="plausible template-mm-per-subject-mm range for --template's heads (default 0.8 1.25)")
    p.set_defaults(handler="bidsafe.deface.engine:cli_main")


def _validate(sub: Subparsers) -> None:
    p = _add(
        sub, "validate",
        help="run the official BIDS validator and summarise its errors",
        description="Run the schema-based BIDS validator on DIR and print a readable summary "
        "(file, code, message). Exit 0 when valid (warnings allowed), 1 on errors.",
        epilog=exit_codes((0, "valid (warnings allowed)"),
                          (1, "BIDS errors, or the validator is missing, crashed or timed out"),
                          (2, "bad arguments")),
    )
    p.add_argument("bids_dir", metavar="DIR", help="the BIDS dataset folder to validate")
    p.add_argument("--backend", choices=["deno", "node"], default="deno",
                   help="which build of the validator to run (default deno)")
    p.add_argument("--report", metavar="FILE.json", help="write the parsed result here")
    p.set_defaults(handler="bidsafe.validate:cli_main")


def _leak_scan(sub: Subparsers) -> None:
    p = _add(
        sub, "leak-scan",
        help="scan a dataset for any personal value found in the raw DICOM headers",
        description="Harvest every personal value from the raw DICOM under --source (or read a saved harvest "
        "with --values) and scan every file (bytes, NIfTI headers, JSON/TSV text) and every path of DIR, in "
        "the gate's own renderings; released metadata must also be ASCII, and sidecar strings under sub-*/ "
        "vocabulary text (with --vocabulary). Any hit fails, naming file and field but never the value.",
        epilog=exit_codes((0, "clean (hits the --allow list accepts are counted, not failed)"),
                          (1, "at least one hit"),
                          (2, "bad arguments: not exactly one of --source/--values, a missing folder, no "
                           "personal value to look for, an unreadable allow-list")),
    )
    p.add_argument("dir", metavar="DIR", help="the dataset folder to scan (e.g. a staged release)")
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
    p.set_defaults(handler="bidsafe.release.leakcli:cli_main")


def _verify(sub: Subparsers) -> None:
    p = _add(
        sub, "verify",
        help="check a published release against its MANIFEST.sha256",
        description="Recompute every file's SHA-256 and compare with the release's manifest.",
        epilog=exit_codes((0, "every file matches MANIFEST.sha256 and SHAREABLE.json"),
                          (1, "a file differs, is missing or is not listed, or the manifest is unreadable")),
    )
    p.add_argument("release", metavar="RELEASE",
                   help="a published release folder (holds MANIFEST.sha256), or a mirrored version "
                   "s3://bucket/prefix/v<N> (every object is read back)")
    p.add_argument("--endpoint", metavar="URL",
                   help="S3-compatible endpoint for an s3:// RELEASE (default: AWS, or $AWS_ENDPOINT_URL)")
    p.set_defaults(handler="bidsafe.release.manifest:cli_main")


def _mirror(sub: Subparsers) -> None:
    p = _add(
        sub, "mirror",
        help="upload a published version to S3 (keys echo the tree, sha256 in each object's metadata)",
        description="Verify RELEASE (a published release_dir/v<N>, or release_dir/latest), then upload it to "
        "DEST/v<N>/ with keys that echo the file tree and each file's sha256 in the object metadata "
        "(x-amz-meta-sha256); SHAREABLE.json and MANIFEST.sha256 go last. Objects already there with the same "
        "sha256 and size are skipped, so an interrupted mirror is resumed by running it again; any other object "
        "under DEST/v<N>/ refuses the mirror before anything is uploaded (never overwritten). Credentials come "
        "from the usual AWS environment variables, AWS_PROFILE or ~/.aws, and are never printed or logged. "
        "Check a mirror at any time with `bidsafe verify s3://bucket/prefix/v<N>`.",
        epilog=exit_codes((0, "every file is in the mirror (and, with --verify, was read back intact)"),
                          (1, "an upload or read failed (run again to resume), or --verify found a difference"),
                          (2, "bad arguments, no credentials, or RELEASE is not a folder"),
                          (3, "refused: the release fails its own verification, or DEST/v<N>/ holds an object "
                           "that is not exactly this release's file (nothing uploaded)")),
    )
    p.add_argument("release", metavar="RELEASE", help="a published version folder (release_dir/v<N> or latest)")
    p.add_argument("destination", metavar="s3://BUCKET/PREFIX",
                   help="where versions are mirrored; this one goes under PREFIX/v<N>/")
    p.add_argument("--endpoint", metavar="URL",
                   help="S3-compatible endpoint (MinIO, Ceph, ...; default: AWS, or $AWS_ENDPOINT_URL)")
    p.add_argument("--threads", type=int, default=4, metavar="N", help="uploads in flight (default 4)")
    p.add_argument("--verify", action="store_true", help="afterwards read every object back against the manifest")
    p.set_defaults(handler="bidsafe.release.mirror:cli_mirror")


def _torrent(sub: Subparsers) -> None:
    p = _add(
        sub, "torrent",
        help="write a .torrent for a published version (and one per configured subset)",
        description="Verify RELEASE, then write OUT.torrent for it: the torrent's folder is named v<N>, like the "
        "mirror's prefix, so a web seed given as the mirror's public URL of the folder holding v<N>/ serves every "
        "file (BEP 19). With --configfile, each subset in release.torrent.subsets (by datatype and/or session "
        "range; dataset-level files always included) is written beside it as OUT-<name>.torrent, and the "
        "config's web seeds, trackers and piece size apply. Piece size: auto (16 KiB to 16 MiB by size, at "
        "least 8 MiB from 4 GiB) unless given. Outputs are replaced atomically.",
        epilog=exit_codes((0, "every torrent was written"),
                          (1, "a file could not be read or a torrent not written"),
                          (2, "bad arguments or configuration (piece size, URL, subset selecting no file)"),
                          (3, "refused: the release fails its own verification (nothing written)")),
    )
    p.add_argument("release", metavar="RELEASE", help="a published version folder (release_dir/v<N> or latest)")
    p.add_argument("out", metavar="OUT.torrent", help="torrent file to write (subsets: OUT-<name>.torrent)")
    p.add_argument("--webseed", action="append", default=[], metavar="URL",
                   help="http(s) URL of the mirror folder holding v<N>/ (repeatable; added to the config's)")
    p.add_argument("--tracker", action="append", default=[], metavar="URL",
                   help="announce URL (repeatable; added to the config's; none: DHT and web seeds only)")
    p.add_argument("--piece-size", metavar="SIZE",
                   help="auto, or a power of two from 16KiB to 16MiB (e.g. 8MiB, 4M, 262144)")
    p.add_argument("--configfile", metavar="SITE.yaml", help="take release.torrent (subsets, web seeds...) from it")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="hashing threads (default 2)")
    p.set_defaults(handler="bidsafe.release.torrent:cli_main")


def _withdraw_from_releases(sub: Subparsers) -> None:
    p = _add(
        sub, "withdraw-from-releases",
        help="remove a withdrawn participant from every published version (new CHANGES entry and manifest each)",
        description="Rewrite every published version (release_dir/v<N>) that holds PARTICIPANT: their sub- "
        "folder and files go, their rows leave participants.tsv and every other table, and each version gets a "
        "CHANGES entry, a new MANIFEST.sha256 and an updated SHAREABLE.json, so `bidsafe verify` passes on it. "
        "Each version is rebuilt beside itself and swapped in at once (never half rewritten). The next pipeline "
        "run already leaves a participant out whom the consent registry marks withdrawn; this command is for the "
        "versions published before. Copies already downloaded cannot be recalled.",
        epilog=exit_codes((0, "every version holding the participant was rewritten (or, with --dry-run, listed); "
                              "also when an earlier call already removed them"),
                          (1, "a version could not be rewritten (the message says which; it is left as it was)"),
                          (2, "bad arguments, no published version, or the participant is in none of them")),
    )
    p.add_argument("participant", metavar="PARTICIPANT",
                   help="the participant's released pseudonym, with or without `sub-` (e.g. sub-ab12cd34)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--release-dir", metavar="DIR", help="the release folder holding v1, v2, ... and latest")
    where.add_argument("--configfile", metavar="SITE.yaml", help="take release_dir from this site config")
    p.add_argument("--dry-run", action="store_true",
                   help="list the versions and files that would change, and change nothing")
    p.set_defaults(handler="bidsafe.release.withdraw:cli_main")


def _run(sub: Subparsers) -> None:
    p = _add(
        sub, "run",
        help="run the whole pipeline (the workflow shipped with bidsafe) with a site config",
        description="Check CONFIG, then run Snakemake on the workflow shipped inside the bidsafe package in the "
        "current folder (relative data areas in the config are relative to it), so no checkout of the repository "
        "is needed. Targets (e.g. `converted`) and further Snakemake options follow, the options after `--`: "
        "`bidsafe run --configfile site.yaml --cores 8 converted -- --forcerun convert`.",
        epilog=exit_codes((0, "every job finished (Snakemake's exit code)"),
                          (1, "a job failed (Snakemake's exit code; the report and the terminal summary say which)"),
                          (2, "the config has problems (one line each; nothing was run)"),
                          (75, "another bidsafe run on this site (same private_dir) is in progress; nothing was "
                           "done (EX_TEMPFAIL: a timer or cron line simply tries again later)")),
    )
    p.add_argument("--configfile", required=True, metavar="CONFIG.yaml", help="the site config (see config/README.md)")
    p.add_argument("--cores", default="all", metavar="N", help="cores Snakemake may use (default: all)")
    p.add_argument("-n", "--dry-run", action="store_true", help="list the jobs that would run, run none")
    p.add_argument("--wait", action="store_true",
                   help="when another run on this site is in progress, wait for it to finish instead of exiting 75")
    p.add_argument(
        "snakemake",
        nargs=argparse.REMAINDER,
        metavar="[TARGET ...] [-- SNAKEMAKE_OPTION ...]",
        help="targets of the workflow (default: the whole release), then options passed to Snakemake as given",
    )
    p.set_defaults(handler="bidsafe.runner:cli_main")


def _watch_drop(sub: Subparsers) -> None:
    p = _add(
        sub, "watch-drop",
        help="hand studies copied into the site's drop folder to the inbox once they are complete (quiet)",
        description="Watch the folder `drop.folder` of the site config. A study (files grouped by "
        "StudyInstanceUID, header-only reads) is handed to the inbox as a new part with a manifest once its "
        "files have not changed for `drop.quiet_seconds`; its originals are then removed from the drop unless "
        "`drop.keep_originals` is true. Files that are not image DICOM stay in the drop and are listed in the "
        "private report private_dir/drop/left-in-drop.tsv. Prints counts and keyed study keys only. Without "
        "--once it looks every `drop.poll_seconds` until stopped.",
        epilog=exit_codes((0, "the look(s) finished (studies still waiting for their quiet period included)"),
                          (1, "a study could not be handed over, or the drop folder could not be read (its "
                           "files stay in the drop; the next look tries again)"),
                          (2, "the config has problems, or drop.folder is missing or overlaps a data area"),
                          (75, "another bidsafe watch-drop on this site is running; nothing was done")),
    )
    p.add_argument("--configfile", required=True, metavar="CONFIG.yaml", help="the site config (see config/README.md)")
    p.add_argument("--once", action="store_true", help="look once and exit (for cron or a systemd timer)")
    p.set_defaults(handler="bidsafe.drop:cli_main")


def _receive(sub: Subparsers) -> None:
    p = _add(
        sub, "receive",
        help="run the DICOM receiver (Storage SCP): complete studies are handed over to the inbox",
        description="Receive DICOM instances (C-STORE) from the callers in the config's `receiver:` section and "
        "hand each study over to the inbox once it is complete: no instance for receiver.quiet_seconds, or the "
        "expected series complete. Instances are spooled and journalled in PRIVATE_DIR/receiver/; a study "
        "still receiving after receiver.max_wait_seconds is held for review. Runs until stopped (Ctrl-C or "
        "SIGTERM). Log lines name studies by a keyed short hash, never a UID or a name.",
        epilog=exit_codes((0, "stopped, or --status/--release-held done"),
                          (1, "the port cannot be opened, or no held study has that key"),
                          (2, "bad arguments or configuration (e.g. no receiver: section)")),
    )
    p.add_argument("--configfile", required=True, metavar="SITE.yaml", help="the site config (same as for runs)")
    p.add_argument("--status", action="store_true", help="print each study's state and counts, then exit")
    p.add_argument("--release-held", metavar="STUDY_KEY",
                   help="let a held study be handed over (by the running receiver), then exit")
    p.set_defaults(handler="bidsafe.receiver.cli:cli_main")


def _step(sub: Subparsers) -> None:
    from bidsafe.steps import STEPS

    p = _add(
        sub, "step",
        help="run one per-session stage as a workflow job does (the workflow's per-session rules call this)",
        description="Run one per-session stage of the workflow (harvest, deid, convert, scrub, deface, qc) with "
        "its inputs and outputs as options, logging to --log. `bidsafe step STAGE --help` lists a stage's "
        "options: its function's keyword parameters (bidsafe.steps). Every line goes to the log; a failure "
        "prints one line naming the error's type.",
        epilog=exit_codes((0, "the stage finished (the session's status file says included or withheld)"),
                          (1, "the stage failed; its log says why"),
                          (2, "a missing or bad option (the message names it)")),
    )
    p.add_argument("stage", choices=tuple(STEPS),
                   help="the per-session stage to run")
    p.add_argument("options", nargs=argparse.REMAINDER, metavar="--OPTION VALUE ...",
                   help="the stage's options and --log FILE")
    p.set_defaults(handler="bidsafe.steps:cli_main")


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
    _mirror,
    _torrent,
    _withdraw_from_releases,
    _watch_drop,
    _receive,
    _step,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidsafe",
        description="Turn raw MRI scanner DICOM sessions into a BIDS dataset that is safe to share. "
        "`bidsafe run --configfile SITE.yaml` runs the whole pipeline; the other subcommands are its parts.",
        epilog="Every command's help ends with its exit codes. Progress is shown on stderr when it is a terminal "
        "(BIDSAFE_PROGRESS=1 forces it, 0 turns it off); it shows counts, never a path or a value.",
    )
    parser.add_argument("--version", action="version", version=f"bidsafe {__version__}")
    _verbosity(parser, 0)
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
        with console_logging(getattr(args, "verbosity", 0)):
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
