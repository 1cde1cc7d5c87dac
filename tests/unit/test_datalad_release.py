"""`release.datalad` (issue 15, item 2): the published versions as a DataLad dataset, `release_dir/datalad/`.

Each published `v<N>` is a commit with an annotated tag `v<N>` whose tree is exactly the version folder's files;
images are annexed (SHA256E keys = the manifest's sha256, the annex object hard-linked to the published file),
text is in git; a clone plus `datalad get` reproduces every file of MANIFEST.sha256; a tag is never reused; a
withdrawal drops the participant's annexed content from the whole history and keeps the tags.
Synthetic versions built with publish's own functions (tests/helpers/release_project.py's Project)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from bidsafe.cli import main
from bidsafe.errors import BidsafeError
from bidsafe.release import datalad_release as dl
from bidsafe.release.manifest import MANIFEST_NAME, SHAREABLE_NAME, parse_manifest, verify_release
from bidsafe.release.publish import publish

from helpers.release_project import PROFILE, Project

datalad_api = pytest.importorskip("datalad.api", reason="DataLad is not installed: pip install 'bidsafe[datalad]'")
if shutil.which("git-annex") is None:
    pytest.skip("git-annex is not installed (.ci/run installs it)", allow_module_level=True)

IDENTITY = {"GIT_AUTHOR_NAME": "Test Publisher", "GIT_AUTHOR_EMAIL": "publisher@example.org",
            "GIT_COMMITTER_NAME": "Test Publisher", "GIT_COMMITTER_EMAIL": "publisher@example.org"}


def _set_git_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git identity for the tests' commits, and no user's or system git config read or written."""
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name, value in IDENTITY.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def _git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_git_env(tmp_path / "home", monkeypatch)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # follows an annex symlink to its content


def _publish(project: Project) -> None:
    project.write_tables()
    project.assemble()
    publish(project.staging, project.release_dir, project.gate_results(fast=True), profile=PROFILE)


def _two_versions(root: Path) -> Project:
    """v1: sub-a1 (two sessions) and sub-b2, synced to the dataset; v2 adds sub-d4 (a new session), synced."""
    project = Project(root)
    project.add("a1", "01", seed=1)
    project.add("a1", "02", seed=2)
    project.add("b2", "01", seed=3)
    _publish(project)
    first = dl.release_to_datalad(project.release_dir)
    assert (first.tagged, first.tags) == ([1], [1])
    project.add("d4", "01", seed=5)
    _publish(project)
    second = dl.release_to_datalad(project.release_dir)
    assert (second.tagged, second.tags, second.revised) == ([2], [1, 2], False)
    return project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """`_two_versions`, built once for the tests that only read it."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _set_git_env(root / "home", monkeypatch)
        return _two_versions(root)


@pytest.fixture
def released(tmp_path: Path) -> Project:
    """`_two_versions` of this test's own, for a test that changes it."""
    return _two_versions(tmp_path)


def _tree(dataset: Path, ref: str) -> dict[str, tuple[str, str]]:
    """{path: (git mode, blob content or link target)} of a commit, DataLad's own files left out."""
    out = {}
    for line in _git(dataset, "ls-tree", "-r", ref).splitlines():
        meta, rel = line.split("\t", 1)
        mode, _, blob = meta.split()
        if rel.startswith(".datalad/") or rel == ".gitattributes":
            continue
        out[rel] = (mode, _git(dataset, "cat-file", "-p", blob))
    return out


def _release_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _worktree(root: Path) -> set[str]:
    """A dataset's or clone's files, git's and DataLad's own left out."""
    return {rel for rel in _release_files(root)
            if not rel.startswith((".git/", ".datalad/")) and rel not in (".gitattributes",)}


def test_each_version_is_a_tagged_commit_of_exactly_its_files(built: Project) -> None:
    release = built.release_dir
    dataset = release / dl.DATASET_NAME
    assert _git(dataset, "tag", "--list").split() == ["v1", "v2"]
    for version in ("v1", "v2"):
        assert _git(dataset, "cat-file", "-t", version).strip() == "tag", "annotated tags"
        folder = release / version
        tree = _tree(dataset, version)
        assert set(tree) == _release_files(folder), "the commit holds exactly the version's files"
        digests = parse_manifest((folder / MANIFEST_NAME).read_text())
        for rel, (mode, content) in tree.items():
            if rel.endswith(".nii.gz"):
                # annexed: a link whose SHA256E key carries the manifest's sha256 and the size
                key = os.path.basename(content)
                assert mode == "120000" and key == (
                    f"SHA256E-s{(folder / rel).stat().st_size}--{digests[rel]}.nii.gz"), rel
            else:
                assert mode == "100644" and content.encode() == (folder / rel).read_bytes(), rel
    assert "sub-d4" not in " ".join(_tree(dataset, "v1")) and "sub-d4/ses-01" in " ".join(_tree(dataset, "v2"))
    log = _git(dataset, "log", "--format=%s", "v2").splitlines()
    assert log[:2] == ["v2", "v1"]
    # one copy on disk: the annex object is the published file itself, still read-only; the seal still holds
    image = "sub-d4/ses-01/anat/sub-d4_ses-01_T1w.nii.gz"
    assert os.stat(dataset / image).st_ino == os.stat(release / "v2" / image).st_ino
    assert not stat.S_IMODE(os.stat(release / "v2" / image).st_mode) & 0o222
    for version in ("v1", "v2"):
        result = verify_release(release / version)
        assert result.ok, result.summary()
    assert _worktree(dataset) == _release_files(release / "v2")
    assert _git(dataset, "status", "--porcelain").strip() == ""


