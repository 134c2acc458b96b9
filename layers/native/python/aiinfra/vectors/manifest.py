"""`IndexManifest`: what an index is (dimension, metric, factory) and which segments hold it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[Metric, ...] = ("cosine", "ip", "l2")
# What an index may be named: the routes' path parameter and the store's folder names.
INDEX_NAME_PATTERN = r"^[a-z0-9-]{1,64}$"


class CorruptManifest(Exception):
    """The stored manifest cannot be read as one."""


@dataclass(frozen=True)
class SegmentRef:
    """One immutable segment: a base (built from the factory) or a delta (upserts and tombstones)."""

    id: str
    kind: Literal["base", "delta"]
    rows: int
    tombstones: int
    files: dict[str, int]  # file name -> size in bytes, checked at load to refuse truncated segments


@dataclass(frozen=True)
class IndexManifest:
    name: str
    dimension: int
    metric: Metric
    factory: str
    version: int
    incarnation: str  # new at every create, so a re-created index never looks older than the dropped one
    segments: tuple[SegmentRef, ...] = ()

    def with_segments(self, segments: tuple[SegmentRef, ...]) -> IndexManifest:
        return replace(self, segments=segments, version=self.version + 1)

    def newer_than(self, other: IndexManifest) -> bool:
        return self.incarnation != other.incarnation or self.version > other.version

    def same_definition(self, other: IndexManifest) -> bool:
        return (self.dimension, self.metric, self.factory) == (other.dimension, other.metric, other.factory)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "format": 1,
            "name": self.name,
            "dimension": self.dimension,
            "metric": self.metric,
            "factory": self.factory,
            "version": self.version,
            "incarnation": self.incarnation,
            "segments": [segment.__dict__ for segment in self.segments],
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
            manifest = cls(
                name=str(body["name"]),
                dimension=int(body["dimension"]),
                metric=body["metric"],
                factory=str(body["factory"]),
                version=int(body["version"]),
                incarnation=str(body["incarnation"]),
                segments=segments,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptManifest(f"unreadable manifest: {exc}") from exc
        if manifest.metric not in METRICS:
            raise CorruptManifest(f"unknown metric {manifest.metric!r} in manifest")
        return manifest
