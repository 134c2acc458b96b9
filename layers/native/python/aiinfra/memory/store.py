"""The memory data plane: versioned, expiring, encrypted entries of one agent in Redis.

A write is one round trip and atomic. With If-Match / If-None-Match it is a Lua script that checks
the version at bytes 1..9 of the stored envelope, writes the value with PXAT and updates the agent's
key index; without one it is a MULTI/EXEC of the same commands (Redis runs it faster than a script),
where `SET .. GET` tells a created entry from a replaced one. A batch put is one MULTI/EXEC too:
all of its items or none. With per-agent quotas every write is a script that checks and updates the
agent's usage (`use:{<agent_id>}`) in the same step: over a quota, nothing is written.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiinfra._native import EnvelopeCodec, Memory
from aiinfra.config import MemorySettings
from aiinfra.memory import schema
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
from aiinfra.memory.schema import index_key, memory_key, memory_prefix, usage_key
from aiinfra.memory.scripts import BATCH_PUT, DELETE, LIST, PUT, SWAP
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
    def recall_best(
        self, prefix: bytes, entries: list[bytes], query: bytes, limit: int, min_score: float | None = None
    ) -> list[tuple[str, float, int, int]]: ...


class PreconditionFailed(Exception):
    """If-Match named another version, If-None-Match: * found one, or If-Match: * found none."""


class MemoryNotFound(Exception):
    pass


class ValuesTooLarge(Exception):
    """The memories a batch get asks for hold more JSON than its caller will take."""


class QuotaExceeded(Exception):
    """A write would take the agent past a quota (`quota` names it); nothing was written."""

    def __init__(self, message: str, quota: str) -> None:
        super().__init__(message)
        self.quota = quota


@dataclass(frozen=True)
class Condition:
    """A write precondition: `any`, `absent` (If-None-Match: *), `exists` (If-Match: *) or `match`."""

    mode: str = "any"
    version: int = 0


UNCONDITIONAL = Condition()


@dataclass(frozen=True)
class Quotas:
    """Per-agent limits (0: none) on how many memories an agent holds and their stored bytes (the
    envelopes, as Redis holds them)."""

    max_memories: int = 0
    max_bytes: int = 0

    @property
    def any(self) -> bool:
        return self.max_memories > 0 or self.max_bytes > 0

    def exceeded(self, outcome: int) -> QuotaExceeded:
        """What a script's -1 (count) or -2 (bytes) means."""
        if outcome == -1:
            return QuotaExceeded(
                f"the agent holds its quota of {self.max_memories} memories", "max_memories_per_agent"
            )
        return QuotaExceeded(
            f"the write would take the agent past its quota of {self.max_bytes} stored bytes",
            "max_bytes_per_agent",
        )


NO_QUOTAS = Quotas()
# How many index names one call examines at most: a list's page, a write's reclaim of expired names.
EXAMINE_BUDGET = 2000
RECLAIM_BUDGET = 200


def _is_put_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and reply in (-2, -1, 0, 1, 2)


def _is_batch_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and reply >= -2


def _is_delete_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and reply in (-1, 0, 1)


