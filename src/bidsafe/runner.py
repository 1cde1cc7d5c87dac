"""`bidsafe run`: the whole pipeline from an installed bidsafe, no checkout needed.

It runs Snakemake on the Snakefile shipped with the package (`bidsafe.resources.snakefile()`: the wheel's copy,
or the checkout's in an editable install) with the site's config, in the current folder: relative data areas
in the config are relative to where the command is run, as with `snakemake --configfile` in a checkout. The
config is checked first (one line per problem, nothing started), then Snakemake runs in a child process with
this interpreter, and its exit code is the command's.

Recovery after a crash needs nothing but the same command: Snakemake reruns the jobs a killed run left
incomplete (`--rerun-incomplete`), and a Snakemake lock the killed run left is removed once this command holds
its own lock on the data areas and no Snakemake process works in this folder (`bidsafe.recovery`). A second
`bidsafe run` on the same data areas while one runs stops at once with a message, changing nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bidsafe import resources
from bidsafe.config import read_config_file
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.recovery import LOCK_HELD_ENV, clear_stale_snakemake_lock, run_lock
from bidsafe.runlock import scheduled_run_lock


def snakemake_command(
    configfile: Path, cores: str, *, dry_run: bool = False, extra: Sequence[str] = (), python: str | None = None
) -> list[str]:
    """The command line running the packaged workflow (targets and Snakemake options in `extra`, verbatim)."""
    command = [
        python or sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(resources.snakefile()),
        "--configfile",
        str(configfile.resolve()),
        "--cores",
        str(cores),
    ]
    if dry_run:
        command.append("--dry-run")
    # a job killed mid-way (kill -9, power loss) is redone, not reported as an error needing a manual flag
    command.append("--rerun-incomplete")
    return command + list(extra)


def tool_environment(environ: Mapping[str, str] | None = None, python: str | None = None) -> dict[str, str]:
    """The environment for Snakemake: the folder of this interpreter first on PATH, so the tools installed with
    bidsafe (dcm2niix, dcm2bids, the BIDS validator) are found by every job without activating the venv."""
    env = dict(os.environ if environ is None else environ)
    bin_dir = str(Path(python or sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)])
    return env


def split_extra(rest: Sequence[str]) -> list[str]:
    """Targets and Snakemake options as given, less the first `--` that separates them from bidsafe's own."""
    rest = list(rest)
    if "--" in rest:
        rest.remove("--")
    return rest


def inbox_is_empty(inbox: Path) -> bool:
    """True for an existing inbox folder with no entry but hidden ones (a hand-over in progress is hidden)."""
    try:
        return inbox.is_dir() and not any(not name.startswith(".") for name in os.listdir(inbox))
    except OSError:
        return False  # unreadable: the workflow's own check names the problem


def cli_main(args: argparse.Namespace) -> int:
    configfile = Path(args.configfile)
    try:
        config = read_config_file(configfile)
    except ConfigError as exc:
        # Problems of the config's content come without the file's name: say which file they are in.
        raise ConfigError(exc.message, configfile) from None
    if importlib.util.find_spec("snakemake") is None:
        raise BidsafeError("Snakemake is not installed with this Python (pip install bidsafe installs it)")
    snakefile = resources.snakefile()
    if not snakefile.is_file():
        raise BidsafeError("the packaged workflow is missing (a broken install? reinstall bidsafe)", snakefile)
    command = snakemake_command(configfile, args.cores, dry_run=args.dry_run, extra=split_extra(args.snakemake))
    print(f"bidsafe run: workflow {snakefile}, config {configfile}, in {Path.cwd()}", file=sys.stderr)
    if args.dry_run:  # lists jobs, changes nothing: no lock
        return subprocess.run(command, env=tool_environment(), check=False).returncode
    if inbox_is_empty(Path(config["inbox"])):
        # A receiver- or drop-fed inbox stays empty until the first study is complete: a scheduled run then has
        # nothing to do (ingest would stop the run with "no DICOM study found", a failure every timer tick).
        print("bidsafe run: the inbox holds nothing yet; nothing to do", file=sys.stderr)
        return 0
    # One run per site: a second one (a timer firing while a long run works) waits or exits 75 (bidsafe.runlock).
    # Snakemake inherits that lock, so it stays held while Snakemake works even if this process is killed first.
    # Then the data areas' run lock (bidsafe.recovery: the one a plain `snakemake` run's onstart hook takes, so
    # a plain run from another folder on the same areas is refused too), always in this order.
    with scheduled_run_lock(config["private_dir"], wait=args.wait) as lock_fd, run_lock(
        Path(config["work_dir"]), Path(config["private_dir"])
    ):
        if clear_stale_snakemake_lock(Path.cwd()):
            print("bidsafe run: removed the lock a stopped run left (no other run is working here)", file=sys.stderr)
        # this process holds the run lock for Snakemake (its onstart hook would otherwise take it)
        environment = {**tool_environment(), LOCK_HELD_ENV: "1"}
        return subprocess.run(command, env=environment, check=False, pass_fds=(lock_fd,)).returncode


__all__ = ["cli_main", "snakemake_command", "split_extra", "tool_environment"]
