"""A shard function: wiring only (one shard's part of a fanned-out query, from the search function)."""

from aiinfra.vectors.shard import shard_handler

handler = shard_handler()
