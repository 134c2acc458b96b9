"""Walks what every primary of a Redis or Redis Cluster holds, by SCAN: whether any memory exists
(asked before a keyring gets its first key), how many envelopes one key sealed (`retire-key`) and
which agents have memories (`rewrap --all`).

A SCAN sees one node's keys only, so in a cluster each primary that CLUSTER SLOTS names is walked
on a connection of its own; anything but "cluster support disabled" in answer to CLUSTER SLOTS is
a fault, never taken for a single node (that would miss the others' memories).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from aiinfra._native import encode_commands
from aiinfra.memory.envelope import MAX_OVERHEAD, key_id_of
from aiinfra.memory.resp import RedisAddress, RedisClient, RedisError, RedisUnavailable, is_bulk

_PAGE = 1000
# Both our namespaces in one glob; the exact prefixes are checked on what it returns.
_MEMORY_OR_INDEX = b"[mi][ed][mx]:{*"
_OURS = (b"mem:{", b"idx:{")


def holds_memories(redis: RedisClient) -> bool:
    """Whether any node holds an agent's entry or key index. It stops at the first one, so it walks
    the whole keyspace only when there is none."""
    return any(
        name.startswith(_OURS) for _, names in _scan_every_node(redis, _MEMORY_OR_INDEX) for name in names
    )


def count_sealed_with(redis: RedisClient, key_id: str) -> int:
    """How many stored entries, on every node, name `key_id` in their envelope's header (read by
    GETRANGE, never the whole value)."""
    sealed = 0
    for node, names in _scan_every_node(redis, b"mem:{*"):
        request = encode_commands([["GETRANGE", name, 0, MAX_OVERHEAD] for name in names])
        heads = node.send(request, len(names), expect=lambda replies: all(map(is_bulk, replies)))
        sealed += sum(1 for head in heads if head and key_id_of(head) == key_id)
    return sealed


def agent_ids(redis: RedisClient) -> Iterator[str]:
    """Every agent with a key index, on every node, once each."""
    seen: set[bytes] = set()
    for _, names in _scan_every_node(redis, b"idx:{*"):
        for name in names:
            if name.startswith(b"idx:{") and name.endswith(b"}") and name not in seen:
                seen.add(name)  # SCAN may answer a name more than once
                yield name[5:-1].decode()


def _scan_every_node(redis: RedisClient, pattern: bytes) -> Iterator[tuple[RedisClient, list[bytes]]]:
    """Pages of the names matching `pattern` on each primary, with a client that reaches that node."""
    for node in _primaries(redis):
        try:
            cursor = b"0"
            while True:
                cursor, names = _call(node, "SCAN", cursor, "MATCH", pattern, "COUNT", _PAGE)
                if names:
                    yield node, names
                if cursor == b"0":
                    break
        finally:
            if node is not redis:
                node.close()


def _primaries(redis: RedisClient) -> list[RedisClient]:
    try:
        ranges = redis.call("CLUSTER", "SLOTS", expect=lambda reply: isinstance(reply, list))
    except RedisError as error:
        if "cluster support disabled" in str(error):
            return [redis]
        raise RedisUnavailable(f"redis refused CLUSTER SLOTS: {str(error).split(' ')[0]}") from None
    address = redis.address
    nodes = {(entry[2][0].decode() or address.host, int(entry[2][1])) for entry in ranges}
    return [RedisClient(_node_url(address, host, port), redis.timeout) for host, port in sorted(nodes)]


def _node_url(address: RedisAddress, host: str, port: int) -> str:
    """The URL of another node of `address`'s cluster, with its credentials and TLS."""
    user = quote(address.username or "", safe="")
    auth = f"{user}:{quote(address.password, safe='')}@" if address.password else (f"{user}@" if user else "")
    bracketed = f"[{host}]" if ":" in host else host
    return f"{'rediss' if address.tls else 'redis'}://{auth}{bracketed}:{port}/{address.db}"


def _call(node: RedisClient, *args: Any) -> Any:
    def is_page(reply: Any) -> bool:
        return (
            isinstance(reply, list)
            and len(reply) == 2
            and isinstance(reply[0], bytes)
            and isinstance(reply[1], list)
            and all(isinstance(name, bytes) for name in reply[1])
        )

    try:
        return node.call(*args, expect=is_page)
    except RedisError as error:
        raise RedisUnavailable(f"redis refused {args[0]}: {str(error).split(' ')[0]}") from None
