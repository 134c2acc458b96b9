"""The data plane on a 3-node Redis Cluster: each agent's keys, index and batches stay in one slot."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from aiinfra._native import key_slot
from aiinfra.memory.recall import MemoryRecall, RecallItem
from aiinfra.memory.resp import RedisUnavailable
from aiinfra.memory.schema import index_key, memory_key, recall_texts_key, recall_vectors_key
from aiinfra.memory.store import Condition, Memory, memory_store

from tests.support.memory import memory_settings_for
from tests.support.redis_server import RedisServer


def _owner(nodes: list[RedisServer], key: bytes) -> int:
    """The port of the node that serves the key's slot, asked of the cluster itself."""
    slots = redis.Redis(port=nodes[0].port).execute_command("CLUSTER", "SLOTS")
    slot = key_slot(key)
    [port] = [int(entry[2][1]) for entry in slots if entry[0] <= slot <= entry[1]]
    return port


def _keys_in_slot(node: redis.Redis, slot: int) -> set[bytes]:
    """What the node holds in the slot, migrating or not (a plain read there would be redirected)."""
    return set(node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000))


def test_every_operation_reaches_the_node_that_owns_the_agent(
    redis_cluster: list[RedisServer], keyring_uri: str
) -> None:
    # Agents whose slots fall on each of the three nodes; the client only knows the first node.
    agents: dict[int, str] = {}
    for i in range(200):
        agents.setdefault(_owner(redis_cluster, memory_key(f"agent-{i}", "x")), f"agent-{i}")
    assert len(agents) == 3
    store = memory_store(memory_settings_for(f"redis://127.0.0.1:{redis_cluster[0].port}/0", keyring_uri))
    for port, agent in agents.items():
        # First a plain put, a native call that does its own round trip: a node that does not own
        # the slot answers MOVED, and the put is sent again where it belongs.
        assert store.put(agent, "first", b"1", 600)[1]
        assert not store.put(agent, "first", b"2", 600)[1]
        memory, created = store.put(agent, "plan", b'{"step":1}', 600, Condition("absent"))
        assert created
        store.put(agent, "plan", b'{"step":2}', 600, Condition("match", memory.version))
        store.batch_put(agent, [(f"b{i}", b"%d" % i, 600) for i in range(50)])
        assert store.get(agent, "plan").value_json == b'{"step":2}'
        assert [m.value_json for m in store.batch_get(agent, ["b7", "b49"]) if m] == [b"7", b"49"]
        keys, cursor = store.list_keys(agent, "b", 10, "")
        assert keys[:3] == ["b0", "b1", "b10"] and cursor == "b17"
        store.delete(agent, "b0", Condition())
        owner = redis.Redis(port=port)
        assert owner.exists(memory_key(agent, "plan"), memory_key(agent, "b49"), index_key(agent)) == 3
        assert store.get(agent, "first").value_json == b"2"
        assert owner.exists(memory_key(agent, "b0")) == 0
        # Recall's write and its two reads (the vectors, then the candidates) go to the same node.
        recall = MemoryRecall(store, 10)
        axes = np.eye(4, dtype=np.float32)
        recall.write(agent, [RecallItem(f"r{i}", b"%d" % i, 600, f"text {i}", axes[i]) for i in range(4)])
        [found] = recall.recall(agent, axes[2], 1)
        assert (found.memory.key, found.text, found.memory.value_json) == ("r2", "text 2", b"2")
        assert owner.exists(recall_vectors_key(agent), recall_texts_key(agent)) == 2


def test_a_slot_in_migration_is_followed_by_asking_and_never_split(
    redis_cluster: list[RedisServer], keyring_uri: str
) -> None:
    """The steps of `redis-cli --cluster reshard` for the agent's slot, with requests in between."""
    agent = "agent-0"
    slot = key_slot(memory_key(agent, "x"))
    source_port = _owner(redis_cluster, memory_key(agent, "x"))
    target_port = next(node.port for node in redis_cluster if node.port != source_port)
    source, target = redis.Redis(port=source_port), redis.Redis(port=target_port)
    store = memory_store(memory_settings_for(f"redis://127.0.0.1:{source_port}/0", keyring_uri))
    store.put(agent, "plan", b'{"step":1}', 600, Condition())
    store.batch_put(agent, [("a", b"1", 600), ("b", b"2", 600)])
    keys = {name: memory_key(agent, name) for name in ("plan", "a", "b", "c")}

    # The slot starts migrating; the agent's keys are all still on the source, which serves them.
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.execute_command("CLUSTER", "MYID"))
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.execute_command("CLUSTER", "MYID"))
    store.put(agent, "plan", b'{"step":2}', 600, Condition())
    assert store.get(agent, "plan").value_json == b'{"step":2}'

    # One key moved: reading it is asked of the target. A write that would leave the agent's
    # entries on two nodes is refused for a retry (503 at the API), and writes nothing anywhere.
    source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", keys["a"])
    assert store.get(agent, "a").value_json == b"1"
    assert [m.value_json for m in store.batch_get(agent, ["a"]) if m] == [b"1"]
    with pytest.raises(RedisUnavailable, match="TRYAGAIN"):
        store.put(agent, "c", b"3", 600, Condition())
    assert keys["c"] not in _keys_in_slot(source, slot) | _keys_in_slot(target, slot)

    # Every key moved: reads, replacing writes and scripts (new to the target) are asked of it;
    # creating an entry still waits for the end of the migration.
    moved = [keys["plan"], keys["b"], index_key(agent)]
    source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *moved)
    memory, created = store.put(agent, "plan", b'{"step":3}', 600, Condition())
    assert not created
    assert store.get(agent, "plan") == Memory("plan", memory.version, memory.expires_at_ms, b'{"step":3}')
    assert store.list_keys(agent, "", 10, "") == (["a", "b", "plan"], None)
    with pytest.raises(RedisUnavailable, match="TRYAGAIN"):  # Redis cannot yet tell where "c" belongs
        store.put(agent, "c", b"3", 600, Condition())
    assert _keys_in_slot(target, slot) == {keys["plan"], keys["a"], keys["b"], index_key(agent)}
    assert _keys_in_slot(source, slot) == set()

    # The slot is the target's: MOVED once, then the client goes there directly; new keys too.
    for node in (source, target):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.execute_command("CLUSTER", "MYID"))
    memory, created = store.put(agent, "c", b"3", 600, Condition("absent"))
    assert created and store.list_keys(agent, "", 10, "") == (["a", "b", "c", "plan"], None)
    store.delete(agent, "c", Condition("match", memory.version))
    assert _keys_in_slot(target, slot) == {keys["plan"], keys["a"], keys["b"], index_key(agent)}
