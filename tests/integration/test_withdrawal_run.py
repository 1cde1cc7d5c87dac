"""Withdrawal end to end (issue 10, item 6): two participants (one small session each: the T1w series only) are
published; one is then marked withdrawn in the consent registry. The plain rerun removes everything bidsafe made
of them from work_dir and private_dir and publishes a version without them, redoing nothing for the other;
`bidsafe withdraw-from-releases` then takes them out of the first version, which still verifies.
With `release.datalad: true` (issue 15, item 2) each run's version is also a tagged commit of the DataLad
dataset `release/datalad`, and the withdrawal drops the participant's image content from its history."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bidsafe.demo import generate
from bidsafe.pseudonymise.linkage import LINKAGE_FILENAME, read_linkage

from helpers.pipeline_run import BIN, planned_jobs, snakemake, write_config, write_site_files

pytestmark = pytest.mark.slow


def _registry(root: Path, patients: list[str], withdrawn: str = "") -> None:
    rows = "".join(f"{p}\tpublic\t{withdrawn if i == 0 else ''}\n" for i, p in enumerate(patients))
    (root / "consent.tsv").write_text("patient_id\tconsent\twithdrawn\n" + rows, encoding="utf-8")


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _bidsafe(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "bidsafe"), *args], cwd=root, capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def _named(root: Path, needle: str) -> list[str]:
    """Files and folders whose name holds `needle`."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if needle in p.name)


