"""`bidsafe withdraw-from-releases` (issue 10, item 6): a participant leaves every earlier published version,
each version gets a CHANGES entry and a new manifest and still verifies, the other participants' files keep
their bytes, and no version is ever seen half rewritten."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bidsafe.cli import main
from bidsafe.release import withdraw as withdraw_mod
from bidsafe.release.manifest import SHAREABLE_NAME, parse_manifest, verify_release
from bidsafe.release.publish import publish
from bidsafe.release.withdraw import TMP_SUFFIX, build_version, plan_version, withdraw_from_releases

from helpers.release_project import PROFILE, Project

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
# files a withdrawal rewrites in every version it touches; every other file keeps its bytes (and its inode)
REWRITTEN = {"participants.tsv", "CHANGES", "README", "MANIFEST.sha256", "SHAREABLE.json"}


def _state(root: Path) -> dict[str, str]:
    """Every name under `root` (leftovers included) with its content hash or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture
def released(tmp_path: Path) -> Project:
    """v1: sub-a1 (two sessions) and sub-b2; v2 adds sub-d4."""
    project = Project(tmp_path)
    project.add("a1", "01", seed=1)
    project.add("a1", "02", seed=2)
    project.add("b2", "01", seed=3)
    project.write_tables()
    project.assemble()
    publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble()
    publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)
    return project


def test_participant_leaves_every_version_which_still_verifies(released: Project, capsys: pytest.CaptureFixture[str]):
    release = released.release_dir
    before = {v: _state(release / v) for v in ("v1", "v2")}
    old_changes = {v: (release / v / "CHANGES").read_text() for v in ("v1", "v2")}
    inodes = {v: {rel: os.stat(release / v / rel).st_ino for rel in before[v] if "a1" not in rel
                  and (release / v / rel).is_file()} for v in before}

    assert main(["withdraw-from-releases", "sub-a1", "--release-dir", str(release)]) == 0
    out = capsys.readouterr().out
    assert "sub-a1 removed from v1, v2" in out and "cannot be recalled" in out

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for version in ("v1", "v2"):
        root = release / version
        after = _state(root)
        assert not [rel for rel in after if "sub-a1" in rel], "no file or folder of sub-a1 is left"
        # every other file keeps its bytes (and is the same file: hard-linked, not copied)
        kept = {rel: h for rel, h in before[version].items() if "sub-a1" not in rel and rel not in REWRITTEN}
        assert {rel: h for rel, h in after.items() if rel not in REWRITTEN} == kept
        assert all(os.stat(root / rel).st_ino == inodes[version][rel] for rel in kept if kept[rel] != "dir")
        rows = (root / "participants.tsv").read_text().splitlines()
        old_rows = before_participants(released, version)
        assert rows == [r for r in old_rows if not r.startswith("sub-a1\t")] and len(rows) == len(old_rows) - 1
        number = version[1:]
        assert (root / "CHANGES").read_text() == (
            f"{number}.0.1 {today}\n  - Participant withdrawn: sub-a1 removed from this version "
            "(sub-a1/ses-01, sub-a1/ses-02).\n    Delete any copies of these files you hold.\n\n"
            + old_changes[version])
        assert "sub-a1" not in (root / "README").read_text()
        result = verify_release(root)
        assert result.ok, result.summary()
        assert main(["verify", str(root)]) == 0
        listed = parse_manifest((root / "MANIFEST.sha256").read_text())
        assert not [rel for rel in listed if "a1" in rel]
        shareable = json.loads((root / SHAREABLE_NAME).read_text())
        assert shareable["shareable"] is True and shareable["version"] == int(number)
        assert [w["participant"] for w in shareable["withdrawals"]] == ["sub-a1"]
        assert shareable["withdrawals"][0]["sessions"] == 2
        assert not os.stat(root / "CHANGES").st_mode & 0o222, "rewritten files are read-only like published ones"
    assert "MRI data of 2 participants (2 sessions)" in (release / "v2" / "README").read_text()
    assert os.readlink(release / "latest") == "v2"
    assert sorted(p.name for p in release.iterdir()) == [".publish.lock", "latest", "v1", "v2"], "no leftovers"


