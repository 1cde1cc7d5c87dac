"""`bidsafe receive` with a real, independent sender: dcmtk's storescu, on loopback, quiet periods of seconds.

Each test starts the receiver as its own process (so it can be killed), builds tiny MR studies with pydicom,
sends them with /usr/bin/storescu (pynetdicom installs its own `storescu` into the venv: never that one) and
asserts on content: the bytes in the inbox equal the data sets sent, the manifest's sha256s match, the journal's
counts, and the receiver's log names no UID, patient name or patient ID.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.uid import generate_uid

from bidsafe.handoff import instance_filename, read_manifest, series_dirname, study_key
from bidsafe.keys import load_key

from helpers.loopback import STORESCU, free_port, listening, wait_for
from helpers.mr_instances import empty_mr

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(),
                                reason="dcmtk's storescu is not installed (apt-get install dcmtk; .ci/run does)")

QUIET = 1.5


# ------------------------------------------------------------------------------------------------ studies
@dataclass
class Study:
    uid: str
    patient_name: str
    patient_id: str
    series: dict[str, list[Path]] = field(default_factory=dict)  # series UID -> files
    sop_uids: dict[Path, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[Path]:
        return [f for files in self.series.values() for f in files]

    def identifiers(self) -> list[str]:
        return [self.uid, self.patient_name, self.patient_id, *self.series, *self.sop_uids.values()]


def make_study(root: Path, series: tuple[str, ...] = ("T1w", "T2w"), per_series: int = 3,
               patient: str = "DOE^JOHN", rows: int = 8) -> Study:
    study = Study(generate_uid(), patient, f"PID-{patient.split('^')[0]}-{generate_uid()[-6:]}")
    for number, description in enumerate(series, start=1):
        add_series(root, study, description, number, per_series, rows)
    return study


def add_series(root: Path, study: Study, description: str, number: int, count: int, rows: int = 8) -> list[Path]:
    series_uid = generate_uid()
    files = []
    for i in range(count):
        ds = empty_mr()
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        ds.InstanceNumber = i + 1
        ds.Modality = "MR"
        ds.StudyDate = "20240115"
        ds.Rows = ds.Columns = rows
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = ((np.arange(rows * rows, dtype=np.uint32) * (i + 7) + number) % 4096).astype(
            np.uint16).tobytes()
        path = root / study.uid[-12:] / f"{number:02d}" / f"IM{i:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        study.sop_uids[path] = ds.SOPInstanceUID
    study.series[series_uid] = files
    study.descriptions[series_uid] = description
    return files


def dataset_part(data: bytes) -> bytes:
    """The bytes after the file meta group (preamble, 'DICM', group 2 with its group length first)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return data[144 + int.from_bytes(data[140:144], "little"):]


