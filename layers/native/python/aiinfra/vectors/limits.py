"""The bounds that keep one tenant or one index from degrading the service for everyone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexLimits:
    """Per tenant: `max_indexes`. Per shard: `max_rows` stored (replaced rows count until a
    compaction folds them), and `max_deltas` delta segments, past which a write answers "retry
    later" until the compaction queued at `compact_after_deltas` deltas or `compact_after_rows`
    delta rows has folded them. A compaction job holds its shard's lease for `lease_seconds`
    (longer than an indexer invocation may run), so a job that died frees the shard after it."""

    max_indexes: int = 100
    max_rows: int = 1_000_000
    max_deltas: int = 64
    compact_after_deltas: int = 8
    compact_after_rows: int = 50_000
    lease_seconds: float = 960.0
