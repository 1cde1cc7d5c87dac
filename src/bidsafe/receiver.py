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
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import logging
import os
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.handoff import (
    MANIFEST_NAME,
    PART_RE,
    hand_over_study,
    instance_filename,
    series_dirname,
    study_key,
)
from bidsafe.private import DIR_MODE, FILE_MODE, ensure_private_dir

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # "refused: out of resources": the sender keeps the instance and retries
STATUS_CANNOT_UNDERSTAND = 0xC000

# pynetdicom's network thread sleeps 1 ms whenever it found nothing to do, and a C-STORE waits for it twice
# (data in, answer out): at 200 instances/s that is up to 2 of the 5 ms each may take. 0.2 ms measured 1.4x
# more instances/s from storescu; the cost is CPU spent polling while an association is open and idle.
DUL_POLL_SECONDS = 0.0002

RECEIVING, HANDING_OVER, HANDED_OVER, HELD, READY = "receiving", "handing-over", "handed-over", "held", "ready"

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    first_receipt REAL NOT NULL,
    last_receipt REAL NOT NULL,
    last_activity REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    parts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_key TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL,
    received REAL NOT NULL,
    series_description TEXT NOT NULL,
    part INTEGER
);
CREATE INDEX IF NOT EXISTS instances_pending ON instances (study_key, part);
CREATE TABLE IF NOT EXISTS quarantine (
    name TEXT PRIMARY KEY,
    received REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Caller:
    ae_title: str
    hosts: frozenset[str] = frozenset()  # resolved addresses; empty: any host


@dataclass(frozen=True)
class Settings:
    ae_title: str
    bind: str
    port: int
    callers: tuple[Caller, ...]
    quiet_seconds: float
    max_wait_seconds: float
    expected_series: tuple[tuple[str, int], ...]
    private_dir: Path
    inbox: Path
    key: bytes
    fsync: bool = True

    @property
    def area(self) -> Path:
        return self.private_dir / "receiver"


def settings_from_config(config: Mapping[str, Any], key: bytes) -> Settings:
    """The receiver's settings from a checked site config (ConfigError without a `receiver:` section)."""
    section = config.get("receiver")
    if not section:
        raise ConfigError("config: no 'receiver' section; `bidsafe receive` needs receiver.allowed_callers (see "
                          "config/README.md, 'DICOM receiver')")
    callers = []
    for entry in section["allowed_callers"]:
        if isinstance(entry, str):
            callers.append(Caller(entry))
        else:
            callers.append(Caller(entry["ae_title"], frozenset(_resolve(h) for h in entry["hosts"])))
    return Settings(
        ae_title=section["ae_title"],
        bind=section["bind"],
        port=int(section["port"]),
        callers=tuple(callers),
        quiet_seconds=float(section["quiet_seconds"]),
        max_wait_seconds=float(section["max_wait_seconds"]),
        expected_series=tuple((r["description"], int(r.get("min_instances", 1)))
                              for r in section.get("expected_series", [])),
        private_dir=Path(config["private_dir"]),
        inbox=Path(config["inbox"]),
        key=key,
        fsync=bool(section["fsync"]),
    )


def _resolve(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except OSError:
        raise ConfigError(f"config: receiver.allowed_callers: host {host!r} cannot be resolved") from None


def caller_allowed(callers: Sequence[Caller], ae_title: str, address: str) -> bool:
    return any(c.ae_title == ae_title.strip() and (not c.hosts or address in c.hosts) for c in callers)


def expected_series_met(rules: Sequence[tuple[str, int]], series: Sequence[tuple[str, int]]) -> bool:
    """True when every (pattern, min_instances) rule is matched by one (description, count) series."""
    return bool(rules) and all(
        any(fnmatch.fnmatch(desc.lower(), pattern.lower()) and count >= need for desc, count in series)
        for pattern, need in rules
    )


# ------------------------------------------------------------------------------------------------- journal
class Journal:
    """The receiver's SQLite journal; one connection shared by the association threads under a lock."""

    def __init__(self, path: Path) -> None:
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a killed process (the WAL is written before the call returns); after a
        # power cut the last commits may be missing, and the spool reconciliation at start adds them back
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def known(self, sop_key: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM instances WHERE sop_key=?", (sop_key,)).fetchone() is not None

    def add_instance(self, skey: str, sop_key: str, relpath: str, size: int, description: str,
                     calling_ae: str, now: float) -> bool:
        """Record a stored instance; False (counted as a duplicate) when its SOP key was already there."""
        with self.transaction() as db:
            new = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (sop_key, skey, relpath, size, now, description),
            ).rowcount == 1
            db.execute(
                """INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)
                   ON CONFLICT (study_key) DO UPDATE SET
                     calling_ae=excluded.calling_ae, last_activity=excluded.last_activity,
                     last_receipt=CASE WHEN ? THEN excluded.last_receipt ELSE last_receipt END,
                     instances=instances + excluded.instances, duplicates=duplicates + excluded.duplicates,
                     state=CASE WHEN state=? AND ? THEN ? ELSE state END""",
                (skey, calling_ae, now, now, now, int(new), int(not new), RECEIVING,
                 new, HANDED_OVER, new, RECEIVING),
            )
        return new

    def add_duplicate(self, skey: str, calling_ae: str, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                """INSERT INTO studies VALUES (?, ?, ?, ?, ?, 0, 1, 0, ?)
                   ON CONFLICT (study_key) DO UPDATE SET last_activity=excluded.last_activity,
                     duplicates=duplicates + 1""",
                (skey, calling_ae, now, now, now, RECEIVING),
            )

    def add_quarantine(self, name: str, calling_ae: str, reason: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?)", (name, now, calling_ae, reason))

    def study(self, skey: str) -> dict[str, Any] | None:
        with self.lock:
            cur = self.db.execute("SELECT * FROM studies WHERE study_key=?", (skey,))
            row = cur.fetchone()
            return dict(zip([c[0] for c in cur.description], row, strict=True)) if row else None

    def studies(self) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.db.execute("SELECT * FROM studies ORDER BY first_receipt")
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def open_studies(self) -> list[dict[str, Any]]:
        """The studies not (wholly) handed over: what each readiness check looks at."""
        with self.lock:
            cur = self.db.execute("SELECT * FROM studies WHERE state != ? ORDER BY first_receipt", (HANDED_OVER,))
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def pending(self, skey: str) -> list[tuple[str, str, float]]:
        """(sop_key, relpath, received) of the instances not handed over yet."""
        with self.lock:
            return self.db.execute(
                "SELECT sop_key, relpath, received FROM instances WHERE study_key=? AND part IS NULL "
                "ORDER BY relpath", (skey,)).fetchall()

    def pending_span(self, skey: str) -> tuple[int, float | None]:
        with self.lock:
            n, first = self.db.execute(
                "SELECT COUNT(*), MIN(received) FROM instances WHERE study_key=? AND part IS NULL", (skey,)
            ).fetchone()
            return n, first

    def pending_series(self, skey: str) -> list[tuple[str, int]]:
        with self.lock:
            return self.db.execute(
                "SELECT series_description, COUNT(*) FROM instances WHERE study_key=? AND part IS NULL "
                "GROUP BY substr(relpath, 1, instr(relpath, '/')), series_description", (skey,)).fetchall()

    def set_state(self, skey: str, state: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE studies SET state=? WHERE study_key=?", (state, skey))

    def mark_handed_over(self, skey: str, sop_keys: Sequence[str], part: int) -> str:
        """Record the part; the study goes back to receiving when instances arrived meanwhile."""
        with self.transaction() as db:
            db.executemany("UPDATE instances SET part=? WHERE sop_key=?", [(part, k) for k in sop_keys])
            left = db.execute("SELECT COUNT(*) FROM instances WHERE study_key=? AND part IS NULL",
                              (skey,)).fetchone()[0]
            state = RECEIVING if left else HANDED_OVER
            db.execute("UPDATE studies SET parts=MAX(parts, ?), state=? WHERE study_key=?", (part, state, skey))
        return state

    def close(self) -> None:
        with self.lock:
            self.db.close()


# ---------------------------------------------------------------------------------------------- the store
def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (OB has the long length form)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr == b"OB":
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information for a data set stored exactly as it was received.

    The same elements and values as pynetdicom's `Event.encoded_dataset()` (a test compares the bytes), built
    directly: pynetdicom builds and encodes a pydicom data set per instance, half a millisecond each, which is
    a tenth of the time one instance may take at 200 instances/s."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _uid(sop_class)),
        _element(0x00020003, b"UI", _uid(sop_instance)),
        _element(0x00020010, b"UI", _uid(transfer_syntax)),
        _element(0x00020012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _element(0x00020013, b"SH", version + b" " if len(version) % 2 else version),
    ))
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def received_file(event: Any) -> list[bytes]:
    """The DICOM file of a C-STORE request as received, in pieces: file meta, then the data set's bytes."""
    request = event.request
    header = part10_header(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                           str(event.context.transfer_syntax))
    return [header, request.DataSet.getvalue()]


def write_instance(data: bytes | Sequence[bytes], dest: Path, durable: bool = True) -> int:
    """Write `data` (bytes, or pieces written one after another) at `dest` atomically (temp name in the same
    folder, rename); `durable`: fsync first, so the Success that follows holds even after a power cut (the
    cost is one disk flush per instance). Returns the bytes written."""
    pieces = [data] if isinstance(data, bytes) else list(data)
    tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        except FileNotFoundError:  # the study's or series' first instance: make its folders (rare: try first)
            for folder in (dest.parent.parent, dest.parent):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder, DIR_MODE)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sum(len(piece) for piece in pieces)


@dataclass
class _AssocInfo:
    studies: set[str] = field(default_factory=set)


class Receiver:
    """The store handler, the association bookkeeping and the readiness checks (no network here: `serve`)."""

    def __init__(self, settings: Settings, clock: Any = time.time) -> None:
        self.s = settings
        self.clock = clock
        ensure_private_dir(settings.area)
        self.spool = ensure_private_dir(settings.area / "spool")
        self.quarantine_dir = settings.area / "quarantine"
        self.journal = Journal(settings.area / "journal.sqlite")
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._assocs: dict[int, _AssocInfo] = {}
        self._active: dict[str, int] = {}  # study key -> open associations that sent to it
        self._clean: set[str] = set()  # studies whose senders all released normally (since this start)
        self._tainted: set[str] = set()  # an association sending to it ended abnormally: quiet period only
        self.recover()

    # ---------------------------------------------------------------- recovery after a kill
    def recover(self) -> None:
        """Reconcile the journal with the spool and the inbox after a restart (see the module docstring)."""
        for tmp in self.spool.glob("*/*/.*.tmp"):
            tmp.unlink()
        known = {row[0] for row in self.journal.db.execute("SELECT relpath FROM instances")}
        for path in sorted(self.spool.glob("*/*/*.dcm")):
            rel = path.relative_to(self.spool).as_posix()
            if rel not in known:
                self._adopt(path, rel)
        for study in self.journal.studies():
            if study["state"] != HANDING_OVER:
                continue
            skey = study["study_key"]
            placed: dict[int, list[str]] = {}
            for sop_key, rel, _ in self.journal.pending(skey):
                if (self.spool / rel).exists():
                    continue
                part = _find_in_parts(self.s.inbox / skey, rel.split("/", 1)[1])
                if part is not None:
                    placed.setdefault(part, []).append(sop_key)
            for part, keys in placed.items():
                self.journal.mark_handed_over(skey, keys, part)
            if self.journal.pending(skey):
                self.journal.set_state(skey, RECEIVING)
            log.info("study %s: an interrupted handoff was reconciled", skey)

    def _adopt(self, path: Path, rel: str) -> None:
        """A spool file without a journal row: renamed into place just before a kill; record it."""
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
            description = str(ds.get("SeriesDescription", ""))
        except Exception:
            description = ""
        skey = rel.split("/", 1)[0]
        sop_key = Path(rel).stem
        self.journal.add_instance(skey, sop_key, rel, path.stat().st_size, description, "", path.stat().st_mtime)

    # ---------------------------------------------------------------- association events
    def on_requested(self, event: Any) -> None:
        """Reject (before any data) an association from a caller not in receiver.allowed_callers."""
        ae_title = event.assoc.requestor.primitive.calling_ae_title
        address = event.assoc.requestor.address
        dul = getattr(event.assoc, "dul", None)
        if dul is not None and hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = DUL_POLL_SECONDS
        if not caller_allowed(self.s.callers, ae_title, address):
            log.warning("association from calling AE %r at %s rejected: not in receiver.allowed_callers",
                        _printable(ae_title), address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, calling AE not recognised

    def on_ended(self, event: Any, clean: bool) -> None:
        with self._lock:
            info = self._assocs.pop(id(event.assoc), None)
            if info is None:
                return
            for skey in info.studies:
                self._active[skey] = self._active.get(skey, 1) - 1
                if self._active[skey] <= 0:
                    del self._active[skey]
                if clean and skey not in self._tainted:
                    self._clean.add(skey)
                elif not clean:
                    self._tainted.add(skey)
                    self._clean.discard(skey)
        if not clean and info.studies:
            log.warning("an association ended without a release (aborted or cut) after sending to %d "
                        "study(ies); they wait for the quiet period", len(info.studies))

    def _note_study(self, event: Any, skey: str) -> None:
        with self._lock:
            info = self._assocs.setdefault(id(event.assoc), _AssocInfo())
            if skey not in info.studies:
                info.studies.add(skey)
                self._active[skey] = self._active.get(skey, 0) + 1
            self._clean.discard(skey)

    # ---------------------------------------------------------------- C-STORE
    def on_store(self, event: Any) -> int:
        now = self.clock()
        calling_ae = _printable(event.assoc.requestor.ae_title)
        try:
            ds = event.dataset
            uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            description = str(ds.get("SeriesDescription", ""))
        except AttributeError:
            return self._quarantine(event, calling_ae, now, "a Study, Series or SOP Instance UID is missing")
        except Exception:
            return self._quarantine(event, calling_ae, now, "the data set cannot be decoded")
        if not all(u.strip() for u in uids):
            return self._quarantine(event, calling_ae, now, "a Study, Series or SOP Instance UID is empty")
        if uids[2] != str(event.request.AffectedSOPInstanceUID):
            return self._quarantine(event, calling_ae, now,
                                    "the data set's SOP Instance UID differs from the C-STORE request's")
        study_uid, series_uid, sop_uid = uids
        skey = study_key(self.s.key, study_uid)
        sop_file = instance_filename(self.s.key, sop_uid)
        sop_key = sop_file.removesuffix(".dcm")
        self._note_study(event, skey)
        with self._lock:
            duplicate = sop_key in self._inflight or self.journal.known(sop_key)
            if not duplicate:
                self._inflight.add(sop_key)
        if duplicate:
            self.journal.add_duplicate(skey, calling_ae, now)
            log.debug("study %s: a repeated instance was counted as a duplicate", skey)
            return STATUS_SUCCESS
        try:
            rel = f"{skey}/{series_dirname(self.s.key, series_uid)}/{sop_file}"
            dest = self.spool / rel
            try:
                if dest.exists():  # stored before a journal write failed: record it, do not write it again
                    size = dest.stat().st_size
                else:
                    size = write_instance(received_file(event), dest, self.s.fsync)
                self.journal.add_instance(skey, sop_key, rel, size, description, calling_ae, now)
            except (OSError, sqlite3.Error) as exc:
                log.error("study %s: an instance could not be stored (%s); answered 'out of resources' so the "
                          "sender retries", skey, getattr(exc, "strerror", None) or type(exc).__name__)
                return STATUS_OUT_OF_RESOURCES
        finally:
            with self._lock:
                self._inflight.discard(sop_key)
        return STATUS_SUCCESS

    def _quarantine(self, event: Any, calling_ae: str, now: float, reason: str) -> int:
        """Keep a refused instance's bytes with the reason (private), answer 'cannot understand'."""
        try:
            data = event.encoded_dataset()
            name = hashlib.sha256(data).hexdigest()[:32] + ".dcm"
            write_instance(data, self.quarantine_dir / name)
            self.journal.add_quarantine(name, calling_ae, reason, now)
        except OSError as exc:
            log.error("a refused instance could not be kept in quarantine (%s)", exc.strerror)
            return STATUS_OUT_OF_RESOURCES
        log.warning("an instance from calling AE %r was refused and quarantined as %s: %s", calling_ae, name, reason)
        return STATUS_CANNOT_UNDERSTAND

    # ---------------------------------------------------------------- readiness and handoff
    def check(self) -> list[Path]:
        """Decide each receiving study's state now; hand over the ready ones. Returns the new part folders."""
        now = self.clock()
        parts = []
        for study in self.journal.open_studies():
            skey, state = study["study_key"], study["state"]
            if state == HANDING_OVER:
                continue
            pending, first = self.journal.pending_span(skey)
            if not pending:
                continue
            if state == RECEIVING:
                state = self._decide(skey, study, first, now)
            if state == READY:
                part = self.hand_over(skey, study)
                if part is not None:
                    parts.append(part)
        return parts

    def _decide(self, skey: str, study: Mapping[str, Any], first: float | None, now: float) -> str:
        quiet_for = now - study["last_activity"]
        with self._lock:
            sending = self._active.get(skey, 0) > 0
            clean = skey in self._clean and skey not in self._tainted
        if quiet_for >= self.s.quiet_seconds:
            reason = f"no instance for {quiet_for:.0f} s"
        elif clean and not sending and expected_series_met(self.s.expected_series,
                                                            self.journal.pending_series(skey)):
            reason = "the expected series are complete and the senders released"
        elif first is not None and now - first >= self.s.max_wait_seconds:
            self.journal.set_state(skey, HELD)
            log.warning("study %s: HELD for review: still receiving %.0f s after its first instance "
                        "(receiver.max_wait_seconds); release it with `bidsafe receive --release-held %s`",
                        skey, now - first, skey)
            return HELD
        else:
            return RECEIVING
        log.info("study %s: ready (%s)", skey, reason)
        return READY

    def hand_over(self, skey: str, study: Mapping[str, Any]) -> Path | None:
        with self.journal.transaction() as db:
            db.execute("UPDATE studies SET state=? WHERE study_key=?", (HANDING_OVER, skey))
            rows = db.execute("SELECT sop_key, relpath, received FROM instances WHERE study_key=? AND part IS NULL "
                              "ORDER BY relpath", (skey,)).fetchall()
        info = {
            "source": "receiver",
            "calling_ae": study["calling_ae"],
            "first_receipt": _iso(min(r[2] for r in rows)),
            "last_receipt": _iso(max(r[2] for r in rows)),
        }
        try:
            part = hand_over_study([self.spool / r[1] for r in rows], self.s.inbox, skey, info)
        except (OSError, ValueError) as exc:
            self.journal.set_state(skey, READY)  # tried again at the next check; nothing was moved
            log.error("study %s: handoff to the inbox failed (%s); retrying later",
                      skey, getattr(exc, "strerror", None) or type(exc).__name__)
            return None
        number = int(PART_RE.match(part.name).group(1))  # type: ignore[union-attr]
        state = self.journal.mark_handed_over(skey, [r[0] for r in rows], number)
        with self._lock:
            self._clean.discard(skey)
            self._tainted.discard(skey)
        for folder in {(self.spool / r[1]).parent for r in rows} | {self.spool / skey}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a late instance may already be there
        log.info("study %s: %s handed over to the inbox (%d instances)%s", skey, part.name, len(rows),
                 "; newer instances wait for their own quiet period" if state == RECEIVING else "")
        return part

    def release_held(self, skey: str) -> None:
        study = self.journal.study(skey)
        if study is None or study["state"] != HELD:
            raise BidsafeError(f"no held study with key {skey!r}")
        self.journal.set_state(skey, READY)


def _find_in_parts(study_dir: Path, rel_in_part: str) -> int | None:
    for name in sorted(os.listdir(study_dir)) if study_dir.is_dir() else []:
        m = PART_RE.match(name)
        if m and (study_dir / name / rel_in_part).exists() and (study_dir / name / MANIFEST_NAME).exists():
            return int(m.group(1))
    return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _printable(text: object) -> str:
    """An AE title as text fit for a log line (AE titles are equipment names, but peers send anything)."""
    value = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
    return "".join(c if " " <= c <= "~" else "?" for c in value).strip()[:16]


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


def status_lines(journal: Journal) -> list[str]:
    lines = [f"{'study':<16}  {'state':<12} {'instances':>9} {'duplicates':>10} {'parts':>5}  last receipt (UTC)"]
    for s in journal.studies():
        lines.append(f"{s['study_key']:<16}  {s['state']:<12} {s['instances']:>9} {s['duplicates']:>10} "
                     f"{s['parts']:>5}  {_iso(s['last_receipt'])}")
    return lines


def cli_main(args: argparse.Namespace) -> int:
    import signal

    from bidsafe.config import read_config_file
    from bidsafe.keys import load_or_create_key, resolve_key_path
    from bidsafe.pseudonym import LINKAGE_FILENAME

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
