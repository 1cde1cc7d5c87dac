"""Ingest: header-only indexing by study, quarantine with reasons, incremental re-runs, an untouched inbox."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from bidsafe.cli import main as bidsafe_main
from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.ingest import (
    INDEX_COLUMNS,
    REASON_DICOMDIR,
    REASON_DUPLICATE,
    REASON_EMPTY,
    REASON_NO_FILE_META,
    REASON_NO_STUDY,
    REASON_NON_IMAGE,
    REASON_NOT_DICOM,
    REASON_SYMLINK_BROKEN,
    REASON_SYMLINK_DIR,
    REASON_SYMLINK_FILE,
    REASON_SYMLINK_OUT,
    attribute_quarantine,
    inbox_fingerprint,
    index_inbox,
    ingest_stage,
    read_index,
    read_quarantine,
    sessions,
)

from helpers.mr_instances import MR_IMAGE, mr_instance, save_dicom

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


class Inbox:
    """Two fake patients' exports (nested folders named after them) plus the junk an inbox receives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.study_a, self.study_b = generate_uid(), generate_uid()
        self.series_a1, self.series_a2, self.series_b1 = generate_uid(), generate_uid(), generate_uid()
        john = root / "DOE_JOHN_19800101" / "STUDY_20240115"
        jane = root / "SMITH_JANE_19751224"
        self.dicom: dict[str, Dataset] = {}
        for i in range(3):
            self._add(john / "SER_T1" / f"IM{i:04d}.dcm", mr_instance(self.study_a, self.series_a1, 2, "PID-JOHN", i))
        for i in range(2):
            self._add(john / "SER_BOLD" / f"IM{i:04d}", mr_instance(self.study_a, self.series_a2, 5, "PID-JOHN", i))
        for i in range(2):
            ds = mr_instance(self.study_b, self.series_b1, 3, "PID-JANE", i, implicit=True)
            self._add(jane / "DICOM" / f"{i}.dcm", ds)

        (john / "notes.txt").write_text("scan went fine, patient John Doe, DOB 1980-01-01\n")
        (jane / "empty.dcm").write_bytes(b"")
        whole = (john / "SER_T1" / "IM0000.dcm").read_bytes()
        (john / "SER_T1" / "IM9999.dcm").write_bytes(whole[: len(whole) - 40])  # pixel data cut short
        save_dicom(_dicomdir(), root / "DICOMDIR")
        save_dicom(_dicomdir(), root / "DOE_JOHN_19800101" / "DICOMDIR")

    def _add(self, path: Path, ds: Dataset) -> None:
        save_dicom(ds, path)
        self.dicom[path.relative_to(self.root).as_posix()] = ds


def _dicomdir() -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "DOE_JOHN"
    ds.DirectoryRecordSequence = []
    return ds


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under root with its content hash, mtime and mode (lstat: links are not followed)."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = "" if path.is_dir() or path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
        result[path.relative_to(root).as_posix()] = (digest, st.st_mtime_ns, st.st_mode)
    return result


@pytest.fixture()
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path / "inbox")


