"""An index across its shards: a query searches every shard and merges their top k exactly as one
index would rank them; a shard that cannot answer is named in `missing`, never a failure of the
whole query. `description` adds the shards' counts up and says how their compaction jobs stand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexNotFound, IndexUnavailable, detail_of
from aiinfra.vectors.filter import Instruction
from aiinfra.vectors.manifest import CompactionOutcome, IndexManifest
from aiinfra.vectors.reader import IndexRegistry, IndexSnapshot
from aiinfra.vectors.store import IndexPath


class Found(Protocol):
    """One match as a shard answers it: what the merged answer needs of it."""

    @property
    def id(self) -> str: ...
    @property
    def score(self) -> float: ...
    def metadata_size(self) -> int: ...
    def metadata(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ShardQuery:
    """What every shard is asked: `queries` already normalised for the index's metric."""

    queries: np.ndarray
    k: int
    program: list[Instruction] | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    include_metadata: bool = False  # a shard in another function sends metadata only when asked


@dataclass
class Answer:
    """Per query, the best `k` matches over the shards that answered, best first."""

    matches: list[list[Found]]
    version: int
    missing: list[int] = field(default_factory=list)


def search_snapshot(snapshot: IndexSnapshot, query: ShardQuery) -> list[list[Found]]:
    """One shard's best `k` per query."""
    found = snapshot.search(query.queries, query.k, query.program, query.nprobe, query.ef_search)
    return [list(found.matches(q)) for q in range(len(query.queries))]


def merge(
    per_shard: Sequence[list[list[Found]]], k: int, similarity: bool, queries: int
) -> list[list[Found]]:
    """The best `k` of the shards' answers, per query: exactly the ranking one index of all their
    rows gives, since every id lives in one shard and each shard answered its own best `k`."""
    merged: list[list[Found]] = []
    for q in range(queries):
        pooled = [match for answer in per_shard for match in answer[q]]
        pooled.sort(key=lambda match: -match.score if similarity else match.score)
        merged.append(pooled[:k])
    return merged


class LocalShards:
    """Searches an index's shards in this process, each loaded on first use."""

    def __init__(self, registry: IndexRegistry) -> None:
        self.registry = registry

    def first(self, index: IndexPath) -> IndexManifest:
        """Shard 0's manifest as served (IndexNotFound when the index does not exist)."""
        return self.registry.snapshot(index.shard(0)).manifest

    def describe(self, index: IndexPath) -> dict[str, Any]:
        """The index over all its shards, each loaded here if it was not."""
        snapshots = [self.registry.snapshot(index.shard(0))]
        first = snapshots[0].manifest
        snapshots += [self.registry.snapshot(index.shard(shard)) for shard in range(1, first.shards)]
        manifests = [snapshot.manifest for snapshot in snapshots]
        return description(index, manifests, [snapshot.count for snapshot in snapshots], [])

    def search(self, index: IndexPath, first: IndexManifest, query: ShardQuery) -> Answer:
        per_shard: list[list[list[Found]]] = []
        version, missing = 0, []
        for shard in range(first.shards):
            try:
                snapshot = self.registry.snapshot(index.shard(shard))
            except (IndexNotFound, IndexUnavailable) as error:
                if shard == 0:
                    raise
                logger().warning(
                    "shard missing from an answer", extra={"shard": shard, "problem": detail_of(error)}
                )
                missing.append(shard)
                continue
            version += snapshot.manifest.version
            per_shard.append(search_snapshot(snapshot, query))
        similarity = first.metric != "l2"
        return Answer(merge(per_shard, query.k, similarity, len(query.queries)), version, missing)


def compaction_state(manifests: Sequence[IndexManifest], now: float) -> dict[str, Any]:
    """How an index's compaction stands over its shards: `running` while any shard's job runs, else
    `queued` while any waits, else `idle`; `last` is the latest outcome of any shard (a job that died
    without recording one shows as an error once its lease expired)."""
    states = {manifest.compaction.seen_at(now) for manifest in manifests}
    state = "running" if "running" in states else "queued" if "queued" in states else "idle"
    outcomes: list[CompactionOutcome] = []
    for manifest in manifests:
        job = manifest.compaction
        if job.state != "idle" and not job.held(now):
            outcomes.append(
                CompactionOutcome("error", job.expires_at, 0.0, message="the job stopped before it finished")
            )
        elif job.last is not None:
            outcomes.append(job.last)
    last = max(outcomes, key=lambda outcome: outcome.finished_at, default=None)
    return {"state": state, "last": None if last is None else _outcome(last)}


def _outcome(outcome: CompactionOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "result": outcome.result,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(outcome.finished_at)),
        "seconds": round(outcome.seconds, 3),
        "rows": outcome.rows,
    }
    if outcome.message:
        body["message"] = outcome.message
    return body


def description(
    index: IndexPath, manifests: Sequence[IndexManifest], counts: Sequence[int], missing: list[int]
) -> dict[str, Any]:
    """The index as GET answers it, from its shards' manifests and the live counts of those that
    answered (`missing`: those that did not; the count is then theirs only)."""
    first = manifests[0]
    body: dict[str, Any] = {
        "name": index.name,
        "dimension": first.dimension,
        "metric": first.metric,
        "factory": first.factory,
        "shards": first.shards,
        "version": sum(manifest.version for manifest in manifests),
        "count": sum(counts),
        "segments": sum(len(manifest.segments) for manifest in manifests),
        "compaction": compaction_state(manifests, time.time()),
        "partial": bool(missing),
    }
    if missing:
        body["missing_shards"] = missing
    return body
