"""`IndexManifest`: what one shard of an index is (dimension, metric, factory, shard count), which
segments hold it, and the state of its compaction job.

An index of N shards is N manifests, each with segments of its own; shard 0's manifest is the
index's existence (it is written first on create and removed first on drop). An item lives in the
shard `shard_of(id, N)` names, so an upsert and a later delete of the same id always meet there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[Metric, ...] = ("cosine", "ip", "l2")
# What an index may be named: the routes' path parameter and the store's folder names.
INDEX_NAME_PATTERN = r"^[a-z0-9-]{1,64}$"
MAX_SHARDS = 64
JobState = Literal["idle", "queued", "running"]


class CorruptManifest(Exception):
    """The stored manifest cannot be read as one."""


def shard_of(item_id: str, shards: int) -> int:
    """The shard that holds `item_id`: the first 8 bytes of BLAKE2b(id as UTF-8), big-endian, mod
    the shard count. Stable across processes and versions (Python's own hash() is salted)."""
    digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class SegmentRef:
    """One immutable segment: a base (built from the factory) or a delta (upserts and tombstones)."""

    id: str
    kind: Literal["base", "delta"]
    rows: int
    tombstones: int
    files: dict[str, int]  # file name -> size in bytes, checked at load to refuse truncated segments


@dataclass(frozen=True)
class CompactionOutcome:
    """How the last compaction of a shard ended: `ok` (with the rows folded) or `error`."""

    result: Literal["ok", "error"]
    finished_at: float  # epoch seconds
    seconds: float
    rows: int = 0
    message: str = ""


@dataclass(frozen=True)
class Compaction:
    """A shard's compaction job. `token` names the job holding the lease until `expires_at`: only
    that job may swap in the base it built (a fencing token), and a job that died leaves a lease
    that expires, so the next request starts another."""

    state: JobState = "idle"
    token: str | None = None
    expires_at: float = 0.0  # epoch seconds
    last: CompactionOutcome | None = None

    def held(self, now: float) -> bool:
        return self.state != "idle" and self.expires_at > now

    def seen_at(self, now: float) -> JobState:
        """The state as a caller should read it: an expired lease is no job."""
        return self.state if self.held(now) else "idle"


@dataclass(frozen=True)
class IndexManifest:
    name: str
    dimension: int
    metric: Metric
    factory: str
    version: int
    incarnation: str  # new at every create, so a re-created index never looks older than the dropped one
    segments: tuple[SegmentRef, ...] = ()
    shards: int = 1
    shard: int = 0
    compaction: Compaction = field(default_factory=Compaction)

    def with_segments(self, segments: tuple[SegmentRef, ...]) -> IndexManifest:
        """The manifest naming `segments` (the writer gives every manifest it writes a new version)."""
        return replace(self, segments=segments)

    def with_compaction(self, compaction: Compaction) -> IndexManifest:
        return replace(self, compaction=compaction)

    def newer_than(self, other: IndexManifest) -> bool:
        return self.incarnation != other.incarnation or self.version > other.version

    def same_definition(self, other: IndexManifest) -> bool:
        mine = (self.dimension, self.metric, self.factory, self.shards)
        return mine == (other.dimension, other.metric, other.factory, other.shards)

    @property
    def deltas(self) -> tuple[SegmentRef, ...]:
        return tuple(ref for ref in self.segments if ref.kind == "delta")

    def to_json(self) -> bytes:
        compaction = self.compaction
        body: dict[str, Any] = {
            "format": 1,
            "name": self.name,
            "dimension": self.dimension,
            "metric": self.metric,
            "factory": self.factory,
            "shards": self.shards,
            "shard": self.shard,
            "version": self.version,
            "incarnation": self.incarnation,
            "segments": [segment.__dict__ for segment in self.segments],
            "compaction": {
                "state": compaction.state,
                "token": compaction.token,
                "expires_at": compaction.expires_at,
                "last": compaction.last.__dict__ if compaction.last else None,
            },
        }
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> IndexManifest:
        try:
            body = orjson.loads(raw)
            segments = tuple(
                SegmentRef(
                    id=str(s["id"]),
                    kind=s["kind"],
                    rows=int(s["rows"]),
                    tombstones=int(s["tombstones"]),
                    files={str(k): int(v) for k, v in s["files"].items()},
                )
                for s in body["segments"]
            )
            job = body.get("compaction") or {}
            last = job.get("last")
            compaction = Compaction(
                state=job.get("state", "idle"),
                token=job.get("token"),
                expires_at=float(job.get("expires_at", 0.0)),
                last=CompactionOutcome(**last) if last else None,
            )
            manifest = cls(
                name=str(body["name"]),
                dimension=int(body["dimension"]),
                metric=body["metric"],
                factory=str(body["factory"]),
                version=int(body["version"]),
                incarnation=str(body["incarnation"]),
                segments=segments,
                shards=int(body.get("shards", 1)),
                shard=int(body.get("shard", 0)),
                compaction=compaction,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptManifest(f"unreadable manifest: {exc}") from exc
        if manifest.metric not in METRICS:
            raise CorruptManifest(f"unknown metric {manifest.metric!r} in manifest")
        if manifest.compaction.state not in ("idle", "queued", "running"):
            raise CorruptManifest(f"unknown compaction state {manifest.compaction.state!r} in manifest")
        if not 0 <= manifest.shard < manifest.shards <= MAX_SHARDS:
            raise CorruptManifest(f"shard {manifest.shard} of {manifest.shards} in manifest")
        return manifest
