"""`bidsafe mirror` and `bidsafe verify s3://...` against a real S3 protocol server: moto in server mode, a
separate process listening on loopback (issue 15, item 3).

Crashes are real: a forked child mirrors and dies with `os._exit` at a chosen upload, so no cleanup (abort of
a multipart upload, for one) runs, as with kill -9.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bidsafe.cli import main
from bidsafe.errors import GuardError
from bidsafe.release import mirror as mirror_mod
from bidsafe.release.manifest import MANIFEST_NAME, SHAREABLE_NAME, parse_manifest
from bidsafe.release.mirror import (
    MIN_PART_SIZE,
    S3Location,
    mirror_release,
    parse_s3_url,
    upload_file,
    verify_mirror,
)

from helpers.published import BIG_FILE, published_version, tree_files

ACCESS_KEY = "AKIDBIDSAFETESTKEY01"
SECRET_KEY = "bidsafe-test-secret-never-printed-42"
PART = MIN_PART_SIZE  # small parts, so the 11 MiB file goes up in three
_BUCKETS = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server in its own process on loopback; the AWS variables point every client at test keys."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the moto server did not start") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture
def client(endpoint: str) -> Any:
    return mirror_mod.s3_client(endpoint)


@pytest.fixture
def bucket(client: Any, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket for each test."""
    name = f"t{next(_BUCKETS)}-" + request.node.name.lower().replace("_", "-").replace("[", "-")[:40].strip("-")
    client.create_bucket(Bucket=name)
    return name


