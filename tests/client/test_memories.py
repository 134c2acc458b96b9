"""The client's memory methods against the real app over a real redis-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiinfra_client import AsyncClient, Client, NotFound, PreconditionFailed


def test_put_get_update_delete_with_versions(api: Client, agent: str) -> None:
    before = datetime.now(UTC)
    created = api.memories.put(agent, "plan", {"steps": ["search", "summarise"], "n": 2}, ttl=600)
    assert created.created and created.key == "plan"
    assert before + timedelta(seconds=590) < created.expires_at < before + timedelta(seconds=610)

    got = api.memories.get(agent, "plan")
    assert got.value == {"steps": ["search", "summarise"], "n": 2} and got.version == created.version

    # An optimistic update: over the version read, once; the second writer's stale version is refused.
    updated = api.memories.put(agent, "plan", {**got.value, "n": 3}, if_match=got.version)
    assert not updated.created and updated.version != got.version
    with pytest.raises(PreconditionFailed) as stale:
        api.memories.put(agent, "plan", {"lost": True}, if_match=got.version)
    assert stale.value.status == 412 and stale.value.type == "precondition_failed"
    assert api.memories.get(agent, "plan").value["n"] == 3

    with pytest.raises(PreconditionFailed):
        api.memories.put(agent, "plan", 1, create_only=True)
    assert api.memories.put(agent, "fresh", None, create_only=True).created
    with pytest.raises(PreconditionFailed):
        api.memories.delete(agent, "plan", if_match=got.version)
    api.memories.delete(agent, "plan", if_match=updated.version)
    with pytest.raises(NotFound) as gone:
        api.memories.get(agent, "plan")
    assert gone.value.status == 404 and gone.value.type == "not_found" and gone.value.param == "key"
    assert "plan" in gone.value.message


def test_list_pages_and_iterate_every_key(api: Client, agent: str) -> None:
    keys = [f"note.{i:02d}" for i in range(7)] + ["other"]
    written = api.memories.batch_put(
        agent, [{"key": key, "value": {"i": i}, "ttl": 60} for i, key in enumerate(keys)]
    )
    assert [w.key for w in written] == keys
    first = api.memories.list_keys(agent, prefix="note.", limit=3)
    assert first.keys == ["note.00", "note.01", "note.02"] and first.cursor is not None
    second = api.memories.list_keys(agent, prefix="note.", limit=3, cursor=first.cursor)
    assert second.keys == ["note.03", "note.04", "note.05"]
    assert list(api.memories.iter_keys(agent, prefix="note.", page_size=3)) == keys[:7]
    assert list(api.memories.iter_keys(agent)) == sorted(keys)

    read = api.memories.batch_get(agent, ["note.03", "nope", "other"])
    assert [(m.key, m.value) for m in read.items] == [("note.03", {"i": 3}), ("other", {"i": 7})]
    assert read.missing == ["nope"]
    assert {m.version for m in read.items} == {w.version for w in written if w.key in ("note.03", "other")}


@pytest.mark.anyio
async def test_async_memory_methods(async_api: AsyncClient, agent: str) -> None:
    created = await async_api.memories.put(agent, "k", [1, 2])
    assert created.created
    assert (await async_api.memories.get(agent, "k")).value == [1, 2]
    with pytest.raises(PreconditionFailed):
        await async_api.memories.put(agent, "k", [3], if_match="0000000000000000")
    await async_api.memories.batch_put(agent, [{"key": f"b{i}", "value": i} for i in range(5)])
    assert [key async for key in async_api.memories.iter_keys(agent, page_size=2)] == [
        "b0",
        "b1",
        "b2",
        "b3",
        "b4",
        "k",
    ]
    page = await async_api.memories.list_keys(agent, prefix="b", limit=10)
    assert page.keys == ["b0", "b1", "b2", "b3", "b4"] and page.cursor is None
    read = await async_api.memories.batch_get(agent, ["b4", "zz"])
    assert [m.value for m in read.items] == [4] and read.missing == ["zz"]
    await async_api.memories.delete(agent, "k")
    with pytest.raises(NotFound):
        await async_api.memories.delete(agent, "k")
