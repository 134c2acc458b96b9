"""Writes: each adds an immutable segment to the shards it touches, then swaps each shard's manifest
conditionally. A writer that loses a swap re-reads the manifest and applies its change to the new
version, so racing writers never lose each other's acknowledged updates.

Compaction never runs in a write: `request_compaction` queues a job per shard under a lease in the
shard's manifest and hands it to `dispatch` (a background worker, or an asynchronous Lambda
invocation of the indexer); `run_compaction` is the job itself, wherever it runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aiinfra.observability import logger
from aiinfra.vectors.build import write_base
from aiinfra.vectors.errors import (
    IndexBusy,
    IndexConflict,
    IndexNotFound,
    IndexQuotaExceeded,
    IndexUnavailable,
    InvalidIndexInput,
    detail_of,
)
from aiinfra.vectors.factory import factory_index
from aiinfra.vectors.jobs import BackgroundCompactions, CompactionJob, JobObsolete
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.manifest import (
    Compaction,
    CompactionOutcome,
    IndexManifest,
    Metric,
    SegmentRef,
    shard_of,
)
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.segment import write_segment
from aiinfra.vectors.store import IndexPath, IndexStore, ManifestConflict, new_segment_id

MAX_SWAP_ATTEMPTS = 100
# A segment no manifest names is swept once older than this: far longer than any write takes (a
# Lambda invocation lasts 15 minutes at most), so a write still between upload and swap keeps its own.
ORPHAN_GRACE_SECONDS = 3600.0
# Shards written at once by one request: S3 round trips overlap, the GIL is free while they wait.
PARALLEL_SHARDS = 16


def normalise(vectors: np.ndarray, metric: Metric) -> np.ndarray:
    """float32 rows, L2-normalised for cosine (so inner product is the cosine similarity)."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = (rows / np.where(norms > 0, norms, 1)).astype(np.float32)
    return rows


def _in_parallel(work: Callable[[int], IndexManifest], shards: Iterable[int]) -> list[IndexManifest]:
    """`work(shard)` for each shard, overlapping their store round trips; the first failure raises."""
    shards = list(shards)
    if len(shards) == 1:
        return [work(shards[0])]
    with concurrent.futures.ThreadPoolExecutor(min(PARALLEL_SHARDS, len(shards))) as pool:
        return list(pool.map(work, shards))


