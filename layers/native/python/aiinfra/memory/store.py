"""The memory data plane: versioned, expiring, encrypted entries of one agent in Redis.

A write is one round trip and atomic. With If-Match / If-None-Match it is a Lua script that checks
the version at bytes 1..9 of the stored envelope, writes the value with PXAT and updates the agent's
key index; without one it is a MULTI/EXEC of the same commands (Redis runs it faster than a script),
where `SET .. GET` tells a created entry from a replaced one. A batch put is one MULTI/EXEC too:
all of its items or none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiinfra._native import EnvelopeCodec, Memory
from aiinfra.config import MemorySettings
from aiinfra.memory.envelope import MAX_OVERHEAD, IntegrityError, key_id_of, version_bytes
from aiinfra.memory.keyring import KeyringError, load_keyring
from aiinfra.memory.keyspace import holds_memories
from aiinfra.memory.resp import (
    UNLIMITED,
    Arg,
    RedisClient,
    RedisError,
    RedisReadOnly,
    RedisRedirect,
    RedisUnavailable,
    ReplyTooLarge,
    Script,
    is_bulk,
    is_bulk_list,
)
from aiinfra.memory.schema import index_key, memory_key, memory_prefix
from aiinfra.observability import MetricUnit, logger, metrics

# The index outlives every entry it lists: no entry lives longer than 30 days past its write.
INDEX_TTL_MS = 31 * 24 * 3600 * 1000
# What a stored value takes in an MGET's answer beyond its JSON: its envelope, RESP's `$<length>`
# line and the closing CRLF.
_STORED_ROOM = MAX_OVERHEAD + 32


class Codec(Protocol):
    """The envelope codec: `aiinfra._native.EnvelopeCodec`, or in tests `tests.support.reference_codec`'s."""

    @property
    def current_key_id(self) -> str: ...
    def seal_many(self, items: list[tuple[bytes, int, int, bytes]]) -> list[bytes]: ...
    def seal_command(
        self, head: Sequence[Arg], redis_key: bytes, expires_at_ms: int, plaintext: bytes, tail: Sequence[Arg]
    ) -> tuple[bytes, int]: ...
    def seal_batch_put(
        self,
        prefix: bytes,
        index_key: bytes,
        index_ttl_ms: int,
        now_ms: int,
        items: list[tuple[str, bytes, int]],
        answer_replaced: bool = False,
    ) -> tuple[bytes, int, list[Memory]]: ...
    def open_many(self, prefix: bytes, keys: list[str], blobs: list[bytes | None]) -> list[Memory | None]: ...


class PreconditionFailed(Exception):
    """If-Match named another version, If-None-Match: * found one, or If-Match: * found none."""


class MemoryNotFound(Exception):
    pass


class ValuesTooLarge(Exception):
    """The memories a batch get asks for hold more JSON than its caller will take."""


@dataclass(frozen=True)
class Condition:
    """A write precondition: `any`, `absent` (If-None-Match: *), `exists` (If-Match: *) or `match`."""

    mode: str = "any"
    version: int = 0


UNCONDITIONAL = Condition()


# A put with a precondition: 0 when it does not hold, else 2 when created, 1 when replaced.
_PUT = Script(
    """
local cur = redis.call('GET', KEYS[1])
local mode = ARGV[3]
if (mode == 'absent' and cur) or (mode == 'exists' and not cur)
   or (mode == 'match' and (not cur or string.sub(cur, 2, 9) ~= ARGV[4])) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if cur then return 1 end
return 2
"""
)

