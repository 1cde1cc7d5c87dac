"""Command-line glue of `bidsafe deid` and `bidsafe check-rules` (called by `bidsafe.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bidsafe.deid.engine import check_tree_arguments, deidentify_tree
from bidsafe.deid.report import FAILED, FILE_WITHHELD, STATUSES, write_report
from bidsafe.deid.rules import check_rules, default_rules_path, load_rules, read_yaml, require_checked_rules, weakened
from bidsafe.deid.vocabulary import check_vocabulary, is_vocabulary_file, vocabulary_for
from bidsafe.errors import ConfigError


def cli_key(args: argparse.Namespace) -> tuple[Path, bytes, bool]:
    """(path, key, created) by `bidsafe.keys.resolve_key_path`, the rule the pipeline follows: --key FILE (must
    exist), else the pipeline's PRIVATE_DIR/secret.key from --private-dir or --configfile (created there, under
    the pipeline's linkage lock, only when no linkage table depends on an old key), else refused."""
    from bidsafe.keys import load_key, load_or_create_key, resolve_key_path

    key_path = resolve_key_path(getattr(args, "key", None), getattr(args, "private_dir", None),
                                getattr(args, "configfile", None))
    if getattr(args, "key", None):
        if not key_path.exists():
            raise ConfigError("--key: the key file does not exist (refusing to create one silently)")
        return key_path, load_key(key_path), False
    from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, linkage_lock

    private_dir = key_path.parent
    with linkage_lock(private_dir):
        created = not key_path.exists()
        key = load_or_create_key(key_path, dependents=[private_dir / LINKAGE_FILENAME])
    return key_path, key, created


def cli_deid(args: argparse.Namespace) -> int:
    """`bidsafe deid SRC DST`: check the rules, resolve the key, de-identify the tree, print the counts."""
    from bidsafe.progress import info, progress_enabled

    src, dst = Path(args.src), Path(args.dst)
    jobs = int(args.jobs) if getattr(args, "jobs", None) is not None else 1
    check_tree_arguments(src, dst, jobs)
    rules_path = Path(args.rules) if args.rules else default_rules_path()
    # the check `bidsafe check-rules` runs, before anything is written: a rejected set stops here
    gaps = require_checked_rules(rules_path, allow_weaker=bool(getattr(args, "allow_weaker_rules", False)))
    rules = load_rules(rules_path)
    if gaps:
        rules = weakened(rules)
        print(
            f"bidsafe deid: WARNING: {rules_path}: {len(gaps)} gap(s) against PS3.15 Table E.1-1 (see `bidsafe "
            "check-rules`); applied because of --allow-weaker-rules: the output is NOT de-identified and not "
            "shareable (PatientIdentityRemoved NO)",
            file=sys.stderr,
        )
    vocabulary = vocabulary_for(getattr(args, "vocabulary", None) or ())
    key_path, key, created = cli_key(args)
    info(f"bidsafe deid: secret key {'created at' if created else 'read from'} {key_path}")
    report = deidentify_tree(
        src, dst, rules=rules, key=key, jobs=jobs, progress=progress_enabled(), vocabulary=vocabulary
    )
    report.key_path = key_path
    report.weaker_rules = tuple(gaps)
    if args.report:
        write_report(report, Path(args.report))
    counts = report.counts
    info(
        "bidsafe deid: "
        + ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES)
        + (" (reasons in the report)" if args.report and (counts[FAILED] or counts[FILE_WITHHELD]) else "")
    )
    return 0 if report.ok else 1


# --- bidsafe check-rules ---------------------------------------------------------------------------------

def rule_files(target: Path) -> list[Path]:
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ConfigError("no *.yaml rule files in this folder", target)
        return files
    if not target.is_file():
        raise ConfigError("rule file not found", target)
    return [target]


def _check_vocabulary_file(path: Path) -> bool:
    """A descriptor vocabulary in the rules folder: checked with its own rules (shape, reasons, no date/ID entry)."""
    problems = check_vocabulary(path)
    print(f"check-rules: {path} (descriptor vocabulary)")
    if problems:
        print(f"  FAILED: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  problem: {problem}")
        return False
    print("  OK: every group has a reason; no token or pattern shaped like a date, a time or an identifier")
    return True


def cli_check_rules(args: argparse.Namespace) -> int:
    """`bidsafe check-rules`: check each rule file (or descriptor vocabulary) and print one block per file."""
    target = Path(args.file) if getattr(args, "file", None) else default_rules_path()
    table = Path(args.table) if getattr(args, "table", None) else None
    status = 0
    for path in rule_files(target):
        if is_vocabulary_file(read_yaml(path)):
            if not _check_vocabulary_file(path):
                status = 1
            continue
        result = check_rules(path, table)
        print(result.render())
        if not result.ok:
            status = 1
    sys.stdout.flush()
    return status
