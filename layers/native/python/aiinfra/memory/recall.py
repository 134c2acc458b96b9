"""Recall by meaning over an agent's encrypted memories.

A memory written with a text also holds, written in the same script as its value
(`scripts.RECALL_PUT`), with the memory's own version and expiry:
- in `rcl:{<agent_id>}`, a hash by memory key, the text's vector sealed under
  `rcl:{<agent_id>}:<key>`. Its plaintext is `factor f32 LE | int8 x d`: `factor * q` is the unit
  vector the model gave, so `factor * (query . q)` is the cosine (`EnvelopeCodec.recall_best`);
- in `txt:{<agent_id>}`, the text, sealed the same way under `txt:{<agent_id>}:<key>`.
Redis never holds either in the clear, and neither opens under another key or agent.

A recall is two round trips. An HGETALL of the vectors, opened and scored natively with the GIL
released; then one script reads the best candidates' memories and texts, and drops the recall
entries of memories deleted, expired or replaced by a write without a text since: a candidate
counts only while its memory holds the version its vector was sealed with. A delete drops them
in its own script; a put without a text leaves them to that check, so the plain write paths keep
their speed. The work is linear in the agent's texts: MEMORY_MAX_RECALL_PER_AGENT caps them (a write
past it is refused, nothing written), and so bounds what one HGETALL answers.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiinfra._native import Memory
from aiinfra.memory.envelope import version_bytes
from aiinfra.memory.resp import UNLIMITED, Arg, RedisUnavailable, ReplyTooLarge, is_bulk_list
from aiinfra.memory.schema import index_key, memory_prefix, recall_texts_key, recall_vectors_key
from aiinfra.memory.scripts import RECALL_FETCH, RECALL_PUT
from aiinfra.memory.store import (
    INDEX_TTL_MS,
    RECLAIM_BUDGET,
    UNCONDITIONAL,
    Condition,
    MemoryStore,
    PreconditionFailed,
    QuotaExceeded,
    ValuesTooLarge,
)

if TYPE_CHECKING:
    import numpy as np

MAX_TEXT_CHARS = 8192
# What one recall vector takes in an HGETALL's answer at most: its name, its envelope (a 384-d
# vector, a key id of up to 64 characters) and RESP's framing.
_ENTRY_ROOM = 1024
# A recall asks for this many more candidates than it answers: some may be stale (see the module).
_SLACK = 8


@dataclass(frozen=True)
class RecallItem:
    """One memory to write, with its text's unit vector when it has a text."""

    key: str
    value_json: bytes
    ttl: int
    text: str | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Recalled:
    """A memory a recall found: `memory.value_json` is empty when values were not asked for."""

    memory: Memory
    score: float
    text: str


def _is_write_outcome(reply: Any) -> bool:
    return isinstance(reply, int) and -3 <= reply <= 2


def _is_entries(reply: Any) -> bool:
    """What HGETALL answers: name, value pairs (that each is bytes, `recall_best` checks: looping
    over thousands of them here would cost a recall more than scoring them)."""
    return isinstance(reply, list) and len(reply) % 2 == 0


def vector_plaintexts(vectors: np.ndarray) -> list[bytes]:
    """Unit vectors as recall vectors' plaintexts (see the module): int8 at the row's own scale."""
    import numpy as np

    peak = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), np.float32(1e-12))
    quantized = np.rint(vectors / peak * 127).astype(np.int8)
    norms = np.linalg.norm(quantized.astype(np.float32), axis=1)
    factors = np.where(norms > 0, 1 / np.maximum(norms, 1e-12), 0).astype("<f4")
    return [factor.tobytes() + row.tobytes() for factor, row in zip(factors, quantized, strict=True)]


