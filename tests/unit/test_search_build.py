"""`write_base` (compaction in bounded memory) writes the base segment today's compaction writes:
the same files for rows, ids, metadata and filter columns, and an index that answers the same.

The reference is the build before it (tests/support/reference_build.py: all rows in memory, then
`write_segment(kind="base")`).
Truth is computed here from what the test wrote (replaced and deleted ids applied by hand)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from aiinfra.vectors import build
from aiinfra.vectors.build import write_base
from aiinfra.vectors.errors import InvalidIndexInput
from aiinfra.vectors.filter import compile_filter
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.manifest import Metric, SegmentRef
from aiinfra.vectors.reader import IndexRegistry, IndexSnapshot
from aiinfra.vectors.segment import (
    MMAP_FLAGS,
    read_segment,
    write_flat_vectors,
)
from aiinfra.vectors.store import FileStore, IndexPath
from aiinfra.vectors.writer import IndexWriter

from tests.support.reference_build import write_reference_base

DIM = 24
K = 10
LANGS = ["en", "fr", "de", "ünï"]


def _clustered(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIM))
    points = centres[rng.integers(0, 12, rows)] + 0.7 * rng.normal(size=(rows, DIM))
    return points.astype(np.float32)


def _metadata(i: int, version: int) -> dict[str, Any]:
    row: dict[str, Any] = {"lang": LANGS[i % 4], "year": 2000 + i % 17, "v": version}
    if i % 3 == 0:
        row["score"] = i / 7
    if i % 5 == 0:
        row["mixed"] = i if i % 2 else "text"  # a key both numeric and token
    if i % 11 == 0:
        row["flag"] = [True, False, None][i % 3]
    return {} if i % 13 == 0 else row


class Index:
    """An index built through the writer: a compacted base, deltas, replaced ids and tombstones.
    `live` is what it must hold: id -> (normalised vector, metadata)."""

    def __init__(self, root: Path, factory: str, metric: Metric, rows: int) -> None:
        self.store = FileStore(root / "store")
        # No compaction starts by itself: the test folds exactly when it says.
        limits = IndexLimits(compact_after_deltas=1000, compact_after_rows=10**9)
        self.writer = IndexWriter(self.store, IndexRegistry(self.store, 60.0), limits)
        self.index = IndexPath("tenant", "docs")
        self.writer.create(self.index, DIM, metric, factory)
        self.metric = metric
        self.live: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        half = rows // 2
        self.upsert(range(half), seed=1, version=0)
        self.writer.compact_now(self.index)
        self.upsert(range(half, rows), seed=2, version=1)
        self.upsert(range(rows // 10, rows // 5), seed=3, version=2)  # replaces rows of the base
        self.delete([*range(rows // 20), *range(half + 10, half + 40)])  # base and delta rows
        self.upsert(range(rows - rows // 10, rows + rows // 10), seed=4, version=3)  # replaces and adds

    def upsert(self, numbers: range, seed: int, version: int) -> None:
        ids = [f"doc-{i}" for i in numbers]
        vectors = _clustered(len(ids), seed)
        metadata = [_metadata(i, version) for i in numbers]
        self.writer.upsert(self.index, ids, vectors, metadata)
        for item_id, vector, row in zip(ids, vectors, metadata, strict=True):
            if self.metric == "cosine":
                vector = vector / np.linalg.norm(vector)
            self.live[item_id] = (vector.astype(np.float32), row)

    def delete(self, numbers: list[int]) -> None:
        ids = [f"doc-{i}" for i in numbers]
        self.writer.delete(self.index, ids)
        for item_id in ids:
            self.live.pop(item_id, None)

    def snapshot(self) -> IndexSnapshot:
        return self.writer.registry.snapshot(self.index.shard(0))

    def truth(self, queries: np.ndarray, where: Any = None) -> list[list[str]]:
        """The exact top K ids per query among the live items matching `where` (a predicate)."""
        ids = [i for i, (_, row) in self.live.items() if where is None or where(row)]
        vectors = np.stack([self.live[i][0] for i in ids]).astype(np.float64)
        if self.metric == "l2":
            scores = -((queries[:, None, :].astype(np.float64) - vectors[None]) ** 2).sum(axis=2)
        else:
            scores = queries.astype(np.float64) @ vectors.T
        return [[ids[j] for j in row] for row in np.argsort(-scores, axis=1, kind="stable")[:, :K]]


def _reference(snapshot: IndexSnapshot, directory: Path) -> SegmentRef:
    return write_reference_base(snapshot, directory, "reference")


def _both(index: Index, tmp_path: Path) -> tuple[tuple[SegmentRef, Path], tuple[SegmentRef, Path]]:
    snapshot = index.snapshot()
    ours, theirs = tmp_path / "ours", tmp_path / "reference"
    ours.mkdir()
    theirs.mkdir()
    return (write_base(snapshot, ours, "ours"), ours), (_reference(snapshot, theirs), theirs)


def _loaded(index: Index, ref: SegmentRef, directory: Path) -> IndexSnapshot:
    manifest = index.snapshot().manifest.with_segments((ref,))
    return IndexSnapshot(manifest, [read_segment(directory, ref, DIM)])


def _answers(
    snapshot: IndexSnapshot, queries: np.ndarray, program: Any = None, **search: Any
) -> tuple[list[list[str]], np.ndarray]:
    found = snapshot.search(queries, K, program, **search)
    ids = [[m.id for m in found.matches(q)] for q in range(len(queries))]
    return ids, found.scores


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def _queries(index: Index) -> np.ndarray:
    queries = _clustered(40, 99)
    if index.metric == "cosine":
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries


FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({"lang": "ünï"}, lambda r: r.get("lang") == "ünï"),
    ({"year": {"$gte": 2010}, "v": {"$ne": 0}}, lambda r: r.get("year", 0) >= 2010 and r.get("v") != 0),
    ({"mixed": {"$in": ["text", 15]}}, lambda r: r.get("mixed") in ("text", 15)),
    ({"flag": None}, lambda r: "flag" in r and r["flag"] is None),
]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many chunks per source segment, some of consecutive rows, some gathered around dead rows."""
    monkeypatch.setattr(build, "CHUNK_ROWS", 97)


