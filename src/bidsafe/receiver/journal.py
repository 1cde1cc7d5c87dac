"""The receiver's SQLite journal (`private_dir/receiver/journal.sqlite`, WAL): studies, instances, quarantine."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bidsafe.private import FILE_MODE, ensure_private_dir

RECEIVING, HANDING_OVER, HANDED_OVER, HELD, READY = "receiving", "handing-over", "handed-over", "held", "ready"

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
