"""A writer in a process of its own: `python -m tests.support.search_writer STORE NAME PREFIX COUNT`.

STORE is a directory or `s3://bucket/prefix@http://endpoint`. Upserts COUNT items one request at a
time through the search API and prints the id of every acknowledged upsert.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiinfra.api.search import create_search_app
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.store import FileStore, IndexStore, S3Store
from fastapi.testclient import TestClient

from tests.support.search import s3_client

# Writes race here, not compactions: none starts by itself (the compaction race test asks for them).
RACE_LIMITS = IndexLimits(max_deltas=10_000, compact_after_deltas=10_000, compact_after_rows=10**9)


def open_test_store(spec: str) -> IndexStore:
    if spec.startswith("s3://"):
        location, endpoint = spec.removeprefix("s3://").split("@", 1)
        bucket, prefix = location.split("/", 1)
        return S3Store(bucket, prefix, client=s3_client(endpoint))
    return FileStore(Path(spec))


def main(spec: str, name: str, prefix: str, count: int) -> None:
    client = TestClient(create_search_app(open_test_store(spec), limits=RACE_LIMITS))
    for i in range(count):
        item = {"id": f"{prefix}-{i}", "vector": [float(i + 1), 1.0, 0.5, -1.0]}
        answer = client.post(f"/indexes/{name}/upsert", json={"items": [item]})
        if answer.status_code == 200:
            print(item["id"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
