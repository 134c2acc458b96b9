"""`Flat` answers equal numpy brute force after any mix of upserts, re-upserts, deletes and compactions
(running in the background while the writes go on), with and without a filter (the true top-k among
the matching items), in one shard or spread over four: a sharded index answers as one would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from aiinfra.vectors.store import FileStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.search import SearchClient, matches

DIM = 8
IDS = [f"doc-{i}" for i in range(24)]
FILTERS: list[dict[str, Any]] = [
    {"group": {"$gte": 2}},
    {"tag": "a"},
    {"$or": [{"tag": {"$in": ["b", None]}}, {"group": 0}]},
    {"tag": {"$ne": "a"}, "group": {"$not": {"$lt": 1}}},
]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("upsert"), st.lists(st.sampled_from(IDS), min_size=1, max_size=10), st.integers(0, 2**31)
        ),
        st.tuples(st.just("delete"), st.lists(st.sampled_from(IDS), min_size=1, max_size=5), st.just(0)),
        st.tuples(st.just("compact"), st.just([]), st.just(0)),
    ),
    min_size=1,
    max_size=8,
)


def _brute_force(
    model: dict[str, tuple[np.ndarray, dict[str, Any]]],
    query: np.ndarray,
    k: int,
    metric: str,
    condition: Any,
) -> list[tuple[str, float]]:
    ids = [i for i, (_, meta) in model.items() if condition is None or matches(condition, meta)]
    if not ids:
        return []
    rows = np.stack([model[i][0] for i in ids]).astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        q /= np.linalg.norm(q)
    if metric == "l2":
        scores = ((rows - q) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")
    else:
        scores = rows @ q
        order = np.argsort(-scores, kind="stable")
    return [(ids[j], float(scores[j])) for j in order[:k]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    metric=st.sampled_from(["cosine", "ip", "l2"]),
    shards=st.sampled_from([1, 4]),
    ops=operations,
    k=st.integers(1, 12),
    condition=st.sampled_from([None, *FILTERS]),
    seed=st.integers(0, 2**31),
)
def test_flat_equals_brute_force(
    tmp_path_factory: Any,
    search_client: SearchClient,
    metric: str,
    shards: int,
    ops: list[tuple[str, list[str], int]],
    k: int,
    condition: Any,
    seed: int,
) -> None:
    client = search_client(FileStore(Path(tmp_path_factory.mktemp("store"))))
    definition = {"dimension": DIM, "metric": metric, "factory": "Flat", "shards": shards}
    assert client.put("/indexes/flat", json=definition).status_code == 201
    model: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for position, (op, ids, op_seed) in enumerate(ops):
        rng = np.random.default_rng([op_seed, position])  # distinct vectors per op: no ties in the ranking
        if op == "upsert":
            items = []
            for item_id in ids:
                vector = rng.normal(size=DIM).astype(np.float32)
                meta = {"group": int(rng.integers(0, 4)), "tag": [None, "a", "b"][int(rng.integers(0, 3))]}
                if rng.random() < 0.2:
                    del meta["tag"]
                model[item_id] = (vector, meta)
                items.append({"id": item_id, "vector": vector.tolist(), "metadata": meta})
            answer = client.post("/indexes/flat/upsert", json={"items": items})
        elif op == "delete":
            for item_id in ids:
                model.pop(item_id, None)
            answer = client.post("/indexes/flat/delete", json={"ids": ids})
        else:  # queued: it runs on a background thread while the next operations write
            answer = client.post("/indexes/flat/compact")
        assert answer.status_code == (202 if op == "compact" else 200), answer.text
    assert client.get("/indexes/flat").json()["count"] == len(model)
    queries = np.random.default_rng(seed).normal(size=(3, DIM)).astype(np.float32)
    body = {"vectors": queries.tolist(), "k": k, "include_metadata": True}
    if condition is not None:
        body["filter"] = condition
    answer = client.post("/indexes/flat/query", json=body)
    assert answer.status_code == 200, answer.text
    for query, result in zip(queries, answer.json()["results"], strict=True):
        expected = _brute_force(model, query, k, metric, condition)
        got = result["matches"]
        assert [m["id"] for m in got] == [i for i, _ in expected]
        np.testing.assert_allclose([m["score"] for m in got], [s for _, s in expected], rtol=1e-5, atol=1e-5)
        assert all(m["metadata"] == model[m["id"]][1] for m in got)