class IndexWriter:
    def __init__(
        self,
        store: IndexStore,
        registry: IndexRegistry,
        limits: IndexLimits | None = None,
        dispatch: Callable[[CompactionJob], None] | None = None,
        orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.limits = limits or IndexLimits()
        self.dispatch = dispatch or BackgroundCompactions(self.run_compaction)
        self.orphan_grace_seconds = orphan_grace_seconds
        self.clock = clock

    def manifest(self, path: str) -> tuple[IndexManifest, str]:
        """The shard's manifest as stored now, and its tag; IndexNotFound when it has none."""
        found = self.store.read_manifest(path)
        if found is None:
            raise IndexNotFound(path)
        return IndexManifest.from_json(found[0]), found[1]

    def create(
        self, index: IndexPath, dimension: int, metric: Metric, factory: str, shards: int = 1
    ) -> tuple[IndexManifest, bool]:
        """Shard 0's manifest of the index (new, or the existing one if defined the same) and whether
        it was created now. Creating again also writes any shard manifest a crash left unwritten."""
        factory_index(dimension, metric, factory)  # InvalidIndexInput unless an allowed, buildable factory
        incarnation = uuid.uuid4().hex
        first = IndexManifest(index.name, dimension, metric, factory, 1, incarnation, shards=shards)
        found = self.store.read_manifest(index.shard(0))
        if found is None and len(self.store.list_indexes(index.tenant_folder)) >= self.limits.max_indexes:
            raise IndexQuotaExceeded(
                f"the tenant has {self.limits.max_indexes} indexes, the most it may: drop one first",
                quota="max_indexes",
            )
        created = True
        try:
            self.store.write_manifest(index.shard(0), first.to_json(), None)
        except ManifestConflict:
            first, created = self.manifest(index.shard(0))[0], False
            wanted = replace(first, dimension=dimension, metric=metric, factory=factory, shards=shards)
            if not first.same_definition(wanted):
                raise IndexConflict(
                    f"index {index.name!r} exists with dimension {first.dimension}, metric {first.metric}, "
                    f"factory {first.factory!r}, {first.shards} shards"
                ) from None
        empty = IndexManifest(index.name, first.dimension, first.metric, first.factory, 1, first.incarnation)
        for shard in range(1, first.shards):
            with contextlib.suppress(ManifestConflict):  # written by the create that made the index
                manifest = replace(empty, shards=first.shards, shard=shard)
                self.store.write_manifest(index.shard(shard), manifest.to_json(), None)
        self.registry.reader(index.shard(0)).offer(first)
        return first, created

    def drop(self, index: IndexPath) -> None:
        first, _ = self.manifest(index.shard(0))
        manifests = {0: first}
        for shard in range(1, first.shards):
            found = self.store.read_manifest(index.shard(shard))
            if found is not None:
                manifests[shard] = IndexManifest.from_json(found[0])
        for shard in range(first.shards):  # shard 0 first: the index is gone from then on
            path = index.shard(shard)
            self.store.delete_manifest(path)
            if shard in manifests:
                self.store.delete_segments(path, [ref.id for ref in manifests[shard].segments])
            self.registry.reader(path).forget()

    def upsert(
        self,
        index: IndexPath,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        first: IndexManifest | None = None,
    ) -> list[IndexManifest]:
        """Adds or replaces items (a repeated id in one call: the last one wins); answers the
        manifests of the shards written. `first`: shard 0's manifest, when the caller just read it."""
        first = first or self.manifest(index.shard(0))[0]
        if vectors.shape[1] != first.dimension:
            raise InvalidIndexInput(
                f"vectors have dimension {vectors.shape[1]}, index {index.name!r} has {first.dimension}"
            )
        last = {item_id: i for i, item_id in enumerate(ids)}
        keep = np.fromiter(sorted(last.values()), dtype=np.int64)
        rows = normalise(vectors[keep], first.metric)
        by_shard: dict[int, list[int]] = {}
        for position, row in enumerate(keep):
            by_shard.setdefault(shard_of(ids[row], first.shards), []).append(position)

        def write(shard: int) -> IndexManifest:
            mine = by_shard[shard]
            build = _segment_writer(
                first,
                [ids[keep[p]] for p in mine],
                rows[mine],
                [metadata[keep[p]] for p in mine],
                kind="delta",
            )
            return self._add_delta(index, shard, build, len(mine), first)

        return _in_parallel(write, sorted(by_shard))

    def delete(self, index: IndexPath, ids: list[str]) -> list[IndexManifest]:
        first, _ = self.manifest(index.shard(0))
        by_shard: dict[int, list[str]] = {}
        for item_id in sorted(set(ids)):
            by_shard.setdefault(shard_of(item_id, first.shards), []).append(item_id)
        empty = np.zeros((0, first.dimension), dtype=np.float32)

        def write(shard: int) -> IndexManifest:
            build = _segment_writer(first, [], empty, [], kind="delta", tombstones=by_shard[shard])
            return self._add_delta(index, shard, build, 0, first)

        return _in_parallel(write, sorted(by_shard))

    def _add_delta(
        self,
        index: IndexPath,
        shard: int,
        build: Callable[[Path, str], SegmentRef],
        added_rows: int,
        first: IndexManifest,
    ) -> IndexManifest:
        """A delta into one shard within its bounds (checked on `first` for shard 0, read a moment
        ago); past `compact_after_*` its compaction is queued."""
        path = index.shard(shard)
        current = first if shard == 0 else self.manifest(path)[0]
        stored = sum(ref.rows for ref in current.segments)
        if stored + added_rows > self.limits.max_rows:
            raise IndexQuotaExceeded(
                f"shard {shard} of index {index.name!r} would hold {stored + added_rows} rows, more than "
                f"{self.limits.max_rows}: compact it, or create an index with more shards",
                quota="max_rows",
            )
        if len(current.deltas) >= self.limits.max_deltas:
            self.request_compaction(index, [shard])
            raise IndexBusy(
                f"shard {shard} of index {index.name!r} holds {len(current.deltas)} delta segments, the "
                "most it may until its compaction (queued) folds them",
                retry_after_seconds=30,
            )
        updated = self._add_segment(path, build, lambda m, r: m.with_segments((*m.segments, r)))
        deltas = updated.deltas
        if (
            len(deltas) >= self.limits.compact_after_deltas
            or sum(ref.rows for ref in deltas) >= self.limits.compact_after_rows
        ) and not updated.compaction.held(self.clock()):
            self.request_compaction(index, [shard])
        return updated

    def request_compaction(
        self, index: IndexPath, shards: Iterable[int] | None = None
    ) -> list[IndexManifest]:
        """Queues a compaction of each shard (all of them when None) that has no job holding its
        lease, and dispatches it; a shard whose job is queued or running keeps that one. Answers the
        shards' manifests, which say each job's state."""
        wanted = range(self.manifest(index.shard(0))[0].shards) if shards is None else shards

        def queue(shard: int) -> IndexManifest:
            path, token = index.shard(shard), uuid.uuid4().hex
            queued: list[bool] = []

            def take(current: IndexManifest) -> IndexManifest:
                queued.clear()
                if current.compaction.held(self.clock()):
                    return current
                queued.append(True)
                lease = Compaction(
                    "queued", token, self.clock() + self.limits.lease_seconds, current.compaction.last
                )
                return current.with_compaction(lease)

            manifest = self._change(path, take)
            if queued:
                try:
                    self.dispatch(CompactionJob(index.tenant, index.name, shard, manifest.incarnation, token))
                except Exception:
                    self._change(path, functools.partial(_unqueue, token))  # the shard is free again
                    raise
            return manifest

        return _in_parallel(queue, wanted)

    def run_compaction(self, job: CompactionJob) -> CompactionOutcome | None:
        """The job: under its lease, folds every segment of the shard into one new base built from the
        factory string, then swaps it in if the lease is still its own. A failed build leaves the old
        version serving and records the error; an obsolete job (index dropped or re-created, lease
        taken over) stops, changing nothing. Answers the outcome it recorded."""
        path, started = job.index.shard(job.shard), time.monotonic()

        def start(current: IndexManifest) -> IndexManifest:
            if current.incarnation != job.incarnation or current.compaction.token != job.token:
                raise JobObsolete(path)
            lease = Compaction(
                "running", job.token, self.clock() + self.limits.lease_seconds, current.compaction.last
            )
            return current.with_compaction(lease)

        try:
            running = self._change(path, start)
        except (JobObsolete, IndexNotFound):
            logger().info("compaction job obsolete", extra={"index": job.name, "shard": job.shard})
            return None
        try:
            snapshot = self.registry.reader(path).snapshot_of(running)
            base = running.segments
            segment_id = new_segment_id()
            with self.store.scratch() as directory:
                ref = write_base(snapshot, directory, segment_id)
                self.store.put_segment(path, segment_id, directory)
        except Exception as error:
            outcome = CompactionOutcome("error", self.clock(), time.monotonic() - started, message=str(error))
            problem = detail_of(error)
            logger().error(
                "compaction failed", extra={"index": job.name, "shard": job.shard, "problem": problem}
            )
            self._finish(path, job, outcome, None)
            return outcome
        outcome = CompactionOutcome("ok", self.clock(), time.monotonic() - started, rows=ref.rows)
        updated = self._finish(path, job, outcome, (base, ref))
        if updated is None:
            self.store.delete_segments(path, [segment_id])  # fenced out: never named by a manifest
            return None
        self.store.delete_segments(path, [old.id for old in base])
        self.sweep(path, updated)
        return outcome

    def _finish(
        self,
        path: str,
        job: CompactionJob,
        outcome: CompactionOutcome,
        built: tuple[tuple[SegmentRef, ...], SegmentRef] | None,
    ) -> IndexManifest | None:
        """Releases the job's lease with its outcome (and swaps in the base it built), if the lease is
        still its own; None when it is not (the job was fenced out) or the index is gone."""

        def release(current: IndexManifest) -> IndexManifest:
            if current.incarnation != job.incarnation or current.compaction.token != job.token:
                raise JobObsolete(path)
            done = current.with_compaction(Compaction("idle", None, 0.0, outcome))
            if built is None:
                return done
            base, ref = built
            if current.segments[: len(base)] != base:
                raise JobObsolete(path)  # only the lease holder replaces a base: not reached
            return done.with_segments((ref, *current.segments[len(base) :]))

        try:
            return self._change(path, release)
        except (JobObsolete, IndexNotFound):
            logger().warning("compaction fenced out", extra={"index": job.name, "shard": job.shard})
            return None

    def compact_now(self, index: IndexPath) -> list[CompactionOutcome | None]:
        """Compacts every shard in this thread, as a job would (for benchmarks and the CLI)."""
        outcomes: list[CompactionOutcome | None] = []
        dispatch, self.dispatch = self.dispatch, lambda job: outcomes.append(self.run_compaction(job))
        try:
            self.request_compaction(index)
        finally:
            self.dispatch = dispatch
        return outcomes

    def sweep(self, path: str, manifest: IndexManifest) -> list[str]:
        """Deletes the shard's segments that `manifest` does not name and that are older than the
        grace: those of writers that died between upload and swap, or that a failed delete left."""
        named = {ref.id for ref in manifest.segments}
        ages = self.store.segment_ages(path)
        orphans = sorted(s for s, age in ages.items() if s not in named and age >= self.orphan_grace_seconds)
        if orphans:
            self.store.delete_segments(path, orphans)
            logger().info("orphan segments deleted", extra={"index": manifest.name, "segments": orphans})
        return orphans

    def _add_segment(
        self,
        path: str,
        build: Callable[[Path, str], SegmentRef],
        change: Callable[[IndexManifest, SegmentRef], IndexManifest],
    ) -> IndexManifest:
        segment_id = new_segment_id()
        with self.store.scratch() as directory:
            ref = build(directory, segment_id)
            self.store.put_segment(path, segment_id, directory)
        try:
            return self._change(path, functools.partial(_swap_in, change, ref))
        except BaseException:
            self.store.delete_segments(path, [segment_id])  # never referenced: no reader can hold it
            raise

    def _change(self, path: str, change: Callable[[IndexManifest], IndexManifest]) -> IndexManifest:
        """Applies `change` to the shard's manifest by conditional write, re-reading after a lost race;
        a new version each time. An instance that serves the shard serves what it wrote at once."""
        for attempt in range(MAX_SWAP_ATTEMPTS):
            current, tag = self.manifest(path)
            updated = change(current)
            if updated is current:
                return current
            updated = replace(updated, version=current.version + 1)
            try:
                self.store.write_manifest(path, updated.to_json(), tag)
            except ManifestConflict:
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))  # jitter spreads racing writers
                continue
            self.registry.reader(path).offer(updated)
            return updated
        raise IndexUnavailable(
            "the index is too busy, retry shortly",
            detail=f"{path}: {MAX_SWAP_ATTEMPTS} conflicting manifest writes in a row",
        )


def _unqueue(token: str, current: IndexManifest) -> IndexManifest:
    """Releases a lease taken for a job that could not be handed over."""
    if current.compaction.token != token or current.compaction.state != "queued":
        return current
    return current.with_compaction(Compaction("idle", None, 0.0, current.compaction.last))


def _swap_in(
    change: Callable[[IndexManifest, SegmentRef], IndexManifest], ref: SegmentRef, current: IndexManifest
) -> IndexManifest:
    return change(current, ref)


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
