"""Readers: an `IndexSnapshot` answers queries over one manifest version; an `IndexReader` keeps the
snapshot of one index fresh, re-checking the manifest at most every refresh interval.

Scores: cosine and ip are similarities (higher is better), l2 is the squared Euclidean distance
(lower is better); matches come best first.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexNotFound, IndexUnavailable, detail_of
from aiinfra.vectors.filter import Instruction
from aiinfra.vectors.manifest import CorruptManifest, IndexManifest
from aiinfra.vectors.segment import CorruptSegment, Segment, read_segment
from aiinfra.vectors.store import IndexStore, SegmentMissing

DEFAULT_EF_SEARCH = 64
DEFAULT_NPROBE = 16
MAX_EF_SEARCH = 1024
REFINE_FACTOR = 2  # a refined index re-ranks k * this many candidates with exact distances
# Below this share of selected rows a graph or IVF walk finds too few matches: scan the selected rows.
EXACT_BELOW_SELECTIVITY = 0.02


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    segment: Segment
    row: int

    def metadata_size(self) -> int:
        """The length of the match's stored metadata JSON, read without parsing it."""
        return self.segment.metadata_bytes(self.row)

    def metadata(self) -> dict[str, Any]:
        return self.segment.metadata(self.row)


@dataclass(frozen=True)
class SearchResult:
    """Per query, best first: scores, rows and the owning segment's position; row -1 pads a short list."""

    scores: np.ndarray
    rows: np.ndarray
    owners: np.ndarray
    segments: list[Segment]

    def matches(self, query: int) -> list[Match]:
        found = []
        for score, row, owner in zip(self.scores[query], self.rows[query], self.owners[query], strict=True):
            if row < 0:
                break
            segment = self.segments[owner]
            found.append(Match(str(segment.ids[row]), float(score), segment, int(row)))
        return found

    def ids(self) -> np.ndarray:
        """The external ids as an object array shaped like `rows` (None where a list is short)."""
        out = np.full(self.rows.shape, None, dtype=object)
        for position, segment in enumerate(self.segments):
            mine = (self.owners == position) & (self.rows >= 0)
            out[mine] = segment.ids[self.rows[mine]]
        return out


@dataclass(frozen=True)
class SegmentView:
    segment: Segment
    live: np.ndarray | None  # FAISS bitmap of rows not replaced or deleted later; None when all are live
    live_count: int


def _parameters(kind: Any, sel: faiss.IDSelector | None, **values: Any) -> Any:
    """FAISS search parameters set field by field (the keyword constructor is unknown to faiss's stubs)."""
    params = kind()
    if sel is not None:
        params.sel = sel
    for field, value in values.items():
        setattr(params, field, value)
    params.referenced = [sel, *values.values()]  # SWIG holds raw pointers: keep what they point to alive
    return params


def hnsw_ef(ef: int | None, k: int, share: float) -> int:
    """The efSearch of an HNSW walk for `k` results. A filter leaves `share` of the visited nodes
    eligible: widen the walk (1/sqrt: measured on MiniLM)."""
    return min(MAX_EF_SEARCH, math.ceil(max(ef or DEFAULT_EF_SEARCH, k) / math.sqrt(share)))


def search_parameters(
    index: faiss.Index, sel: faiss.IDSelector | None, k: int, share: float, nprobe: int | None, ef: int | None
) -> Any:
    """Parameters for `index`, unwrapping refinement and pre-transforms; the selector goes innermost."""
    if isinstance(index, faiss.IndexRefine):
        inner = search_parameters(faiss.downcast_index(index.base_index), sel, k, share, nprobe, ef)
        return _parameters(
            faiss.IndexRefineSearchParameters, None, base_index_params=inner, k_factor=REFINE_FACTOR
        )
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(faiss.downcast_index(index.index), sel, k, share, nprobe, ef)
        return _parameters(faiss.SearchParametersPreTransform, None, index_params=inner)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = faiss.SearchParametersHNSW  # type: ignore[attr-defined]  # missing from faiss's stubs
        return _parameters(hnsw, sel, efSearch=hnsw_ef(ef, k, share))
    if isinstance(index, faiss.IndexIVF):
        return _parameters(faiss.SearchParametersIVF, sel, nprobe=min(nprobe or DEFAULT_NPROBE, index.nlist))
    return _parameters(faiss.SearchParameters, sel)


