"""hand_over_study: whole parts, manifests that match the bytes, next part numbers, no overwrite; ingest skips
what is still being built."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from bidsafe.handoff import (
    hand_over_study,
    instance_filename,
    read_manifest,
    series_dirname,
    study_key,
)
from bidsafe.ingest import scan_inbox

from helpers.mr_instances import HANDOFF_KEY, tiny_mr


def _spool(root: Path, study: str, series: str, n: int) -> list[Path]:
    files = []
    for i in range(n):
        ds = tiny_mr(study, series, i)
        path = root / series_dirname(HANDOFF_KEY, series) / instance_filename(HANDOFF_KEY, ds.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def test_part_holds_the_files_and_a_manifest_that_matches_their_bytes(tmp_path: Path):
    study = generate_uid()
    files = _spool(tmp_path / "spool", study, generate_uid(), 3)
    sent = {f"{f.parent.name}/{f.name}": f.read_bytes() for f in files}
    skey = study_key(HANDOFF_KEY, study)
    info = {"source": "receiver", "calling_ae": "SCANNER1", "first_receipt": "t0", "last_receipt": "t1"}

    part = hand_over_study(files, tmp_path / "inbox", skey, info)

    assert part == tmp_path / "inbox" / skey / "part-001"
    manifest = read_manifest(part)
    assert manifest["instances"] == 3 and manifest["study_key"] == skey and manifest["info"] == info
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in sent.items()
    }
    assert {rel: (part / rel).read_bytes() for rel in sent} == sent
    assert not any(f.exists() for f in files)  # moved, not copied
    assert stat.S_IMODE(part.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((part / rel).stat().st_mode) == 0o600 for rel in sent)
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == [skey]  # no incoming folder left behind
    assert study not in str(part) and skey != study


def test_a_later_handoff_of_the_same_study_is_the_next_part_and_leaves_the_first_alone(tmp_path: Path):
    study, inbox = generate_uid(), tmp_path / "inbox"
    skey = study_key(HANDOFF_KEY, study)
    first = hand_over_study(_spool(tmp_path / "a", study, generate_uid(), 2), inbox, skey, {"source": "receiver"})
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    late = _spool(tmp_path / "b", study, generate_uid(), 1)

    second = hand_over_study(late, inbox, skey, {"source": "receiver"})

    assert second.name == "part-002" and read_manifest(second)["instances"] == 1
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_refusals_happen_before_anything_moves(tmp_path: Path):
    study = generate_uid()
    a = _spool(tmp_path / "a", study, "1.2.3", 1)[0]
    b = tmp_path / "b" / a.parent.name / a.name  # same series folder and file name from another place
    b.parent.mkdir(parents=True)
    b.write_bytes(a.read_bytes())
    with pytest.raises(ValueError, match="same name"):
        hand_over_study([a, b], tmp_path / "inbox", study_key(HANDOFF_KEY, study), {})
    with pytest.raises(ValueError, match="short hash"):
        hand_over_study([a], tmp_path / "inbox", "../escape", {})
    with pytest.raises(ValueError, match="no files"):
        hand_over_study([], tmp_path / "inbox", "abc", {})
    assert a.exists() and b.exists()
    assert not (tmp_path / "inbox").exists() or not any((tmp_path / "inbox").iterdir())


def test_a_failed_move_leaves_the_sources_and_no_part(tmp_path: Path):
    study = generate_uid()
    files = _spool(tmp_path / "spool", study, generate_uid(), 2)
    missing = files[0].parent / ("0" * 64 + ".dcm")  # vanished before the handoff
    with pytest.raises(FileNotFoundError):
        hand_over_study([*files, missing], tmp_path / "inbox", study_key(HANDOFF_KEY, study), {})
    assert all(f.exists() for f in files)
    assert os.listdir(tmp_path / "inbox") == []


def test_ingest_skips_folders_being_built_and_the_manifest(tmp_path: Path):
    study, inbox = generate_uid(), tmp_path / "inbox"
    part = hand_over_study(_spool(tmp_path / "s", study, generate_uid(), 2), inbox, study_key(HANDOFF_KEY, study), {})
    building = inbox / ".incoming-feedface"
    _spool(building, generate_uid(), generate_uid(), 1)  # another study half moved in

    rows, quarantine, summary = scan_inbox(inbox)

    assert {r.study_uid for r in rows} == {study} and len(rows) == 2
    assert quarantine == []  # neither the manifest nor the incoming folder's file is reported
    assert all(r.relpath.startswith(f"{part.parent.name}/part-001/") for r in rows)
    # a stray manifest.json anywhere else is still input, and still quarantined
    (inbox / "manifest.json").write_text("{}")
    assert [q.relpath for q in scan_inbox(inbox)[1]] == ["manifest.json"]