def _is_page(reply: Any) -> bool:
    """A list's answer: the next cursor ('' at the end), then the names."""
    return isinstance(reply, list) and len(reply) > 0 and all(isinstance(name, bytes) for name in reply)


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
        quotas: Quotas = NO_QUOTAS,
    ) -> None:
        self.redis = redis
        self.quotas = quotas
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

    def open_many(self, prefix: bytes, keys: list[str], blobs: list[bytes | None]) -> list[Memory | None]:
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
        if condition.mode == "any" and not self.quotas.any:
            # A batch put of one, whose `SET .. GET` answers the value it replaced.
            [memory], [created] = self._write(agent_id, [(key, value_json, ttl)], answer_replaced=True)
            return memory, created
        index, redis_key = index_key(agent_id), memory_key(agent_id, key)
        expires = time.time_ns() // 1_000_000 + ttl * 1000
        quotas, usage = self.quotas, self.usage_keys(agent_id)
        # One native call seals the value straight into the EVALSHA's bytes.
        request, version = self.codec.seal_command(
            ["EVALSHA", PUT.sha, 2 + len(usage), redis_key, index, *usage],
            redis_key,
            expires,
            value_json,
            [
                *(expires, condition.mode, version_bytes(condition.version), key, INDEX_TTL_MS),
                *(quotas.max_memories, quotas.max_bytes, memory_prefix(agent_id), RECLAIM_BUDGET),
            ],
        )
        outcome = self._run_encoded(PUT, request, redis_key, _is_put_outcome)
        if outcome == 0:
            raise PreconditionFailed(key)
        if outcome < 0:
            raise quotas.exceeded(outcome)
        return Memory(key, version, expires), outcome == 2

    def get(self, agent_id: str, key: str) -> Memory:
        prefix = memory_prefix(agent_id)
        [memory] = self.open_many(prefix, [key], [self.call("GET", prefix + key.encode(), expect=is_bulk)])
        if memory is None:
            raise MemoryNotFound(key)
        return memory

    def delete(self, agent_id: str, key: str, condition: Condition = UNCONDITIONAL) -> None:
        args: list[Arg] = [condition.mode, version_bytes(condition.version), key]
        recall = [schema.recall_vectors_key(agent_id), schema.recall_texts_key(agent_id)]
        keys = [memory_key(agent_id, key), index_key(agent_id), *recall, *self.usage_keys(agent_id)]
        outcome = self.run_script(DELETE, keys, args, _is_delete_outcome)
        if outcome == -1:
            raise MemoryNotFound(key)
        if outcome == 0:
            raise PreconditionFailed(key)

    def list_keys(self, agent_id: str, prefix: str, limit: int, cursor: str) -> tuple[list[str], str | None]:
        """Up to `limit` live keys after `cursor`, by name; the next cursor, or None at the end. One
        call examines at most EXAMINE_BUDGET names: past many expired ones the page may be short
        (even empty) with a cursor to go on from."""
        args: list[Arg] = [prefix, cursor, limit, memory_prefix(agent_id), max(EXAMINE_BUDGET, limit + 1)]
        keys = [index_key(agent_id), *self.usage_keys(agent_id)]
        next_cursor, *names = self.run_script(LIST, keys, args, _is_page)
        return [name.decode() for name in names], next_cursor.decode() or None

    def usage_keys(self, agent_id: str) -> list[bytes]:
        """The usage hash, for a script to keep it right; none without quotas: nothing keeps it
        then, and a key a script need not touch cannot make a migrating slot refuse it."""
        return [usage_key(agent_id)] if self.quotas.any else []

    def batch_put(self, agent_id: str, items: list[tuple[str, bytes, int]]) -> list[Memory]:
        """Writes `(key, value_json, ttl)` items atomically: after a fault, none of them or all."""
        if self.quotas.any:
            return self._counted_batch_put(agent_id, items)
        return self._write(agent_id, items, answer_replaced=False)[0]

    def _counted_batch_put(self, agent_id: str, items: list[tuple[str, bytes, int]]) -> list[Memory]:
        """A batch put under quotas: one script checks them and writes every item, or none."""
        prefix, now = memory_prefix(agent_id), time.time_ns() // 1_000_000
        # Versions as the native codec makes them: 64 random bits, never 0.
        written = [Memory(key, secrets.randbits(64) or 1, now + ttl * 1000) for key, _, ttl in items]
        sealed = self.codec.seal_many(
            [
                (prefix + memory.key.encode(), memory.version, memory.expires_at_ms, value_json)
                for memory, (_, value_json, _) in zip(written, items, strict=True)
            ]
        )
        quotas = self.quotas
        args: list[Arg] = [quotas.max_memories, quotas.max_bytes, INDEX_TTL_MS, prefix, RECLAIM_BUDGET]
        for memory, blob in zip(written, sealed, strict=True):
            args += [blob, memory.expires_at_ms, memory.key]
        keys = [index_key(agent_id), usage_key(agent_id), *(prefix + m.key.encode() for m in written)]
        outcome = self.run_script(BATCH_PUT, keys, args, _is_batch_outcome)
        if outcome < 0:
            raise quotas.exceeded(outcome)
        return written

    def _write(
        self, agent_id: str, items: list[tuple[str, bytes, int]], answer_replaced: bool
    ) -> tuple[list[Memory], list[bool]]:
        """One MULTI/EXEC that writes `items` and adds them to the index: the memories as written and,
        with `answer_replaced`, whether each was created (else an empty list).

        MULTI/EXEC, not Lua: Redis runs native SETs several times faster than the same SETs from a
        script (docs/memory.md). A fault before EXEC discards the queue; EXEC applies every command
        or none. The codec seals the values straight into the request's bytes and makes the memories
        natively; over plain TCP the native codec also does the round trip, in the same call."""
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
        return self.open_many(prefix, keys, blobs)

    def _blobs(self, redis_keys: list[bytes], max_bytes: int = UNLIMITED) -> list[bytes | None]:
        """What is stored under `redis_keys` (None where nothing is), in one MGET of at most
        `max_bytes`."""
        if not redis_keys:
            return []

        def expect(reply: Any) -> bool:
            return is_bulk_list(reply) and len(reply) == len(redis_keys)

        blobs: list[bytes | None] = self.call("MGET", *redis_keys, max_bytes=max_bytes, expect=expect)
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
                opened = self.open_many(prefix, [key for key, _, _ in stale], [blob for _, _, blob in stale])
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
                moved += self.run_script(SWAP, [redis_key for _, redis_key, _ in stale], args, _is_count)
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

    def call(self, *args: Arg, max_bytes: int = UNLIMITED, expect: Callable[[Any], bool]) -> Any:
        try:
            return self.redis.call(*args, max_bytes=max_bytes, expect=expect)
        except RedisError as error:
            raise RedisUnavailable(f"redis refused {args[0]!r}: {str(error).split(' ')[0]}") from None

    def run_script(
        self,
        script: Script,
        keys: Sequence[bytes],
        args: Sequence[Arg],
        expect: Callable[[Any], bool],
        max_bytes: int = UNLIMITED,
    ) -> Any:
        """`script` on `keys` and `args` in one round trip; a refusal is RedisUnavailable."""
        return self._run_encoded(script, script.request(keys, args), keys[0], expect, max_bytes)

    def _run_encoded(
        self,
        script: Script,
        request: bytes,
        key: bytes,
        expect: Callable[[Any], bool],
        max_bytes: int = UNLIMITED,
    ) -> Any:
        try:
            return self.redis.run_encoded(script, request, key, expect, max_bytes)
        except RedisError as error:
            raise RedisUnavailable(f"redis refused a script: {str(error).split(' ')[0]}") from None


def memory_store(settings: MemorySettings) -> MemoryStore:
    """The store the settings name: one pooled Redis client, the keyring loaded on first use."""
    redis = RedisClient(settings.redis_url, settings.redis_timeout)
    return MemoryStore(
        redis,
        lambda: load_keyring(settings, lambda: holds_memories(redis)).codec(),
        settings.keyring_reload_seconds,
        quotas=Quotas(settings.max_memories_per_agent, settings.max_bytes_per_agent),
    )


__all__ = [
    "UNCONDITIONAL",
    "Condition",
    "IntegrityError",
    "Memory",
    "MemoryNotFound",
    "MemoryStore",
    "PreconditionFailed",
    "QuotaExceeded",
    "Quotas",
    "ValuesTooLarge",
    "memory_store",
]
