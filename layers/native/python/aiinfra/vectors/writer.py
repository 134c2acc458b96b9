"""Writes: each adds an immutable segment, then swaps the manifest conditionally.

A writer that loses the swap re-reads the manifest and applies its change to the new version,
so racing writers never lose each other's acknowledged updates.
"""

from __future__ import annotations

import functools
import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexConflict, IndexNotFound, IndexUnavailable, InvalidIndexInput
from aiinfra.vectors.manifest import IndexManifest, Metric, SegmentRef
from aiinfra.vectors.reader import IndexRegistry, IndexSnapshot
from aiinfra.vectors.segment import faiss_metric, stored_factory, write_segment
from aiinfra.vectors.store import IndexStore, ManifestConflict, new_segment_id

MAX_SWAP_ATTEMPTS = 100
# FAISS allocates per list or per level up front: a huge number in a factory string exhausts memory.
MAX_FACTORY_NUMBER = 1 << 20
HNSW_EF_CONSTRUCTION = 200
# A segment no manifest names is swept once older than this: far longer than any write takes (a
# Lambda invocation lasts 15 minutes at most), so a write still between upload and swap keeps its own.
ORPHAN_GRACE_SECONDS = 3600.0


def normalise(vectors: np.ndarray, metric: Metric) -> np.ndarray:
    """float32 rows, L2-normalised for cosine (so inner product is the cosine similarity)."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = (rows / np.where(norms > 0, norms, 1)).astype(np.float32)
    return rows


def factory_index(dimension: int, metric: Metric, factory: str) -> faiss.Index:
    """The empty index a factory string describes; InvalidIndexInput when FAISS refuses it."""
    if any(int(number) > MAX_FACTORY_NUMBER for number in re.findall(r"\d+", factory)):
        raise InvalidIndexInput(f"factory: numbers above {MAX_FACTORY_NUMBER} are refused", param="factory")
    if "IDMap" in factory:
        raise InvalidIndexInput(
            "factory: IDMap is not allowed (the index maps its own string ids)", param="factory"
        )
    try:
        return faiss.index_factory(dimension, factory, faiss_metric(metric))
    except RuntimeError as exc:
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", str(exc).strip().splitlines()[0])
        message = f"factory: {factory!r} is not a valid FAISS factory string ({reason})"
        raise InvalidIndexInput(message, param="factory") from None


class IndexWriter:
    def __init__(
        self, store: IndexStore, registry: IndexRegistry, orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS
    ) -> None:
        self.store = store
        self.registry = registry
        self.orphan_grace_seconds = orphan_grace_seconds

    def manifest(self, name: str) -> tuple[IndexManifest, str]:
        found = self.store.read_manifest(name)
        if found is None:
            raise IndexNotFound(f"index {name!r} does not exist")
        return IndexManifest.from_json(found[0]), found[1]

    def create(self, name: str, dimension: int, metric: Metric, factory: str) -> tuple[IndexManifest, bool]:
        """The index (new, or the existing one if defined the same) and whether it was created now."""
        factory_index(dimension, metric, factory)
        manifest = IndexManifest(name, dimension, metric, factory, version=1, incarnation=uuid.uuid4().hex)
        try:
            self.store.write_manifest(name, manifest.to_json(), None)
        except ManifestConflict:
            existing, _ = self.manifest(name)
            if not existing.same_definition(manifest):
                raise IndexConflict(
                    f"index {name!r} exists with dimension {existing.dimension}, metric {existing.metric}, "
                    f"factory {existing.factory!r}"
                ) from None
            return existing, False
        self.registry.reader(name).install(manifest)
        return manifest, True

    def drop(self, name: str) -> None:
        manifest, _ = self.manifest(name)
        self.store.delete_manifest(name)
        self.store.delete_segments(name, [ref.id for ref in manifest.segments])
        self.registry.reader(name).forget()

    def upsert(
        self, name: str, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]]
    ) -> IndexManifest:
        """Add or replace items (a repeated id in one call: the last one wins)."""
        manifest, _ = self.manifest(name)
        if vectors.shape[1] != manifest.dimension:
            raise InvalidIndexInput(
                f"vectors have dimension {vectors.shape[1]}, index {name!r} has {manifest.dimension}"
            )
        last = {item_id: i for i, item_id in enumerate(ids)}
        keep = np.fromiter(sorted(last.values()), dtype=np.int64)
        rows = normalise(vectors[keep], manifest.metric)
        kept_ids = [ids[i] for i in keep]
        kept_metadata = [metadata[i] for i in keep]
        return self._add_delta(manifest, kept_ids, rows, kept_metadata)

    def delete(self, name: str, ids: list[str]) -> IndexManifest:
        manifest, _ = self.manifest(name)
        empty = np.zeros((0, manifest.dimension), dtype=np.float32)
        return self._add_delta(manifest, [], empty, [], tombstones=sorted(set(ids)))

    def _add_delta(
        self,
        manifest: IndexManifest,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        tombstones: list[str] | None = None,
    ) -> IndexManifest:
        build = _segment_writer(manifest, ids, vectors, metadata, kind="delta", tombstones=tombstones or [])
        return self._add_segment(manifest.name, build)

    def compact(self, name: str) -> IndexManifest:
        """Fold every segment into one new base built from the factory string."""
        snapshot = self.registry.reader(name).snapshot()
        base = snapshot.manifest.segments
        ids, vectors, metadata = _live_items(snapshot)
        manifest = snapshot.manifest
        index = _build_index(manifest, vectors)

        refine = index is not None and stored_factory(manifest.factory) != manifest.factory
        build = _segment_writer(manifest, ids, vectors, metadata, kind="base", index=index, refine=refine)

        def replace_folded(current: IndexManifest, ref: SegmentRef) -> IndexManifest:
            if current.incarnation != manifest.incarnation or current.segments[: len(base)] != base:
                raise IndexConflict(f"index {name!r} was compacted or re-created meanwhile; nothing changed")
            return current.with_segments((ref, *current.segments[len(base) :]))

        updated = self._add_segment(name, build, replace_folded)
        self.store.delete_segments(name, [ref.id for ref in base])
        self.sweep(name, updated)
        return updated

    def sweep(self, name: str, manifest: IndexManifest) -> list[str]:
        """Deletes the index's segments that `manifest` does not name and that are older than the
        grace: those of writers that died between upload and swap, or that a failed delete left."""
        named = {ref.id for ref in manifest.segments}
        ages = self.store.segment_ages(name)
        orphans = sorted(s for s, age in ages.items() if s not in named and age >= self.orphan_grace_seconds)
        if orphans:
            self.store.delete_segments(name, orphans)
            logger().info("orphan segments deleted", extra={"index": name, "segments": orphans})
        return orphans

    def _add_segment(
        self,
        name: str,
        build: Callable[[Path, str], SegmentRef],
        change: Callable[[IndexManifest, SegmentRef], IndexManifest] | None = None,
    ) -> IndexManifest:
        segment_id = new_segment_id()
        with self.store.scratch() as directory:
            ref = build(directory, segment_id)
            self.store.put_segment(name, segment_id, directory)
        try:
            updated = self._swap(name, ref, change or (lambda m, r: m.with_segments((*m.segments, r))))
        except BaseException:
            self.store.delete_segments(name, [segment_id])  # never referenced: no reader can hold it
            raise
        self.registry.reader(name).install(updated)
        return updated

    def _swap(
        self, name: str, ref: SegmentRef, change: Callable[[IndexManifest, SegmentRef], IndexManifest]
    ) -> IndexManifest:
        for attempt in range(MAX_SWAP_ATTEMPTS):
            current, tag = self.manifest(name)
            updated = change(current, ref)
            try:
                self.store.write_manifest(name, updated.to_json(), tag)
                return updated
            except ManifestConflict:
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))  # jitter spreads racing writers
        raise IndexUnavailable(
            f"index {name!r} is too busy, retry shortly",
            detail=f"{MAX_SWAP_ATTEMPTS} conflicting manifest writes in a row",
        )


def _live_items(snapshot: IndexSnapshot) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
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


def _build_index(manifest: IndexManifest, vectors: np.ndarray) -> faiss.Index | None:
    """The factory index over `vectors`, or None when too few rows train it (exact search then)."""
    if manifest.factory == "Flat" or len(vectors) == 0:
        return None  # vectors.faiss already is the flat index
    index = factory_index(manifest.dimension, manifest.metric, stored_factory(manifest.factory))
    if isinstance(index, faiss.IndexHNSW):
        # FAISS builds with efConstruction 40 (hnswlib: 200). A better graph reaches the same recall
        # with a smaller efSearch, so queries are faster (docs/search.md).
        index.hnsw.efConstruction = max(index.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as exc:
            logger().warning("index left untrained", extra={"index": manifest.name, "problem": str(exc)})
            return None
    index.add(vectors)
    return index


def _segment_writer(
    manifest: IndexManifest,
    ids: list[str],
    vectors: np.ndarray,
    metadata: list[dict[str, Any]],
    **segment: Any,
) -> Callable[[Path, str], SegmentRef]:
    """`write_segment` for this index's items, waiting only for its scratch directory and segment id."""
    return functools.partial(
        write_segment,
        dimension=manifest.dimension,
        metric=manifest.metric,
        ids=ids,
        vectors=vectors,
        metadata=metadata,
        **segment,
    )
