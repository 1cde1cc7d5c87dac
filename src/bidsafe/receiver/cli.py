"""`bidsafe receive`: serve, or show the journal's studies, or release a held study."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from bidsafe.errors import BidsafeError
from bidsafe.receiver.journal import HELD, READY, Journal
from bidsafe.receiver.network import serve
from bidsafe.receiver.service import iso_utc
from bidsafe.receiver.settings import settings_from_config


def status_lines(journal: Journal) -> list[str]:
    lines = [f"{'study':<16}  {'state':<12} {'instances':>9} {'duplicates':>10} {'parts':>5}  last receipt (UTC)"]
    for s in journal.studies():
        lines.append(f"{s['study_key']:<16}  {s['state']:<12} {s['instances']:>9} {s['duplicates']:>10} "
                     f"{s['parts']:>5}  {iso_utc(s['last_receipt'])}")
    return lines


def cli_main(args: argparse.Namespace) -> int:
    import signal

    from bidsafe.config import read_config_file
    from bidsafe.keys import load_or_create_key, resolve_key_path
    from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME

    config = read_config_file(args.configfile)
    key_path = resolve_key_path(configfile=args.configfile)
    # the pipeline's key (created here on a fresh site, as the first stage would): study keys in the inbox
    # and the logs are then the same hashes a later run can name
    key = load_or_create_key(key_path, dependents=[Path(config["private_dir"]) / LINKAGE_FILENAME])
    settings = settings_from_config(config, key)
    if args.status or args.release_held:
        journal = Journal(settings.area / "journal.sqlite")
        try:
            if args.release_held:
                study = journal.study(args.release_held)
                if study is None or study["state"] != HELD:
                    raise BidsafeError(f"no held study with key {args.release_held!r}")
                journal.set_state(args.release_held, READY)
                print(f"study {args.release_held}: released; the running receiver hands it over at its next check")
            if args.status:
                print("\n".join(status_lines(journal)))
        finally:
            journal.close()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(settings, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0
