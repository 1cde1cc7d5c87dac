"""The `bidsafe` command line's parsers, for the tests that check every subcommand's help and arguments."""

from __future__ import annotations

import argparse

from bidsafe.cli import build_parser


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """{subcommand name: its parser}, as `bidsafe`'s top-level parser registers them."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)
