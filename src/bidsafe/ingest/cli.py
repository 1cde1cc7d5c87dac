"""`bidsafe ingest`: index an inbox by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

from bidsafe.ingest.index import index_inbox, require_studies


def cli_main(args: argparse.Namespace) -> int:
    """`bidsafe ingest INBOX --index F --quarantine F [--cache F]`: prints counts, never paths or names."""
    cache = getattr(args, "cache", None)
    summary = index_inbox(
        Path(args.inbox), Path(args.index), Path(args.quarantine), Path(cache) if cache else None
    )
    print(f"ingest: {summary}")
    require_studies(summary, Path(args.quarantine))
    return 0
