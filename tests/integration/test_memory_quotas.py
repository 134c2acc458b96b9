"""Bounded listing and per-agent quotas, against a real redis-server.

A list call examines at most EXAMINE_BUDGET index names, however many expired; a write over a
quota is a 429 naming it, with nothing written; the usage hash's count and bytes follow puts,
deletes and expiry."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis
from aiinfra.config import MemorySettings
from aiinfra.memory.schema import index_key, memory_key, usage_key
from aiinfra.memory.store import EXAMINE_BUDGET, MemoryStore
from fastapi.testclient import TestClient

from tests.support.memory import memory_app

EXPIRED_NAMES = 1_000_000


def _usage(raw_redis: redis.Redis, agent: str) -> tuple[int, int]:
    counted = raw_redis.hmget(usage_key(agent), "~n", "~b")
    return int(counted[0] or 0), int(counted[1] or 0)


def _stored_bytes(raw_redis: redis.Redis, agent: str, keys: list[str]) -> int:
    return sum(raw_redis.strlen(memory_key(agent, key)) for key in keys)


def test_a_million_expired_names_are_listed_in_bounded_calls(
    store: MemoryStore, raw_redis: redis.Redis, agent: str
) -> None:
    # Names whose memories are gone, as after their expiry; then three live ones after them.
    index = index_key(agent)
    with raw_redis.pipeline(transaction=False) as pipe:
        for start in range(0, EXPIRED_NAMES, 20_000):
            pipe.zadd(index, {f"gone-{i:07d}": 0 for i in range(start, start + 20_000)})
        pipe.execute()
    live = ["live-a", "live-b", "live-c"]
    for key in live:
        store.put(agent, key, b'"kept"', 3600)
    assert raw_redis.zcard(index) == EXPIRED_NAMES + len(live)

    listed, cursor, calls = [], "", 0
    while True:
        before = raw_redis.zcard(index)
        keys, next_cursor = store.list_keys(agent, "", 100, cursor)
        calls += 1
        # Each call forgets at most its budget of expired names: its work is bounded.
        assert before - raw_redis.zcard(index) <= EXAMINE_BUDGET
        listed += keys
        if next_cursor is None:
            break
        cursor = next_cursor
    print(f"{EXPIRED_NAMES} expired names: {calls} list calls of <= {EXAMINE_BUDGET} names examined each")
    assert listed == live
    assert calls >= EXPIRED_NAMES // EXAMINE_BUDGET
    assert raw_redis.zrange(index, 0, -1) == [key.encode() for key in live]


def test_a_page_short_of_its_limit_still_carries_a_cursor_past_expired_names(
    store: MemoryStore, raw_redis: redis.Redis, agent: str
) -> None:
    raw_redis.zadd(index_key(agent), {f"a-{i:05d}": 0 for i in range(EXAMINE_BUDGET + 10)})
    store.put(agent, "b-live", b"1", 3600)
    keys, cursor = store.list_keys(agent, "", 10, "")
    assert keys == [] and cursor is not None
    assert store.list_keys(agent, "", 10, cursor) == (["b-live"], None)


@pytest.fixture
def quota_settings(memory_settings: MemorySettings) -> MemorySettings:
    return dataclasses.replace(memory_settings, max_memories_per_agent=3, max_bytes_per_agent=0)


def test_a_write_past_the_count_quota_is_429_and_writes_nothing(
    quota_settings: MemorySettings, raw_redis: redis.Redis, agent: str
) -> None:
    client = TestClient(memory_app(quota_settings))
    base = f"/agents/{agent}"
    for key in ("a", "b", "c"):
        assert client.put(f"{base}/memories/{key}", json={"value": key}).status_code == 201
    refused = client.put(f"{base}/memories/d", json={"value": "d"})
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "quota_exceeded"
    assert refused.json()["error"]["param"] == "max_memories_per_agent"
    assert client.get(f"{base}/memories/d").status_code == 404
    # Replacing one is no new memory; a batch that would add two is refused whole.
    assert client.put(f"{base}/memories/a", json={"value": "a2"}).status_code == 200
    assert client.delete(f"{base}/memories/b").status_code == 204
    batch = client.post(
        f"{base}/batch-put", json={"items": [{"key": "x", "value": 1}, {"key": "y", "value": 2}]}
    )
    assert batch.status_code == 429 and batch.json()["error"]["param"] == "max_memories_per_agent"
    assert client.post(f"{base}/batch-get", json={"keys": ["x", "y"]}).json()["missing"] == ["x", "y"]
    assert client.put(f"{base}/memories/d", json={"value": "d"}).status_code == 201
    assert client.get(f"{base}/memories").json() == {"keys": ["a", "c", "d"], "cursor": None}
    assert _usage(raw_redis, agent) == (3, _stored_bytes(raw_redis, agent, ["a", "c", "d"]))


def test_a_write_past_the_bytes_quota_is_429_and_writes_nothing(
    memory_settings: MemorySettings, raw_redis: redis.Redis, agent: str
) -> None:
    probe = TestClient(memory_app(memory_settings))
    value = {"text": "x" * 1000}
    probe.put(f"/agents/{agent}-probe/memories/k", json={"value": value})
    one = raw_redis.strlen(memory_key(f"{agent}-probe", "k"))  # one such memory, as Redis stores it
    settings = dataclasses.replace(
        memory_settings, max_memories_per_agent=0, max_bytes_per_agent=2 * one + one // 2
    )
    client = TestClient(memory_app(settings))
    base = f"/agents/{agent}"
    for key in ("a", "b"):
        assert client.put(f"{base}/memories/{key}", json={"value": value}).status_code == 201
    refused = client.put(f"{base}/memories/c", json={"value": value})
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_bytes_per_agent"
    assert raw_redis.exists(memory_key(agent, "c")) == 0
    # A smaller value fits in what is left.
    assert client.put(f"{base}/memories/c", json={"value": "small"}).status_code == 201
    assert _usage(raw_redis, agent) == (3, _stored_bytes(raw_redis, agent, ["a", "b", "c"]))


def test_counts_follow_deletes_and_expiry_and_expired_memories_free_their_quota(
    quota_settings: MemorySettings, raw_redis: redis.Redis, agent: str
) -> None:
    settings = dataclasses.replace(quota_settings, max_memories_per_agent=6)
    client = TestClient(memory_app(settings))
    base = f"/agents/{agent}"
    items = [{"key": f"short-{i}", "value": i, "ttl": 1} for i in range(3)]
    items += [{"key": f"long-{i}", "value": i, "ttl": 3600} for i in range(3)]
    assert client.post(f"{base}/batch-put", json={"items": items}).status_code == 200
    assert client.delete(f"{base}/memories/long-0").status_code == 204
    assert _usage(raw_redis, agent)[0] == 5
    time.sleep(1.2)
    # The three expired ones still count until reclaimed: a write that needs their room reclaims them.
    new = [{"key": f"new-{i}", "value": i} for i in range(4)]
    assert client.post(f"{base}/batch-put", json={"items": new}).status_code == 200
    kept = ["long-1", "long-2", *(item["key"] for item in new)]
    assert _usage(raw_redis, agent) == (6, _stored_bytes(raw_redis, agent, kept))
    assert client.get(f"{base}/memories").json()["keys"] == sorted(kept)


def test_a_list_forgets_expired_names_from_the_counts(
    quota_settings: MemorySettings, raw_redis: redis.Redis, agent: str
) -> None:
    client = TestClient(memory_app(quota_settings))
    base = f"/agents/{agent}"
    client.put(f"{base}/memories/brief", json={"value": 1, "ttl": 1})
    client.put(f"{base}/memories/kept", json={"value": 2})
    assert _usage(raw_redis, agent)[0] == 2
    time.sleep(1.2)
    assert client.get(f"{base}/memories").json()["keys"] == ["kept"]
    assert _usage(raw_redis, agent) == (1, _stored_bytes(raw_redis, agent, ["kept"]))
