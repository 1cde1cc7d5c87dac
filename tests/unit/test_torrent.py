"""`bidsafe torrent` (issue 15, item 4): torrents of a published version and of configured subsets.

Every torrent is read back with a bencode decoder written here and every piece is hashed again from the
release's files, independently of the library that wrote it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bidsafe.cli import main
from bidsafe.errors import ConfigError, GuardError
from bidsafe.release.manifest import MANIFEST_NAME, RELEASE_MARKERS, parse_manifest
from bidsafe.release.torrent import (
    Subset,
    auto_piece_size,
    parse_piece_size,
    subset_files,
    torrent_release,
)

from helpers.published import BIG_FILE, published_version

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def bdecode(data: bytes) -> object:
    """BEP 3 bencoding: integers, byte strings, lists, dictionaries (keys stay bytes)."""

    def item(i: int) -> tuple[object, int]:
        head = data[i:i + 1]
        if head == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1:end]), end + 1
        if head == b"l":
            items, i = [], i + 1
            while data[i:i + 1] != b"e":
                value, i = item(i)
                items.append(value)
            return items, i + 1
        if head == b"d":
            mapping, i = {}, i + 1
            while data[i:i + 1] != b"e":
                key, i = item(i)
                mapping[key], i = item(i)
            return mapping, i + 1
        colon = data.index(b":", i)
        start = colon + 1
        return data[start:start + int(data[i:colon])], start + int(data[i:colon])

    value, end = item(0)
    assert end == len(data), "trailing bytes after the bencoded value"
    return value


def read_torrent(path: Path) -> dict:
    meta = bdecode(path.read_bytes())
    assert isinstance(meta, dict)
    return meta


def listed_files(meta: dict) -> list[tuple[str, int]]:
    return [("/".join(p.decode() for p in f[b"path"]), f[b"length"]) for f in meta[b"info"][b"files"]]


def bad_pieces(meta: dict, root: Path) -> list[int]:
    """Indices of pieces whose SHA-1 differs from the one the torrent records, over the files in its order."""
    info = meta[b"info"]
    size = info[b"piece length"]
    recorded = [info[b"pieces"][i:i + 20] for i in range(0, len(info[b"pieces"]), 20)]
    stream = b"".join((root / rel).read_bytes() for rel, _ in listed_files(meta))
    actual = [hashlib.sha1(stream[i:i + size]).digest() for i in range(0, len(stream), size)]
    assert len(actual) == len(recorded), "piece count differs from the files' total size"
    return [i for i, (a, r) in enumerate(zip(actual, recorded, strict=True)) if a != r]


def test_auto_piece_sizes_follow_the_release_size() -> None:
    assert auto_piece_size(10 * KiB) == 16 * KiB
    assert auto_piece_size(12 * MiB) == 16 * KiB  # 768 pieces
    assert auto_piece_size(10**9) == 1 * MiB  # 954 pieces
    assert auto_piece_size(4 * GiB) == 8 * MiB  # large: 8-16 MiB
    assert auto_piece_size(12 * 10**9) == 8 * MiB
    assert auto_piece_size(500 * 10**9) == 16 * MiB  # a dHCP-sized release: 29,803 pieces
    assert parse_piece_size("8MiB") == parse_piece_size("8m") == parse_piece_size(8 * MiB) == 8 * MiB
    assert parse_piece_size("auto") is None and parse_piece_size(None) is None
    assert parse_piece_size("262144") == 256 * KiB
    for bad in ("3MiB", "8 KiB", "32MiB", "big", 1000):
        with pytest.raises(ConfigError, match="piece size"):
            parse_piece_size(bad)


def test_the_whole_version_torrent_lists_every_file_and_every_piece_verifies(published_release: Path,
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "out" / "study.torrent"
    assert main(["torrent", str(published_release.parent / "latest"), str(out), "--webseed", "https://mirror.example/study",
                 "--piece-size", "256KiB"]) == 0
    meta = read_torrent(out)
    manifest = parse_manifest((published_release / MANIFEST_NAME).read_text())
    expected = sorted([*manifest, *RELEASE_MARKERS])
    assert ".bidsignore" in expected  # dot files are part of a BIDS release
    assert [rel for rel, _ in listed_files(meta)] == expected
    assert all(length == (published_release / rel).stat().st_size for rel, length in listed_files(meta))
    assert meta[b"info"][b"name"] == b"v1"  # the mirror's folder: prefix/v1/...
    assert meta[b"url-list"] == [b"https://mirror.example/study/"]
    assert meta[b"info"][b"piece length"] == 256 * KiB
    assert bad_pieces(meta, published_release) == []
    assert sorted(os.listdir(out.parent)) == ["study.torrent"]  # no temporary left beside it
    # names only the release's own relative paths: no local folder (it may name the site or a person)
    assert str(published_release.parent.parent).encode() not in out.read_bytes()


def test_the_piece_check_is_not_vacuous(published_release: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.torrent"
    torrent_release(published_release, out, piece_size=64 * KiB)
    meta = read_torrent(out)
    copy = tmp_path / "copy"
    for rel, _ in listed_files(meta):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((published_release / rel).read_bytes())
    offset = sum(length for rel, length in listed_files(meta) if rel < BIG_FILE) + 5 * MiB
    data = bytearray((copy / BIG_FILE).read_bytes())
    data[5 * MiB] ^= 0xFF
    (copy / BIG_FILE).write_bytes(bytes(data))
    assert bad_pieces(meta, copy) == [offset // (64 * KiB)]


def test_configured_subsets_get_their_own_torrents(published_release: Path, tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(
        "inbox: in\nwork_dir: work\nprivate_dir: private\nrelease_dir: release\n"
        "release:\n  torrent:\n    webseeds: [https://mirror.example/a]\n    piece_size: 65536\n    subsets:\n"
        "      - {name: anat, datatypes: [anat]}\n      - {name: second-sessions, sessions: [2, 2]}\n"
    )
    out = tmp_path / "study.torrent"
    assert main(["torrent", str(published_release), str(out), "--configfile", str(config),
                 "--webseed", "https://mirror.example/b/"]) == 0
    everything = [rel for rel, _ in listed_files(read_torrent(out))]
    dataset_level = [rel for rel in everything if "sub-" not in rel]
    anat = read_torrent(tmp_path / "study-anat.torrent")
    assert [rel for rel, _ in listed_files(anat)] == sorted(dataset_level + [
        rel for rel in everything if "/anat/" in rel or rel.endswith(("_sessions.tsv", "_scans.tsv", "_metrics.tsv"))
    ])
    assert not any("/func/" in rel for rel, _ in listed_files(anat))
    second = read_torrent(tmp_path / "study-second-sessions.torrent")
    assert [rel for rel, _ in listed_files(second)] == sorted(dataset_level + [
        "derivatives/bidsafe-qc/sub-b2/ses-02/sub-b2_ses-02_desc-qc_metrics.tsv",
        "sub-b2/ses-02/anat/sub-b2_ses-02_T1w.json", "sub-b2/ses-02/anat/sub-b2_ses-02_T1w.nii.gz",
        "sub-b2/ses-02/func/sub-b2_ses-02_task-rest_bold.json",
        "sub-b2/ses-02/func/sub-b2_ses-02_task-rest_bold.nii.gz",
        "sub-b2/ses-02/sub-b2_ses-02_scans.tsv", "sub-b2/sub-b2_sessions.tsv",
    ])
    for meta in (anat, second):
        assert meta[b"info"][b"name"] == b"v1" and meta[b"info"][b"piece length"] == 65536
        assert meta[b"url-list"] == [b"https://mirror.example/a/", b"https://mirror.example/b/"]
        assert bad_pieces(meta, published_release) == []


def test_subset_selection_rules() -> None:
    files = ["README", "sub-a/sub-a_sessions.tsv", "sub-a/ses-01/anat/x_T1w.nii.gz", "sub-a/ses-01/dwi/x_dwi.nii.gz",
             "sub-a/ses-01/sub-a_ses-01_scans.tsv", "sub-b/sub-b_sessions.tsv", "sub-b/ses-03/dwi/y_dwi.nii.gz",
             "sub-b/ses-xx/dwi/z_dwi.nii.gz"]
    assert subset_files(files, Subset("dwi", ("dwi",), (2, 3))) == [
        "README", "sub-b/ses-03/dwi/y_dwi.nii.gz", "sub-b/sub-b_sessions.tsv"]
    assert subset_files(files, Subset("anat", ("anat",))) == [
        "README", "sub-a/ses-01/anat/x_T1w.nii.gz", "sub-a/ses-01/sub-a_ses-01_scans.tsv", "sub-a/sub-a_sessions.tsv"]
    # sub-b has no anat file: neither its sessions table comes along, nor (anat with sessions 3-9) sub-a's scans
    assert subset_files(files, Subset("anat3", ("anat",), (3, 9))) == ["README"]
    with pytest.raises(ConfigError, match="datatypes, sessions or both"):
        Subset.from_config({"name": "none"})
    with pytest.raises(ConfigError, match="first <= last"):
        Subset.from_config({"name": "x", "sessions": [3, 1]})


def test_nothing_is_written_for_an_unverified_release_or_an_empty_subset(tmp_path: Path) -> None:
    version = published_version(tmp_path / "r", big=False)
    out = tmp_path / "t.torrent"
    with pytest.raises(ConfigError, match="subsets perf: selects no participant's file"):
        torrent_release(version, out, subsets=[Subset("perf", ("perf",))])
    assert not out.exists()
    os.chmod(version / "README", 0o644)
    (version / "README").write_text("edited")
    with pytest.raises(GuardError, match="fails its own verification"):
        torrent_release(version, out)
    assert main(["torrent", str(version), str(out)]) == 3
    assert main(["torrent", str(version), str(out), "--piece-size", "3MiB"]) == 2
    assert main(["torrent", str(version), str(version / "v1.torrent")]) == 2  # never inside the version
    assert main(["torrent", str(version), str(out), "--webseed", "ftp://mirror.example/"]) == 2
    assert os.listdir(tmp_path) == ["r"]
