"""The receiver on the network: a pynetdicom AE offering the storage classes, served until stopped."""

from __future__ import annotations

import logging
import threading
from typing import Any

from bidsafe.errors import BidsafeError
from bidsafe.receiver.service import Receiver
from bidsafe.receiver.settings import Settings

log = logging.getLogger("bidsafe.receiver")

# What the receiver accepts (issue 12): MR, enhanced MR, spectroscopy, secondary capture, raw data; the
# vendor's private CSA non-image objects ride along with MR studies and are stored like any other instance.
STORAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.3.12.2.1107.5.9.1",  # Siemens CSA Non-Image (private)
)
_VERIFICATION = "1.2.840.10008.1.1"


# ------------------------------------------------------------------------------------------------ network
def build_ae(receiver: Receiver) -> Any:
    from pynetdicom import AE, evt
    from pynetdicom._globals import ALL_TRANSFER_SYNTAXES

    ae = AE(ae_title=receiver.s.ae_title)
    for uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(_VERIFICATION)
    # large PDUs: fewer trips through pynetdicom's polling loops per instance (dcmtk sends 128 KiB PDUs when
    # offered this, but only 16 KiB ones when offered "unlimited" (0): 135 vs 82 instances/s measured)
    ae.maximum_pdu_size = 1 << 20
    ae.maximum_associations = 32
    handlers = [
        (evt.EVT_REQUESTED, receiver.on_requested),
        (evt.EVT_C_STORE, receiver.on_store),
        (evt.EVT_RELEASED, lambda e: receiver.on_ended(e, clean=True)),
        (evt.EVT_ABORTED, lambda e: receiver.on_ended(e, clean=False)),
        (evt.EVT_CONN_CLOSE, lambda e: receiver.on_ended(e, clean=False)),
    ]
    return ae, handlers


def _silence_pynetdicom() -> None:
    """pynetdicom logs UIDs and data set summaries at info/debug level: keep all of it out of the logs."""
    logger = logging.getLogger("pynetdicom")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)


def serve(settings: Settings, stop: threading.Event | None = None, check_every: float | None = None) -> None:
    """Run the receiver until `stop` is set (or Ctrl-C / SIGTERM in the command)."""
    _silence_pynetdicom()
    stop = stop or threading.Event()
    receiver = Receiver(settings)
    ae, handlers = build_ae(receiver)
    try:
        server = ae.start_server((settings.bind, settings.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        receiver.journal.close()
        raise BidsafeError(f"cannot listen on {settings.bind}:{settings.port}: {exc.strerror}") from None
    # at least once a second: the expected-series rule can make a study ready long before its quiet period
    period = check_every or min(max(settings.quiet_seconds / 4, 0.2), 1.0)
    log.info("receiving as %s on %s:%d (quiet period %g s)", settings.ae_title, settings.bind, settings.port,
             settings.quiet_seconds)
    try:
        while not stop.wait(period):
            receiver.check()
    finally:
        server.shutdown()
        receiver.check()  # a study that became ready while stopping is still handed over
        receiver.journal.close()
