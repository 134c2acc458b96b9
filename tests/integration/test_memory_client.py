"""The lean Redis client against a real redis-server: replies longer than one socket read."""

from __future__ import annotations

import os

import pytest
import redis
from aiinfra._native import encode_commands
from aiinfra.memory.resp import RedisClient, ReplyTooLarge
from aiinfra.memory.scripts import LIST, PUT
from aiinfra.memory.store import Condition, Memory, MemoryStore, ValuesTooLarge

from tests.support.redis_server import RedisServer


def test_a_reply_of_many_reads_arrives_whole(
    redis_server: RedisServer, raw_redis: redis.Redis, agent: str
) -> None:
    value = os.urandom(5 * 2**20)  # 80 socket reads of 64 KiB at least
    raw_redis.set(f"big:{agent}", value)
    client = RedisClient(redis_server.url, 5.0)
    assert client.call("GET", f"big:{agent}") == value
    pipeline = encode_commands([["STRLEN", f"big:{agent}"], ["GET", f"big:{agent}"], ["PING"]])
    assert client.send(pipeline, 3) == [
        len(value),
        value,
        b"PONG",
    ]
    assert client.call("GET", f"big:{agent}") == value  # the connection went back to the pool in step


def test_an_answer_past_its_limit_is_cut_off_and_the_client_stays_in_step(
    redis_server: RedisServer, raw_redis: redis.Redis, agent: str
) -> None:
    value = os.urandom(2**20)
    raw_redis.set(f"big:{agent}", value)
    client = RedisClient(redis_server.url, 5.0)
    answer = len(b"$%d\r\n" % len(value)) + len(value) + 2  # the GET's whole answer, in bytes
    assert client.call("GET", f"big:{agent}", max_bytes=answer) == value
    for limit in (answer - 1, 100_000):
        with pytest.raises(ReplyTooLarge):
            client.call("GET", f"big:{agent}", max_bytes=limit)
        # Most of the answer was never read: its connection is gone, the next one is in step.
        assert client.call("GET", f"big:{agent}") == value
    assert client.call("PING") == b"PONG"


def test_a_batch_get_past_its_limit_is_refused_and_one_within_it_arrives(
    store: MemoryStore, agent: str
) -> None:
    values = [b'"%s"' % os.urandom(100 * 1024).hex().encode() for _ in range(10)]  # 200 KiB each
    keys = [f"k{i}" for i in range(len(values))]
    store.batch_put(agent, [(key, value, 600) for key, value in zip(keys, values, strict=True)])
    total = sum(len(value) for value in values)
    read = store.batch_get(agent, keys, max_value_bytes=total)  # the envelopes' room is not counted
    assert [memory.value_json for memory in read if memory is not None] == values
    with pytest.raises(ValuesTooLarge):
        store.batch_get(agent, keys, max_value_bytes=total // 2)
    assert store.batch_get(agent, keys[:1], max_value_bytes=total // 2)[0] is not None


def test_a_batch_of_large_values_round_trips(store: MemoryStore, agent: str) -> None:
    values = [b'"%s"' % os.urandom(100 * 1024).hex().encode() for _ in range(40)]  # 200 KiB each, 8 MiB
    items = [(f"k{i:04d}", value, 600) for i, value in enumerate(values)]
    written = store.batch_put(agent, items)
    read = store.batch_get(agent, [key for key, _, _ in items] + ["absent"])
    assert read[-1] is None
    assert [(m.key, m.version, m.value_json) for m in read[:-1] if m is not None] == [
        (m.key, m.version, value) for m, value in zip(written, values, strict=True)
    ]


def test_a_redis_that_lost_its_scripts_is_given_them_again(
    store: MemoryStore, raw_redis: redis.Redis, agent: str
) -> None:
    first, _ = store.put(agent, "plan", b'{"step": 1}', 60, Condition())
    raw_redis.script_flush()  # what a restart or a failover to a fresh replica leaves
    memory, created = store.put(agent, "plan", b'{"step": 2}', 60, Condition("match", first.version))
    assert not created
    assert store.get(agent, "plan") == Memory("plan", memory.version, memory.expires_at_ms, b'{"step": 2}')
    assert store.list_keys(agent, "", 10, "") == (["plan"], None)
    assert raw_redis.script_exists(*(script.sha for script in (PUT, LIST))) == [True, True]


def test_a_batch_of_many_turns_a_small_index_into_a_skiplist_of_its_keys_alone(
    store: MemoryStore, raw_redis: redis.Redis, agent: str
) -> None:
    index = f"idx:{{{agent}}}"
    store.put(agent, "first", b"1", 60)
    assert raw_redis.object("encoding", index) == b"listpack"  # a put of one leaves it be
    store.batch_put(agent, [(f"k{i:02d}", b"%d" % i, 60) for i in range(20)])
    # A skiplist, where ZADD no longer compares each name with every other; the encoding member is gone.
    assert raw_redis.object("encoding", index) == b"skiplist"
    keys = ["first", *[f"k{i:02d}" for i in range(20)]]
    assert [name.decode() for name in raw_redis.zrange(index, 0, -1)] == sorted(keys)
    assert store.list_keys(agent, "", 100, "") == (sorted(keys), None)


def test_a_batch_the_codec_cannot_seal_is_refused_as_input_and_writes_nothing(
    store: MemoryStore, raw_redis: redis.Redis, agent: str
) -> None:
    # The native put seals and sends in one call: input it refuses is the caller's error, not an
    # unavailable Redis, and none of the batch's items lands.
    with pytest.raises(UnicodeEncodeError):
        store.batch_put(agent, [("fine", b"1", 600), ("\ud800", b"2", 600)])
    with pytest.raises(OverflowError):
        store.batch_put(agent, [("fine", b"1", 600), ("late", b"2", 2**64 // 1000)])
    assert raw_redis.keys(f"*{agent}*") == []
    assert store.put(agent, "fine", b"3", 600)[1] is True  # the client goes on working
    assert store.get(agent, "fine").value_json == b"3"
