"""The compaction build as it was before `aiinfra.vectors.build.write_base`: every live row gathered into
memory (ids, one NumPy array of the vectors, a dict per row), the factory index built over them, then
`write_segment`. Kept as the oracle that `write_base`'s segments are checked against (same ids, scores,
files) and as the benchmark's "today" contender; no function runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
from aiinfra.vectors.factory import HNSW_EF_CONSTRUCTION, factory_index
from aiinfra.vectors.manifest import IndexManifest, SegmentRef
from aiinfra.vectors.reader import IndexSnapshot
from aiinfra.vectors.segment import stored_factory, write_segment


def live_items(snapshot: IndexSnapshot) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    ids: list[str] = []
    parts: list[np.ndarray] = []
    metadata: list[dict[str, Any]] = []
    for view in snapshot.views:
        segment = view.segment
        if view.live is None:
            rows = np.arange(segment.ref.rows)
        else:
            rows = np.flatnonzero(np.unpackbits(view.live, bitorder="little")[: segment.ref.rows])
        ids += segment.ids[rows].tolist()
        parts.append(segment.vectors(rows))
        metadata += [segment.metadata(int(r)) for r in rows]
    dimension = snapshot.manifest.dimension
    return ids, np.vstack(parts) if parts else np.zeros((0, dimension), dtype=np.float32), metadata


def build_index(manifest: IndexManifest, vectors: np.ndarray) -> faiss.Index | None:
    """The factory index over `vectors`, or None when too few rows train it (exact search then)."""
    if manifest.factory == "Flat" or len(vectors) == 0:
        return None
    index = factory_index(manifest.dimension, manifest.metric, stored_factory(manifest.factory))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = max(index.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError:
            return None
    index.add(vectors)
    return index


def write_reference_base(snapshot: IndexSnapshot, directory: Path, segment_id: str) -> SegmentRef:
    """The base segment of `snapshot`, built the old way into `directory`."""
    manifest = snapshot.manifest
    ids, vectors, metadata = live_items(snapshot)
    index = build_index(manifest, vectors)
    return write_segment(
        directory,
        segment_id,
        dimension=manifest.dimension,
        metric=manifest.metric,
        ids=ids,
        vectors=vectors,
        metadata=metadata,
        kind="base",
        index=index,
        refine=index is not None and stored_factory(manifest.factory) != manifest.factory,
    )
