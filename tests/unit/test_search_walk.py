"""Our walk of `HNSW..,SQ8,RFlat` segments answers what FAISS answers for the same index, and exact
search when every row is re-ranked; the reader uses it for unfiltered queries on live rows only."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from aiinfra.vectors.filter import compile_filter
from aiinfra.vectors.reader import REFINE_FACTOR, IndexReader, IndexRegistry, search_parameters
from aiinfra.vectors.segment import hnsw_sq8_walk
from aiinfra.vectors.store import FileStore, IndexPath
from aiinfra.vectors.writer import IndexWriter

DIM = 40


def _clustered(rows: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 centres, as text embeddings cluster by topic."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    points = centres[rng.integers(0, 20, rows)] + 0.6 * rng.normal(size=(rows, DIM))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def _refined(factory: str, vectors: np.ndarray, metric: int = faiss.METRIC_INNER_PRODUCT) -> faiss.Index:
    base = faiss.index_factory(DIM, factory, metric)
    flat = faiss.IndexFlatIP(DIM) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(DIM)
    base.train(vectors)
    base.add(vectors)
    flat.add(vectors)
    return faiss.IndexRefine(base, flat)


def _walk(index: faiss.Index, queries: np.ndarray, k: int, ef: int, refine: int, threads: int = 2) -> tuple:
    walk = hnsw_sq8_walk(index)
    assert walk is not None
    scores, rows = walk.search(queries.tobytes(), k, ef, refine, threads)
    return np.frombuffer(scores, np.float32).reshape(-1, k), np.frombuffer(rows, np.int64).reshape(-1, k)


def test_with_every_row_reranked_the_walk_is_exact_search() -> None:
    vectors, queries = _clustered(300, 1), _clustered(40, 2)
    index = _refined("HNSW8,SQ8", vectors)
    scores, rows = _walk(index, queries, 10, ef=300, refine=30)
    exact = queries.astype(np.float64) @ vectors.astype(np.float64).T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    assert (rows == truth).all()
    assert np.allclose(scores, np.take_along_axis(exact, truth, axis=1), atol=1e-5)


@pytest.mark.parametrize("ef", [20, 32, 64])  # ef >= k x refine: FAISS keeps as many candidates
def test_the_walk_answers_what_faiss_answers(ef: int) -> None:
    vectors, queries = _clustered(5000, 3), _clustered(200, 4)
    index = _refined("HNSW16,SQ8", vectors)
    params = search_parameters(index, None, 10, 1.0, None, ef)
    faiss_scores, faiss_rows = index.search(queries, 10, params=params)
    scores, rows = _walk(index, queries, 10, ef=ef, refine=REFINE_FACTOR)
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, faiss_rows, strict=True)])
    assert same >= 0.99
    agree = (rows == faiss_rows).all(axis=1)
    assert np.allclose(scores[agree], faiss_scores[agree], atol=1e-5)


def test_below_k_times_refine_the_walk_keeps_more_candidates_than_faiss() -> None:
    vectors, queries = _clustered(5000, 3), _clustered(200, 4)
    index = _refined("HNSW16,SQ8", vectors)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    def recall(rows: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)]))

    faiss_rows = index.search(queries, 10, params=search_parameters(index, None, 10, 1.0, None, 10))[1]
    at_10 = _walk(index, queries, 10, ef=10, refine=REFINE_FACTOR)[1]
    at_20 = _walk(index, queries, 10, ef=20, refine=REFINE_FACTOR)[1]
    assert (at_10 == at_20).all() and recall(at_10) > recall(faiss_rows)


def test_threads_and_batches_do_not_change_answers() -> None:
    vectors, queries = _clustered(2000, 5), _clustered(37, 6)
    index = _refined("HNSW16,SQ8", vectors)
    one = _walk(index, queries, 5, ef=20, refine=2, threads=1)
    three = _walk(index, queries, 5, ef=20, refine=2, threads=3)
    singly = [_walk(index, queries[i : i + 1], 5, ef=20, refine=2) for i in range(len(queries))]
    assert (one[1] == three[1]).all() and (one[1] == np.concatenate([r for _, r in singly])).all()
    assert (one[0] == three[0]).all()


def test_a_walk_reused_for_many_searches_answers_as_a_fresh_one() -> None:
    """A walk keeps its visited marks between searches, one byte per row, cleared when the 255
    marks are used up. A query, 254 searches elsewhere (the opposite direction), then the query
    again: a mark left from its first search would hide the very rows it needs."""
    vectors = _clustered(2000, 7)
    query = vectors[:1] + 0.01
    queries = np.concatenate([query, np.repeat(-query, 254, axis=0), query])
    index = _refined("HNSW16,SQ8", vectors)
    walk = hnsw_sq8_walk(index)
    assert walk is not None

    def rows(found: tuple[bytes, bytes]) -> np.ndarray:
        return np.frombuffer(found[1], np.int64).reshape(-1, 5)

    alone = _walk(index, query, 5, ef=20, refine=2)[1][0]
    batch = rows(walk.search(queries.tobytes(), 5, 20, 2, 1))
    singly = np.concatenate([rows(walk.search(q.tobytes(), 5, 20, 2, 1)) for q in queries])
    assert (batch[0] == alone).all() and (batch[255] == alone).all() and (singly == batch).all()


def test_fewer_rows_than_k_are_padded() -> None:
    vectors = _clustered(6, 7)
    scores, rows = _walk(_refined("HNSW4,SQ8", vectors), vectors[:2], 10, ef=16, refine=2)
    assert sorted(rows[0][:6]) == list(range(6)) and (rows[:, 6:] == -1).all()
    assert rows[0][0] == 0 and rows[1][0] == 1 and np.isneginf(scores[:, 6:]).all()


def test_queries_of_another_dimension_are_refused() -> None:
    walk = hnsw_sq8_walk(_refined("HNSW8,SQ8", _clustered(50, 8)))
    assert walk is not None
    with pytest.raises(ValueError, match="dimension"):
        walk.search(np.zeros(DIM + 1, dtype=np.float32).tobytes(), 5, 16, 2, 1)


def test_a_damaged_graph_is_refused_not_walked() -> None:
    index = _refined("HNSW8,SQ8", _clustered(100, 12))
    hnsw = faiss.downcast_index(index.base_index).hnsw
    links = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())
    links[3] = 100  # a row the index does not hold
    with pytest.raises(ValueError, match="not the arrays of one HNSW SQ8 index"):
        hnsw_sq8_walk(index)


@pytest.mark.parametrize(
    ("factory", "metric", "refined"),
    [
        ("HNSW8,SQ8", faiss.METRIC_L2, True),
        ("HNSW8,SQ4", faiss.METRIC_INNER_PRODUCT, True),
        ("HNSW8", faiss.METRIC_INNER_PRODUCT, True),
        ("HNSW8,SQ8", faiss.METRIC_INNER_PRODUCT, False),
        ("IVF4,Flat", faiss.METRIC_INNER_PRODUCT, True),
    ],
)
def test_other_indexes_are_left_to_faiss(factory: str, metric: int, refined: bool) -> None:
    vectors = _clustered(200, 9)
    index = _refined(factory, vectors, metric)
    assert hnsw_sq8_walk(index if refined else faiss.downcast_index(index.base_index)) is None


def test_the_reader_walks_unfiltered_queries_and_hands_filters_to_faiss(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    writer = IndexWriter(store, IndexRegistry(store, 60.0))
    index = IndexPath("tenant", "docs")
    writer.create(index, DIM, "cosine", "HNSW16,SQ8,RFlat")
    vectors = _clustered(800, 10)
    ids = [f"doc-{i}" for i in range(800)]
    writer.upsert(index, ids, vectors, [{"even": i % 2 == 0} for i in range(800)])
    assert [outcome and outcome.result for outcome in writer.compact_now(index)] == ["ok"]
    snapshot = IndexReader(store, index.shard(0), 60.0).snapshot()
    [view] = snapshot.views
    assert view.segment.walk is not None and view.live is None
    queries = _clustered(20, 11)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5]
    walked = snapshot.search(queries, 5, ef_search=800)  # the whole graph: exact top 5
    assert [[m.segment.ids[m.row] for m in walked.matches(q)] for q in range(20)] == [
        [ids[j] for j in row] for row in exact
    ]
    even = snapshot.search(queries, 5, program=compile_filter({"even": True}), ef_search=800)
    exact_even = np.argsort(-(queries @ vectors[::2].T), axis=1, kind="stable")[:, :5] * 2
    assert [[m.segment.ids[m.row] for m in even.matches(q)] for q in range(20)] == [
        [ids[j] for j in row] for row in exact_even
    ]
    # A deleted item leaves a dead row: FAISS searches that segment, with the live rows' bitmap.
    writer.delete(index, [ids[exact[0][0]]])
    after = IndexReader(store, index.shard(0), 60.0).snapshot()
    assert after.views[0].live is not None
    top6 = np.argsort(-(vectors @ queries[0]), kind="stable")[:6]
    found = after.search(queries[:1], 5, ef_search=800).matches(0)
    assert [m.segment.ids[m.row] for m in found] == [ids[j] for j in top6[1:]]
