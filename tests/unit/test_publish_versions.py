"""Versions only when the release changes, CHANGES continued, and a crash-left release folder recovered by a
plain rerun of publish (issue 10, defects 7 and 8; SHAREABLE.json covered by verify).

Uses the synthetic project of tests/helpers/release_project.py (real files, real hashes; stand-ins for the
validator and leak gates, whose own tests live in test_release). Crashes are real: a forked child publishes and
dies with `os._exit` at a chosen step, so no cleanup handler runs (as with kill -9).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bidsafe.release import publish as publish_mod
from bidsafe.release.assemble import changes_version, split_changes
from bidsafe.release.manifest import verify_release
from bidsafe.release.publish import add_changes_entry, publish_release, reseal_version
from bidsafe.stages import publish_stage

from helpers.release_project import PROFILE, Project, snapshot

TODAY = datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.fixture
def project(two_session_project: Project) -> Project:
    """The conftest's two-session project, assembled."""
    two_session_project.assemble()
    return two_session_project


def _publish(project: Project, staging: Path | None = None):  # noqa: ANN202 (PublishOutcome)
    staging = staging or project.staging
    saved, project.staging = project.staging, staging
    try:
        results = project.gate_results(fast=True)
    finally:
        project.staging = saved
    return publish_release(staging, project.release_dir, results, profile=PROFILE, config=project.config)


def _versions(release_dir: Path) -> list[str]:
    return sorted(p.name for p in release_dir.iterdir() if not p.name.startswith(".publish"))


def test_the_same_content_staged_again_publishes_nothing_new(project: Project) -> None:
    first = _publish(project)
    assert (first.version, first.new, first.note) == (1, True, "published v1")
    before = snapshot(project.release_dir)
    # reassembled (what a junk file in the inbox or a consent edit that changes nothing released causes): the
    # staged CHANGES now announces 2.0.0, every other byte is v1's
    project.assemble()
    assert changes_version((project.staging / "CHANGES").read_text()) == 2
    again = _publish(project)
    assert (again.path, again.version, again.new) == (project.release_dir / "v1", 1, False)
    assert again.note == "no change since v1: nothing new published"
    assert snapshot(project.release_dir) == before  # not one byte, link or name changed


def test_a_changed_release_is_the_next_version_with_changes_continued(project: Project) -> None:
    _publish(project)
    project.assemble()
    assert not _publish(project).new
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble(changes=["A participant who consented late."])
    second = _publish(project)
    assert (second.version, second.new) == (2, True)
    text = (second.path / "CHANGES").read_text()
    v1_text = (project.release_dir / "v1" / "CHANGES").read_text()
    assert text == (
        f"2.0.0 {TODAY}\n  - A participant who consented late.\n  - Release contents: 3 participants, 3 sessions.\n"
        "  - Added 1 sessions: sub-d4/ses-01.\n\n" + v1_text
    )
    assert text.count("Initial release") == 1 and v1_text.startswith("1.0.0 ")
    assert os.readlink(project.release_dir / "latest") == "v2"
    assert verify_release(project.release_dir / "v1").ok and verify_release(second.path).ok


def test_only_changes_and_markers_are_ignored(project: Project) -> None:
    """One byte of a sidecar, or one more file, is a change; the release markers never are."""
    _publish(project)
    sidecar = next(project.staging.rglob("*_T1w.json"))
    session = "/".join(sidecar.relative_to(project.staging).parts[:2])
    data = sidecar.read_bytes()
    sidecar.unlink()
    sidecar.write_bytes(data.replace(b"2.3", b"2.4"))
    outcome = _publish(project)
    assert (outcome.version, outcome.new) == (2, True)
    assert (outcome.path / "CHANGES").read_text().startswith(
        f"2.0.0 {TODAY}\n  - Release contents: 2 participants, 2 sessions.\n"
        f"  - Reprocessed 1 session (their files changed; fetch them again): {session}.\n\n1.0.0 ")
    (project.staging / "sub-a1" / "sub-a1_sessions.json").write_text("{}\n")
    assert _publish(project).version == 3


