"""`write_base` over segments an s3:// store downloaded (moto_server over HTTP): the base it writes,
uploaded and named by a new manifest, is what a cold instance loads and searches."""

from __future__ import annotations

import numpy as np
from aiinfra.vectors.build import write_base
from aiinfra.vectors.filter import compile_filter
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import IndexPath, S3Store, new_segment_id
from aiinfra.vectors.writer import IndexWriter

from tests.support.search import s3_client

DIM = 8


def test_a_base_written_from_s3_segments_serves_a_cold_instance(
    s3_store: S3Store, moto_endpoint: str
) -> None:
    writer = IndexWriter(s3_store, IndexRegistry(s3_store, 60.0))
    index = IndexPath("tenant", "docs")
    shard = index.shard(0)
    writer.create(index, DIM, "cosine", "HNSW16,SQ8,RFlat")
    rng = np.random.default_rng(3)
    live: dict[str, tuple[np.ndarray, int]] = {}

    def upsert(numbers: range, tag: int) -> None:
        vectors = rng.normal(size=(len(numbers), DIM)).astype(np.float32)
        writer.upsert(index, [f"d{i}" for i in numbers], vectors, [{"i": i, "tag": tag} for i in numbers])
        for i, vector in zip(numbers, vectors, strict=True):
            live[f"d{i}"] = (vector / np.linalg.norm(vector), i)

    upsert(range(300), 0)
    upsert(range(50), 1)  # replaces
    writer.delete(index, [f"d{i}" for i in range(250, 300)])
    for i in range(250, 300):
        live.pop(f"d{i}")
    manifest, tag = writer.manifest(shard)
    snapshot = writer.registry.snapshot(shard)
    with s3_store.scratch() as directory:
        ref = write_base(snapshot, directory, new_segment_id())
        s3_store.put_segment(shard, ref.id, directory)
    s3_store.write_manifest(shard, manifest.with_segments((ref,)).to_json(), tag)

    cold_cache = s3_store.cache_dir.parent / "cold"
    cold = S3Store(s3_store.bucket, s3_store.prefix, client=s3_client(moto_endpoint), cache_dir=cold_cache)
    served = IndexRegistry(cold, 60.0).snapshot(shard)
    assert served.count == len(live) == 250 and [v.segment.ref for v in served.views] == [ref]
    ids = list(live)
    vectors = np.stack([live[i][0] for i in ids])
    queries = rng.normal(size=(10, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for condition, keep in [(None, lambda i: True), ({"i": {"$lt": 100}}, lambda i: i < 100)]:
        program = None if condition is None else compile_filter(condition)
        found = served.search(queries, 5, program, ef_search=300)  # the whole graph: exact top 5
        eligible = np.array([keep(live[i][1]) for i in ids])
        scores = np.where(eligible, queries @ vectors.T, -np.inf)
        truth = [[ids[j] for j in row] for row in np.argsort(-scores, axis=1, kind="stable")[:, :5]]
        assert [[m.id for m in found.matches(q)] for q in range(10)] == truth
    metadata = {
        m.id: m.segment.metadata(m.row) for q in range(10) for m in served.search(queries, 5).matches(q)
    }
    assert all(row == {"i": live[i][1], "tag": int(live[i][1] < 50)} for i, row in metadata.items())