def _holding(root: Path, needle: str) -> list[str]:
    """Files whose name or bytes hold `needle`."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if needle in p.name or (p.is_file() and needle.encode() in p.read_bytes()))


def _dataset_git(release: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(release / "datalad"), *args], capture_output=True, text=True,
                          check=check).stdout


def test_withdrawal_removes_the_participant_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path
    # the DataLad dataset's commits: a test identity, no system git config
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test Publisher")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "publisher@example.org")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    sessions = generate(root / "inbox", subjects=2, sessions=1, seed=23)
    for session in sessions:  # the T1w series only: enough for every stage, and quick
        for series in session.series:
            if series.expected_suffix != "T1w":
                shutil.rmtree(series.folder)
    patients = [s.patient_id for s in sessions]
    _registry(root, patients)
    write_site_files(root)
    config = yaml.safe_load(write_config(root).read_text(encoding="utf-8"))
    config["release"]["datalad"] = True
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    first = snakemake(root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    work, private, release = root / "work", root / "private", root / "release"
    subject_of = {r.patient_id: r.subject for r in read_linkage(private / LINKAGE_FILENAME)}
    gone, stays = subject_of[patients[0]], subject_of[patients[1]]
    family = sessions[0].family_name
    assert (release / "v1" / f"sub-{gone}").is_dir() and (release / "v1" / f"sub-{stays}").is_dir()
    assert _named(work, f"sub-{gone}") and _named(private, f"sub-{gone}")
    theirs = {k: v for k, v in _hashes(work).items() if f"sub-{stays}" in k}

    _registry(root, patients, withdrawn="2026-01-15")
    second = snakemake(root)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]
    # nothing bidsafe made of them is left in work_dir or private_dir: no file named after their pseudonym, no
    # file holding their name or ID (the pseudonym itself is still in the run's notes: a decision, a CHANGES line)
    assert _named(work, f"sub-{gone}") == [] and _named(private, f"sub-{gone}") == []
    assert _holding(work, family) == [] and _holding(work, patients[0]) == []
    # private_dir: the linkage row (marked withdrawn) and the ingest index, which lists the inbox as it is
    # (their exports are still there: removing them is the site's task)
    ingest = {"ingest/index.tsv", "ingest/cache.tsv", "ingest/quarantine.tsv"}
    assert set(_holding(private, family)) <= ingest
    assert set(_holding(private, patients[0])) <= ingest | {"linkage.tsv"}
    assert {r.subject: bool(r.withdrawn) for r in read_linkage(private / LINKAGE_FILENAME)} == {
        gone: True, stays: False}
    values = json.loads((private / "leakscan" / "values.json").read_text(encoding="utf-8"))
    assert values and not [v for v in values if patients[0] in v["value"] or family in v["value"]]
    # the other participant's work is untouched and not redone; the new version lacks the withdrawn one
    assert {k: v for k, v in _hashes(work).items() if f"sub-{stays}" in k} == theirs
    assert os.readlink(release / "latest") == "v2"
    assert not (release / "v2" / f"sub-{gone}").exists() and (release / "v2" / f"sub-{stays}").is_dir()
    assert f"sub-{gone}" not in (release / "v2" / "participants.tsv").read_text(encoding="utf-8")
    # CHANGES says it was a withdrawal (pseudonymise's decision), not some other removal
    assert (f"  - Withdrawn 1 session (the participant withdrew consent; delete any copies you hold): sub-{gone}/"
            in (release / "v2" / "CHANGES").read_text(encoding="utf-8"))
    assert planned_jobs(root) == {}, "Snakemake does not try to rebuild what was removed"
    # the DataLad dataset: a tag per run's version; the version after the withdrawal no longer has them
    assert _dataset_git(release, "tag", "--list").split() == ["v1", "v2"]
    assert json.loads((work / "publish" / "published.json").read_text())["datalad"]["tagged"] == ["v2"]
    assert f"sub-{gone}/" in _dataset_git(release, "ls-tree", "-r", "--name-only", "v1")
    assert f"sub-{gone}/" not in _dataset_git(release, "ls-tree", "-r", "--name-only", "v2")
    image = next(rel for rel in _dataset_git(release, "ls-tree", "-r", "--name-only", "v1").splitlines()
                 if rel.startswith(f"sub-{gone}/") and rel.endswith(".nii.gz"))
    key = os.path.basename(_dataset_git(release, "cat-file", "-p", f"v1:{image}"))  # an annexed file: a link
    assert key.startswith("SHA256E-") and json.loads(_dataset_git(
        release, "annex", "whereis", "--json", "--key", key).splitlines()[0])["whereis"]

    # the earlier version: rewritten without them, and it still verifies
    assert (release / "v1" / f"sub-{gone}").is_dir()
    dry = _bidsafe(root, "withdraw-from-releases", gone, "--configfile", "config.yaml", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith(f"v1: would remove sub-{gone} (1 session, "), dry.stdout
    done = _bidsafe(root, "withdraw-from-releases", f"sub-{gone}", "--configfile", "config.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sub-{gone} removed from v1 " in done.stdout
    # only the notes name the pseudonym: CHANGES (both versions) and SHAREABLE.json's record of the withdrawal
    for version, named in (("v1", ["CHANGES", "SHAREABLE.json"]), ("v2", ["CHANGES"])):
        assert _holding(release / version, f"sub-{gone}") == named
        check = _bidsafe(root, "verify", f"release/{version}")
        assert check.returncode == 0, check.stdout + check.stderr
    assert (release / "v1" / "CHANGES").read_text(encoding="utf-8").startswith("1.0.1 ")
    # ... and their image content left the DataLad dataset's history; the tags stay
    assert f"annexed files of sub-{gone} were dropped from its history (0 copies left here); tags v1 stay" in (
        done.stdout)
    # (whereis exits 1 for a file with no copy)
    assert json.loads(_dataset_git(release, "annex", "whereis", "--json", "--key", key, check=False
                                   ).splitlines()[0])["whereis"] == []
    assert _dataset_git(release, "tag", "--list").split() == ["v1", "v2"]
    assert "DataLad dataset: the annexed files of" in (release / "v1" / "CHANGES").read_text(encoding="utf-8")
    assert _bidsafe(root, "withdraw-from-releases", "sub-nobody0", "--release-dir", "release").returncode == 2