def _same_files(ours: Path, theirs: Path) -> None:
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for path in ours.iterdir():
        if path.name != "index.faiss":  # HNSW graphs depend on insertion order and threads
            assert path.read_bytes() == (theirs / path.name).read_bytes(), path.name


@pytest.mark.parametrize(("factory", "metric"), [("Flat", "cosine"), ("Flat", "l2"), ("IVF16,Flat", "ip")])
def test_exact_and_ivf_bases_answer_as_todays(tmp_path: Path, factory: str, metric: Metric) -> None:
    index = Index(tmp_path, factory, metric, rows=1200)
    (ours, our_dir), (theirs, their_dir) = _both(index, tmp_path)
    assert ours.rows == theirs.rows == len(index.live) and ours.kind == "base" and ours.tombstones == 0
    assert set(ours.files) == set(theirs.files) and ("index.faiss" in ours.files) == (factory != "Flat")
    _same_files(our_dir, their_dir)
    mine, reference = _loaded(index, ours, our_dir), _loaded(index, theirs, their_dir)
    queries = _queries(index)
    for condition, where in [(None, None), *FILTERS]:
        program = None if condition is None else compile_filter(condition)
        found, scores = _answers(mine, queries, program, nprobe=2)
        expected, expected_scores = _answers(reference, queries, program, nprobe=2)
        assert found == expected
        assert np.allclose(scores, expected_scores, atol=1e-5)
        if factory == "Flat":
            assert found == index.truth(queries, where)


@pytest.mark.parametrize("factory", ["HNSW32", "HNSW32,SQ8,RFlat"])
def test_hnsw_bases_reach_todays_recall(tmp_path: Path, factory: str) -> None:
    index = Index(tmp_path, factory, "cosine", rows=1500)
    (ours, our_dir), (theirs, their_dir) = _both(index, tmp_path)
    _same_files(our_dir, their_dir)
    mine, reference = _loaded(index, ours, our_dir), _loaded(index, theirs, their_dir)
    assert faiss.read_index(str(our_dir / "index.faiss")).ntotal == len(index.live)
    assert isinstance(mine.views[0].segment.index, faiss.IndexRefine) == factory.endswith(",RFlat")
    queries = _queries(index)
    for condition, where in [(None, None), *FILTERS]:
        program = None if condition is None else compile_filter(condition)
        truth = index.truth(queries, where)
        found, expected = (
            _answers(mine, queries, program, ef_search=32)[0],
            _answers(reference, queries, program, ef_search=32)[0],
        )
        assert _recall(found, truth) >= 0.9 and abs(_recall(found, truth) - _recall(expected, truth)) <= 0.03


