"""The receiver without a network: store statuses, write failures, recovery after a kill, readiness rules."""

from __future__ import annotations

import errno
import io
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import generate_uid

from bidsafe import receiver as rx
from bidsafe.handoff import hand_over_study, instance_filename, read_manifest, study_key

from helpers.mr_instances import HANDOFF_KEY, tiny_mr


def _settings(tmp_path: Path, **kw: object) -> rx.Settings:
    values: dict = dict(ae_title="BIDSAFE", bind="127.0.0.1", port=0, callers=(rx.Caller("SCANNER1"),),
                        quiet_seconds=10.0, max_wait_seconds=100.0, expected_series=(),
                        private_dir=tmp_path / "private", inbox=tmp_path / "inbox", key=HANDOFF_KEY)
    values.update(kw)
    return rx.Settings(**values)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # real time: a file adopted at recovery counts from its mtime

    def __call__(self) -> float:
        return self.now


def _event(tmp_path: Path, ds: pydicom.Dataset) -> SimpleNamespace:
    """What pynetdicom hands the C-STORE handler: the request (data set bytes as sent) and its context."""
    path = tmp_path / f"{generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    body = pydicom.dcmread(path).file_meta  # the group 0002 length says where the data set starts
    raw = path.read_bytes()
    body_bytes = raw[132 + 12 + body.FileMetaInformationGroupLength:]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    data = rx.part10_header(ds.SOPClassUID, ds.SOPInstanceUID, syntax) + body_bytes
    return SimpleNamespace(
        dataset=pydicom.dcmread(path),
        encoded_dataset=lambda: data,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="SCANNER1")),
        request=SimpleNamespace(AffectedSOPInstanceUID=ds.SOPInstanceUID, AffectedSOPClassUID=ds.SOPClassUID,
                                DataSet=io.BytesIO(body_bytes)),
        context=SimpleNamespace(transfer_syntax=syntax),
        data=data,
    )


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "2.25." + "9" * 58])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"])
def test_the_file_meta_written_for_a_received_instance_is_pynetdicoms(instance: str, syntax: str):
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    meta = create_file_meta(sop_class_uid=pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.4"),
                            sop_instance_uid=pydicom.uid.UID(instance), transfer_syntax=pydicom.uid.UID(syntax))
    expected = b"\0" * 128 + b"DICM" + encode_file_meta(meta)
    assert rx.part10_header("1.2.840.10008.5.1.4.1.1.4", instance, syntax) == expected


def test_a_write_error_answers_out_of_resources_and_records_nothing(tmp_path: Path, monkeypatch):
    receiver = rx.Receiver(_settings(tmp_path), clock=Clock())
    ds = tiny_mr(generate_uid(), generate_uid(), 1)

    def disk_full(data: bytes, dest: Path, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rx.service, "write_instance", disk_full)  # where the store handler looks it up
    assert receiver.on_store(_event(tmp_path, ds)) == rx.STATUS_OUT_OF_RESOURCES
    assert receiver.journal.studies() == []
    monkeypatch.undo()
    # the sender's retry is stored (not mistaken for a duplicate of the failed attempt)
    event = _event(tmp_path, ds)
    assert receiver.on_store(event) == rx.STATUS_SUCCESS
    (study,) = receiver.journal.studies()
    assert (study["instances"], study["duplicates"]) == (1, 0)
    (stored,) = [p for p in receiver.spool.rglob("*") if p.is_file()]
    assert stored.read_bytes() == event.data and stored.name == instance_filename(HANDOFF_KEY, ds.SOPInstanceUID)


def test_a_journal_error_answers_out_of_resources_and_the_retry_does_not_rewrite(tmp_path: Path, monkeypatch):
    receiver = rx.Receiver(_settings(tmp_path), clock=Clock())
    ds = tiny_mr(generate_uid(), generate_uid(), 1)

    def full(*args: object) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(receiver.journal, "add_instance", full)
    assert receiver.on_store(_event(tmp_path, ds)) == rx.STATUS_OUT_OF_RESOURCES
    (stored,) = [p for p in receiver.spool.rglob("*.dcm")]
    inode = stored.stat().st_ino
    monkeypatch.undo()
    assert receiver.on_store(_event(tmp_path, ds)) == rx.STATUS_SUCCESS
    assert stored.stat().st_ino == inode  # recorded, not written a second time
    (study,) = receiver.journal.studies()
    assert (study["instances"], study["duplicates"]) == (1, 0)


