"""Index stores: where manifests and segments live (`file://dir` or `s3://bucket/prefix`).

Layout: `<root>/t-<tenant digest>/<index name>/<shard>/manifest.json` and `.../<shard>/segments/<id>/`.
A tenant's indexes sit under a folder named by a digest of its id (any string a token carries, never
a path of its own), so one tenant can neither name nor list another's. The store's methods take a
shard's path (`IndexPath.shard`) as the `name` of what they read and write.

The manifest is replaced only by a conditional write: an atomic rename under a lock on
file://, `If-Match` / `If-None-Match` on S3. Segments are immutable once put.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiinfra.vectors.errors import IndexUnavailable

MANIFEST = "manifest.json"
UNAVAILABLE = "the index store is unavailable, retry shortly"


@dataclass(frozen=True)
class IndexPath:
    """Where one tenant's index lives in a store."""

    tenant: str
    name: str

    @property
    def tenant_folder(self) -> str:
        return tenant_folder(self.tenant)

    def shard(self, shard: int) -> str:
        """The store path of one of the index's shards: what IndexStore methods call `name`."""
        return f"{self.tenant_folder}/{self.name}/{shard}"


def tenant_folder(tenant: str) -> str:
    return "t-" + hashlib.blake2b(tenant.encode(), digest_size=16).hexdigest()


class ManifestConflict(Exception):
    """The conditional manifest write lost: someone else wrote first."""


class SegmentMissing(Exception):
    """A segment named by the manifest is not in the store."""


class IndexStore(Protocol):
    def read_manifest(self, name: str) -> tuple[bytes, str] | None:
        """The manifest bytes and their version tag, or None when the index does not exist."""

    def write_manifest(self, name: str, body: bytes, expected: str | None) -> None:
        """Replace the manifest if its tag is still `expected` (None: if absent), else ManifestConflict."""

    def delete_manifest(self, name: str) -> None: ...

    def scratch(self) -> contextlib.AbstractContextManager[Path]:
        """A temporary directory to build a segment in, cheap to hand to `put_segment`."""

    def put_segment(self, name: str, segment_id: str, built: Path) -> None: ...

    def segment_dir(self, name: str, segment_id: str) -> Path:
        """A local directory holding the segment's files (downloaded and cached when remote)."""

    def delete_segments(self, name: str, segment_ids: list[str]) -> None: ...

    def release_segments(self, name: str, keep: set[str]) -> None:
        """Frees this instance's local copies of the index's segments other than `keep`."""

    def segment_ages(self, name: str) -> dict[str, float]:
        """Every segment the store holds for the index, by id: seconds since it was written."""

    def list_indexes(self, tenant_folder: str) -> list[str]:
        """The names of the tenant's indexes (those whose shard 0 has a manifest)."""


SEGMENT_ID = re.compile(r"[0-9a-f]{32}")


def new_segment_id() -> str:
    return uuid.uuid4().hex