def test_training_on_a_sample_when_rows_exceed_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "TRAIN_SAMPLE_ROWS", 150)
    index = Index(tmp_path, "HNSW16,SQ8,RFlat", "cosine", rows=1200)
    directory = tmp_path / "ours"
    directory.mkdir()
    ref = write_base(index.snapshot(), directory, "ours")
    queries = _queries(index)
    found = _answers(_loaded(index, ref, directory), queries, ef_search=64)[0]
    assert _recall(found, index.truth(queries)) >= 0.9


def test_an_index_too_small_to_train_is_searched_exactly(tmp_path: Path) -> None:
    index = Index(tmp_path, "IVF16,Flat", "cosine", rows=12)  # 12 live rows, 16 lists
    (ours, our_dir), (theirs, their_dir) = _both(index, tmp_path)
    assert "index.faiss" not in ours.files and "index.faiss" not in theirs.files
    _same_files(our_dir, their_dir)
    queries = _queries(index)
    assert _answers(_loaded(index, ours, our_dir), queries)[0] == index.truth(queries)


def test_an_index_with_every_item_deleted_folds_to_an_empty_base(tmp_path: Path) -> None:
    index = Index(tmp_path, "HNSW32,SQ8,RFlat", "cosine", rows=300)
    index.delete(list(range(400)))
    (ours, our_dir), (theirs, their_dir) = _both(index, tmp_path)
    assert ours.rows == theirs.rows == 0 and "index.faiss" not in ours.files
    _same_files(our_dir, their_dir)
    assert _answers(_loaded(index, ours, our_dir), _queries(index))[0] == [[]] * 40


@pytest.mark.parametrize("factory", ["HNSW32,IDMap", "IVF9999999,Flat", "NotAFactory"])
def test_a_refused_factory_raises_invalid_index_input(tmp_path: Path, factory: str) -> None:
    index = Index(tmp_path, "Flat", "cosine", rows=50)
    snapshot = index.snapshot()
    bad = IndexSnapshot(
        dataclasses.replace(snapshot.manifest, factory=factory), [v.segment for v in snapshot.views]
    )
    with pytest.raises(InvalidIndexInput) as raised:
        _reference(bad, tmp_path)
    with pytest.raises(InvalidIndexInput, match=str(raised.value)[:20]) as ours:
        write_base(bad, tmp_path, "ours")
    assert ours.value.param == "factory"


def test_nothing_is_written_outside_the_directory(tmp_path: Path) -> None:
    index = Index(tmp_path, "HNSW32,SQ8,RFlat", "cosine", rows=400)
    snapshot = index.snapshot()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    directory = tmp_path / "ours"
    directory.mkdir()
    ref = write_base(snapshot, directory, "ours")
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if directory not in (p, *p.parents)}
    assert after == before
    assert ref.files == {p.name: p.stat().st_size for p in directory.iterdir()}


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("rows", [0, 1, 250])
def test_vectors_file_is_the_bytes_faiss_writes(tmp_path: Path, metric: Metric, rows: int) -> None:
    vectors = _clustered(rows, 5)
    flat = faiss.IndexFlatL2(DIM) if metric == "l2" else faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    faiss.write_index(flat, str(tmp_path / "faiss.faiss"))
    chunks = [vectors[start : start + 64] for start in range(0, rows, 64)]
    write_flat_vectors(tmp_path / "ours.faiss", DIM, metric, rows, chunks)
    assert (tmp_path / "ours.faiss").read_bytes() == (tmp_path / "faiss.faiss").read_bytes()
    loaded = faiss.read_index(str(tmp_path / "ours.faiss"), MMAP_FLAGS)
    assert loaded.ntotal == rows and (loaded.reconstruct_n(0, rows) == vectors).all()


def test_vectors_file_refuses_a_row_count_it_was_not_told(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 vectors written, 4 announced"):
        write_flat_vectors(tmp_path / "v.faiss", DIM, "ip", 4, [_clustered(3, 1)])
    with pytest.raises(ValueError, match="expected rows of"):
        write_flat_vectors(tmp_path / "v.faiss", DIM, "ip", 3, [_clustered(3, 1)[:, :5]])
