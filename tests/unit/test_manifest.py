"""MANIFEST.sha256 format (coreutils-compatible) and `verify_release` on hand-made releases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidsafe.cli import main
from bidsafe.errors import BidsafeError
from bidsafe.release.manifest import (
    MANIFEST_NAME,
    SHAREABLE_NAME,
    format_manifest,
    iter_release_files,
    parse_manifest,
    seal_shareable,
    verify_release,
    write_manifest,
)


def _release(root: Path) -> Path:
    """A small release: a few files in folders, a manifest, and a SHAREABLE.json recording its hash."""
    files = {
        "dataset_description.json": b'{"Name": "x", "BIDSVersion": "1.10.0"}\n',
        "README": b"readme\n",
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz": bytes(range(256)) * 4,
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.json": b'{"RepetitionTime": 2.3}\n',
        "derivatives/bidsafe-qc/sub-01/ses-01/metrics.tsv": b"snr\n12.5\n",
        ".bidsignore": b"MANIFEST.sha256\nSHAREABLE.json\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    _, digest, listed = write_manifest(root)
    assert sorted(listed) == sorted(files)
    record = {"shareable": True, "manifest": {"sha256": digest},
              "gates": [{"name": "leak_scan", "passed": True, "summary": "0 hits in 6 files"}]}
    (root / SHAREABLE_NAME).write_text(json.dumps(seal_shareable(record), indent=2))
    return root


def test_manifest_lines_are_sorted_sha256sum_lines(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    lines = (root / MANIFEST_NAME).read_text().splitlines()
    paths = [line[66:] for line in lines]
    assert paths == sorted(paths)
    assert MANIFEST_NAME not in paths and SHAREABLE_NAME not in paths
    for line in lines:
        digest, rel = line[:64], line[66:]
        assert line[64:66] == "  "
        assert digest == hashlib.sha256((root / rel).read_bytes()).hexdigest()
    ok = subprocess.run(["sha256sum", "-c", MANIFEST_NAME], cwd=root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": OK") == len(lines)


def test_parse_accepts_binary_marker_and_rejects_garbage() -> None:
    digest = "a" * 64
    assert parse_manifest(f"{digest} *README\n{digest}  sub-01/x.json\n") == {"README": digest, "sub-01/x.json": digest}
    with pytest.raises(BidsafeError, match="line 1"):
        parse_manifest("not a manifest line\n")
    with pytest.raises(BidsafeError, match="twice"):
        parse_manifest(f"{digest}  a\n{digest}  a\n")
    with pytest.raises(BidsafeError, match="newline or backslash"):
        format_manifest({"bad\\name": digest})


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_.-]{1,12}(/[A-Za-z0-9_.-]{1,12}){0,3}", fullmatch=True),
        st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        max_size=20,
    )
)
def test_format_parse_round_trip(digests: dict[str, str]) -> None:
    assert parse_manifest(format_manifest(digests)) == digests


def test_verify_accepts_an_intact_release(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    result = verify_release(root)
    assert result.ok, result.summary()
    assert result.files_checked == 6


def test_verify_reports_changed_missing_and_extra_files(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    t1 = root / "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"
    data = bytearray(t1.read_bytes())
    data[100] ^= 0x01
    t1.write_bytes(bytes(data))
    (root / "README").unlink()
    (root / "sub-01/ses-01/anat/extra.txt").write_text("x")
    result = verify_release(root)
    assert not result.ok
    assert result.changed == ["sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"]
    assert result.missing == ["README"]
    assert result.extra == ["sub-01/ses-01/anat/extra.txt"]
    text = result.summary()
    assert "1 changed: sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz" in text and "1 missing: README" in text


def test_verify_checks_shareable_records_the_manifest(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    # a manifest edited to match a tampered file no longer matches SHAREABLE.json
    readme = root / "README"
    readme.write_text("tampered\n")
    write_manifest(root)
    result = verify_release(root)
    assert result.changed == [] and not result.ok
    assert any("does not match the hash recorded" in p for p in result.problems)
    (root / SHAREABLE_NAME).unlink()
    assert any("never marked shareable" in p for p in verify_release(root).problems)


def test_verify_follows_latest_and_release_dir(tmp_path: Path) -> None:
    _release(tmp_path / "release" / "v1")
    os.symlink("v1", tmp_path / "release" / "latest")
    assert verify_release(tmp_path / "release" / "latest").ok
    assert verify_release(tmp_path / "release").ok


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _release(tmp_path / "v1")
    assert main(["verify", str(root)]) == 0
    assert "OK, 6 files" in capsys.readouterr().out
    (root / "README").write_text("changed\n")
    assert main(["verify", str(root)]) == 1
    assert "1 changed: README" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing")]) == 1


def test_release_files_refuse_symlinks(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    os.symlink("/etc/hostname", root / "sub-01" / "link.txt")
    with pytest.raises(BidsafeError, match="symbolic links"):
        list(iter_release_files(root))
    result = verify_release(root)
    assert not result.ok and result.problems == ["not regular files (symbolic links?): sub-01/link.txt"]
    assert result.missing == [] and result.changed == []


@pytest.mark.parametrize("edit", ["gate_summary", "gate_passed", "version_added", "hash_removed"])
def test_verify_fails_when_shareable_json_is_edited(tmp_path: Path, edit: str) -> None:
    """SHAREABLE.json is not in the manifest (it records the manifest's hash); its own record hash covers it."""
    root = _release(tmp_path / "v1")
    assert verify_release(root).ok
    record = json.loads((root / SHAREABLE_NAME).read_text())
    if edit == "gate_summary":
        record["gates"][0]["summary"] = "0 hits in 7 files"
    elif edit == "gate_passed":
        record["gates"][0]["passed"] = False
    elif edit == "version_added":
        record["version"] = 2
    else:
        del record["record_sha256"]
    # re-indenting alone is no edit: the hash is over canonical JSON
    (root / SHAREABLE_NAME).write_text(json.dumps(record, indent=4))
    result = verify_release(root)
    assert not result.ok
    assert result.changed == [] and result.missing == [] and result.extra == []
    assert len(result.problems) == 1 and result.problems[0].startswith(SHAREABLE_NAME), result.problems
    assert main(["verify", str(root)]) == 1


def test_verify_accepts_a_reindented_shareable_json(tmp_path: Path) -> None:
    root = _release(tmp_path / "v1")
    record = json.loads((root / SHAREABLE_NAME).read_text())
    (root / SHAREABLE_NAME).write_text(json.dumps(record, indent=None, sort_keys=True))
    assert verify_release(root).ok