def test_index_groups_files_by_study_and_quarantines_junk_with_reasons(inbox: Inbox, tmp_path: Path):
    private = tmp_path / "private"
    summary = index_inbox(inbox.root, private / "index.tsv", private / "quarantine.tsv")

    rows = read_index(private / "index.tsv")
    assert {r.relpath for r in rows} == set(inbox.dicom)
    for row in rows:
        ds = inbox.dicom[row.relpath]
        assert (row.study_uid, row.series_uid, row.sop_uid) == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
        assert (row.patient_id, row.study_date, row.study_time) == (ds.PatientID, "20240115", "093000")
        assert (row.series_number, row.modality, row.sop_class_uid) == (str(ds.SeriesNumber), "MR", MR_IMAGE)
        st = (inbox.root / row.relpath).stat()
        assert (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert [r.sort_key() for r in rows] == sorted(r.sort_key() for r in rows)

    grouped = sessions(rows)
    assert set(grouped) == {inbox.study_a, inbox.study_b}
    assert len(grouped[inbox.study_a]) == 5 and len(grouped[inbox.study_b]) == 2
    assert {r.series_uid for r in grouped[inbox.study_a]} == {inbox.series_a1, inbox.series_a2}

    quarantine = {q.relpath: (q.study_uid, q.reason) for q in read_quarantine(private / "quarantine.tsv")}
    john = "DOE_JOHN_19800101"
    assert quarantine == {
        f"{john}/STUDY_20240115/notes.txt": (inbox.study_a, REASON_NOT_DICOM),
        f"{john}/STUDY_20240115/SER_T1/IM9999.dcm": (
            inbox.study_a,
            "truncated/unreadable: pixel data runs past the end of the file",
        ),
        f"{john}/DICOMDIR": (inbox.study_a, REASON_DICOMDIR),
        "SMITH_JANE_19751224/empty.dcm": (inbox.study_b, REASON_EMPTY),
        "DICOMDIR": ("", REASON_DICOMDIR),  # the inbox root holds two studies: no attribution
    }
    assert (summary.files, summary.dicom, summary.quarantined) == (12, 7, 5)
    assert (summary.studies, summary.series, summary.reused) == (2, 3, 0)

    for written in ("index.tsv", "quarantine.tsv"):
        assert stat.S_IMODE((private / written).stat().st_mode) == 0o600
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert (private / "index.tsv").read_text().splitlines()[0].split("\t") == list(INDEX_COLUMNS)


def test_inbox_is_never_modified(inbox: Inbox, tmp_path: Path):
    (inbox.root / "link_to_t1.dcm").symlink_to(next(iter((inbox.root / "DOE_JOHN_19800101").rglob("*.dcm"))))
    before = _snapshot(inbox.root)
    index_inbox(inbox.root, tmp_path / "p" / "i.tsv", tmp_path / "p" / "q.tsv", cache=tmp_path / "p" / "c.tsv")
    index_inbox(inbox.root, tmp_path / "p" / "i.tsv", tmp_path / "p" / "q.tsv", cache=tmp_path / "p" / "c.tsv")
    inbox_fingerprint(inbox.root)
    assert _snapshot(inbox.root) == before


def test_outputs_inside_the_inbox_are_refused(inbox: Inbox, tmp_path: Path):
    with pytest.raises(ConfigError, match="inside the inbox"):
        index_inbox(inbox.root, inbox.root / "index.tsv", tmp_path / "q.tsv")
    assert not (inbox.root / "index.tsv").exists()


def test_cache_reuses_unchanged_files_without_reading_them(inbox: Inbox, tmp_path: Path):
    index, quarantine, cache = tmp_path / "p" / "i.tsv", tmp_path / "p" / "q.tsv", tmp_path / "p" / "cache.tsv"
    first = index_inbox(inbox.root, index, quarantine, cache=cache)
    assert first.reused == 0 and read_index(cache) == read_index(index)

    # Same size and mtime but garbage bytes: a reused row proves the file was not opened again.
    stale = "SMITH_JANE_19751224/DICOM/0.dcm"
    path = inbox.root / stale
    st = path.stat()
    path.write_bytes(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A changed file (new mtime) is re-read; a new file is read.
    changed = "DOE_JOHN_19800101/STUDY_20240115/SER_BOLD/IM0000"
    (inbox.root / changed).write_text("overwritten by a careless copy\n")
    new_series = generate_uid()
    save_dicom(mr_instance(inbox.study_b, new_series, 7, "PID-JANE", 0), inbox.root / "SMITH_JANE_19751224" / "new.dcm")

    second = index_inbox(inbox.root, index, quarantine, cache=cache)
    rows = {r.relpath: r for r in read_index(index)}
    assert rows[stale].sop_uid == inbox.dicom[stale].SOPInstanceUID
    assert changed not in rows
    assert rows["SMITH_JANE_19751224/new.dcm"].series_uid == new_series
    assert {q.relpath: q.reason for q in read_quarantine(quarantine)}[changed] == REASON_NOT_DICOM
    assert second.reused == 6 and second.dicom == 7
    assert read_index(cache) == read_index(index)


def test_fingerprint_follows_stat_changes_only(inbox: Inbox):
    first = inbox_fingerprint(inbox.root)
    assert first == inbox_fingerprint(inbox.root)
    assert len(first) == 64 and "DOE" not in first
    target = inbox.root / "SMITH_JANE_19751224" / "DICOM" / "1.dcm"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = inbox_fingerprint(inbox.root)
    assert touched != first
    (inbox.root / "SMITH_JANE_19751224" / "extra.txt").write_text("x")
    assert inbox_fingerprint(inbox.root) not in (first, touched)


def test_truncated_header_non_image_raw_dataset_and_missing_study(tmp_path: Path):
    root = tmp_path / "inbox"
    ds = mr_instance(generate_uid(), generate_uid(), 1, "P1", 0)
    whole = save_dicom(ds, root / "whole.dcm").read_bytes()
    (root / "cut_in_header.dcm").write_bytes(whole[:300])

    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID = BASIC_TEXT_SR, sr.file_meta.MediaStorageSOPInstanceUID
    sr.StudyInstanceUID, sr.SeriesInstanceUID = ds.StudyInstanceUID, generate_uid()
    sr.Modality = "SR"
    save_dicom(sr, root / "report.dcm")

    no_study = mr_instance(generate_uid(), generate_uid(), 1, "P1", 1)
    del no_study.StudyInstanceUID
    save_dicom(no_study, root / "no_study.dcm")
    # A bare data set without preamble and 'DICM' (what some old exports write).
    (root / "raw.ima").write_bytes(whole[132 + 4 + _meta_length(whole) :])

    summary = index_inbox(root, tmp_path / "i.tsv", tmp_path / "q.tsv")
    reasons = {q.relpath: q.reason for q in read_quarantine(tmp_path / "q.tsv")}
    assert reasons == {
        "cut_in_header.dcm": "truncated/unreadable: file ends before the pixel data",
        "report.dcm": REASON_NON_IMAGE,
        "no_study.dcm": REASON_NO_STUDY,
        "raw.ima": REASON_NO_FILE_META,
    }
    assert [r.relpath for r in read_index(tmp_path / "i.tsv")] == ["whole.dcm"]
    assert summary.dicom == 1 and summary.quarantined == 4


def _meta_length(data: bytes) -> int:
    """Bytes of the file meta group after its (0002,0000) group length element (12 bytes itself)."""
    assert data[132:136] == b"\x02\x00\x00\x00"
    return 12 - 4 + int.from_bytes(data[140:144], "little")


def test_compressed_pixel_data_is_checked_fragment_by_fragment(tmp_path: Path):
    root = tmp_path / "inbox"
    ds = mr_instance(generate_uid(), generate_uid(), 1, "P1", 3)
    ds.compress(RLELossless)
    whole = save_dicom(ds, root / "rle.dcm").read_bytes()
    (root / "rle_cut.dcm").write_bytes(whole[:-20])
    index_inbox(root, tmp_path / "i.tsv", tmp_path / "q.tsv")
    assert [r.relpath for r in read_index(tmp_path / "i.tsv")] == ["rle.dcm"]
    [cut] = read_quarantine(tmp_path / "q.tsv")
    assert cut.relpath == "rle_cut.dcm" and cut.reason.startswith("truncated/unreadable: compressed pixel data")
    assert cut.study_uid == ds.StudyInstanceUID


def test_symlinks_are_reported_never_read_and_copies_are_duplicates(inbox: Inbox, tmp_path: Path):
    outside = tmp_path / "outside"
    save_dicom(mr_instance(generate_uid(), generate_uid(), 9, "PID-OTHER", 0), outside / "other.dcm")
    (inbox.root / "link_out.dcm").symlink_to(outside / "other.dcm")
    (inbox.root / "link_dir_out").symlink_to(outside, target_is_directory=True)
    (inbox.root / "link_dir_in").symlink_to(inbox.root / "SMITH_JANE_19751224", target_is_directory=True)
    (inbox.root / "link_broken.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (inbox.root / "loop_a").symlink_to(inbox.root / "loop_b")
    (inbox.root / "loop_b").symlink_to(inbox.root / "loop_a")
    jane_file = "SMITH_JANE_19751224/DICOM/0.dcm"
    # Sorted before its target, so a followed link would be the copy kept and the real file the duplicate.
    (inbox.root / "SMITH_JANE_19751224" / "DICOM" / "0_link.dcm").symlink_to(inbox.root / jane_file)
    shutil.copytree(inbox.root / "SMITH_JANE_19751224" / "DICOM", inbox.root / "SMITH_JANE_19751224" / "copy",
                    symlinks=True)

    index_inbox(inbox.root, tmp_path / "i.tsv", tmp_path / "q.tsv")
    rows = read_index(tmp_path / "i.tsv")
    assert "PID-OTHER" not in {r.patient_id for r in rows}
    assert not [r.relpath for r in rows if "link" in r.relpath or "loop" in r.relpath]
    jane = [r.relpath for r in sessions(rows)[inbox.study_b]]
    assert jane == ["SMITH_JANE_19751224/DICOM/0.dcm", "SMITH_JANE_19751224/DICOM/1.dcm"]
    reasons = {q.relpath: (q.study_uid, q.reason) for q in read_quarantine(tmp_path / "q.tsv")}
    assert reasons["link_out.dcm"] == ("", REASON_SYMLINK_OUT)
    assert reasons["link_dir_out"] == ("", REASON_SYMLINK_OUT)
    assert reasons["link_dir_in"][1] == REASON_SYMLINK_DIR == "symbolic link to a folder (not followed)"
    assert reasons["link_broken.dcm"][1] == reasons["loop_a"][1] == reasons["loop_b"][1] == REASON_SYMLINK_BROKEN
    assert reasons["SMITH_JANE_19751224/DICOM/0_link.dcm"] == (inbox.study_b, REASON_SYMLINK_FILE)
    assert reasons["SMITH_JANE_19751224/copy/0_link.dcm"][1] == REASON_SYMLINK_FILE
    for duplicate in ("copy/0.dcm", "copy/1.dcm"):
        assert reasons[f"SMITH_JANE_19751224/{duplicate}"] == (inbox.study_b, REASON_DUPLICATE)


def test_a_symlinked_inbox_root_is_resolved_once(inbox: Inbox, tmp_path: Path):
    link = tmp_path / "inbox-link"
    link.symlink_to(inbox.root, target_is_directory=True)
    via_link = index_inbox(link, tmp_path / "l" / "i.tsv", tmp_path / "l" / "q.tsv")
    direct = index_inbox(inbox.root, tmp_path / "d" / "i.tsv", tmp_path / "d" / "q.tsv")
    assert via_link == direct and via_link.studies == 2
    assert (tmp_path / "l" / "i.tsv").read_bytes() == (tmp_path / "d" / "i.tsv").read_bytes()
    assert inbox_fingerprint(link) == inbox_fingerprint(inbox.root)
    with pytest.raises(ConfigError, match="inside the inbox"):  # the link names the same folder
        index_inbox(link, inbox.root / "i.tsv", tmp_path / "q.tsv")


def _inbox_of_links(tmp_path: Path, exports: Path) -> Path:
    """What a site builds to avoid copying: an inbox of links to export folders elsewhere, plus a note."""
    root = tmp_path / "linked-inbox"
    root.mkdir()
    for folder in sorted(p for p in exports.iterdir() if p.is_dir()):
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    (root / "README.txt").write_text("exports from the scanners\n")
    return root


def test_an_inbox_without_a_study_stops_at_ingest_with_the_reasons(inbox: Inbox, tmp_path: Path):
    root = _inbox_of_links(tmp_path, inbox.root)
    private = tmp_path / "private"
    kept = private / "ingest" / "quarantine-no-study.tsv"
    with pytest.raises(BidsafeError) as caught:
        ingest_stage(root, private / "ingest" / "index.tsv", private / "ingest" / "q.tsv", failed_quarantine=kept)
    message = str(caught.value)
    assert message.startswith("ingest: no DICOM study found in the inbox (3 files looked at, 3 quarantined: ")
    assert f"2 {REASON_SYMLINK_OUT}" in message and f"1 {REASON_NOT_DICOM}" in message and str(kept) in message
    for secret in ("DOE", "SMITH", "README"):
        assert secret not in message
    # The copy survives the deletion of a failed job's outputs and lists every file with its reason.
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert {(q.relpath, q.reason) for q in read_quarantine(kept)} == {
        ("DOE_JOHN_19800101", REASON_SYMLINK_OUT), ("SMITH_JANE_19751224", REASON_SYMLINK_OUT),
        ("README.txt", REASON_NOT_DICOM)}
    # Once the inbox holds a study the stage goes on, and the stale copy is gone.
    shutil.copytree(inbox.root / "SMITH_JANE_19751224", root / "jane")
    summary = ingest_stage(root, private / "ingest" / "index.tsv", private / "ingest" / "q.tsv", failed_quarantine=kept)
    assert summary.studies == 1 and not kept.exists()
    with pytest.raises(BidsafeError, match=r"^ingest: no DICOM study found: the inbox holds no file"):
        (tmp_path / "empty").mkdir()
        ingest_stage(tmp_path / "empty", private / "e" / "i.tsv", private / "e" / "q.tsv")


def test_cli_ingest_of_an_inbox_without_a_study_exits_1_with_counts(inbox: Inbox, tmp_path: Path, capsys):
    root = _inbox_of_links(tmp_path, inbox.root)
    private = tmp_path / "private"
    code = bidsafe_main(
        ["ingest", str(root), "--index", str(private / "i.tsv"), "--quarantine", str(private / "q.tsv")]
    )
    out, err = capsys.readouterr()
    assert code == 1 and "no DICOM study found in the inbox (3 files looked at, 3 quarantined" in err
    assert len(read_quarantine(private / "q.tsv")) == 3  # the reports are written before the stop
    for secret in ("DOE", "SMITH", "README"):
        assert secret not in out + err


def test_ingest_help_states_the_symlink_policy(capsys):
    with pytest.raises(SystemExit):
        bidsafe_main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "INBOX itself may be a link (it is resolved once)" in text
    assert "links inside it are never followed" in text and "listed in the quarantine report" in text


def test_attribution_needs_exactly_one_study_in_the_nearest_folder_with_dicom():
    from bidsafe.ingest import IndexRow

    def row(relpath: str, study: str) -> IndexRow:
        return IndexRow(relpath, 1, 1, study, "s", relpath, "", "", "", "", "MR", MR_IMAGE)

    rows = [row("a/x/1.dcm", "A"), row("a/y/2.dcm", "A"), row("b/1.dcm", "B"), row("b/c/2.dcm", "C")]
    junk = [("a/x/j", "r"), ("a/j", "r"), ("a/z/deep/j", "r"), ("b/j", "r"), ("b/c/j", "r"), ("j", "r"), ("d/j", "r")]
    attributed = {q.relpath: q.study_uid for q in attribute_quarantine(junk, rows)}
    assert attributed == {"a/x/j": "A", "a/j": "A", "a/z/deep/j": "A", "b/j": "", "b/c/j": "C", "j": "", "d/j": ""}


def test_paths_that_are_not_utf8_round_trip(tmp_path: Path):
    root = tmp_path / "inbox"
    name = os.fsdecode(b"M\xdcLLER_\xe9.dcm")  # Latin-1 bytes from an old export, not valid UTF-8
    save_dicom(mr_instance(generate_uid(), generate_uid(), 1, "P1", 0), root / name)
    index_inbox(root, tmp_path / "i.tsv", tmp_path / "q.tsv")
    [row] = read_index(tmp_path / "i.tsv")
    assert row.relpath == name and (root / row.relpath).is_file()


def test_read_index_rejects_a_foreign_file(tmp_path: Path):
    other = tmp_path / "other.tsv"
    other.write_text("a\tb\n1\t2\n")
    with pytest.raises(BidsafeError, match="expected columns relpath, size"):
        read_index(other)


def test_cli_prints_counts_but_no_names_or_paths(inbox: Inbox, tmp_path: Path, capsys):
    private = tmp_path / "private"
    code = bidsafe_main(
        ["ingest", str(inbox.root), "--index", str(private / "i.tsv"), "--quarantine", str(private / "q.tsv")]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "7 DICOM images in 2 studies (3 series), 5 quarantined" in out
    for secret in ("DOE", "JOHN", "SMITH", "PID-", str(tmp_path), inbox.study_a):
        assert secret not in out + err
    assert len(read_index(private / "i.tsv")) == 7


@pytest.mark.corpus
def test_real_vendor_exports_are_indexed_whole():
    if not CORPUS.is_dir():
        pytest.skip(f"real scanner exports not present at {CORPUS}")
    expected = sorted(p for p in CORPUS.rglob("*") if p.is_file() and _has_dicm(p))
    # The corpus is shared and read-only: outputs go to a temporary folder outside it.
    with tempfile.TemporaryDirectory() as private:
        summary = index_inbox(CORPUS, Path(private) / "i.tsv", Path(private) / "q.tsv")
        rows = read_index(Path(private) / "i.tsv")
        quarantined = read_quarantine(Path(private) / "q.tsv")
    assert sorted(CORPUS / r.relpath for r in rows) == expected
    assert all(q.reason == REASON_NOT_DICOM for q in quarantined)
    assert summary.studies >= 3 and all(r.modality == "MR" for r in rows)


def _has_dicm(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def test_nothing_identifying_reaches_logs_or_warnings(tmp_path: Path, caplog, capsys, recwarn):
    # Files cut at every few bytes make pydicom complain; its messages quote values and file names.
    folder = tmp_path / "inbox" / "DOE_JOHN_19800101"
    ds = mr_instance(generate_uid(), generate_uid(), 8, "PID-JOHN", 0)
    request = Dataset()
    request.RequestingPhysician = "DOE^JANE"
    ds.RequestAttributesSequence = [request]
    whole = save_dicom(ds, folder / "whole.dcm").read_bytes()
    cuts = range(132, len(whole), 5)
    for cut in cuts:
        (folder / f"cut_{cut}.dcm").write_bytes(whole[:cut])
    with caplog.at_level("DEBUG"):
        summary = index_inbox(tmp_path / "inbox", tmp_path / "i.tsv", tmp_path / "q.tsv")
    out, err = capsys.readouterr()
    said = out + err + caplog.text + " ".join(str(w.message) for w in recwarn)
    for secret in ("DOE", "JOHN", "PID-", "19800101", "1.2.826.0.1"):  # names, IDs, pydicom's UID root
        assert secret not in said
    quarantine = read_quarantine(tmp_path / "q.tsv")
    assert summary.dicom == 1 and len(quarantine) == len(cuts)
    assert all(q.reason.startswith("truncated/unreadable: ") for q in quarantine)