def test_a_clone_and_get_reproduce_every_file_of_the_manifest(built: Project, tmp_path: Path) -> None:
    release = built.release_dir
    clone = tmp_path / "clone"
    datalad_api.clone(source=str(release / dl.DATASET_NAME), path=str(clone), result_renderer="disabled")
    for version in ("v2", "v1"):
        _git(clone, "checkout", "--quiet", version)
        datalad_api.Dataset(str(clone)).get(".", result_renderer="disabled")
        folder = release / version
        assert (clone / MANIFEST_NAME).read_bytes() == (folder / MANIFEST_NAME).read_bytes()
        assert (clone / SHAREABLE_NAME).read_bytes() == (folder / SHAREABLE_NAME).read_bytes()
        listed = parse_manifest((clone / MANIFEST_NAME).read_text())
        assert _worktree(clone) == set(listed) | {MANIFEST_NAME, SHAREABLE_NAME}
        assert {rel: _sha256(clone / rel) for rel in listed} == listed, f"{version}: every file's sha256"


def test_a_new_sync_without_a_new_version_changes_nothing(built: Project) -> None:
    dataset = built.release_dir / dl.DATASET_NAME
    head = _git(dataset, "rev-parse", "HEAD")
    again = dl.release_to_datalad(built.release_dir)
    assert (again.tagged, again.revised, again.tags) == ([], False, [1, 2])
    assert _git(dataset, "rev-parse", "HEAD") == head


