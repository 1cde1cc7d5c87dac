"""`bidsafe leak-scan`: the leak gate run by hand on a folder, from a raw inbox or a saved harvest."""

from __future__ import annotations

import argparse
from pathlib import Path

from bidsafe.errors import ConfigError
from bidsafe.progress import Progress, info
from bidsafe.release.leakallow import AllowList, load_allow
from bidsafe.release.leakforms import RawValue, raw_values
from bidsafe.release.leakharvest import harvest_source, load_origins
from bidsafe.release.leakhits import write_findings, write_leak_report
from bidsafe.release.leakscan import leak_scan


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe leak-scan DIR (--source RAW_DIR | --values FILE.json) [--vocabulary FILE.yaml ...]
    [--report FILE.json] [--also DIR ...]`: 0 clean, 1 hits."""
    if bool(getattr(args, "source", None)) == bool(getattr(args, "values", None)):
        raise ConfigError("leak scan: give exactly one of --source RAW_DIR and --values FILE.json")
    origins: dict[RawValue, list[str]] = {}
    if args.source:
        values = raw_values(harvest_source(Path(args.source), progress=True))
        if not values:
            raise ConfigError("leak scan: no readable DICOM with personal values under --source", args.source)
    else:
        values = raw_values(Path(args.values))
        origins = load_origins(Path(args.values))
    with Progress("bidsafe leak-scan: scanning", unit="files") as meter:
        report = leak_scan(Path(args.dir), values, also=[Path(a) for a in args.also],
                           vocabulary=[Path(v) for v in getattr(args, "vocabulary", None) or []] or None,
                           allow=read_allow_file(getattr(args, "allow", None)), origins=origins, progress=meter)
    for hit in report.hits:
        print(hit.line())
    if args.report:
        write_leak_report(report, Path(args.report))
    if getattr(args, "findings", None):
        write_findings(report, Path(args.findings))
    verdict = "clean" if report.clean else f"{len(report.hits)} hits"
    info(f"leak scan: {verdict}; {len(report.allowed)} allowed by {report.allow['entries']} allow-list entries; "
          f"{report.values} values, {report.needles} needles, {report.vocabulary_words_not_searched} vocabulary "
          f"words not searched, {report.placeholder_values_not_searched} placeholder values not searched; "
          f"{report.speed()}")
    return 0 if report.clean else 1


def read_allow_file(path: str | Path | None) -> AllowList:
    """An allow-list from a YAML or JSON file: a list of entries, or a mapping with an `allow` list."""
    if not path:
        return AllowList()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"leak scan: cannot read the allow-list ({type(exc).__name__})", path) from exc
    return load_allow(data.get("allow") if isinstance(data, dict) else data)