def _die_in_child(at: str, action: Callable[[], object]) -> int:
    """Run `action` in a forked child that exits abruptly (no cleanup, like kill -9) when publish reaches the
    function `at` of bidsafe.release.publish; returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            setattr(publish_mod, at, lambda *args, **kwargs: os._exit(137))
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_crash_after_the_rename_is_recovered_by_a_plain_rerun(project: Project) -> None:
    _publish(project)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble()
    # killed between the rename of v2 and the new `latest` link (the old "reassemble it" state)
    assert _die_in_child("_point_latest", lambda: _publish(project)) == 137
    assert (project.release_dir / "v2" / "SHAREABLE.json").is_file()
    assert os.readlink(project.release_dir / "latest") == "v1"
    published_v2 = snapshot(project.release_dir / "v2")
    # the same run again: the same staging, the same gates, no --forcerun
    outcome = _publish(project)
    assert (outcome.version, outcome.new) == (2, False)
    assert outcome.note == "no change since v2: nothing new published"
    assert os.readlink(project.release_dir / "latest") == "v2"
    assert _versions(project.release_dir) == ["latest", "v1", "v2"]
    assert snapshot(project.release_dir / "v2") == published_v2  # never overwritten
    assert verify_release(project.release_dir / "latest").ok


def test_a_crash_before_the_rename_leaves_nothing_published_and_a_rerun_publishes(project: Project) -> None:
    _publish(project)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble()
    assert _die_in_child("save_manifest", lambda: _publish(project)) == 137
    leftover = project.release_dir / ".v2.tmp"
    assert leftover.is_dir() and not (leftover / "SHAREABLE.json").exists()
    assert _versions(project.release_dir) == [".v2.tmp", "latest", "v1"]
    outcome = _publish(project)
    assert (outcome.version, outcome.new) == (2, True)
    assert _versions(project.release_dir) == ["latest", "v1", "v2"]
    assert verify_release(project.release_dir / "latest").ok


def test_two_runs_sharing_release_dir_number_their_versions_apart(project: Project, tmp_path: Path) -> None:
    """Both staged 2.0.0 against v1; the one publishing second takes 3 and continues v2's CHANGES."""
    _publish(project)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble()
    other = project.staging.parent / "other"
    saved, project.staging = project.staging, other
    project.add("e5", "01", seed=6)
    project.write_tables()
    project.assemble(changes=["Second run's note."])
    project.staging = saved
    assert changes_version((other / "CHANGES").read_text()) == 2
    assert _publish(project).version == 2
    third = _publish(project, other)
    assert (third.version, third.new) == (3, True)
    header, notes, history = split_changes((third.path / "CHANGES").read_text())
    assert header == f"3.0.0 {TODAY}"
    # the site's note kept, the counts recomputed against v2 (not v1, which the staging was assembled against)
    assert notes == ["Second run's note.", "Release contents: 4 participants, 4 sessions.",
                     "Added 1 sessions: sub-e5/ses-01."]
    assert history == (project.release_dir / "v2" / "CHANGES").read_text()
    # the staged CHANGES the gates saw is untouched; the release's manifest covers the rewritten one
    assert changes_version((other / "CHANGES").read_text()) == 2
    # so are the citation files, written anew for v3 after v2 (the staged ones name 2.0.0 after v1)
    datacite = json.loads((third.path / "datacite.json").read_text())
    assert datacite["version"] == "3.0.0" and datacite["relatedIdentifiers"][0]["relatedIdentifier"] == "../v2"
    assert "version: 3.0.0" in (third.path / "CITATION.cff").read_text()
    assert json.loads((other / "datacite.json").read_text())["version"] == "2.0.0"
    assert verify_release(third.path).ok and verify_release(project.release_dir / "v2").ok


def test_assemble_after_a_crash_that_left_latest_behind_continues_changes(project: Project) -> None:
    """`--forcerun assemble` after a crash between the rename of v1 and its `latest` link: no second
    "Initial release"; the next publish repairs the link and publishes nothing new."""
    _publish(project)
    (project.release_dir / "latest").unlink()
    project.assemble()
    header, notes, history = split_changes((project.staging / "CHANGES").read_text())
    assert header == f"2.0.0 {TODAY}" and not any("Initial release" in n for n in notes)
    assert history.startswith("1.0.0 ") and "Initial release" in history
    outcome = _publish(project)
    assert (outcome.version, outcome.new) == (1, False)
    assert os.readlink(project.release_dir / "latest") == "v1"


def test_verify_names_shareable_json_when_a_published_gate_summary_is_edited(project: Project) -> None:
    v1 = _publish(project).path
    path = v1 / "SHAREABLE.json"
    record = json.loads(path.read_text())
    record["gates"][0]["summary"] = record["gates"][0]["summary"] + " (reviewed)"
    os.chmod(path, 0o644)
    path.write_text(json.dumps(record, indent=2))
    result = verify_release(project.release_dir / "latest")
    assert not result.ok and result.changed == []
    assert [p.split(" ")[0] for p in result.problems] == ["SHAREABLE.json"]


