"""Compaction outside the request: 202 at once, the build on a background worker (or the indexer),
under a lease in the manifest; queries answer throughout; a crashed job loses nothing and frees
the shard when its lease expires; bounds queue compactions by themselves and refuse past them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiinfra.api.auth import LOCAL_TENANT
from aiinfra.vectors.jobs import CompactionJob
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.manifest import IndexManifest
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import IndexPath, IndexStore
from aiinfra.vectors.writer import IndexWriter

from tests.conftest import REPO_ROOT
from tests.support.search import SearchClient, wait_for_compaction
from tests.support.search_writer import open_test_store

DIM = 32
INDEX = IndexPath(LOCAL_TENANT, "docs")


def _items(n: int, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"item-{i}", "vector": rng.normal(size=DIM).tolist(), "metadata": {"n": i}}
        for i in range(start, start + n)
    ]


def _manifest(store: IndexStore, shard: int = 0) -> IndexManifest:
    found = store.read_manifest(INDEX.shard(shard))
    assert found is not None
    return IndexManifest.from_json(found[0])


def test_compact_answers_202_with_the_jobs_state_and_queries_answer_during_the_build(
    search_client: SearchClient, store_spec: str
) -> None:
    client = search_client(open_test_store(store_spec))
    assert (
        client.put("/indexes/docs", json={"dimension": DIM, "factory": "HNSW32,SQ8,RFlat"}).status_code == 201
    )
    items = _items(4000)
    for start in range(0, len(items), 1000):
        assert (
            client.post("/indexes/docs/upsert", json={"items": items[start : start + 1000]}).status_code
            == 200
        )
    accepted = client.post("/indexes/docs/compact")
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["name"] == "docs" and body["segments"] == 4
    assert body["compaction"]["state"] in ("queued", "running")  # answered before the build ended
    seen = set()
    while (info := client.get("/indexes/docs").json())["compaction"]["state"] != "idle":
        seen.add(info["compaction"]["state"])
        answer = client.post("/indexes/docs/query", json={"vector": items[7]["vector"], "k": 1})
        assert answer.status_code == 200 and answer.json()["matches"][0]["id"] == "item-7"
    done = wait_for_compaction(client, "docs")
    assert done["segments"] == 1 and done["count"] == 4000
    assert done["compaction"]["last"]["result"] == "ok" and done["compaction"]["last"]["rows"] == 4000
    assert seen <= {"queued", "running"}


def test_two_compactions_requested_at_once_run_one_job(tmp_path: Path) -> None:
    store = open_test_store(str(tmp_path / "indexes"))
    queued: list[CompactionJob] = []
    writer = IndexWriter(store, IndexRegistry(store, 0.0), dispatch=queued.append)
    writer.create(INDEX, DIM, "cosine", "Flat", shards=2)
    vectors = np.random.default_rng(1).normal(size=(50, DIM)).astype(np.float32)
    writer.upsert(INDEX, [f"i{i}" for i in range(50)], vectors, [{} for _ in range(50)])
    first = writer.request_compaction(INDEX)
    second = writer.request_compaction(INDEX)
    assert len(queued) == 2 and sorted(job.shard for job in queued) == [0, 1]  # one job per shard, not two
    assert [m.compaction.token for m in first] == [m.compaction.token for m in second]
    for job in queued:
        outcome = writer.run_compaction(job)
        assert outcome is not None and outcome.result == "ok"
    assert [len(_manifest(store, shard).segments) for shard in (0, 1)] == [1, 1]
    assert writer.run_compaction(queued[0]) is None  # run again (an async retry): its lease is gone


def test_a_job_for_an_index_dropped_or_re_created_meanwhile_changes_nothing(tmp_path: Path) -> None:
    store = open_test_store(str(tmp_path / "indexes"))
    queued: list[CompactionJob] = []
    writer = IndexWriter(store, IndexRegistry(store, 0.0), dispatch=queued.append)
    writer.create(INDEX, DIM, "cosine", "Flat")
    vectors = np.random.default_rng(2).normal(size=(10, DIM)).astype(np.float32)
    writer.upsert(INDEX, [f"i{i}" for i in range(10)], vectors, [{} for _ in range(10)])
    writer.request_compaction(INDEX)
    writer.drop(INDEX)
    assert writer.run_compaction(queued[0]) is None
    assert store.read_manifest(INDEX.shard(0)) is None
    writer.create(INDEX, DIM, "cosine", "Flat")  # the same name again: another incarnation
    writer.upsert(INDEX, ["new"], vectors[:1], [{}])
    assert writer.run_compaction(queued[0]) is None
    assert [ref.kind for ref in _manifest(store).segments] == ["delta"]


KILLED_JOB = """
import sys
from aiinfra.vectors.jobs import CompactionJob
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.reader import IndexRegistry
from tests.support.search_writer import open_test_store
from aiinfra.vectors.writer import IndexWriter
store = open_test_store(sys.argv[1])
writer = IndexWriter(store, IndexRegistry(store, 0.0), IndexLimits(lease_seconds=float(sys.argv[2])))
writer.run_compaction(CompactionJob.from_event(__import__("json").loads(sys.argv[3])))
"""


def test_an_indexer_killed_mid_build_loses_nothing_and_frees_the_shard_when_its_lease_expires(
    search_client: SearchClient, store_spec: str
) -> None:
    store = open_test_store(store_spec)
    lease = 4.0
    queued: list[CompactionJob] = []
    writer = IndexWriter(store, IndexRegistry(store, 0.0), IndexLimits(lease_seconds=lease), queued.append)
    writer.create(INDEX, DIM, "cosine", "HNSW32")
    vectors = np.random.default_rng(3).normal(size=(20000, DIM)).astype(np.float32)
    ids = [f"i{i}" for i in range(len(vectors))]
    writer.upsert(INDEX, ids, vectors, [{"n": i} for i in range(len(vectors))])
    before = _manifest(store)
    writer.request_compaction(INDEX)
    [job] = queued
    indexer = subprocess.Popen(
        [sys.executable, "-c", KILLED_JOB, store_spec, str(lease), json.dumps(job.to_event())], cwd=REPO_ROOT
    )
    deadline = time.monotonic() + 60
    while _manifest(store).compaction.state != "running":
        assert indexer.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.01)
    indexer.send_signal(signal.SIGKILL)  # mid-build: the lease says running, nothing was swapped
    indexer.wait()
    client = search_client(store, refresh_seconds=0.0)
    assert client.get("/indexes/docs").json()["compaction"]["state"] == "running"
    answer = client.post("/indexes/docs/query", json={"vector": vectors[5].tolist(), "k": 1})
    assert answer.json()["matches"][0]["id"] == "i5"  # the old version serves
    assert _manifest(store).segments == before.segments
    time.sleep(lease)
    info = client.get("/indexes/docs").json()
    assert info["compaction"]["state"] == "idle"
    assert (
        info["compaction"]["last"]["result"] == "error" and "stopped" in info["compaction"]["last"]["message"]
    )
    assert client.post("/indexes/docs/compact").status_code == 202  # a new job takes the expired lease
    done = wait_for_compaction(client, "docs")
    assert (
        done["count"] == len(vectors)
        and done["segments"] == 1
        and done["compaction"]["last"]["result"] == "ok"
    )


def test_deltas_past_a_bound_queue_a_compaction_and_past_the_limit_answer_429(
    search_client: SearchClient, tmp_path: Path
) -> None:
    store = open_test_store(str(tmp_path / "indexes"))
    client = search_client(store, limits=IndexLimits(compact_after_deltas=3, max_deltas=3, max_rows=60))
    assert client.put("/indexes/docs", json={"dimension": DIM}).status_code == 201
    for n in range(3):
        assert client.post("/indexes/docs/upsert", json={"items": _items(5, 5 * n)}).status_code == 200
    done = wait_for_compaction(client, "docs")  # the third delta queued it by itself
    assert done["segments"] == 1 and done["count"] == 15 and done["compaction"]["last"]["result"] == "ok"
    full = client.post("/indexes/docs/upsert", json={"items": _items(50, 100)})
    assert full.status_code == 429 and full.json()["error"]["param"] == "max_rows"
    assert "retry-after" not in full.headers  # waiting frees no rows: compact, or more shards
    paused = search_client(store, limits=IndexLimits(compact_after_deltas=100, max_deltas=2))
    for n in range(3):
        answer = paused.post("/indexes/docs/upsert", json={"items": _items(1, 200 + n)})
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
    assert answer.json()["error"]["type"] == "quota_exceeded"
    wait_for_compaction(paused, "docs")  # the refusal queued the compaction that frees it
    assert paused.post("/indexes/docs/upsert", json={"items": _items(1, 300)}).status_code == 200
    assert paused.get("/indexes/docs").json()["count"] == 15 + 2 + 1


def test_indexes_per_tenant_are_bounded(search_client: SearchClient, tmp_path: Path) -> None:
    client = search_client(open_test_store(str(tmp_path / "indexes")), limits=IndexLimits(max_indexes=2))
    for name in ("a", "b"):
        assert client.put(f"/indexes/{name}", json={"dimension": DIM}).status_code == 201
    refused = client.put("/indexes/c", json={"dimension": DIM})
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_indexes"
    assert client.put("/indexes/a", json={"dimension": DIM}).status_code == 200  # the same again: fine
    assert client.delete("/indexes/b").status_code == 204
    assert client.put("/indexes/c", json={"dimension": DIM}).status_code == 201
