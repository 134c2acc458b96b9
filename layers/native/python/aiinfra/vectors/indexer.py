"""The indexer function: runs the compaction jobs the search function queues, one per invocation
(asynchronous: `InvocationType=Event`), with the memory and time a build needs that a request
does not get."""

from __future__ import annotations

from typing import Any

from aiinfra.config import search_settings
from aiinfra.observability import logger
from aiinfra.vectors.jobs import CompactionJob
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import open_store
from aiinfra.vectors.writer import IndexWriter


def indexer_handler() -> Any:
    """`handler(event, context)` for the indexer function, its writer built from the environment once."""
    settings = search_settings()
    store = open_store(settings.index_store)
    writer = IndexWriter(store, IndexRegistry(store, settings.refresh_seconds), settings.limits)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            job = CompactionJob.from_event(event)
        except ValueError as error:
            logger().error("indexer event refused", extra={"problem": str(error)})
            return {"result": "refused", "message": str(error)}
        outcome = writer.run_compaction(job)
        if outcome is None:
            return {"result": "obsolete"}
        return {"result": outcome.result, "rows": outcome.rows, "seconds": outcome.seconds}

    return handler