def before_participants(project: Project, version: str) -> list[str]:
    """participants.tsv of a version as published (from the staging it was assembled from)."""
    subjects = {"v1": ("a1", "b2"), "v2": ("a1", "b2", "d4")}[version]
    rows = (project.participants / "participants.tsv").read_text().splitlines()
    return [rows[0]] + [r for r in rows[1:] if r.split("\t")[0][4:] in subjects]


def test_unknown_participant_is_refused_and_nothing_changes(released: Project, capsys: pytest.CaptureFixture[str]):
    release = released.release_dir
    before = _state(release)
    assert main(["withdraw-from-releases", "sub-zz9", "--release-dir", str(release)]) == 2
    assert main(["withdraw-from-releases", "../a1", "--release-dir", str(release)]) == 2
    assert main(["withdraw-from-releases", "a1", "--release-dir", str(release / "nothing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "sub-zz9 is in no published version" in err[0]
    assert _state(release) == before


def test_dry_run_lists_and_changes_nothing(released: Project, capsys: pytest.CaptureFixture[str]):
    release = released.release_dir
    before = _state(release)
    assert main(["withdraw-from-releases", "a1", "--release-dir", str(release), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("v1: would remove sub-a1 (2 sessions, ") and "participants.tsv (1 row)" in lines[0]
    assert lines[1].startswith("v2: would remove sub-a1 (2 sessions, ")
    assert "nothing changed" in lines[2]
    assert _state(release) == before


def test_a_participant_only_in_later_versions_touches_only_those(released: Project):
    release = released.release_dir
    v1 = _state(release / "v1")
    plans = withdraw_from_releases(release, "d4", now=NOW)
    assert [p.version for p in plans] == [2]
    assert _state(release / "v1") == v1
    assert (release / "v2" / "CHANGES").read_text().startswith("2.0.1 2026-03-04\n")
    assert verify_release(release / "v2").ok
    # a second withdrawal from the same version is its next revision; a repeated call has nothing to do
    withdraw_from_releases(release, "b2", now=NOW)
    assert (release / "v2" / "CHANGES").read_text().startswith("2.0.2 2026-03-04\n  - Participant withdrawn: sub-b2")
    state = _state(release)
    assert withdraw_from_releases(release, "sub-d4", now=NOW) == []
    assert _state(release) == state


def test_a_failure_leaves_that_version_as_it_was(released: Project, monkeypatch: pytest.MonkeyPatch):
    release = released.release_dir
    before = _state(release / "v2")
    real = withdraw_mod.write_manifest

    def failing(root: Path, **kwargs: object):
        if root.name.startswith(".v2"):
            raise OSError(28, "No space left on device")
        return real(root, **kwargs)

    monkeypatch.setattr(withdraw_mod, "write_manifest", failing)
    with pytest.raises(OSError):
        withdraw_from_releases(release, "a1", now=NOW)
    assert _state(release / "v2") == before, "v2 is whole and unchanged"
    assert verify_release(release / "v1").ok and not (release / "v1" / "sub-a1").exists(), "v1 was done"
    assert not list(release.glob(f".*{TMP_SUFFIX}"))
    monkeypatch.undo()
    withdraw_from_releases(release, "a1", now=NOW)  # the rerun finishes the job
    assert not (release / "v2" / "sub-a1").exists() and verify_release(release / "v2").ok


def test_a_crash_between_the_renames_is_finished_by_the_next_call(released: Project):
    """Where names cannot be exchanged in one step, the version is moved aside then replaced: a crash in between
    leaves no v1; the next call puts the finished rewrite in place and removes the old copy."""
    release = released.release_dir
    plan = plan_version(release / "v1", "a1")
    assert plan is not None
    tmp = release / f".v1{TMP_SUFFIX}"
    build_version(plan, "a1", tmp, NOW)
    os.rename(release / "v1", release / ".v1.withdraw.old")  # ... and the process died here
    withdraw_from_releases(release, "a1", now=NOW)
    assert sorted(p.name for p in release.iterdir()) == [".publish.lock", "latest", "v1", "v2"]
    assert not (release / "v1" / "sub-a1").exists() and verify_release(release / "v1").ok
    assert (release / "v1" / "CHANGES").read_text().count("Participant withdrawn: sub-a1") == 1
    assert verify_release(release / "v2").ok and not (release / "v2" / "sub-a1").exists()


def test_without_an_atomic_exchange_the_version_is_moved_aside_then_replaced(
    released: Project, monkeypatch: pytest.MonkeyPatch
):
    release = released.release_dir
    monkeypatch.setattr(withdraw_mod, "_exchange", lambda a, b: False)
    withdraw_from_releases(release, "a1", now=NOW)
    assert sorted(p.name for p in release.iterdir()) == [".publish.lock", "latest", "v1", "v2"]
    assert all(verify_release(release / v).ok and not (release / v / "sub-a1").exists() for v in ("v1", "v2"))


def test_shareable_record_drops_the_participant_from_the_processing_profile():
    mixed = {"uniform": False, "sessions": 3, "profiles": [
        {"sessions": ["sub-a1/ses-01", "sub-b2/ses-01"], "profile": {"deid": 1}},
        {"sessions": ["sub-a1/ses-02"], "profile": {"deid": 2}}]}
    record = withdraw_mod._shareable({"shareable": True, "processing_profile": mixed}, "a1", 2, "T")
    assert record["processing_profile"] == {"uniform": False, "sessions": 1, "profiles": [
        {"sessions": ["sub-b2/ses-01"], "profile": {"deid": 1}}]}
    assert record["withdrawals"] == [{"participant": "sub-a1", "sessions": 2, "removed_utc": "T"}]
    uniform = withdraw_mod._shareable({"processing_profile": {"uniform": True, "sessions": 5, "profile": {}}},
                                      "a1", 2, "T")
    assert uniform["processing_profile"]["sessions"] == 3


def test_configfile_names_the_release_and_warns_while_the_linkage_does_not_mark_them(
    released: Project, capsys: pytest.CaptureFixture[str]
):
    import yaml

    from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, LinkageRow, render_linkage

    root = released.root
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())
    config.update(inbox=str(root / "inbox"), work_dir=str(released.work), private_dir=str(released.private),
                  release_dir=str(released.release_dir))
    site = root / "site.yaml"
    site.write_text(yaml.safe_dump(config))
    rows = [LinkageRow("a1", "01", "1.1"), LinkageRow("b2", "01", "1.2")]
    (released.private / LINKAGE_FILENAME).write_text(render_linkage(rows))
    assert main(["withdraw-from-releases", "sub-a1", "--configfile", str(site), "--dry-run"]) == 0
    assert "sub-a1 is not marked withdrawn yet" in capsys.readouterr().err
    (released.private / LINKAGE_FILENAME).write_text(render_linkage([
        LinkageRow("a1", "01", "1.1", withdrawn="2026-03-01"), rows[1]]))
    assert main(["withdraw-from-releases", "a1", "--configfile", str(site)]) == 0
    captured = capsys.readouterr()
    assert "not marked" not in captured.err and "sub-a1 removed from v1, v2" in captured.out


def test_a_file_that_would_still_name_the_participant_stops_with_exit_1(
    released: Project, capsys: pytest.CaptureFixture[str]
):
    """A file bidsafe does not know how to clean (here: a group table in JSON) is never shipped still naming
    the participant: that version is left as it was, the message names the file."""
    release = released.release_dir
    group = release / "v1" / "derivatives" / "bidsafe-qc" / "group.json"
    group.write_text(json.dumps({"subjects": ["sub-a1", "sub-b2"]}))
    before = _state(release / "v1")
    assert main(["withdraw-from-releases", "a1", "--release-dir", str(release)]) == 1
    err = capsys.readouterr().err
    assert "v1: these files would still name sub-a1" in err and "derivatives/bidsafe-qc/group.json" in err
    assert _state(release / "v1") == before and not list(release.glob(f".*{TMP_SUFFIX}"))
