"""The indexer function: wiring only (compaction jobs, from asynchronous invocations)."""

from aiinfra.vectors.indexer import indexer_handler

handler = indexer_handler()