class IndexSnapshot:
    def __init__(self, manifest: IndexManifest, segments: list[Segment]) -> None:
        self.manifest = manifest
        self.views = self._live_views(segments)
        self.count = sum(view.live_count for view in self.views)

    @staticmethod
    def _live_views(segments: list[Segment]) -> list[SegmentView]:
        shadowed: set[str] = set()  # ids written or deleted by a newer segment
        views: list[SegmentView] = []
        for position in range(len(segments) - 1, -1, -1):
            segment = segments[position]
            rows = segment.ref.rows
            dead = [r for item_id in shadowed if (r := segment.row_of(item_id)) is not None] if rows else []
            live = None
            if dead:
                mask = np.ones(rows, dtype=bool)
                mask[dead] = False
                live = np.packbits(mask, bitorder="little")
            if position:
                shadowed.update(segment.ids)
                shadowed.update(segment.tombstones)
            views.append(SegmentView(segment, live, rows - len(dead)))
        views.reverse()
        return views

    @property
    def similarity(self) -> bool:
        return self.manifest.metric != "l2"

    def search(
        self,
        queries: np.ndarray,
        k: int,
        program: list[Instruction] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> SearchResult:
        """The best `k` live matches of every query row (already normalised for cosine)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        segments: list[Segment] = []
        scores: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for view in self.views:
            bitmap, count = self._selection(view, program)
            if count == 0:
                continue
            found = self._search_segment(
                view.segment, queries, min(k, count), bitmap, count, nprobe, ef_search
            )
            segments.append(view.segment)
            scores.append(found[0])
            rows.append(found[1])
        return self._merge(segments, scores, rows, len(queries), k)

    @staticmethod
    def _selection(view: SegmentView, program: list[Instruction] | None) -> tuple[np.ndarray | None, int]:
        if program is None:
            return view.live, view.live_count
        raw, count = view.segment.columns.select(program)
        bitmap = np.frombuffer(raw, dtype=np.uint8)
        if view.live is not None:
            bitmap = bitmap & view.live
            count = int(np.bitwise_count(bitmap).sum())
        return bitmap, count

    @staticmethod
    def _search_segment(
        segment: Segment,
        queries: np.ndarray,
        k: int,
        bitmap: np.ndarray | None,
        count: int,
        nprobe: int | None,
        ef_search: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if bitmap is None and segment.walk is not None:  # no filter, no dead rows: our walk (see segment)
            ef = hnsw_ef(ef_search, k, 1.0)
            found = segment.walk.search(queries.tobytes(), k, ef, REFINE_FACTOR, faiss.omp_get_max_threads())
            scores = np.frombuffer(found[0], np.float32).reshape(-1, k)
            return scores, np.frombuffer(found[1], np.int64).reshape(-1, k)
        sel = faiss.IDSelectorBitmap(segment.ref.rows, faiss.swig_ptr(bitmap)) if bitmap is not None else None
        share = count / segment.ref.rows
        index = segment.index
        if index is not None and (bitmap is None or share >= EXACT_BELOW_SELECTIVITY):
            params = search_parameters(index, sel, k, share, nprobe, ef_search)
            try:
                scores, rows = index.search(queries, k, params=params)
            except RuntimeError:  # an index type that takes no search parameters: scan its rows instead
                pass
            else:
                if bitmap is None or not (rows < 0).any():
                    return scores, rows
        scores, rows = segment.flat.search(queries, k, params=_parameters(faiss.SearchParameters, sel))
        return scores, rows

    def _merge(
        self, segments: list[Segment], scores: list[np.ndarray], rows: list[np.ndarray], nq: int, k: int
    ) -> SearchResult:
        if not segments:
            empty = np.zeros((nq, 0))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64), empty.astype(np.int64), [])
        if len(segments) == 1:  # a compacted index: FAISS already ranked it
            return SearchResult(scores[0], rows[0], np.zeros_like(rows[0]), segments)
        worst = -np.inf if self.similarity else np.inf
        all_scores = np.concatenate(
            [np.where(r < 0, worst, s) for s, r in zip(scores, rows, strict=True)], axis=1
        )
        all_rows = np.concatenate(rows, axis=1)
        owners = np.concatenate([np.full(r.shape, i) for i, r in enumerate(rows)], axis=1)
        order = np.argsort(-all_scores if self.similarity else all_scores, axis=1, kind="stable")[:, :k]
        return SearchResult(
            np.take_along_axis(all_scores, order, axis=1),
            np.take_along_axis(all_rows, order, axis=1),
            np.take_along_axis(owners, order, axis=1),
            segments,
        )


class IndexReader:
    """The current snapshot of one shard of an index (`name`: its store path), refreshed at most
    every `refresh_seconds`."""

    def __init__(
        self,
        store: IndexStore,
        name: str,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._snapshot: IndexSnapshot | None = None
        self._segments: dict[str, Segment] = {}
        self._checked_at = -math.inf
        self._lock = threading.Lock()

    def snapshot(self) -> IndexSnapshot:
        """The snapshot to answer with, after re-reading the manifest if the refresh window passed."""
        if self.clock() - self._checked_at >= self.refresh_seconds:
            self.refresh()
        if self._snapshot is None:
            raise IndexNotFound(self.name)
        return self._snapshot

    def refresh(self) -> None:
        with self._lock:
            if self.clock() - self._checked_at < self.refresh_seconds and self._snapshot is not None:
                return  # another thread refreshed while this one waited
            started = self.clock()
            problem: Exception | None = None
            # A compaction may remove the segments of the manifest just read, or be removing them (a
            # folder half deleted reads as a corrupt segment): read the manifest again.
            for _ in range(3):
                try:
                    found = self.store.read_manifest(self.name)
                except IndexUnavailable as exc:  # the store is down: keep answering from the last version
                    self._checked_at = started
                    self._refuse(exc)
                    return
                if found is None:
                    self._drop()
                    problem = None
                    break
                try:
                    self._install(IndexManifest.from_json(found[0]))
                    problem = None
                    break
                except (SegmentMissing, CorruptSegment) as exc:
                    problem = exc
                except CorruptManifest as exc:
                    problem = exc
                    break
            if problem is not None:
                self._refuse(problem)
            self._checked_at = started

    def offer(self, manifest: IndexManifest) -> None:
        """A manifest this instance just wrote: served at once if this shard is loaded here; if it is
        not, its first use reads the store, which holds it already."""
        if self._snapshot is not None:
            self.install(manifest)

    def snapshot_of(self, manifest: IndexManifest) -> IndexSnapshot:
        """A snapshot of exactly `manifest`, its segments loaded (or shared with the snapshot served),
        without serving it: what a compaction folds. CorruptSegment or SegmentMissing when one fails."""
        with self._lock:
            return IndexSnapshot(manifest, [self._segment(manifest, ref.id) for ref in manifest.segments])

    def install(self, manifest: IndexManifest) -> None:
        """Serve `manifest` at once (a write through this instance); never goes back to an older one."""
        with self._lock:
            try:
                self._install(manifest)
            except (SegmentMissing, CorruptSegment) as exc:
                self._refuse(exc)

    def _refuse(self, problem: Exception) -> None:
        detail = detail_of(problem)
        logger().error("index version refused", extra={"index": self.name, "problem": detail})
        if self._snapshot is None:
            raise IndexUnavailable(
                "the index cannot be loaded now, retry shortly", detail=f"{self.name}: {detail}"
            )

    def _install(self, manifest: IndexManifest) -> None:
        current = self._snapshot
        if current is not None and not manifest.newer_than(current.manifest):
            return
        if current is not None and manifest.incarnation != current.manifest.incarnation:
            self._segments = {}
        segments = [self._segment(manifest, ref.id) for ref in manifest.segments]
        self._segments = {segment.ref.id: segment for segment in segments}
        self._snapshot = IndexSnapshot(manifest, segments)
        self.store.release_segments(self.name, set(self._segments))

    def _segment(self, manifest: IndexManifest, segment_id: str) -> Segment:
        segment = self._segments.get(segment_id)
        if segment is None:
            ref = next(ref for ref in manifest.segments if ref.id == segment_id)
            segment = read_segment(self.store.segment_dir(self.name, segment_id), ref, manifest.dimension)
        return segment

    def expire(self) -> None:
        self._checked_at = -math.inf

    def forget(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        self._snapshot, self._segments = None, {}
        self.store.release_segments(self.name, set())


class IndexRegistry:
    """One reader per shard path, created on first use: an instance loads only the shards its
    requests touch, when they first touch them."""

    def __init__(self, store: IndexStore, refresh_seconds: float) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._readers: dict[str, IndexReader] = {}
        self._lock = threading.Lock()

    def reader(self, name: str) -> IndexReader:
        reader = self._readers.get(name)
        if reader is None:
            with self._lock:
                reader = self._readers.setdefault(name, IndexReader(self.store, name, self.refresh_seconds))
        return reader

    def snapshot(self, name: str) -> IndexSnapshot:
        return self.reader(name).snapshot()

    def expire(self) -> None:
        """Every reader re-checks its manifest at its next use (after a SnapStart restore: the
        snapshot may be hours old). Nothing is read now, so the restore hook stays instant."""
        for reader in list(self._readers.values()):
            reader.expire()
