"""Where a memory lives in Redis: `mem:{<agent_id>}:<key>`, plus the agent's key index.

The hash tag `{<agent_id>}` puts all of one agent's keys in one Redis Cluster slot, so a Lua
script or MULTI/EXEC over them (batch put, list) stays atomic there too.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: str) -> bool:
    """An agent id or memory key: 1 to 128 of `[A-Za-z0-9._-]`."""
    return _NAME.match(value) is not None


def memory_key(agent_id: str, key: str) -> bytes:
    return f"mem:{{{agent_id}}}:{key}".encode()


def memory_prefix(agent_id: str) -> bytes:
    return f"mem:{{{agent_id}}}:".encode()


def index_key(agent_id: str) -> bytes:
    """A sorted set of the agent's keys (all score 0, so ordered by name for cursor paging)."""
    return f"idx:{{{agent_id}}}".encode()


def usage_key(agent_id: str) -> bytes:
    """A hash of what the agent's memories count against its quotas (see memory.store)."""
    return f"use:{{{agent_id}}}".encode()


def recall_vectors_key(agent_id: str) -> bytes:
    """A hash of the agent's recall vectors by memory key, each sealed under `rcl:{<agent_id>}:<key>`."""
    return f"rcl:{{{agent_id}}}".encode()


def recall_texts_key(agent_id: str) -> bytes:
    """A hash of the agent's recall texts by memory key, each sealed under `txt:{<agent_id>}:<key>`."""
    return f"txt:{{{agent_id}}}".encode()