# ----------------------------------------------------------------------------------------------- receiver
class Site:
    def __init__(self, root: Path, **receiver: object) -> None:
        self.root = root
        root.mkdir()
        self.inbox, self.private = root / "inbox", root / "private"
        self.port = free_port()
        self.config = root / "site.yaml"
        section = {"port": self.port, "allowed_callers": ["SCANNER1"], "quiet_seconds": QUIET, **receiver}
        self.config.write_text(yaml.safe_dump({
            "inbox": str(self.inbox), "private_dir": str(self.private), "work_dir": str(root / "work"),
            "release_dir": str(root / "release"), "receiver": section}))
        self.log = root / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sent_identifiers: list[str] = []

    def start(self) -> None:
        handle = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "bidsafe.cli", "receive", "--configfile",
                                      str(self.config)], stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        wait_for(lambda: listening(self.port), 20, "the receiver to listen")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(20)

    @property
    def key(self) -> bytes:
        return load_key(self.private / "secret.key")

    def send(self, files: list[Path], aet: str = "SCANNER1", *extra: str, check: bool = True) -> int:
        result = subprocess.run([STORESCU, "-aet", aet, "-aec", "BIDSAFE", *extra, "127.0.0.1", str(self.port),
                                 *map(str, files)], capture_output=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.returncode

    def parts(self, study: Study) -> list[Path]:
        folder = self.inbox / study_key(self.key, study.uid)
        return sorted(folder.glob("part-*")) if folder.is_dir() else []

    def wait_parts(self, study: Study, count: int, timeout: float) -> None:
        """Until the journal has recorded `count` parts (it does so right after each part is in place)."""
        wait_for(lambda: self.journal(study).get("parts", 0) >= count and len(self.parts(study)) >= count,
                 timeout, f"{count} part(s) of the study")

    def journal(self, study: Study) -> dict[str, object]:
        db = sqlite3.connect(self.private / "receiver" / "journal.sqlite")
        try:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM studies WHERE study_key=?", (study_key(self.key, study.uid),)).fetchone()
            return dict(row) if row else {}
        finally:
            db.close()

    def spool_files(self) -> list[Path]:
        return [p for p in (self.private / "receiver" / "spool").rglob("*") if p.is_file()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def factory(**receiver: object) -> Site:
        site = Site(tmp_path / f"site{len(sites)}", **receiver)
        sites.append(site)
        site.start()
        return site

    yield factory
    for site in sites:
        if site.proc and site.proc.poll() is None:
            site.kill(signal.SIGTERM)
        text = site.log_text()
        for value in site.sent_identifiers:  # nothing identifying in the receiver's own output
            assert value not in text
        assert "DOE" not in text and "PID-" not in text and "1.2.826.0.1" not in text


def assert_part_holds(site: Site, part: Path, study: Study, files: list[Path]) -> None:
    """The part holds exactly `files` (each at its keyed name, data set bytes as sent), manifest matching."""
    key = site.key
    expected = {}
    for path in files:
        series_uid = next(s for s, fs in study.series.items() if path in fs)
        expected[f"{series_dirname(key, series_uid)}/{instance_filename(key, study.sop_uids[path])}"] = path
    on_disk = {p.relative_to(part).as_posix() for p in part.rglob("*.dcm")}
    assert on_disk == set(expected)
    for rel, sent in expected.items():
        assert dataset_part((part / rel).read_bytes()) == dataset_part(sent.read_bytes())
    manifest = read_manifest(part)
    assert manifest["instances"] == len(files)
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        rel: hashlib.sha256((part / rel).read_bytes()).hexdigest() for rel in expected}
    assert manifest["info"]["source"] == "receiver" and manifest["info"]["calling_ae"] == "SCANNER1"
    assert manifest["info"]["first_receipt"] <= manifest["info"]["last_receipt"]


# ----------------------------------------------------------------------------------------------- the tests
def test_one_association_per_study_becomes_one_part_after_the_quiet_period(make_site, tmp_path: Path):
    site = make_site()
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    sent_at = time.monotonic()
    site.send(study.files())
    site.wait_parts(study, 1, 15)
    assert time.monotonic() - sent_at >= QUIET - 0.1  # not before the quiet period
    (part,) = site.parts(study)
    assert part.name == "part-001"
    assert_part_holds(site, part, study, study.files())
    journal = site.journal(study)
    assert (journal["instances"], journal["duplicates"], journal["parts"], journal["state"]) == (
        6, 0, 1, "handed-over")
    assert journal["calling_ae"] == "SCANNER1"
    assert site.spool_files() == []
    line = f"study {study_key(site.key, study.uid)}: part-001 handed over to the inbox (6 instances)"
    wait_for(lambda: line in site.log_text(), 5, "the handoff's log line")


def test_one_association_per_series_is_still_one_study(make_site, tmp_path: Path):
    site = make_site(quiet_seconds=3)  # margin for storescu's start between the series on a busy host
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    for files in study.series.values():
        site.send(files)
        time.sleep(0.3)
    site.wait_parts(study, 1, 15)
    time.sleep(3.5)
    (part,) = site.parts(study)
    assert_part_holds(site, part, study, study.files())


def test_the_same_study_sent_twice_is_stored_once_and_counted(make_site, tmp_path: Path):
    site = make_site()
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    site.send(study.files())
    site.send(study.files())
    site.wait_parts(study, 1, 15)
    site.send(study.files())  # a third time, after the handoff: still nothing new
    time.sleep(QUIET + 1)
    (part,) = site.parts(study)
    assert_part_holds(site, part, study, study.files())
    journal = site.journal(study)
    assert (journal["instances"], journal["duplicates"], journal["parts"]) == (6, 12, 1)
    assert journal["state"] == "handed-over" and site.spool_files() == []


def test_a_late_series_after_the_handoff_is_the_next_part(make_site, tmp_path: Path):
    site = make_site()
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    site.send(study.files())
    site.wait_parts(study, 1, 15)
    first = site.parts(study)[0]
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    late = add_series(tmp_path / "send", study, "FLAIR", 3, 2)
    site.sent_identifiers += study.identifiers()
    site.send(late)
    site.wait_parts(study, 2, 15)
    assert [p.name for p in site.parts(study)] == ["part-001", "part-002"]
    assert_part_holds(site, site.parts(study)[1], study, late)
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    journal = site.journal(study)
    assert (journal["instances"], journal["parts"], journal["state"]) == (8, 2, "handed-over")


def test_two_interleaved_studies_are_kept_apart(make_site, tmp_path: Path):
    site = make_site()
    a = make_study(tmp_path / "send", patient="DOE^JOHN")
    b = make_study(tmp_path / "send", series=("BOLD",), per_series=4, patient="ROE^JANE")
    site.sent_identifiers += a.identifiers() + b.identifiers()
    fa, fb = a.files(), b.files()
    interleaved = [f for pair in zip(fa, fb, strict=False) for f in pair] + fa[len(fb):] + fb[len(fa):]
    site.send(interleaved)
    site.wait_parts(a, 1, 15)
    site.wait_parts(b, 1, 15)
    assert_part_holds(site, site.parts(a)[0], a, fa)
    assert_part_holds(site, site.parts(b)[0], b, fb)
    assert (site.journal(a)["instances"], site.journal(b)["instances"]) == (6, 4)


def test_an_aborted_association_waits_for_the_quiet_period_and_keeps_what_arrived(make_site, tmp_path: Path):
    # the expected-series rule would make a study ready early after a normal release: not after an abort
    site = make_site(quiet_seconds=4, expected_series=[{"description": "T1w"}])
    study = make_study(tmp_path / "send", series=("T1w", "T2w"), per_series=150, rows=256)  # ~130 KB each
    site.sent_identifiers += study.identifiers()
    sender = subprocess.Popen([STORESCU, "-aet", "SCANNER1", "-aec", "BIDSAFE", "127.0.0.1", str(site.port),
                               *map(str, study.files())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(site.spool_files()) >= 160, 60, "part of the study")
    sender.kill()
    sender.wait()
    killed_at = time.monotonic()
    time.sleep(0.5)
    received = site.journal(study)["instances"]
    assert 160 <= received < 300  # halfway: the sender was cut off
    time.sleep(2)
    assert site.parts(study) == []  # T1w is complete, but the association was cut: quiet period only
    site.wait_parts(study, 1, 20)
    assert time.monotonic() - killed_at >= 4 - 0.6
    (part,) = site.parts(study)
    kept = [f for f in study.files()
            if (part / series_dirname(site.key, next(s for s, fs in study.series.items() if f in fs))
                / instance_filename(site.key, study.sop_uids[f])).exists()]
    assert len(kept) == received
    assert_part_holds(site, part, study, kept)
    assert "ended without a release" in site.log_text()


def test_expected_series_make_a_released_study_ready_before_the_quiet_period(make_site, tmp_path: Path):
    site = make_site(quiet_seconds=60, expected_series=[{"description": "*t1*"}, {"description": "T2w",
                                                                                    "min_instances": 3}])
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    site.send(study.files())
    site.wait_parts(study, 1, 10)
    assert_part_holds(site, site.parts(study)[0], study, study.files())
    assert "the expected series are complete" in site.log_text()


def test_the_receiver_killed_mid_study_resumes_from_its_journal(make_site, tmp_path: Path):
    site = make_site(quiet_seconds=6)  # longer than a restart takes on a busy host
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    first, second = list(study.series.values())
    site.send(first)
    site.kill()  # SIGKILL, mid-study
    assert len(site.spool_files()) == 3
    site.start()
    site.send(second)
    site.send(first[:1])  # a resend after the restart is still recognised
    site.wait_parts(study, 1, 20)
    time.sleep(6.5)  # and it is handed over once
    (part,) = site.parts(study)
    assert_part_holds(site, part, study, study.files())
    journal = site.journal(study)
    assert (journal["instances"], journal["duplicates"], journal["parts"]) == (6, 1, 1)


def test_a_caller_not_allowed_is_rejected_and_nothing_is_stored(make_site, tmp_path: Path):
    site = make_site(allowed_callers=["SCANNER1", {"ae_title": "PACS", "hosts": ["192.0.2.1"]}])
    study = make_study(tmp_path / "send")
    site.sent_identifiers += study.identifiers()
    assert site.send(study.files(), "INTRUDER", check=False) != 0
    assert site.send(study.files(), "PACS", check=False) != 0  # right AE title, wrong host
    time.sleep(QUIET + 0.5)
    assert site.spool_files() == [] and site.parts(study) == [] and site.journal(study) == {}
    assert not site.inbox.exists() or not any(site.inbox.iterdir())
    assert site.log_text().count("not in receiver.allowed_callers") == 2


def test_a_malformed_instance_is_refused_and_quarantined_with_its_reason(make_site, tmp_path: Path):
    site = make_site()
    study = make_study(tmp_path / "send", series=("T1w",), per_series=2)
    site.sent_identifiers += study.identifiers()
    bad = study.files()[0]
    ds_bytes = bad.read_bytes()
    import pydicom

    ds = pydicom.dcmread(bad)
    del ds.StudyInstanceUID
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken, enforce_file_format=True)
    assert ds_bytes != broken.read_bytes()
    assert site.send([broken], check=False) != 0  # the sender is told
    site.send(study.files()[1:])
    site.wait_parts(study, 1, 15)
    assert_part_holds(site, site.parts(study)[0], study, study.files()[1:])
    quarantine = list((site.private / "receiver" / "quarantine").iterdir())
    assert len(quarantine) == 1
    assert dataset_part(quarantine[0].read_bytes()) == dataset_part(broken.read_bytes())
    db = sqlite3.connect(site.private / "receiver" / "journal.sqlite")
    reasons = db.execute("SELECT name, calling_ae, reason FROM quarantine").fetchall()
    db.close()
    assert reasons == [(quarantine[0].name, "SCANNER1", "a Study, Series or SOP Instance UID is missing")]
    assert "refused and quarantined" in site.log_text()


def test_a_study_receiving_past_max_wait_is_held_until_released(make_site, tmp_path: Path):
    site = make_site(quiet_seconds=3, max_wait_seconds=1)
    study = make_study(tmp_path / "send", series=("T1w",), per_series=2)
    site.sent_identifiers += study.identifiers()
    site.send(study.files()[:1])
    time.sleep(1.2)
    site.send(study.files()[1:])  # still arriving after max_wait: held
    wait_for(lambda: site.journal(study).get("state") == "held", 10, "the study to be held")
    time.sleep(3.5)
    assert site.parts(study) == []  # held studies are not handed over, even after the quiet period
    skey = study_key(site.key, study.uid)
    wait_for(lambda: f"study {skey}: HELD for review" in site.log_text(), 5, "the held study's log line")
    status = subprocess.run([sys.executable, "-m", "bidsafe.cli", "receive", "--configfile", str(site.config),
                             "--release-held", skey, "--status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    site.wait_parts(study, 1, 10)
    assert_part_holds(site, site.parts(study)[0], study, study.files())


def test_sigterm_stops_the_receiver_cleanly(make_site, tmp_path: Path):
    site = make_site()
    site.kill(signal.SIGTERM)
    assert site.proc is not None and site.proc.returncode == 0
    assert os.path.isdir(site.private / "receiver")


def test_a_compressed_instance_is_stored_as_received(make_site, tmp_path: Path):
    import pydicom
    from pydicom.uid import RLELossless

    site = make_site()
    study = make_study(tmp_path / "send", series=("T1w",), per_series=2, rows=16)
    site.sent_identifiers += study.identifiers()
    for path in study.files():
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    site.send(study.files(), "SCANNER1", "-xr")  # -xr: propose RLE, so storescu sends the files unconverted
    site.wait_parts(study, 1, 15)
    (part,) = site.parts(study)
    assert_part_holds(site, part, study, study.files())  # the RLE data set bytes, not decoded pixels
    for stored in part.rglob("*.dcm"):
        assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