_DELETE = Script(
    """
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if ARGV[1] == 'match' and string.sub(cur, 2, 9) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""
)

# Pages the index by name after the cursor, dropping names whose entry has expired, and stops
# after `limit` live names plus one more (which only says whether another page exists).
_LIST = Script(
    """
local prefix, after, limit, base = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local lo = '[' .. prefix
if after ~= '' and after >= prefix then lo = '(' .. after end
local hi = '+'
if prefix ~= '' then hi = '[' .. prefix .. '\\255' end
local live = {}
while #live <= limit do
  local names = redis.call('ZRANGE', KEYS[1], lo, hi, 'BYLEX', 'LIMIT', 0, limit + 1)
  if #names == 0 then break end
  for _, name in ipairs(names) do
    if redis.call('EXISTS', base .. name) == 1 then
      live[#live + 1] = name
      if #live > limit then break end
    else
      redis.call('ZREM', KEYS[1], name)
    end
  end
  lo = '(' .. names[#names]
end
return live
"""
)

# Replaces each blob only if it is still the one that was read: a concurrent write wins.
_SWAP = Script(
    """
local swapped = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 * i - 1] then
    redis.call('SET', KEYS[i], ARGV[2 * i], 'KEEPTTL')
    swapped = swapped + 1
  end
end
return swapped
"""
)


def _is_put_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and reply in (0, 1, 2)


def _is_delete_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and reply in (-1, 0, 1)


def _is_name_list(reply: Any) -> bool:
    return isinstance(reply, list) and all(isinstance(name, bytes) for name in reply)


def _is_count(reply: Any) -> bool:
    return isinstance(reply, int) and reply >= 0


def _is_transaction(replies: list[Any], sets: int, answer_replaced: bool) -> bool:
    """What a MULTI/EXEC of `sets` SETs (ending in GET with `answer_replaced`) and its index update
    answers: EXEC's reply to each command queued, or an error (the transaction refused)."""
    executed = replies[-1]
    if isinstance(executed, RedisError):
        return True
    if not isinstance(executed, list) or len(executed) != len(replies) - 2:
        return False
    return not answer_replaced or all(
        isinstance(reply, RedisError) or is_bulk(reply) for reply in executed[:sets]
    )


def _keyring_failure(error: Exception, kept: bool) -> None:
    """Logs a keyring that failed to load; counts it (MemoryKeyringFailures) unless Redis was down."""
    extra = {"reason": str(error), "kept_loaded_keyring": kept}
    if not isinstance(error, KeyringError):
        logger().warning("memory keyring not loaded: redis unavailable", extra=extra)
        return
    logger().error("memory keyring unavailable", extra={**extra, "security_event": "memory_keyring_failure"})
    metrics().add_metric(name="MemoryKeyringFailures", unit=MetricUnit.Count, value=1)


def _refused(cause: object) -> RedisUnavailable:
    """What a caller is told when Redis refused a transaction: the error's name (OOM, TRYAGAIN, ..)."""
    return RedisUnavailable(f"redis refused a transaction: {str(cause).split(' ')[0]}")


class MemoryStore:
    """One Redis, one keyring: what the memory routes and the `rewrap` command act through."""

    def __init__(
        self,
        redis: RedisClient,
        load_codec: Callable[[], Codec],
        keyring_reload_seconds: float = 300.0,
        integrity_reload_seconds: float = 5.0,
    ) -> None:
        self.redis = redis
        self.keyring_reload_seconds = keyring_reload_seconds
        self.integrity_reload_seconds = integrity_reload_seconds
        # The keyring may need Redis (kms://): it loads on first use, so init survives Redis being down.
        self._load_codec = load_codec
        self._codec: Codec | None = None
        self._codec_lock = threading.Lock()
        self._loaded_at = time.monotonic()
        self._reload_due = 0.0

    @property
    def codec(self) -> Codec:
        """The loaded keyring's codec, loaded again once `keyring_reload_seconds` have passed (so a
        rotation or a retirement reaches every warm instance) or after `reload_keyring`."""
        codec = self._codec
        if codec is not None and time.monotonic() < self._reload_due:
            return codec
        return self._reload()

    def _reload(self) -> Codec:
        """Loads the keyring unless another thread just did. A failure is logged and counted
        (MemoryKeyringFailures); it raises only when no keyring is loaded yet: one already loaded
        still opens what it opened, and is tried again after the next interval."""
        with self._codec_lock:
            now = time.monotonic()
            if self._codec is not None and now < self._reload_due:
                return self._codec
            self._loaded_at, self._reload_due = now, now + self.keyring_reload_seconds
            try:
                self._codec = self._load_codec()
            except (KeyringError, RedisUnavailable) as error:
                _keyring_failure(error, kept=self._codec is not None)
                if self._codec is None:
                    raise
            return self._codec

    def reload_keyring(self) -> None:
        """Loads the keyring again on its next use (after a rotation, a SnapStart restore)."""
        self._reload_due = 0.0

    def _open_many(self, prefix: bytes, keys: list[str], blobs: list[bytes | None]) -> list[Memory | None]:
        """`codec.open_many`; after a failure to open, once more with the keyring reloaded: another
        instance may seal with a key rotated in after our keyring loaded. At most every few
        seconds, so forged values cannot make us hammer KMS; else the failure stands."""
        try:
            return self.codec.open_many(prefix, keys, blobs)
        except IntegrityError:
            if time.monotonic() - self._loaded_at < self.integrity_reload_seconds:
                raise
            self.reload_keyring()
            return self.codec.open_many(prefix, keys, blobs)

    def put(
        self, agent_id: str, key: str, value_json: bytes, ttl: int, condition: Condition = UNCONDITIONAL
    ) -> tuple[Memory, bool]:
        """Writes one memory; answers it and whether it was created (vs. replaced)."""
        if condition.mode == "any":
            # A batch put of one, whose `SET .. GET` answers the value it replaced.
            [memory], [created] = self._write(agent_id, [(key, value_json, ttl)], answer_replaced=True)
            return memory, created
        index, redis_key = index_key(agent_id), memory_key(agent_id, key)
        expires = time.time_ns() // 1_000_000 + ttl * 1000
        # One native call seals the value straight into the EVALSHA's bytes.
        request, version = self.codec.seal_command(
            ["EVALSHA", _PUT.sha, 2, redis_key, index],
            redis_key,
            expires,
            value_json,
            [expires, condition.mode, version_bytes(condition.version), key, INDEX_TTL_MS],
        )
        outcome = self._run_encoded(_PUT, request, redis_key, _is_put_outcome)
        if outcome == 0:
            raise PreconditionFailed(key)
        return Memory(key, version, expires), outcome == 2

    def get(self, agent_id: str, key: str) -> Memory:
        prefix = memory_prefix(agent_id)
        [memory] = self._open_many(prefix, [key], [self._call("GET", prefix + key.encode(), expect=is_bulk)])
        if memory is None:
            raise MemoryNotFound(key)
        return memory

    def delete(self, agent_id: str, key: str, condition: Condition = UNCONDITIONAL) -> None:
        args: list[Arg] = [condition.mode, version_bytes(condition.version), key]
        outcome = self._run(
            _DELETE, [memory_key(agent_id, key), index_key(agent_id)], args, _is_delete_outcome
        )
        if outcome == -1:
            raise MemoryNotFound(key)
        if outcome == 0:
            raise PreconditionFailed(key)

    def list_keys(self, agent_id: str, prefix: str, limit: int, cursor: str) -> tuple[list[str], str | None]:
        """Up to `limit` live keys after `cursor`, by name; the next cursor, or None at the end."""
        args: list[Arg] = [prefix, cursor, limit, memory_prefix(agent_id)]
        names = [name.decode() for name in self._run(_LIST, [index_key(agent_id)], args, _is_name_list)]
        if len(names) > limit:
            return names[:limit], names[limit - 1]
        return names, None

    def batch_put(self, agent_id: str, items: list[tuple[str, bytes, int]]) -> list[Memory]:
        """Writes `(key, value_json, ttl)` items atomically: after a fault, none of them or all."""
        return self._write(agent_id, items, answer_replaced=False)[0]

    def _write(
        self, agent_id: str, items: list[tuple[str, bytes, int]], answer_replaced: bool
    ) -> tuple[list[Memory], list[bool]]:
        """One MULTI/EXEC that writes `items` and adds them to the index: the memories as written and,
        with `answer_replaced`, whether each was created (else an empty list).

        MULTI/EXEC, not Lua: Redis runs 100 native SETs in ~40 us, the same SETs from a script in
        ~200 us. A fault before EXEC discards the queue; EXEC applies every command or none. The codec
        seals the values straight into the request's bytes and makes the memories natively; over
        plain TCP the native codec also does the round trip, in the same call."""
        prefix, index, codec = memory_prefix(agent_id), index_key(agent_id), self.codec
        now = time.time_ns() // 1_000_000
        if isinstance(codec, EnvelopeCodec) and not self.redis.address.tls:
            try:
                return self.redis.on_socket(
                    index, codec.put_on_socket, prefix, index, INDEX_TTL_MS, now, items, answer_replaced
                )
            except (RedisRedirect, RedisReadOnly):
                pass  # that node wrote nothing: `send` below follows it, the values sealed anew
            except RedisError as error:
                raise _refused(error) from None
        request, replies, memories = codec.seal_batch_put(
            prefix, index, INDEX_TTL_MS, now, items, answer_replaced
        )

        def expect(replies: list[Any]) -> bool:
            return _is_transaction(replies, len(items), answer_replaced)

        executed = self._executed(self.redis.send(request, replies, index, expect=expect))
        return memories, [reply is None for reply in executed[: len(items)]] if answer_replaced else []

    def batch_get(
        self, agent_id: str, keys: list[str], max_value_bytes: int = UNLIMITED
    ) -> list[Memory | None]:
        """The memories under `keys` (None where there is none), read in one MGET. ValuesTooLarge as
        soon as Redis's answer runs past `max_value_bytes` plus the room the values' envelopes take:
        they hold more JSON than that. Redis's answer is then read no further, so a batch of large
        values never fills this function's memory."""
        prefix = memory_prefix(agent_id)
        redis_keys = [prefix + key.encode() for key in keys]
        max_bytes = UNLIMITED if max_value_bytes == UNLIMITED else max_value_bytes + len(keys) * _STORED_ROOM
        try:
            blobs = self._blobs(redis_keys, max_bytes)
        except ReplyTooLarge:
            raise ValuesTooLarge(f"the memories asked for hold more than {max_value_bytes} bytes") from None
        return self._open_many(prefix, keys, blobs)

    def _blobs(self, redis_keys: list[bytes], max_bytes: int = UNLIMITED) -> list[bytes | None]:
        """What is stored under `redis_keys` (None where nothing is), in one MGET of at most
        `max_bytes`."""
        if not redis_keys:
            return []

        def expect(reply: Any) -> bool:
            return is_bulk_list(reply) and len(reply) == len(redis_keys)

        blobs: list[bytes | None] = self._call("MGET", *redis_keys, max_bytes=max_bytes, expect=expect)
        return blobs

    def rewrap(self, agent_id: str, page: int = 500) -> int:
        """Re-seals the agent's entries that an older key sealed with the current one; keeps
        versions and expiry. Answers how many entries moved to the current key."""
        current, prefix = self.codec.current_key_id, memory_prefix(agent_id)
        moved, cursor = 0, ""
        while True:
            keys, next_cursor = self.list_keys(agent_id, "", page, cursor)
            redis_keys = [prefix + key.encode() for key in keys]
            stale = [
                (key, redis_key, blob)
                for key, redis_key, blob in zip(keys, redis_keys, self._blobs(redis_keys), strict=True)
                if blob is not None and key_id_of(blob) != current
            ]
            if stale:
                opened = self._open_many(prefix, [key for key, _, _ in stale], [blob for _, _, blob in stale])
                resealed = self.codec.seal_many(
                    [
                        (redis_key, memory.version, memory.expires_at_ms, memory.value_json)
                        for (_, redis_key, _), memory in zip(stale, opened, strict=True)
                        if memory is not None
                    ]
                )
                args: list[Arg] = [
                    part for (_, _, old), new in zip(stale, resealed, strict=True) for part in (old, new)
                ]
                moved += self._run(_SWAP, [redis_key for _, redis_key, _ in stale], args, _is_count)
            if next_cursor is None:
                return moved
            cursor = next_cursor

    @staticmethod
    def _executed(replies: list[Any]) -> list[Any]:
        """The replies of a MULTI/EXEC's commands. RedisUnavailable when Redis refused the transaction
        (EXECABORT, TRYAGAIN: then nothing ran) or one of its commands: the refusals that
        `EnvelopeCodec.put_on_socket` raises as RedisError."""
        executed = replies[-1]
        if isinstance(executed, list):
            cause = next((reply for reply in executed if isinstance(reply, RedisError)), None)
            if cause is None:
                return executed
        else:
            # EXECABORT names no cause: the command Redis refused to queue does (OOM when it is full).
            cause = next((reply for reply in replies if isinstance(reply, RedisError)), executed)
        raise _refused(cause)

    def _call(self, *args: Arg, max_bytes: int = UNLIMITED, expect: Callable[[Any], bool]) -> Any:
        try:
            return self.redis.call(*args, max_bytes=max_bytes, expect=expect)
        except RedisError as error:
            raise RedisUnavailable(f"redis refused {args[0]!r}: {str(error).split(' ')[0]}") from None

    def _run(
        self, script: Script, keys: Sequence[bytes], args: Sequence[Arg], expect: Callable[[Any], bool]
    ) -> Any:
        return self._run_encoded(script, script.request(keys, args), keys[0], expect)

    def _run_encoded(self, script: Script, request: bytes, key: bytes, expect: Callable[[Any], bool]) -> Any:
        try:
            return self.redis.run_encoded(script, request, key, expect)
        except RedisError as error:
            raise RedisUnavailable(f"redis refused a script: {str(error).split(' ')[0]}") from None


def memory_store(settings: MemorySettings) -> MemoryStore:
    """The store the settings name: one pooled Redis client, the keyring loaded on first use."""
    redis = RedisClient(settings.redis_url, settings.redis_timeout)
    return MemoryStore(
        redis,
        lambda: load_keyring(settings, lambda: holds_memories(redis)).codec(),
        settings.keyring_reload_seconds,
    )


__all__ = [
    "UNCONDITIONAL",
    "Condition",
    "IntegrityError",
    "Memory",
    "MemoryNotFound",
    "MemoryStore",
    "PreconditionFailed",
    "ValuesTooLarge",
    "memory_store",
]