def test_a_mismatched_sop_uid_is_refused_and_quarantined(tmp_path: Path):
    receiver = rx.Receiver(_settings(tmp_path), clock=Clock())
    event = _event(tmp_path, tiny_mr(generate_uid(), generate_uid(), 1))
    event.request.AffectedSOPInstanceUID = generate_uid()
    assert receiver.on_store(event) == rx.STATUS_CANNOT_UNDERSTAND
    assert receiver.journal.studies() == []
    reasons = receiver.journal.db.execute("SELECT reason FROM quarantine").fetchall()
    assert reasons == [("the data set's SOP Instance UID differs from the C-STORE request's",)]


def test_quiet_period_held_and_expected_series(tmp_path: Path):
    clock = Clock()
    receiver = rx.Receiver(_settings(tmp_path, expected_series=(("T1*", 2),)), clock=clock)
    study_uid, series_uid = generate_uid(), generate_uid()
    ds = tiny_mr(study_uid, series_uid, 1)
    ds.SeriesDescription = "T1w_MPR"
    assert receiver.on_store(_event(tmp_path, ds)) == rx.STATUS_SUCCESS
    skey = study_key(HANDOFF_KEY, study_uid)
    clock.now += 9.9
    assert receiver.check() == []  # not quiet yet; no association released cleanly in this test
    clock.now += 0.1
    (part,) = receiver.check()
    assert read_manifest(part)["instances"] == 1 and receiver.journal.study(skey)["state"] == rx.HANDED_OVER
    # a late instance keeps arriving past max_wait: held, never handed over, until released
    for _ in range(13):
        clock.now += 9
        late = tiny_mr(study_uid, series_uid, 2)
        assert receiver.on_store(_event(tmp_path, late)) == rx.STATUS_SUCCESS
        receiver.check()
    assert receiver.journal.study(skey)["state"] == rx.HELD
    clock.now += 1000
    assert receiver.check() == []
    receiver.release_held(skey)
    (part2,) = receiver.check()
    assert part2.name == "part-002" and read_manifest(part2)["instances"] == 13
    assert rx.expected_series_met((("T1*", 2),), [("t1w_mpr", 2)])
    assert not rx.expected_series_met((("T1*", 2), ("BOLD", 1)), [("T1w", 5)])
    assert not rx.expected_series_met((), [("T1w", 5)])


def test_recovery_adopts_a_file_renamed_before_the_kill_and_finishes_a_cut_handoff(tmp_path: Path):
    settings = _settings(tmp_path)
    clock = Clock()
    receiver = rx.Receiver(settings, clock=clock)
    study_uid = generate_uid()
    skey = study_key(HANDOFF_KEY, study_uid)
    for i in range(2):
        assert receiver.on_store(_event(tmp_path, tiny_mr(study_uid, generate_uid(), i))) == rx.STATUS_SUCCESS
    # killed after an instance was renamed into the spool but before its journal row
    orphan = _event(tmp_path, tiny_mr(study_uid, generate_uid(), 3))
    orphan_name = instance_filename(HANDOFF_KEY, orphan.dataset.SOPInstanceUID)
    orphan_path = receiver.spool / skey / "feedfacefeedface" / orphan_name
    rx.write_instance(orphan.data, orphan_path)
    (orphan_path.parent / ".x.dcm.1.tmp").write_bytes(b"half")
    # and killed in the middle of a handoff: the part is in place, the journal not yet updated
    receiver.journal.set_state(skey, rx.HANDING_OVER)
    rows = receiver.journal.pending(skey)
    part = hand_over_study([receiver.spool / r[1] for r in rows], settings.inbox, skey, {"source": "receiver"})
    receiver.journal.close()

    again = rx.Receiver(settings, clock=clock)

    study = again.journal.study(skey)
    assert study["instances"] == 3 and study["state"] == rx.RECEIVING and study["parts"] == 1
    assert [r[1] for r in again.journal.pending(skey)] == [orphan_path.relative_to(again.spool).as_posix()]
    assert not (orphan_path.parent / ".x.dcm.1.tmp").exists()
    clock.now += 11
    (part2,) = again.check()
    assert part.name == "part-001" and part2.name == "part-002" and read_manifest(part2)["instances"] == 1


@pytest.mark.parametrize(("ae", "address", "allowed"), [
    ("SCANNER1", "10.0.0.5", True), ("SCANNER1 ", "10.0.0.5", True), ("PACS", "127.0.0.1", True),
    ("PACS", "10.0.0.5", False), ("OTHER", "127.0.0.1", False)])
def test_callers(ae: str, address: str, allowed: bool):
    callers = (rx.Caller("SCANNER1"), rx.Caller("PACS", frozenset({"127.0.0.1"})))
    assert rx.caller_allowed(callers, ae, address) is allowed