def test_turned_on_later_it_adds_every_published_version_in_order(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.add("a1", "01", seed=1)
    _publish(project)
    project.add("b2", "01", seed=3)
    _publish(project)
    synced = dl.release_to_datalad(project.release_dir)
    assert (synced.tagged, synced.revised) == ([1, 2], False)
    dataset = project.release_dir / dl.DATASET_NAME
    for version in ("v1", "v2"):
        assert set(_tree(dataset, version)) == _release_files(project.release_dir / version)
    assert _git(dataset, "log", "--format=%s").splitlines()[:2] == ["v2", "v1"]


def _remove_version(release: Path, version: str) -> None:
    for dirpath, _dirs, _files in os.walk(release / version):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(release / version)


def test_a_version_tag_is_never_reused(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.add("a1", "01", seed=1)
    _publish(project)
    dl.release_to_datalad(project.release_dir)
    dataset = project.release_dir / dl.DATASET_NAME
    tagged = _git(dataset, "rev-parse", "v1^{commit}")
    # v1 removed by hand and another release published under the same number
    _remove_version(project.release_dir, "v1")
    (project.release_dir / "latest").unlink()
    time.sleep(1.1)  # published_utc has whole seconds: the new publication must differ from the tagged one
    project.add("b2", "01", seed=3)
    _publish(project)
    assert (project.release_dir / "v1" / "sub-b2").is_dir()
    with pytest.raises(BidsafeError, match="tag v1 names another release .* never reused"):
        dl.release_to_datalad(project.release_dir)
    assert _git(dataset, "rev-parse", "v1^{commit}") == tagged
    assert "sub-b2" not in _git(dataset, "ls-tree", "-r", "--name-only", "HEAD")


def _key_of(dataset: Path, ref: str, rel: str) -> str:
    return os.path.basename(_git(dataset, "cat-file", "-p", f"{ref}:{rel}"))


def test_withdrawal_drops_the_participants_annexed_content_from_history_and_keeps_the_tags(
        released: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = released.release_dir
    dataset = release / dl.DATASET_NAME
    tags = {t: _git(dataset, "rev-parse", f"{t}^{{commit}}") for t in ("v1", "v2")}
    gone = [rel for rel in _tree(dataset, "v2") if rel.startswith("sub-a1/") and rel.endswith(".nii.gz")]
    kept = "sub-b2/ses-01/anat/sub-b2_ses-01_T1w.nii.gz"
    assert len(gone) == 4
    keys = {_key_of(dataset, "v1", rel) for rel in gone}
    assert all((dataset / rel).resolve().is_file() for rel in gone)

    assert main(["withdraw-from-releases", "sub-a1", "--release-dir", str(release), "--dry-run"]) == 0
    assert "would drop the 4 annexed files of sub-a1 from its history (tags v1, v2 stay)" in capsys.readouterr().out
    assert main(["withdraw-from-releases", "sub-a1", "--release-dir", str(release)]) == 0
    out = capsys.readouterr().out
    assert ("DataLad dataset: the 4 annexed files of sub-a1 were dropped from its history (0 copies left here); "
            "tags v1, v2 stay, without that content") in out

    # the tags stay where they were; the content is gone from the annex, known lost (0 copies, dead)
    assert {t: _git(dataset, "rev-parse", f"{t}^{{commit}}") for t in tags} == tags
    assert dl.copies_left(release, sorted(keys)) == dict.fromkeys(sorted(keys), 0)
    assert not [p for p in (dataset / ".git" / "annex" / "objects").rglob("*") if p.name in keys]
    assert (dataset / kept).resolve().is_file(), "the other participants' content stays"
    # the rewritten latest is the new head: no sub-a1, exactly v2's files as rewritten
    assert _git(dataset, "log", "-1", "--format=%s").startswith("v2 rewritten: 2.0.1 ")
    assert _worktree(dataset) == _release_files(release / "v2")
    assert "sub-a1/" not in _git(dataset, "ls-tree", "-r", "--name-only", "HEAD")
    # each rewritten version's CHANGES says which DataLad versions lost the content; the versions still verify
    for version in ("v1", "v2"):
        changes = (release / version / "CHANGES").read_text()
        assert ("  - DataLad dataset: the annexed files of sub-a1 (4) were dropped from its history; the tags "
                "naming them (v1, v2) stay, without that content.\n") in changes.split("\n\n")[0] + "\n"
        assert verify_release(release / version).ok

    # a fresh clone: the old tag lists the files, but their content cannot be fetched; the others' can
    clone = tmp_path / "clone"
    datalad_api.clone(source=str(dataset), path=str(clone), result_renderer="disabled")
    _git(clone, "checkout", "--quiet", "v1")
    whereis = subprocess.run(["git", "-C", str(clone), "annex", "whereis", "--json", gone[0]],
                             capture_output=True, text=True, check=False)
    assert json.loads(whereis.stdout.splitlines()[0])["whereis"] == []
    failed = datalad_api.Dataset(str(clone)).get(gone[0], result_renderer="disabled", on_failure="ignore")
    assert [r["status"] for r in failed] == ["impossible"] or [r["status"] for r in failed] == ["error"]
    assert not (clone / gone[0]).exists(), "no content behind the link"
    datalad_api.Dataset(str(clone)).get(kept, result_renderer="disabled")
    assert _sha256(clone / kept) == parse_manifest((release / "v1" / MANIFEST_NAME).read_text())[kept]

    # a second call changes nothing
    head = _git(dataset, "rev-parse", "HEAD")
    assert main(["withdraw-from-releases", "sub-a1", "--release-dir", str(release)]) == 0
    assert "already removed" in capsys.readouterr().out
    assert _git(dataset, "rev-parse", "HEAD") == head


def test_without_a_configured_identity_commits_are_bidsafes_and_name_no_host_or_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in IDENTITY:
        monkeypatch.delenv(name)
    project = Project(tmp_path)
    project.add("a1", "01", seed=1)
    _publish(project)
    dl.release_to_datalad(project.release_dir)
    dataset = project.release_dir / dl.DATASET_NAME
    authors = set(_git(dataset, "log", "--format=%an <%ae>|%cn <%ce>").split())
    assert authors == {"bidsafe", "<bidsafe@localhost>|bidsafe", "<bidsafe@localhost>"}
    assert _git(dataset, "config", "--local", "user.name").strip() == "bidsafe"
    assert not (tmp_path / "home" / ".gitconfig").exists(), "the user's git config is never written"
    annex_log = _git(dataset, "cat-file", "-p", "git-annex:uuid.log")
    assert "bidsafe release" in annex_log
    assert socket.gethostname() not in annex_log and str(tmp_path) not in annex_log


def test_gitattributes_annex_images_only() -> None:
    assert dl.GITATTRIBUTES.splitlines()[1] == "* annex.largefiles=((include=*.nii)or(include=*.gz)or(include=*.png))"
    assert [dl.annexed(n) for n in ("a_T1w.nii.gz", "a.nii", "b_physio.tsv.gz", "q.png", "a_T1w.json", "p.tsv",
                                    "CHANGES", MANIFEST_NAME)] == [True] * 4 + [False] * 4