def _objects(client: Any, bucket: str) -> dict[str, bytes]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _expected(release: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{rel}": data for rel, data in tree_files(release).items()}


class Recorder:
    """A client that records the key of every object it completes, in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.completed: list[str] = []
        self.multipart: list[str] = []

    def put_object(self, **kwargs: Any) -> Any:
        answer = self.inner.put_object(**kwargs)
        self.completed.append(kwargs["Key"])
        return answer

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        answer = self.inner.complete_multipart_upload(**kwargs)
        self.completed.append(kwargs["Key"])
        self.multipart.append(kwargs["Key"])
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_s3_urls_are_parsed_and_bad_ones_refused() -> None:
    assert parse_s3_url("s3://my-bucket/studies/a/") == S3Location("my-bucket", "studies/a")
    assert parse_s3_url("s3://my-bucket") == S3Location("my-bucket", "")
    assert S3Location("b0b", "").child("v2").key("sub-x/a.nii.gz") == "v2/sub-x/a.nii.gz"
    assert str(S3Location("b0b", "p").child("v2")) == "s3://b0b/p/v2"
    for bad in ("https://x/y", "s3://UPPER/x", "s3://ok-bucket/a//b", "s3://ok-bucket/a/../b", "s3://x"):
        with pytest.raises(Exception, match="s3|bucket|segments"):
            parse_s3_url(bad)
    assert mirror_mod.redact_url("https://user:pw@minio.example:9000") == "https://***@minio.example:9000"


def test_a_full_upload_echoes_the_tree_with_sha256_metadata_and_the_manifest_last(
    published_release: Path, client: Any, bucket: str
) -> None:
    recorder = Recorder(client)
    outcome = mirror_release(published_release, f"s3://{bucket}/study", client=recorder, part_size=PART)
    expected = _expected(published_release, "study/v1")
    assert _objects(client, bucket) == expected  # every byte, every key, nothing else
    assert sorted(outcome.uploaded) == sorted(rel.removeprefix("study/v1/") for rel in expected)
    assert outcome.skipped == [] and outcome.bytes_uploaded == sum(len(b) for b in expected.values())
    assert recorder.completed[-2:] == ["study/v1/" + SHAREABLE_NAME, "study/v1/" + MANIFEST_NAME]
    assert recorder.multipart == ["study/v1/" + BIG_FILE]  # the 11 MiB file went up in parts
    manifest = parse_manifest((published_release / MANIFEST_NAME).read_text())
    for rel, digest in manifest.items():
        head = client.head_object(Bucket=bucket, Key=f"study/v1/{rel}")
        assert head["Metadata"] == {"sha256": digest}
    assert verify_mirror(f"s3://{bucket}/study/v1", client=client).ok


def test_the_command_line_mirrors_and_verifies_without_printing_credentials(
    published_release: Path, endpoint: str, client: Any, bucket: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # `latest` is followed to the version it names
    assert main(["-v", "mirror", str(published_release.parent / "latest"), f"s3://{bucket}/p", "--endpoint", endpoint,
                 "--verify"]) == 0
    assert main(["-v", "verify", f"s3://{bucket}/p/v1", "--endpoint", endpoint]) == 0
    out, err = capfd.readouterr()
    assert f"s3://{bucket}/p/v1: OK" in out and "uploaded" in out
    # a failing call: the bucket does not exist
    assert main(["-v", "mirror", str(published_release), "s3://no-such-bucket/p", "--endpoint", endpoint]) == 1
    assert main(["verify", f"s3://{bucket}/p", "--endpoint", endpoint]) == 1  # no version named: a hint
    # an endpoint nobody listens on, given with a password in its URL
    closed = f"http://someone:pw-in-url@127.0.0.1:{_free_port()}"
    assert main(["mirror", str(published_release), f"s3://{bucket}/q", "--endpoint", closed]) == 1
    out2, err2 = capfd.readouterr()
    assert "NoSuchBucket (HTTP 404)" in err2
    assert f"name a version: s3://{bucket}/p/v1" in out2
    assert "EndpointConnectionError talking to http://***@127.0.0.1" in err2
    for text in (out, err, out2, err2):
        assert SECRET_KEY not in text and ACCESS_KEY not in text and "pw-in-url" not in text
    assert main(["verify", str(published_release), "--endpoint", endpoint]) == 2  # --endpoint is for s3:// only
    assert main(["mirror", str(published_release), "https://not-s3/p", "--endpoint", endpoint]) == 2
    assert main(["mirror", str(published_release), f"s3://{bucket}/p/v1", "--endpoint", endpoint]) == 2  # no p/v1/v1


@pytest.mark.parametrize("crash", ["after-four-files", "inside-a-multipart-upload"])
def test_an_interrupted_mirror_resumes_and_uploads_only_what_is_missing(
    published_release: Path, client: Any, bucket: str, crash: str
) -> None:
    destination = f"s3://{bucket}/study"
    pid = os.fork()
    if pid == 0:  # the child mirrors with one thread (largest file first) and is killed at the chosen point
        try:
            if crash == "after-four-files":
                real = mirror_mod._put_whole
                count = [0]

                def put_then_die(*args: Any) -> None:
                    if count[0] == 3:
                        os._exit(137)
                    real(*args)
                    count[0] += 1

                mirror_mod._put_whole = put_then_die  # type: ignore[assignment]
                child_client = mirror_mod.s3_client(client.meta.endpoint_url)
            else:
                child_client = Recorder(mirror_mod.s3_client(client.meta.endpoint_url))
                parts = [0]
                real_part = child_client.inner.upload_part

                def part_then_die(**kwargs: Any) -> Any:
                    if parts[0] == 2:
                        os._exit(137)
                    parts[0] += 1
                    return real_part(**kwargs)

                child_client.upload_part = part_then_die  # type: ignore[method-assign]
            mirror_release(published_release, destination, client=child_client, threads=1, part_size=PART)
        finally:
            os._exit(1)  # the crash point was never reached
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 137

    left = _objects(client, bucket)
    expected = _expected(published_release, "study/v1")
    if crash == "after-four-files":
        assert len(left) == 4 and "study/v1/" + BIG_FILE in left  # largest first: the big file, then three
    else:
        assert left == {}  # two parts sent, the upload never completed: no object
    assert all(expected[key] == data for key, data in left.items())
    interrupted = verify_mirror(destination + "/v1", client=client)
    assert not interrupted.ok and MANIFEST_NAME + " is missing" in interrupted.problems[0]

    outcome = mirror_release(published_release, destination, client=client, part_size=PART)
    assert sorted("study/v1/" + rel for rel in outcome.skipped) == sorted(left)
    assert len(outcome.uploaded) == len(expected) - len(left)
    assert _objects(client, bucket) == expected
    assert verify_mirror(destination + "/v1", client=client).ok


@pytest.fixture
def mirrored(published_release: Path, client: Any, bucket: str) -> str:
    mirror_release(published_release, f"s3://{bucket}/study", client=client, part_size=PART)
    return f"s3://{bucket}/study/v1"


def test_verify_catches_a_tampered_object_even_with_its_metadata_kept(
    mirrored: str, published_release: Path, client: Any, bucket: str, endpoint: str
) -> None:
    rel = "sub-a1/ses-01/anat/sub-a1_ses-01_T1w.nii.gz"
    key = f"study/v1/{rel}"
    original = client.get_object(Bucket=bucket, Key=key)
    data = bytearray(original["Body"].read())
    data[100] ^= 0x01  # one bit
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=original["Metadata"])
    result = verify_mirror(mirrored, client=client)
    assert (result.changed, result.missing, result.extra, result.problems) == ([rel], [], [], [])
    assert main(["verify", mirrored, "--endpoint", endpoint]) == 1


def test_verify_catches_missing_extra_relabelled_objects_and_an_edited_shareable(
    mirrored: str, client: Any, bucket: str
) -> None:
    client.delete_object(Bucket=bucket, Key="study/v1/README")
    client.put_object(Bucket=bucket, Key="study/v1/sub-a1/extra.txt", Body=b"planted",
                      Metadata={"sha256": "0" * 64})
    sidecar = "sub-b2/ses-01/anat/sub-b2_ses-01_T1w.json"
    body = client.get_object(Bucket=bucket, Key=f"study/v1/{sidecar}")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"study/v1/{sidecar}", Body=body, Metadata={"sha256": "f" * 64})
    shareable = client.get_object(Bucket=bucket, Key="study/v1/" + SHAREABLE_NAME)["Body"].read()
    edited = shareable.replace(b'"profile": "', b'"profile": "weaker ', 1)
    assert edited != shareable
    client.put_object(Bucket=bucket, Key="study/v1/" + SHAREABLE_NAME, Body=edited)
    result = verify_mirror(mirrored, client=client)
    assert result.missing == ["README"] and result.extra == ["sub-a1/extra.txt"] and result.changed == []
    assert f"{sidecar}: its metadata sha256 disagrees with {MANIFEST_NAME}" in result.problems
    assert any("was edited after publishing" in p for p in result.problems)


def test_a_different_object_under_an_existing_key_is_never_overwritten(
    published_release: Path, client: Any, bucket: str, endpoint: str
) -> None:
    client.put_object(Bucket=bucket, Key="study/v1/README", Body=b"another release's README",
                      Metadata={"sha256": "1" * 64})
    with pytest.raises(GuardError, match="study/v1/README: exists with other content") as caught:
        mirror_release(published_release, f"s3://{bucket}/study", client=client)
    assert "nothing was uploaded" in str(caught.value)
    assert _objects(client, bucket) == {"study/v1/README": b"another release's README"}
    assert main(["mirror", str(published_release), f"s3://{bucket}/study", "--endpoint", endpoint]) == 3
    # an object without a recorded sha256, even with the very same bytes, is not taken as ours either
    client.put_object(Bucket=bucket, Key="other/v1/README", Body=(published_release / "README").read_bytes())
    with pytest.raises(GuardError, match="other/v1/README: exists without a recorded sha256"):
        mirror_release(published_release, f"s3://{bucket}/other", client=client)
    # nor is a version prefix shared with files that are not this release's
    client.put_object(Bucket=bucket, Key="third/v1/sub-zz/x.nii.gz", Body=b"x")
    with pytest.raises(GuardError, match="third/v1/sub-zz/x.nii.gz: not part of this release"):
        mirror_release(published_release, f"s3://{bucket}/third", client=client)
    assert set(_objects(client, bucket)) == {"study/v1/README", "other/v1/README", "third/v1/sub-zz/x.nii.gz"}


def test_an_object_written_meanwhile_is_not_replaced(published_release: Path, client: Any, bucket: str) -> None:
    """The conditional write: an object that appears between the plan and the upload (another writer)."""
    target = S3Location(bucket, "study/v1")
    files = {f.rel: f for f in mirror_mod.release_files(published_release)}
    readme, big = files["README"], files[BIG_FILE]
    client.put_object(Bucket=bucket, Key=target.key("README"), Body=b"raced", Metadata={"sha256": "2" * 64})
    with pytest.raises(GuardError, match="not overwritten: study/v1/README exists with other content"):
        upload_file(client, target, published_release, readme)
    client.put_object(Bucket=bucket, Key=target.key(BIG_FILE), Body=b"raced", Metadata={"sha256": "3" * 64})
    with pytest.raises(GuardError, match="not overwritten"):
        upload_file(client, target, published_release, big, PART)  # the multipart path: refused at completion
    assert _objects(client, bucket) == {target.key("README"): b"raced", target.key(BIG_FILE): b"raced"}
    # the same content written meanwhile is fine (two mirrors of one release racing)
    client.delete_object(Bucket=bucket, Key=target.key("README"))
    client.put_object(Bucket=bucket, Key=target.key("README"), Body=(published_release / "README").read_bytes(),
                      Metadata={"sha256": readme.sha256})
    upload_file(client, target, published_release, readme)


def test_a_release_that_fails_its_own_verification_is_not_mirrored(
    tmp_path: Path, client: Any, bucket: str
) -> None:
    version = published_version(tmp_path, big=False)
    target = version / "participants.tsv"
    os.chmod(target, 0o644)
    target.write_text(target.read_text() + "sub-zz\tF\t99\n")
    with pytest.raises(GuardError, match="fails its own verification(.|\n)*1 changed: participants.tsv"):
        mirror_release(version, f"s3://{bucket}/study", client=client)
    assert _objects(client, bucket) == {}
