"""The receiver's store handler, association bookkeeping, readiness checks and handoff (no network here)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError
from bidsafe.handoff import MANIFEST_NAME, PART_RE, hand_over_study, instance_filename, series_dirname, study_key
from bidsafe.private import ensure_private_dir
from bidsafe.receiver.journal import HANDING_OVER, HELD, READY, RECEIVING, Journal
from bidsafe.receiver.settings import Settings, caller_allowed, expected_series_met
from bidsafe.receiver.store import received_file, write_instance

log = logging.getLogger("bidsafe.receiver")  # the receiver's log lines keep the name they had before the split

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # "refused: out of resources": the sender keeps the instance and retries
STATUS_CANNOT_UNDERSTAND = 0xC000

# pynetdicom's network thread sleeps 1 ms whenever it found nothing to do, and a C-STORE waits for it twice
# (data in, answer out): at 200 instances/s that is up to 2 of the 5 ms each may take. 0.2 ms measured 1.4x
# more instances/s from storescu; the cost is CPU spent polling while an association is open and idle.
DUL_POLL_SECONDS = 0.0002


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
            "first_receipt": iso_utc(min(r[2] for r in rows)),
            "last_receipt": iso_utc(max(r[2] for r in rows)),
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


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _printable(text: object) -> str:
    """An AE title as text fit for a log line (AE titles are equipment names, but peers send anything)."""
    value = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
    return "".join(c if " " <= c <= "~" else "?" for c in value).strip()[:16]