def test_reseal_version_after_a_file_was_removed_on_purpose(project: Project) -> None:
    v1 = _publish(project).path
    target = next(v1.glob("sub-b2/ses-01/anat/*_T1w.json"))
    target.unlink()
    assert verify_release(v1).missing == [target.relative_to(v1).as_posix()]
    staged_changes = (project.staging / "CHANGES").read_text()
    with publish_mod.publish_lock(project.release_dir):
        add_changes_entry(v1, 1, ["Withdrawn: one sidecar of sub-b2."], date="2026-12-02")
        record = reseal_version(v1, withdrawn=["sub-b2"])
    assert record["withdrawn"] == ["sub-b2"] and record["version"] == 1
    text = (v1 / "CHANGES").read_text()
    assert text == "1.0.0 2026-12-02\n  - Withdrawn: one sidecar of sub-b2.\n\n" + staged_changes
    assert (project.staging / "CHANGES").read_text() == staged_changes  # the hard-linked staging copy untouched
    assert not os.stat(v1 / "CHANGES").st_mode & 0o222
    assert verify_release(v1).ok


def test_publish_stage_records_no_change_in_published_json(project: Project, tmp_path: Path) -> None:
    from bidsafe.release.gates import write_gate_report

    reports = [write_gate_report(r, tmp_path / "gates" / f"{r.name}.json") for r in project.gate_results(fast=True)]
    profiles = tmp_path / "profiles.json"
    profiles.write_text("{}")
    published_json = tmp_path / "published.json"
    kwargs = {"staging": project.staging, "release_dir": project.release_dir, "gate_reports": reports,
              "profiles_json": profiles, "published_json": published_json}
    publish_stage(**kwargs)
    assert json.loads(published_json.read_text())["note"] == "published v1"
    publish_stage(**kwargs)
    record = json.loads(published_json.read_text())
    assert record["release"] == str(project.release_dir / "v1")
    assert (record["version"], record["new_version"]) == (1, False)
    assert record["note"] == "no change since v1: nothing new published"


# ------------------------------------------------------------------------ release_dir checked before any job
def test_an_unwritable_release_dir_is_refused_naming_the_key(tmp_path: Path) -> None:
    from bidsafe.errors import ConfigError
    from bidsafe.private import check_writable_area

    # /proc takes no new files, whoever runs the test (root included, whom mode bits do not stop)
    with pytest.raises(ConfigError, match=r"^config: 'release_dir' \(/proc/bidsafe-release\) is not writable"):
        check_writable_area("/proc/bidsafe-release", "release_dir")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="'release_dir' .* cannot be created: .* is not a folder"):
        check_writable_area(blocker / "release", "release_dir")
    # a writable one passes, missing or not, and the probe leaves nothing behind
    check_writable_area(tmp_path / "new" / "release", "release_dir")
    check_writable_area(tmp_path, "release_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_new_version_hashes_only_what_is_not_already_published(project: Project,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: the manifest of a release with one more session reads that session's files (and the
    rewritten dataset-level files), not the unchanged sessions hard-linked from the published version."""
    _publish(project)
    project.add("d4", "01", seed=5)
    project.write_tables()
    project.assemble()
    read: list[str] = []
    real = publish_mod.hash_tree

    def counting(root: Path, rels, **kwargs):  # noqa: ANN001, ANN202
        rels = list(rels)
        read.extend(rels)
        return real(root, rels, **kwargs)

    monkeypatch.setattr(publish_mod, "hash_tree", counting)
    second = _publish(project)
    assert second.version == 2 and verify_release(second.path).ok  # every reused digest is right
    # the sessions' files; each subject's sessions table is written anew by assemble (small text, hashed)
    unchanged = [rel for rel in read if rel.startswith(("sub-a1/ses-", "sub-b2/ses-"))]
    assert unchanged == []
    assert any(rel.startswith("sub-d4/") for rel in read)
    # a copied (not hard-linked) staging tree is hashed in full: reuse needs the very same file
    read.clear()
    project.add("e5", "01", seed=7)
    project.write_tables()
    project.assemble()
    for path in [p for p in project.staging.rglob("*.nii.gz") if "sub-a1" in p.parts]:
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    third = _publish(project)
    assert third.version == 3 and verify_release(third.path).ok
    assert any(rel.startswith("sub-a1/") and rel.endswith(".nii.gz") for rel in read)
    assert not any(rel.startswith("sub-b2/ses-") for rel in read)