class MemoryRecall:
    """Writes with texts and recalls by meaning, on `store`'s Redis and keyring."""

    def __init__(self, store: MemoryStore, max_per_agent: int) -> None:
        self.store = store
        self.max_per_agent = max_per_agent

    def write(
        self, agent_id: str, items: list[RecallItem], condition: Condition = UNCONDITIONAL
    ) -> tuple[list[Memory], bool]:
        """Writes `items` (any of them with a text) in one script: each value, and the vector and
        text of those with one (dropping the old ones of those without), or nothing. Answers the
        memories as written and whether the first was created; `condition` applies to the first."""
        prefix, now = memory_prefix(agent_id), time.time_ns() // 1_000_000
        vectors_key, texts_key = recall_vectors_key(agent_id), recall_texts_key(agent_id)
        # Versions as the native codec makes them: 64 random bits, never 0.
        written = [Memory(item.key, secrets.randbits(64) or 1, now + item.ttl * 1000) for item in items]
        with_text = [i for i, item in enumerate(items) if item.vector is not None and item.text]
        import numpy as np

        vectors = [np.asarray(items[i].vector, dtype=np.float32) for i in with_text]
        plaintexts = vector_plaintexts(np.stack(vectors)) if vectors else []
        to_seal = [
            (prefix + item.key.encode(), memory.version, memory.expires_at_ms, item.value_json)
            for memory, item in zip(written, items, strict=True)
        ]
        for i, plaintext in zip(with_text, plaintexts, strict=True):
            name, memory = items[i].key.encode(), written[i]
            to_seal.append((vectors_key + b":" + name, memory.version, memory.expires_at_ms, plaintext))
            text = str(items[i].text).encode()
            to_seal.append((texts_key + b":" + name, memory.version, memory.expires_at_ms, text))
        sealed = self.store.codec.seal_many(to_seal)
        values, recall = sealed[: len(items)], iter(sealed[len(items) :])
        extras = {i: (next(recall), next(recall)) for i in with_text}
        quotas = self.store.quotas
        args: list[Arg] = [
            *(condition.mode, version_bytes(condition.version), quotas.max_memories, quotas.max_bytes),
            *(INDEX_TTL_MS, prefix, RECLAIM_BUDGET, self.max_per_agent),
        ]
        for i, (memory, blob) in enumerate(zip(written, values, strict=True)):
            args += [blob, memory.expires_at_ms, memory.key, *extras.get(i, (b"", b""))]
        keys = [
            *(index_key(agent_id), vectors_key, texts_key),
            *(prefix + memory.key.encode() for memory in written),
            *self.store.usage_keys(agent_id),
        ]
        outcome = self.store.run_script(RECALL_PUT, keys, args, _is_write_outcome)
        if outcome == 0:
            raise PreconditionFailed(items[0].key)
        if outcome == -3:
            raise QuotaExceeded(
                f"the agent holds its quota of {self.max_per_agent} memories with a text",
                "max_recall_per_agent",
            )
        if outcome < 0:
            raise quotas.exceeded(outcome)
        return written, outcome == 2

    def recall(
        self,
        agent_id: str,
        query: np.ndarray,
        k: int,
        min_score: float | None = None,
        include_values: bool = True,
        max_value_bytes: int = 0,
    ) -> list[Recalled]:
        """The agent's live memories with a text closest to `query` (a unit vector), best first: at
        most `k`, none scoring under `min_score`. ValuesTooLarge when the values found hold more
        than `max_value_bytes` (0: no bound)."""
        import numpy as np

        vectors_key = recall_vectors_key(agent_id)
        room = (self.max_per_agent or 100_000) * _ENTRY_ROOM
        try:
            entries = self.store.call("HGETALL", vectors_key, max_bytes=room, expect=_is_entries)
        except ReplyTooLarge:
            raise QuotaExceeded(
                f"the agent holds more memories with a text than the {self.max_per_agent} one recall scores",
                "max_recall_per_agent",
            ) from None
        if not entries:
            return []
        query_bytes = np.ascontiguousarray(query, dtype="<f4").tobytes()
        limit = k + _SLACK
        while True:
            try:
                candidates = self.store.codec.recall_best(
                    vectors_key + b":", entries, query_bytes, limit, min_score
                )
            except TypeError:
                raise RedisUnavailable("redis answered HGETALL with other than names and values") from None
            found = self._fetch(agent_id, candidates, include_values, max_value_bytes)
            if len(found) >= k or len(candidates) < limit:
                return found[:k]
            limit *= 4  # many were stale: the fetch dropped them, and a wider pass finds the rest

    def _fetch(
        self,
        agent_id: str,
        candidates: list[tuple[str, float, int, int]],
        include_values: bool,
        max_value_bytes: int,
    ) -> list[Recalled]:
        """The candidates whose memory still holds their version, with their text (and value)."""
        prefix, texts_key = memory_prefix(agent_id), recall_texts_key(agent_id)
        args: list[Arg] = ["1" if include_values else "0"]
        for name, _, version, _ in candidates:
            args += [name, version_bytes(version)]
        keys = [recall_vectors_key(agent_id), texts_key, *(prefix + c[0].encode() for c in candidates)]
        bound = UNLIMITED
        if max_value_bytes:
            bound = max_value_bytes + len(candidates) * (2 * _ENTRY_ROOM + MAX_TEXT_CHARS * 4)

        def expect(reply: Any) -> bool:
            return is_bulk_list(reply) and len(reply) == 2 * len(candidates)

        try:
            reply = self.store.run_script(RECALL_FETCH, keys, args, expect, bound)
        except ReplyTooLarge:
            raise ValuesTooLarge(f"the memories found hold more than {max_value_bytes} bytes") from None
        kept = [
            (candidate, reply[2 * i], reply[2 * i + 1])
            for i, candidate in enumerate(candidates)
            if reply[2 * i] is not None and reply[2 * i + 1] is not None
        ]
        names = [candidate[0] for candidate, _, _ in kept]
        texts = self.store.open_many(texts_key + b":", names, [text for _, _, text in kept])
        if include_values:
            values = self.store.open_many(prefix, names, [value for _, value, _ in kept])
        else:
            values = [Memory(name, version, expires) for (name, _, version, expires), _, _ in kept]
        found = []
        for (_, score, _, _), value, text in zip((c for c, _, _ in kept), values, texts, strict=True):
            if value is not None and text is not None:
                found.append(Recalled(value, score, text.value_json.decode()))
        return found
