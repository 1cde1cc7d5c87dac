"""`bidsafe receive`: a DICOM Storage SCP that hands complete studies over to the inbox.

Scanners and PACS send a study over one or many associations, resend instances after errors and add late
series; none says when a study is complete. So each instance is stored as it comes and a study is *ready* when
no instance of it arrived for `receiver.quiet_seconds` (sooner when the `expected_series` rule is met and every
association that sent to it ended with a normal release). A ready study is handed over whole
(`bidsafe.handoff.hand_over_study`): ingest never sees a partial study. Instances arriving later form the next
part. A study still receiving `max_wait_seconds` after its part began is *held*: kept, reported, not handed over
until an operator releases it (`bidsafe receive --release-held KEY`).

Storage: each instance's data set is written as received (no decoding, compressed syntaxes included), with the
file meta of its presentation context, to a temporary name, fsynced and renamed into a spool under
`private_dir/receiver/spool/<study key>/<series key>/<instance key>.dcm` (keyed hashes: the spool's names carry
no UID). Only then is Success answered. A repeated SOP Instance UID answers Success and is counted as a
duplicate, never written twice. A write error (disk full) answers 0xA700 so the sender retries. A data set that
cannot be decoded or lacks its UIDs answers 0xC000 and is kept in `private_dir/receiver/quarantine/` with its
reason.

The journal (`private_dir/receiver/journal.sqlite`, WAL) records per study the calling AE, first and last
receipt, instance and duplicate counts, parts and state (receiving, handing-over, handed-over, held, ready), and
per instance its keys, size, receipt time, series description and part. It survives a kill: at start the spool
is reconciled with it (a file renamed into the spool just before a kill is added; a handoff cut short is
matched with the part it produced).

Nothing personal is logged: log lines name studies by their key (`bidsafe.handoff.study_key`, a keyed hash)
and counts; pynetdicom's own logger, which can print UIDs, is silenced.

Modules (data flows down the list): `cli` (`bidsafe receive`), `network` (pynetdicom AE and the serving
loop), `service` (the store handler, association bookkeeping, readiness and handoff), `journal` (SQLite),
`store` (Part 10 files written atomically), `settings`.
"""

from bidsafe.receiver.cli import cli_main, status_lines
from bidsafe.receiver.journal import HANDED_OVER, HANDING_OVER, HELD, READY, RECEIVING, Journal
from bidsafe.receiver.network import STORAGE_SOP_CLASSES, build_ae, serve
from bidsafe.receiver.service import (
    DUL_POLL_SECONDS,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Receiver,
)
from bidsafe.receiver.settings import Caller, Settings, caller_allowed, expected_series_met, settings_from_config
from bidsafe.receiver.store import part10_header, received_file, write_instance

__all__ = [
    "DUL_POLL_SECONDS",
    "HANDED_OVER",
    "HANDING_OVER",
    "HELD",
    "READY",
    "RECEIVING",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "STORAGE_SOP_CLASSES",
    "Caller",
    "Journal",
    "Receiver",
    "Settings",
    "build_ae",
    "caller_allowed",
    "cli_main",
    "expected_series_met",
    "part10_header",
    "received_file",
    "serve",
    "settings_from_config",
    "status_lines",
    "write_instance",
]
