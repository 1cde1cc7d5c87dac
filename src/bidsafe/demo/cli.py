"""`bidsafe demo-data`: write demo exports and, on request, the consent registry and demographics tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from bidsafe.demo.build import generate
from bidsafe.demo.registries import write_consent_registry, write_demographics
from bidsafe.errors import ConfigError
from bidsafe.progress import Progress


def cli_main(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not args.force:
        raise ConfigError("OUT_DIR exists and is not empty; give --force to write into it (study folders of the "
                          "same name are replaced)", out_dir)
    for option, target in (("--consent", args.consent), ("--demographics", args.demographics)):
        if target and Path(target).exists() and not args.force:
            raise ConfigError(f"{option}: the file exists; give --force to replace it", target)
    with Progress("bidsafe demo-data: writing", args.subjects * args.sessions, "sessions", every_s=0) as meter:
        sessions = generate(out_dir, subjects=args.subjects, sessions=args.sessions, seed=args.seed,
                            progress=meter)
    if args.consent:
        write_consent_registry(sessions, Path(args.consent))
    if args.demographics:
        write_demographics(sessions, Path(args.demographics), seed=args.seed)
    files = sum(len(series.files) for s in sessions for series in s.series)
    # Never print folder names here: they are named after the (fake) patients, like real exports.
    print(f"wrote {len(sessions)} sessions ({files} DICOM files) under {out_dir}")
    return 0
