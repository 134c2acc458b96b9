"""Fixtures for the search function: stores (a temp dir, a fresh bucket on moto_server), the API
over a store, and a reference filter evaluator (Mongo semantics, one row at a time) to check against."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiinfra.api.auth import LOCAL_TENANT
from aiinfra.api.encoder import TextEncoder
from aiinfra.api.search import create_search_app
from aiinfra.config import AuthSettings
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.store import FileStore, IndexPath, IndexStore, S3Store
from fastapi.testclient import TestClient

SearchClient = Callable[..., TestClient]
NO_AUTH = AuthSettings(mode="none", agent_claim="agents")


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_bucket(endpoint: str) -> str:
    bucket = f"indexes-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["file", "s3"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's indexes live, once in a folder and once in a fresh bucket on moto_server, as
    `tests.support.search_writer.open_test_store` (and its subprocesses) read it."""
    if request.param == "file":
        return str(tmp_path / "indexes")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return f"s3://{new_bucket(endpoint)}/indexes@{endpoint}"


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "indexes")


@pytest.fixture
def s3_store(moto_endpoint: str, tmp_path: Path) -> S3Store:
    bucket = new_bucket(moto_endpoint)
    return S3Store(bucket, "prefix/indexes", client=s3_client(moto_endpoint), cache_dir=tmp_path / "s3-cache")


@pytest.fixture
def search_client() -> Iterator[SearchClient]:
    """`search_client(store, refresh_seconds=0.0, encode=None, limits=None, auth=None)`: the search
    API over `store` (AUTH_MODE=none unless `auth` says otherwise)."""
    clients: list[TestClient] = []

    def build(
        store: IndexStore,
        refresh_seconds: float = 0.0,
        encode: TextEncoder | None = None,
        limits: IndexLimits | None = None,
        auth: AuthSettings = NO_AUTH,
    ) -> TestClient:
        app = create_search_app(
            store, encode=encode, refresh_seconds=refresh_seconds, limits=limits, auth=auth
        )
        client = TestClient(app)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def shard_path(name: str, shard: int = 0, tenant: str = LOCAL_TENANT) -> str:
    """Where a shard of an index lives in its store (what the store's methods call its name)."""
    return IndexPath(tenant, name).shard(shard)


def wait_for_compaction(client: TestClient, name: str, timeout: float = 120.0) -> dict[str, Any]:
    """GET /indexes/{name} once no compaction job of it is queued or running (they run on a
    background thread of the app's process)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/indexes/{name}")
        assert answer.status_code == 200, answer.text
        info: dict[str, Any] = answer.json()
        if info["compaction"]["state"] == "idle":
            return info
        assert time.monotonic() < deadline, f"compaction of {name!r} still {info['compaction']['state']}"
        time.sleep(0.02)


_MISSING = object()


def orphan_segment(store: IndexStore, name: str, segment_id: str) -> None:
    """What a writer killed between uploading its segment and swapping the manifest leaves behind."""
    with store.scratch() as built:
        (built / "vectors.faiss").write_bytes(b"never named by a manifest")
        store.put_segment(name, segment_id, built)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: object, b: object) -> bool:
    if _number(a) and _number(b):
        return float(a) == float(b)  # type: ignore[arg-type]
    return not _number(a) and not _number(b) and type(a) is type(b) and a == b


def _operators(value: object, condition: dict[str, Any]) -> bool:
    for op, operand in condition.items():
        if op == "$eq":
            ok = value is not _MISSING and _equal(value, operand)
        elif op == "$ne":
            ok = not (value is not _MISSING and _equal(value, operand))
        elif op == "$in":
            ok = value is not _MISSING and any(_equal(value, o) for o in operand)
        elif op == "$nin":
            ok = not (value is not _MISSING and any(_equal(value, o) for o in operand))
        elif op == "$not":
            ok = not _operators(value, operand)
        else:
            ok = (
                _number(value)
                and {
                    "$gt": value > operand,  # type: ignore[operator]
                    "$gte": value >= operand,  # type: ignore[operator]
                    "$lt": value < operand,  # type: ignore[operator]
                    "$lte": value <= operand,  # type: ignore[operator]
                }[op]
            )
        if not ok:
            return False
    return True


def matches(condition: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Whether `metadata` satisfies the Mongo-style `condition`, evaluated directly."""
    for key, value in condition.items():
        if key == "$and":
            ok = all(matches(c, metadata) for c in value)
        elif key == "$or":
            ok = any(matches(c, metadata) for c in value)
        elif key == "$not":
            ok = not matches(value, metadata)
        elif isinstance(value, dict) and value:
            ok = _operators(metadata.get(key, _MISSING), value)
        else:
            ok = _operators(metadata.get(key, _MISSING), {"$eq": value})
        if not ok:
            return False
    return True
