"""The search API over a file:// store: answers, bad input (4xx with a message), refresh and corruption."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiinfra import snapstart
from aiinfra.vectors.manifest import shard_of
from aiinfra.vectors.store import FileStore
from aiinfra.vectors.writer import ORPHAN_GRACE_SECONDS

from tests.support.search import SearchClient, orphan_segment, shard_path, wait_for_compaction

DIM = 16


def _items(n: int, seed: int = 0, dim: int = DIM) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"item-{i}", "vector": rng.normal(size=dim).tolist(), "metadata": {"n": i, "even": i % 2 == 0}}
        for i in range(n)
    ]


@pytest.fixture
def client(search_client: SearchClient, file_store: FileStore) -> Any:
    client = search_client(file_store)
    assert client.put("/indexes/docs", json={"dimension": DIM}).status_code == 201
    assert client.post("/indexes/docs/upsert", json={"items": _items(20)}).status_code == 200
    return client


def _error(answer: Any, status: int) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] and error["message"]
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("put", "/indexes/Docs", {"dimension": 4}, 400, "path.name"),
        ("put", "/indexes/" + "a" * 65, {"dimension": 4}, 400, "path.name"),
        ("put", "/indexes/x", {"dimension": 4, "metric": "cos"}, 400, "metric"),
        (
            "put",
            "/indexes/x",
            {"dimension": 4, "factory": "HNSW32,Bogus"},
            400,
            "not an allowed shape; allowed: Flat",
        ),
        (
            "put",
            "/indexes/x",
            {"dimension": 10, "factory": "IVF16,PQ3"},
            400,
            "PQ's m must divide the dimension 10",
        ),
        (
            "put",
            "/indexes/x",
            {"dimension": 4, "factory": "IVF100000000,Flat"},
            400,
            "lists must be 1 to 65536",
        ),
        ("put", "/indexes/x", {"dimension": 4, "factory": "HNSW65"}, 400, "M must be 4 to 64"),
        ("put", "/indexes/x", {"dimension": 4, "factory": "IDMap,Flat"}, 400, "not an allowed shape"),
        ("put", "/indexes/x", {"dimension": 4, "factory": "Flat,RFlat"}, 400, "re-ranks a compressed index"),
        ("put", "/indexes/x", {"dimension": 4, "shards": 0}, 400, "shards"),
        ("put", "/indexes/x", {"dimension": 4, "shards": 65}, 400, "shards"),
        ("put", "/indexes/x", {"dimension": 0}, 400, "dimension"),
        ("put", "/indexes/docs", {"dimension": 8}, 409, "exists with dimension 16"),
        ("put", "/indexes/docs", {"dimension": DIM, "shards": 2}, 409, "1 shards"),
        ("post", "/indexes/docs/query", {"vector": [0.1] * 3}, 400, "dimension 3, the index has 16"),
        ("post", "/indexes/docs/query", {"vector": [0.1] * DIM, "k": 0}, 400, "k:"),
        ("post", "/indexes/docs/query", {"vector": [0.1] * DIM, "k": 1001}, 400, "k:"),
        ("post", "/indexes/docs/query", {"vector": [1e39] * DIM}, 400, "overflow float32"),
        ("post", "/indexes/docs/query", {"vector": [0.1] * DIM, "filter": {"n": {"$gt": "x"}}}, 400, "$gt"),
        ("post", "/indexes/docs/query", {"k": 3}, 400, "exactly one of vector, vectors or text"),
        ("post", "/indexes/docs/query", {"vectors": [[0.1] * DIM] * 257}, 400, "vectors"),
        ("post", "/indexes/nope/query", {"vector": [0.1] * DIM}, 404, "does not exist"),
        ("post", "/indexes/docs/upsert", {"items": [{"id": "a", "vector": [1.0] * 5}]}, 400, "dimension 5"),
        ("post", "/indexes/docs/upsert", {"items": [{"id": "a"}]}, 400, "exactly one of vector or text"),
        ("post", "/indexes/docs/upsert", {"items": []}, 400, "items"),
        ("post", "/indexes/docs/upsert", {"items": _items(1001)}, 400, "items"),
        ("post", "/indexes/docs/upsert", {"items": [{"id": "", "vector": [1.0] * DIM}]}, 400, "id"),
        (
            "post",
            "/indexes/docs/upsert",
            {"items": [{"id": "a", "vector": [1] * DIM, "metadata": {"x": [1]}}]},
            400,
            "metadata",
        ),
        (
            "post",
            "/indexes/docs/upsert",
            {"items": [{"id": "a", "vector": [1] * DIM, "metadata": {"big": 2**70}}]},
            400,
            "metadata",
        ),
        ("post", "/indexes/docs/delete", {"ids": []}, 400, "ids"),
        ("post", "/indexes/nope/compact", None, 404, "does not exist"),
        ("get", "/indexes/nope", None, 404, "does not exist"),
        ("delete", "/indexes/nope", None, 404, "does not exist"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(
    client: Any, method: str, path: str, body: Any, status: int, fragment: str
) -> None:
    answer = client.request(method.upper(), path, json=body)
    assert fragment in _error(answer, status)


def test_nan_and_infinity_in_vectors_are_refused(client: Any) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = "[" + ",".join(["0.5"] * (DIM - 1) + [literal]) + "]"
        answer = client.post(
            "/indexes/docs/query",
            content=f'{{"vector": {raw}}}',
            headers={"content-type": "application/json"},
        )
        assert "finite" in _error(answer, 400)
    assert client.get("/indexes/docs").json()["version"] == 2


def test_matches_whose_metadata_exceed_one_answer_are_a_400_before_the_answer_is_built(
    search_client: SearchClient, file_store: FileStore
) -> None:
    client = search_client(file_store)
    assert client.put("/indexes/wide", json={"dimension": DIM}).status_code == 201
    metadata = {f"field{j}": "m" * 1000 for j in range(32)}  # 32.4 KB of stored JSON an item
    for batch in range(2):  # 200 items: 6.5 MB of metadata, over the 6 MiB + 100 bytes of an answer
        items = [dict(item, metadata=metadata) for item in _items(100, seed=batch)]
        items = [dict(item, id=f"{batch}-{item['id']}") for item in items]
        assert client.post("/indexes/wide/upsert", json={"items": items}).status_code == 200
    query = {"vector": [0.1] * DIM, "k": 200, "include_metadata": True}
    refused = client.post("/indexes/wide/query", json=query)
    assert "ask for a smaller k" in _error(refused, 400)
    assert (refused.json()["error"]["type"], refused.json()["error"]["param"]) == ("answer_too_large", "k")
    fewer = client.post("/indexes/wide/query", json=query | {"k": 150})  # 4.9 MB
    assert fewer.status_code == 200 and len(fewer.json()["matches"]) == 150
    assert fewer.json()["matches"][0]["metadata"] == metadata
    bare = client.post("/indexes/wide/query", json=query | {"include_metadata": False})
    assert bare.status_code == 200 and len(bare.json()["matches"]) == 200


def test_create_is_idempotent_for_the_same_definition(client: Any) -> None:
    again = client.put("/indexes/docs", json={"dimension": DIM})
    assert again.status_code == 200
    assert again.json()["count"] == 20


def test_query_scores_reupsert_and_delete(client: Any) -> None:
    items = _items(20)
    hit = client.post(
        "/indexes/docs/query", json={"vector": items[7]["vector"], "k": 1, "include_metadata": True}
    )
    assert hit.json()["matches"] == [
        {"id": "item-7", "score": pytest.approx(1.0, abs=1e-5), "metadata": {"n": 7, "even": False}}
    ]
    moved = {"id": "item-7", "vector": items[3]["vector"], "metadata": {"n": 70}}
    assert client.post("/indexes/docs/upsert", json={"items": [moved]}).status_code == 200
    top = client.post("/indexes/docs/query", json={"vector": items[3]["vector"], "k": 2}).json()["matches"]
    assert {m["id"] for m in top} == {"item-3", "item-7"}
    assert client.post("/indexes/docs/delete", json={"ids": ["item-3", "absent"]}).json()["count"] == 2
    top = client.post("/indexes/docs/query", json={"vector": items[3]["vector"], "k": 20}).json()["matches"]
    assert top[0]["id"] == "item-7" and "item-3" not in {m["id"] for m in top}
    assert len(top) == 19
    assert client.get("/indexes/docs").json()["count"] == 19


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("HNSW16", {"ef_search": 64}),
        ("IVF8,Flat", {"nprobe": 8}),
        ("IVF4,PQ4x4", {"nprobe": 4}),
        ("HNSW16,SQ8,RFlat", {"ef_search": 64}),
    ],
)
def test_trained_factories_find_neighbours_and_honour_filters(
    search_client: SearchClient, file_store: FileStore, factory: str, params: dict[str, int]
) -> None:
    client = search_client(file_store)
    assert (
        client.put(
            "/indexes/trained", json={"dimension": DIM, "metric": "l2", "factory": factory}
        ).status_code
        == 201
    )
    items = _items(600, seed=1)
    assert client.post("/indexes/trained/upsert", json={"items": items}).status_code == 200
    assert client.post("/indexes/trained/compact").status_code == 202
    assert wait_for_compaction(client, "trained")["segments"] == 1
    vectors = np.array([item["vector"] for item in items], dtype=np.float32)
    found = 0
    for i in range(0, 600, 60):
        answer = client.post(
            "/indexes/trained/query", json={"vector": items[i]["vector"], "k": 5, **params}
        ).json()
        found += answer["matches"][0]["id"] == f"item-{i}"
        near = client.post(
            "/indexes/trained/query",
            json={"vector": items[i]["vector"], "k": 5, "filter": {"n": {"$lt": 4}, "even": True}, **params},
        ).json()["matches"]
        truth = np.argsort(((vectors[0:4:2] - vectors[i]) ** 2).sum(axis=1)) * 2
        assert [m["id"] for m in near] == [f"item-{j}" for j in truth]  # 2 of 600 selected: an exact scan
        wide = client.post(
            "/indexes/trained/query",
            json={"vector": items[i]["vector"], "k": 5, "filter": {"even": False}, **params},
        ).json()["matches"]
        assert len(wide) == 5 and all(int(m["id"].split("-")[1]) % 2 == 1 for m in wide)
    assert found >= 9
    # Loading index.faiss read it ahead on a thread; none is left reading once the load returned.
    assert not [thread for thread in threading.enumerate() if thread.name == "segment-read-ahead"]


def test_a_refined_factory_reranks_with_exact_scores_from_the_segments_own_vectors(
    search_client: SearchClient, file_store: FileStore, tmp_path: Path
) -> None:
    client = search_client(file_store)
    body = {"dimension": DIM, "metric": "ip", "factory": "IVF4,PQ4x4,RFlat"}
    assert client.put("/indexes/refined", json=body).status_code == 201
    items = _items(600, seed=2)
    assert client.post("/indexes/refined/upsert", json={"items": items}).status_code == 200
    assert client.post("/indexes/refined/compact").status_code == 202
    assert wait_for_compaction(client, "refined")["segments"] == 1
    vectors = np.array([item["vector"] for item in items], dtype=np.float32)
    query = vectors[7] + 0.1
    answer = client.post("/indexes/refined/query", json={"vector": query.tolist(), "k": 5, "nprobe": 4})
    matches = answer.json()["matches"]
    # PQ4x4 codes alone score far from exact; the re-ranking gives the exact inner products.
    exact = {f"item-{i}": float(vectors[i] @ query) for i in range(600)}
    assert all(abs(m["score"] - exact[m["id"]]) < 1e-4 for m in matches)
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    # The exact vectors are stored once: index.faiss holds the PQ codes only, not a second copy.
    [base] = [p.parent for p in (tmp_path / "indexes").rglob("index.faiss")]
    assert (base / "index.faiss").stat().st_size < (base / "vectors.faiss").stat().st_size / 4


def test_a_second_instance_sees_a_write_after_the_refresh_window(
    search_client: SearchClient, tmp_path: Path
) -> None:
    writer = search_client(FileStore(tmp_path / "shared"))
    assert writer.put("/indexes/shared", json={"dimension": DIM}).status_code == 201
    # A window wide enough that the upsert below lands inside it on a loaded CI machine too.
    reader = search_client(FileStore(tmp_path / "shared"), refresh_seconds=2.0)
    assert reader.get("/indexes/shared").json()["count"] == 0
    assert writer.post("/indexes/shared/upsert", json={"items": _items(5)}).status_code == 200
    assert reader.get("/indexes/shared").json()["count"] == 0  # inside the window: the loaded version
    time.sleep(2.05)
    assert reader.get("/indexes/shared").json()["count"] == 5


def test_a_corrupt_segment_is_refused_and_the_last_good_version_served(
    search_client: SearchClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "store")
    writer = search_client(store)
    reader = search_client(store)
    assert writer.put("/indexes/c", json={"dimension": DIM}).status_code == 201
    assert writer.post("/indexes/c/upsert", json={"items": _items(5)}).status_code == 200
    assert reader.get("/indexes/c").json()["count"] == 5
    assert (
        writer.post(
            "/indexes/c/upsert",
            json={"items": [{"id": "new", "vector": [1.0] * DIM}]},
        ).status_code
        == 200
    )
    segments = tmp_path / "store" / shard_path("c") / "segments"
    newest = max(segments.iterdir(), key=lambda p: p.stat().st_mtime)
    with open(newest / "vectors.faiss", "r+b") as damaged:
        damaged.truncate(10)
    answer = reader.get("/indexes/c")
    assert answer.status_code == 200
    assert answer.json()["count"] == 5 and answer.json()["version"] == 2
    query = reader.post("/indexes/c/query", json={"vector": [1.0] * DIM, "k": 10}).json()
    assert "new" not in {m["id"] for m in query["matches"]}
    assert math.isfinite(query["matches"][0]["score"])


def test_compaction_sweeps_segments_no_manifest_names_once_past_the_grace(
    search_client: SearchClient, file_store: FileStore
) -> None:
    client = search_client(file_store)
    assert client.put("/indexes/swept", json={"dimension": DIM}).status_code == 201
    assert client.post("/indexes/swept/upsert", json={"items": _items(30)}).status_code == 200
    stale, fresh = "a" * 32, "b" * 32
    shard = shard_path("swept")
    orphan_segment(file_store, shard, stale)
    orphan_segment(file_store, shard, fresh)  # maybe a write still in flight: too young to sweep
    long_ago = time.time() - 2 * ORPHAN_GRACE_SECONDS
    os.utime(file_store.root / shard / "segments" / stale, (long_ago, long_ago))
    assert client.post("/indexes/swept/compact").status_code == 202
    assert wait_for_compaction(client, "swept")["segments"] == 1
    named = {ref["id"] for ref in json.loads((file_store.read_manifest(shard) or (b"{}",))[0])["segments"]}
    assert set(file_store.segment_ages(shard)) == named | {fresh}
    query = client.post("/indexes/swept/query", json={"vector": _items(30)[4]["vector"], "k": 1})
    assert query.json()["matches"][0]["id"] == "item-4"


def test_a_method_the_path_does_not_serve_is_405_naming_every_method_it_does(client: Any) -> None:
    answer = client.patch("/indexes/docs")
    assert answer.status_code == 405 and answer.json()["error"]["type"] == "method_not_allowed"
    assert answer.headers["allow"] == "DELETE, GET, PUT"
    assert client.get("/indexes/docs/query").headers["allow"] == "POST"


def test_creating_again_writes_the_shard_manifests_a_crash_left_unwritten(
    search_client: SearchClient, file_store: FileStore
) -> None:
    client = search_client(file_store)
    assert client.put("/indexes/split", json={"dimension": DIM, "shards": 3}).status_code == 201
    items = _items(30)
    assert client.post("/indexes/split/upsert", json={"items": items}).status_code == 200
    lost = file_store.root / shard_path("split", 2) / "manifest.json"
    held = json.loads(lost.read_bytes())["segments"]
    lost.unlink()  # as if the create had died before writing it (its rows lost with it here)
    fresh = search_client(file_store)  # an instance that never saw it
    assert fresh.post("/indexes/split/query", json={"vector": items[0]["vector"]}).json()["partial"]
    assert fresh.put("/indexes/split", json={"dimension": DIM, "shards": 3}).status_code == 200
    repaired = json.loads(lost.read_bytes())
    assert repaired["shard"] == 2 and repaired["segments"] == [] and held
    assert fresh.post("/indexes/split/query", json={"vector": items[0]["vector"]}).json()["partial"] is False
    info = fresh.get("/indexes/split").json()
    shard_two = sum(1 for item in items if shard_of(item["id"], 3) == 2)
    assert info["count"] == 30 - shard_two and info["shards"] == 3


def test_shards_load_on_first_use_and_after_a_snapstart_restore_re_check_at_once(
    search_client: SearchClient, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "lazy")
    writer = search_client(store)
    assert writer.put("/indexes/lazy", json={"dimension": DIM}).status_code == 201
    assert writer.post("/indexes/lazy/upsert", json={"items": _items(3)}).status_code == 200
    segments = tmp_path / "lazy" / shard_path("lazy") / "segments"
    [segment] = list(segments.iterdir())
    (segment / "vectors.faiss").rename(segment / "moved")  # loading it now would fail
    reader = search_client(store, refresh_seconds=3600.0)  # its init reads no index
    (segment / "moved").rename(segment / "vectors.faiss")
    assert reader.get("/indexes/lazy").json()["count"] == 3  # loaded by this first use
    assert writer.post("/indexes/lazy/upsert", json={"items": _items(5)}).status_code == 200
    assert reader.get("/indexes/lazy").json()["count"] == 3  # inside its refresh window
    snapstart.HOOKS.run_after_restore()  # a restored copy of an old snapshot
    assert reader.get("/indexes/lazy").json()["count"] == 5
