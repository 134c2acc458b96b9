"""The shard function: answers one shard's part of a query the search function fans out (see
`fanout`), from its own registry, so each instance keeps in memory only the shards it is asked for.

Every outcome is an answer: an event that is not a shard query, an index that does not exist or
cannot be loaded, a query of the wrong dimension each come back as an error body the caller maps.
"""

from __future__ import annotations

from typing import Any

import orjson

from aiinfra import snapstart
from aiinfra.config import search_settings
from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexNotFound, IndexUnavailable, detail_of
from aiinfra.vectors.fanout import COUNT_EVENT, ShardRequest, shard_answer, shard_error
from aiinfra.vectors.query import search_snapshot
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import IndexPath, open_store

# What one Invoke answer may carry (RequestResponse payloads are at most 6 MB).
MAX_SHARD_ANSWER_BYTES = 6 * 1024 * 1024


def answer_shard_count(registry: IndexRegistry, event: dict[str, Any]) -> dict[str, Any]:
    """The shard's version and live count (what a description of its index adds up), or an error."""
    tenant, name, shard = event.get("tenant"), event.get("name"), event.get("shard")
    if not (isinstance(tenant, str) and tenant and isinstance(name, str) and name):
        return shard_error("invalid", "a shard count names its tenant and index")
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        return shard_error("invalid", "shard must be a non-negative integer")
    try:
        snapshot = registry.snapshot(IndexPath(tenant, name).shard(shard))
    except IndexNotFound:
        return shard_error("not_found", f"index {name!r} has no shard {shard}")
    except IndexUnavailable as error:
        return shard_error("unavailable", str(error))
    return {"version": snapshot.manifest.version, "count": snapshot.count}


def answer_shard_query(registry: IndexRegistry, event: Any) -> dict[str, Any]:
    """The shard's best `k` per query of `event`, or an error body."""
    if isinstance(event, dict) and event.get("aiinfra") == COUNT_EVENT:
        return answer_shard_count(registry, event)
    try:
        request = ShardRequest.from_event(event)
    except ValueError as error:
        logger().error("shard event refused", extra={"problem": str(error)})
        return shard_error("invalid", str(error))
    try:
        snapshot = registry.snapshot(request.path)
    except IndexNotFound:
        return shard_error("not_found", f"index {request.name!r} has no shard {request.shard}")
    except IndexUnavailable as error:
        logger().warning("shard unavailable", extra={"index": request.path, "problem": detail_of(error)})
        return shard_error("unavailable", str(error))
    if request.incarnation and snapshot.manifest.incarnation != request.incarnation:
        registry.reader(request.path).expire()  # ours may be the older one: read it again
        snapshot = registry.snapshot(request.path)
        if snapshot.manifest.incarnation != request.incarnation:
            return shard_error("stale", f"index {request.name!r} was dropped and created again")
    dimension = snapshot.manifest.dimension
    if request.query.queries.shape[1] != dimension:
        return shard_error(
            "invalid", f"queries of dimension {request.query.queries.shape[1]}, not {dimension}"
        )
    matches = search_snapshot(snapshot, request.query)
    answer = shard_answer(snapshot.manifest.version, matches, request.query.include_metadata)
    if len(orjson.dumps(answer)) > MAX_SHARD_ANSWER_BYTES:
        return shard_error(
            "too_large",
            f"one shard's matches are more than an answer carries ({MAX_SHARD_ANSWER_BYTES} bytes): "
            "ask for a smaller k, fewer vectors or no metadata",
        )
    return answer


def shard_handler() -> Any:
    """`handler(event, context)` for a shard function, its registry built from the environment once."""
    settings = search_settings()
    registry = IndexRegistry(open_store(settings.index_store), settings.refresh_seconds)
    snapstart.after_restore(registry.expire)  # a restored copy re-checks each shard at its next use

    def handler(event: Any, context: Any) -> dict[str, Any]:
        try:
            return answer_shard_query(registry, event)
        except Exception as error:  # a shard answers every event: the caller marks it missing
            logger().exception("shard query failed", extra={"problem": str(error)})
            return shard_error("unavailable", "the shard could not answer")

    return handler
