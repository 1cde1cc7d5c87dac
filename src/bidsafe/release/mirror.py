"""Mirror a published version to S3 (`bidsafe mirror`) and read a mirrored copy back (`bidsafe verify s3://...`).

Layout: the version `release_dir/v<N>` goes to `s3://bucket/prefix/v<N>/<path>`, so keys echo the file tree
(and the tree a torrent of the version unpacks to, see bidsafe.release.torrent). Every object carries its
SHA-256 in its metadata (`x-amz-meta-sha256`); `MANIFEST.sha256` is uploaded last, so its presence marks a
complete copy, and `SHAREABLE.json` just before it.

Safety, in order:
1. the local release must pass its own verification (`verify_release`) or nothing is uploaded;
2. before any upload, every existing object under `prefix/v<N>/` is compared with the release: an object whose
   recorded sha256 and size equal the file's is skipped (so an interrupted mirror resumes where it stopped),
   any other object under that prefix (other content, no recorded hash, not part of the release) refuses the
   whole mirror: a different object is never overwritten and a version prefix never mixes two releases;
3. each upload is conditional (`If-None-Match: *`), so an object written meanwhile by someone else is not
   replaced either; the bytes sent are hashed again while read and must equal the manifest's digest (a file
   changed after verification is not uploaded), and single-request uploads carry `ChecksumSHA256`, which S3
   checks on arrival.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, an
instance role); bidsafe never reads, prints or logs them, and its error messages carry the S3 error code and
the key only (an endpoint URL is shown without any user:password part).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError, ConfigError, GuardError
from bidsafe.progress import Progress
from bidsafe.release.manifest import (
    MANIFEST_NAME,
    RELEASE_MARKERS,
    SHAREABLE_NAME,
    VerifyResult,
    parse_manifest,
    resolve_release,
    sha256_bytes,
    sha256_file,
    shareable_problems,
    verify_release,
)

log = logging.getLogger("bidsafe")

SHA256_METADATA = "sha256"  # object metadata key: sent and listed as x-amz-meta-sha256
MiB = 1 << 20
# Files up to this size go in one request (read into memory, checksummed by S3 on arrival); larger ones in
# parts of this size (S3 allows 5 MiB to 5 GiB a part and 10,000 parts: 16 MiB parts cover 156 GiB files).
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
DEFAULT_THREADS = 4  # network-bound: a few uploads in flight; memory use is at most threads x part size
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_VERSION = re.compile(r"^v\d+$")
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
# Upload-order rank of each release file: data first, then SHAREABLE.json, MANIFEST.sha256 last.
_LAST = (SHAREABLE_NAME, MANIFEST_NAME)


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`; `prefix` has no leading or trailing slash ("" for the bucket's root)."""

    bucket: str
    prefix: str = ""

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """`s3://bucket[/prefix]` as an S3Location; a bad bucket name or an empty, `.` or `..` segment is refused."""
    if not url.startswith("s3://"):
        raise ConfigError(f"not an s3:// location: {url}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket):
        raise ConfigError(f"not a valid S3 bucket name: {bucket!r} (3-63 lower-case letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"an S3 prefix may not contain empty, '.' or '..' segments: {url}")
    return S3Location(bucket, prefix)


def redact_url(url: str | None) -> str:
    """An endpoint URL fit to print: any `user:password@` part removed."""
    return _USERINFO.sub("***@", url) if url else "the default AWS endpoint"


def s3_client(endpoint: str | None = None, *, threads: int = DEFAULT_THREADS) -> Any:
    """A boto3 S3 client with the usual credential chain; `endpoint` for S3-compatible stores (MinIO, Ceph,
    a test server), which get path-style addressing (bucket in the path: no DNS name per bucket needed)."""
    import boto3
    from botocore.config import Config

    # botocore itself reads AWS_ENDPOINT_URL(_S3); such an endpoint wants path-style addressing as well
    custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        max_pool_connections=max(10, threads + 2),
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"} if custom else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


@contextlib.contextmanager
def s3_errors(what: str, client: Any = None) -> Iterator[None]:
    """botocore's exceptions as BidsafeError naming the operation and the S3 error code; never the request
    (whose headers hold the access key id) nor the response body."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise ConfigError(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ) from None
    except ClientError as exc:
        raise BidsafeError(f"{what}: S3 answered {_error_code(exc)} (HTTP {_http_status(exc)})") from None
    except BotoCoreError as exc:
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        raise BidsafeError(f"{what}: {type(exc).__name__} talking to {redact_url(endpoint)}") from None


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def _http_status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_precondition_failure(exc: Any) -> bool:
    """An `If-None-Match: *` write refused because the key exists (412), or was being written concurrently (409)."""
    return _error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"} or _http_status(exc) == 412


@dataclass(frozen=True)
class RemoteObject:
    size: int
    sha256: str | None  # from the object's metadata; None when it has none


def list_objects(client: Any, where: S3Location) -> dict[str, int]:
    """{path relative to `where`: size} of every object under `where/`."""
    found: dict[str, int] = {}
    start = where.key("") if where.prefix else ""
    with s3_errors(f"listing {where}", client):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=start):
            for item in page.get("Contents", []):
                found[item["Key"][len(start):]] = int(item["Size"])
    return found


def _head(client: Any, where: S3Location, rel: str) -> RemoteObject | None:
    """Size and recorded sha256 of `where/rel`; None when there is no such object."""
    from botocore.exceptions import ClientError

    with s3_errors(f"reading the metadata of {where.key(rel)}", client):
        try:
            head = client.head_object(Bucket=where.bucket, Key=where.key(rel))
        except ClientError as exc:
            if _http_status(exc) == 404:
                return None
            raise
    return RemoteObject(int(head["ContentLength"]), head.get("Metadata", {}).get(SHA256_METADATA))


# --------------------------------------------------------------------------------------------- mirror
@dataclass(frozen=True)
class LocalFile:
    rel: str
    sha256: str
    size: int


@dataclass
class MirrorOutcome:
    """What `mirror_release` did: `location` is the version's prefix (`s3://bucket/prefix/v<N>`)."""

    location: S3Location
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0

    def summary(self) -> str:
        return (f"{self.location}: {len(self.uploaded)} files uploaded ({self.bytes_uploaded / MiB:.1f} MiB), "
                f"{len(self.skipped)} already there with the same content; {MANIFEST_NAME} is in place")


def release_files(root: Path) -> list[LocalFile]:
    """Every file of a verified release in upload order: data by path, then SHAREABLE.json, the manifest last."""
    manifest = parse_manifest((root / MANIFEST_NAME).read_text(encoding="utf-8"), source=root / MANIFEST_NAME)
    files = [LocalFile(rel, digest, (root / rel).stat().st_size) for rel, digest in sorted(manifest.items())]
    files += [LocalFile(name, sha256_file(root / name), (root / name).stat().st_size) for name in _LAST]
    return files


def version_label(root: Path) -> str:
    """`v<N>` of a verified release, from SHAREABLE.json's `version` (it must agree with a `v<N>` folder name)."""
    record = json.loads((root / SHAREABLE_NAME).read_text(encoding="utf-8"))
    number = record.get("version")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BidsafeError(f"{SHAREABLE_NAME} names no version number", root)
    label = f"v{number}"
    if _VERSION.match(root.name) and root.name != label:
        raise BidsafeError(f"the folder is {root.name} but {SHAREABLE_NAME} says {label}", root)
    return label


def plan_mirror(client: Any, target: S3Location, files: list[LocalFile], threads: int = DEFAULT_THREADS
                ) -> tuple[list[LocalFile], list[str], list[str]]:
    """(files to upload, files already there with the same content, conflicts): one line per object under
    `target` that is not exactly a file of this release."""
    existing = list_objects(client, target)
    by_rel = {f.rel: f for f in files}
    conflicts = [f"{target.key(rel)}: not part of this release" for rel in sorted(set(existing) - set(by_rel))]
    present = sorted(set(existing) & set(by_rel))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        heads = dict(zip(present, pool.map(lambda rel: _head(client, target, rel), present), strict=True))
    skipped: list[str] = []
    for rel in present:
        problem = _difference(by_rel[rel], heads[rel])
        if problem is None:
            skipped.append(rel)
        else:
            conflicts.append(f"{target.key(rel)}: {problem}")
    done = set(skipped)
    return [f for f in files if f.rel not in done], skipped, conflicts


def _difference(local: LocalFile, remote: RemoteObject | None) -> str | None:
    """Why an existing object is not `local` (None: it is, by recorded sha256 and size)."""
    if remote is None:
        return "disappeared while being compared"
    if remote.sha256 is None:
        return "exists without a recorded sha256 (not written by bidsafe mirror)"
    if remote.sha256 != local.sha256:
        return f"exists with other content (sha256 {remote.sha256[:12]}..., the release has {local.sha256[:12]}...)"
    if remote.size != local.size:
        return f"records the release's sha256 but holds {remote.size} bytes, not {local.size}"
    return None


def mirror_release(
    release: str | Path,
    destination: str,
    *,
    endpoint: str | None = None,
    client: Any = None,
    threads: int = DEFAULT_THREADS,
    part_size: int = DEFAULT_PART_SIZE,
) -> MirrorOutcome:
    """Upload the published version `release` to `destination/v<N>/` (see the module docstring).

    Raises GuardError, having uploaded nothing, when the release fails its own verification or the target
    prefix holds an object that is not exactly a file of this release.
    """
    if part_size < MIN_PART_SIZE:
        raise ConfigError(f"part size must be at least {MIN_PART_SIZE} bytes (S3's minimum), not {part_size}")
    base = parse_s3_url(destination)
    if _VERSION.match(base.prefix.rsplit("/", 1)[-1]):
        raise ConfigError(f"{destination}: give the prefix that holds the versions; v<N>/ is added to it")
    root = resolve_release(release)
    check = verify_release(root, threads=min(threads, 2))
    if not check.ok:
        raise GuardError("not mirrored: the release fails its own verification\n" + check.summary(), release)
    target = base.child(version_label(root))
    files = release_files(root)
    client = client if client is not None else s3_client(endpoint, threads=threads)
    todo, skipped, conflicts = plan_mirror(client, target, files, threads)
    if conflicts:
        shown = conflicts[:20] + ([f"... and {len(conflicts) - 20} more"] if len(conflicts) > 20 else [])
        raise GuardError(f"not mirrored: {target} holds objects that are not this release's files (nothing was "
                         "uploaded; a different object is never overwritten):\n" + "\n".join(shown))
    outcome = MirrorOutcome(target, skipped=skipped)
    data = [f for f in todo if f.rel not in _LAST]
    markers = [f for f in todo if f.rel in _LAST]
    log.info("mirroring %s: %d files to upload, %d already there", target, len(todo), len(skipped))
    _run_all(data, lambda f: upload_file(client, target, root, f, part_size), threads, outcome)
    for marker in sorted(markers, key=lambda f: _LAST.index(f.rel)):  # SHAREABLE.json, then the manifest: last
        upload_file(client, target, root, marker, part_size)
        _record(outcome, marker)
    return outcome


def _record(outcome: MirrorOutcome, f: LocalFile) -> None:
    outcome.uploaded.append(f.rel)
    outcome.bytes_uploaded += f.size


def _run_all(files: list[LocalFile], upload: Callable[[LocalFile], None], threads: int,
             outcome: MirrorOutcome) -> None:
    """Upload `files`, largest first (keeps every thread busy to the end); the first failure cancels the
    uploads not yet started and is raised once those running have finished."""
    lock = threading.Lock()
    meter = Progress("bidsafe mirror: uploading", len(files))

    def one(f: LocalFile) -> None:
        upload(f)
        with lock:
            _record(outcome, f)
            meter.advance()

    ordered = sorted(files, key=lambda f: (-f.size, f.rel))
    with meter, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(one, f) for f in ordered]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [fut for fut in done if fut.exception() is not None]
        if failed:
            for fut in futures:
                fut.cancel()
            raise failed[0].exception()  # type: ignore[misc]


def upload_file(client: Any, target: S3Location, root: Path, f: LocalFile, part_size: int = DEFAULT_PART_SIZE
                ) -> None:
    """Upload one file under `target`, only if its key is still free; an object that appeared meanwhile is
    accepted when it records the same sha256 and size, and refused otherwise."""
    from botocore.exceptions import ClientError

    path = root / f.rel
    key = target.key(f.rel)
    try:
        with s3_errors(f"uploading {key}", client):
            try:
                if f.size <= part_size:
                    _put_whole(client, target.bucket, key, path, f)
                else:
                    _put_parts(client, target.bucket, key, path, f, part_size)
            except ClientError as exc:
                if not _is_precondition_failure(exc):
                    raise
                problem = _difference(f, _head(client, target, f.rel))
                if problem is not None:
                    raise GuardError(f"not overwritten: {key} {problem}") from None
    except FileNotFoundError:
        raise BidsafeError("file vanished from the release while mirroring", path) from None


def _changed(path: Path) -> BidsafeError:
    return BidsafeError("file changed since the release was verified: not uploaded (verify the release again)", path)


def _put_whole(client: Any, bucket: str, key: str, path: Path, f: LocalFile) -> None:
    body = path.read_bytes()
    if sha256_bytes(body) != f.sha256:
        raise _changed(path)
    client.put_object(
        Bucket=bucket, Key=key, Body=body, Metadata={SHA256_METADATA: f.sha256},
        ChecksumSHA256=base64.b64encode(bytes.fromhex(f.sha256)).decode("ascii"), IfNoneMatch="*",
    )


# Checksums S3 may return for a part; each must be given back when completing the upload.
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def _put_parts(client: Any, bucket: str, key: str, path: Path, f: LocalFile, part_size: int) -> None:
    """A multipart upload, completed only when the bytes sent hash to the manifest's digest; aborted on any
    failure (a crash leaves an incomplete upload that is no object: a lifecycle rule clears those)."""
    part_size = max(part_size, -(-f.size // MAX_PARTS // MiB) * MiB)  # S3 takes at most 10,000 parts
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata={SHA256_METADATA: f.sha256})[
        "UploadId"]
    try:
        digest = hashlib.sha256()
        parts = []
        with open(path, "rb") as handle:
            number = 0
            while chunk := handle.read(part_size):
                number += 1
                digest.update(chunk)
                answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
                part = {"PartNumber": number, "ETag": answer["ETag"]}
                part.update({name: answer[name] for name in _PART_CHECKSUMS if name in answer})
                parts.append(part)
        if digest.hexdigest() != f.sha256:
            raise _changed(path)
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*",
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


# --------------------------------------------------------------------------------------------- verify
def read_object(client: Any, where: S3Location, rel: str) -> bytes:
    with s3_errors(f"reading {where.key(rel)}", client):
        body: bytes = client.get_object(Bucket=where.bucket, Key=where.key(rel))["Body"].read()
        return body


def hash_object(client: Any, where: S3Location, rel: str) -> tuple[str, str | None]:
    """(sha256 of the object's bytes, streamed; the sha256 its metadata records or None)."""
    with s3_errors(f"reading {where.key(rel)}", client):
        answer = client.get_object(Bucket=where.bucket, Key=where.key(rel))
        digest = hashlib.sha256()
        for chunk in answer["Body"].iter_chunks(MiB):
            digest.update(chunk)
    return digest.hexdigest(), answer.get("Metadata", {}).get(SHA256_METADATA)


def verify_mirror(url: str, *, endpoint: str | None = None, client: Any = None, threads: int = DEFAULT_THREADS
                  ) -> VerifyResult:
    """Read every object of the mirrored version `url` (`s3://bucket/prefix/v<N>`) back: each listed file's
    bytes and recorded sha256 against MANIFEST.sha256, no object missing or extra, SHAREABLE.json as
    `bidsafe verify` checks it locally."""
    where = parse_s3_url(url)
    client = client if client is not None else s3_client(endpoint, threads=threads)
    result = VerifyResult(release=str(where))
    existing = list_objects(client, where)
    if MANIFEST_NAME not in existing:
        hint = ""
        versions = sorted({rel.split("/", 1)[0] for rel in existing if _VERSION.match(rel.split("/", 1)[0])})
        if versions:
            hint = f" (name a version: {', '.join(str(where.child(v)) for v in versions)})"
        result.problems.append(f"{MANIFEST_NAME} is missing: not a mirrored version, or its upload never finished "
                               f"(run bidsafe mirror again){hint}")
        return result
    manifest_bytes = read_object(client, where, MANIFEST_NAME)
    try:
        listed = parse_manifest(manifest_bytes.decode("utf-8"), source=MANIFEST_NAME)
    except (UnicodeDecodeError, BidsafeError) as exc:
        result.problems.append(f"{MANIFEST_NAME} is unreadable: {exc}")
        return result
    present = set(existing) - RELEASE_MARKERS
    result.missing = sorted(set(listed) - present)
    result.extra = sorted(present - set(listed))
    common = sorted(set(listed) & present)
    with Progress("bidsafe verify: reading objects back", len(common)) as meter, \
            ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashed = dict(zip(common, meter.iterate(pool.map(lambda rel: hash_object(client, where, rel), common)),
                          strict=True))
    result.changed = [rel for rel in common if hashed[rel][0] != listed[rel]]
    result.files_checked = len(common)
    result.problems += [f"{rel}: its metadata sha256 disagrees with {MANIFEST_NAME}" for rel in common
                        if hashed[rel][0] == listed[rel] and hashed[rel][1] != listed[rel]]
    shareable = read_object(client, where, SHAREABLE_NAME) if SHAREABLE_NAME in existing else None
    result.problems += shareable_problems(shareable, manifest_bytes)
    return result


# --------------------------------------------------------------------------------------------- CLI
def cli_mirror(args: argparse.Namespace) -> int:
    """`bidsafe mirror RELEASE s3://bucket/prefix [--endpoint URL] [--threads N] [--verify]`."""
    if not Path(args.release).is_dir():
        raise ConfigError("not a release folder", args.release)
    outcome = mirror_release(args.release, args.destination, endpoint=args.endpoint, threads=args.threads)
    print(f"mirror: {outcome.summary()}")
    if args.verify:
        return _print_verified(verify_mirror(str(outcome.location), endpoint=args.endpoint, threads=args.threads))
    return 0


def cli_verify(args: argparse.Namespace) -> int:
    """`bidsafe verify s3://bucket/prefix/v<N> [--endpoint URL]`: exit 0 when every object matches."""
    return _print_verified(verify_mirror(args.release, endpoint=getattr(args, "endpoint", None)))


def _print_verified(result: VerifyResult) -> int:
    print(result.summary())
    return 0 if result.ok else 1