class FileStore:
    """`file://root`: root/<name>/manifest.json and root/<name>/segments/<id>/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _manifest_tag(self, body: bytes) -> str:
        return hashlib.blake2b(body, digest_size=16).hexdigest()

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        index_dir = self.root / name
        index_dir.mkdir(parents=True, exist_ok=True)
        with open(index_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read_manifest(self, name: str) -> tuple[bytes, str] | None:
        try:
            body = (self.root / name / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None
        return body, self._manifest_tag(body)

    def write_manifest(self, name: str, body: bytes, expected: str | None) -> None:
        with self._locked(name):
            current = self.read_manifest(name)
            if (current[1] if current else None) != expected:
                raise ManifestConflict(name)
            staged = self.root / name / f".{MANIFEST}.{uuid.uuid4().hex}"
            with open(staged, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(staged, self.root / name / MANIFEST)

    def delete_manifest(self, name: str) -> None:
        with self._locked(name):
            (self.root / name / MANIFEST).unlink(missing_ok=True)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        # Under the root, so that put_segment is a rename on the same file system.
        staging = self.root / ".scratch"
        staging.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as path:
            yield Path(path)

    def put_segment(self, name: str, segment_id: str, built: Path) -> None:
        segments = self.root / name / "segments"
        segments.mkdir(parents=True, exist_ok=True)
        target = segments / segment_id
        try:
            os.rename(built, target)
        except OSError:
            shutil.copytree(built, target)
        built.mkdir(exist_ok=True)  # the scratch context removes its directory on exit

    def segment_dir(self, name: str, segment_id: str) -> Path:
        path = self.root / name / "segments" / segment_id
        if not path.is_dir():
            raise SegmentMissing(f"segment {segment_id} of {name!r} is missing from {self.root}")
        return path

    def delete_segments(self, name: str, segment_ids: list[str]) -> None:
        for segment_id in segment_ids:
            shutil.rmtree(self.root / name / "segments" / segment_id, ignore_errors=True)

    def release_segments(self, name: str, keep: set[str]) -> None:
        """Nothing to free: the segments are the store itself."""

    def segment_ages(self, name: str) -> dict[str, float]:
        segments, now = self.root / name / "segments", time.time()
        return (
            {path.name: now - path.stat().st_mtime for path in segments.iterdir()}
            if segments.is_dir()
            else {}
        )

    def list_indexes(self, tenant_folder: str) -> list[str]:
        return sorted(p.parent.parent.name for p in (self.root / tenant_folder).glob(f"*/0/{MANIFEST}"))


class S3Store:
    """`s3://bucket/prefix`: <prefix>/<name>/manifest.json and <prefix>/<name>/segments/<id>/<file>."""

    def __init__(self, bucket: str, prefix: str, client: Any = None, cache_dir: Path | None = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else boto3.client("s3")
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "aiinfra-indexes" / bucket / self.prefix

    def _key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    @contextlib.contextmanager
    def _s3(self, action: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise ManifestConflict(action) from exc
            detail = f"S3 {action} failed: {error.get('Code')} {error.get('Message', '')}"
            raise IndexUnavailable(UNAVAILABLE, detail=detail) from exc
        except BotoCoreError as exc:
            raise IndexUnavailable(UNAVAILABLE, detail=f"S3 {action} failed: {exc}") from exc

    def read_manifest(self, name: str) -> tuple[bytes, str] | None:
        with self._s3("read manifest"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(name, MANIFEST))
            except self.client.exceptions.NoSuchKey:
                return None
            return answer["Body"].read(), str(answer["ETag"])

    def write_manifest(self, name: str, body: bytes, expected: str | None) -> None:
        condition = {"IfMatch": expected} if expected is not None else {"IfNoneMatch": "*"}
        with self._s3("write manifest"):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=body, **condition
                )
            except self.client.exceptions.NoSuchKey as exc:
                raise ManifestConflict(name) from exc  # If-Match on a manifest deleted meanwhile

    def delete_manifest(self, name: str) -> None:
        with self._s3("delete manifest"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name, MANIFEST))

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory() as path:
            yield Path(path)

    def put_segment(self, name: str, segment_id: str, built: Path) -> None:
        with self._s3("put segment"):
            for file in sorted(built.iterdir()):
                self.client.upload_file(
                    str(file), self.bucket, self._key(name, "segments", segment_id, file.name)
                )

    def segment_dir(self, name: str, segment_id: str) -> Path:
        target = self.cache_dir / name / segment_id
        if target.is_dir():
            return target
        prefix = self._key(name, "segments", segment_id) + "/"
        with self._s3("get segment"):
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
            keys = [item["Key"] for item in listing.get("Contents", [])]
            if not keys:
                raise SegmentMissing(
                    f"segment {segment_id} of index {name!r} is missing from s3://{self.bucket}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent))
            for key in keys:
                self.client.download_file(self.bucket, key, str(staging / key.rsplit("/", 1)[1]))
        try:
            os.rename(staging, target)
        except OSError:  # another thread cached it first; segments are immutable, so either copy serves
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def release_segments(self, name: str, keep: set[str]) -> None:
        """Removes cached segments the index no longer names, so compactions cannot fill /tmp (512 MB
        by default in Lambda). A segment still mapped by a query in flight stays readable: on Linux
        an unlinked file lives until its last mapping closes. Downloads in progress are left alone."""
        cached = self.cache_dir / name
        for entry in cached.iterdir() if cached.is_dir() else ():
            if SEGMENT_ID.fullmatch(entry.name) and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def segment_ages(self, name: str) -> dict[str, float]:
        prefix = self._key(name, "segments") + "/"
        written: dict[str, datetime.datetime] = {}
        with self._s3("list segments"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    segment_id = item["Key"][len(prefix) :].split("/", 1)[0]
                    written[segment_id] = max(
                        written.get(segment_id, item["LastModified"]), item["LastModified"]
                    )
        now = datetime.datetime.now(datetime.UTC)
        return {segment_id: (now - when).total_seconds() for segment_id, when in written.items()}

    def delete_segments(self, name: str, segment_ids: list[str]) -> None:
        with self._s3("delete segments"):
            for segment_id in segment_ids:
                listing = self.client.list_objects_v2(
                    Bucket=self.bucket, Prefix=self._key(name, "segments", segment_id) + "/"
                )
                for item in listing.get("Contents", []):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def list_indexes(self, tenant_folder: str) -> list[str]:
        names: list[str] = []
        with self._s3("list indexes"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(tenant_folder) + "/", Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                    manifest = self._key(tenant_folder, name, "0", MANIFEST)
                    found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=manifest, MaxKeys=1)
                    if found.get("KeyCount", 0):
                        names.append(name)
        return sorted(names)


def open_store(url: str) -> IndexStore:
    """The store an `INDEX_STORE` URL names (validated by config.search_settings)."""
    if url.startswith("file://"):
        return FileStore(Path(url.removeprefix("file://")))
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix)
