"""The data plane on a 3-node Redis Cluster: each agent's keys, index and batches stay in one slot."""

from __future__ import annotations

import redis
from aiinfra._native import key_slot
from aiinfra.memory.schema import index_key, memory_key
from aiinfra.memory.store import Condition, memory_store

from tests.support.memory import memory_settings_for
from tests.support.redis_server import RedisServer


def _owner(nodes: list[RedisServer], key: bytes) -> int:
    """The port of the node that serves the key's slot, asked of the cluster itself."""
    slots = redis.Redis(port=nodes[0].port).execute_command("CLUSTER", "SLOTS")
    slot = key_slot(key)
    [port] = [int(entry[2][1]) for entry in slots if entry[0] <= slot <= entry[1]]
    return port


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
        assert owner.exists(memory_key(agent, "b0")) == 0
