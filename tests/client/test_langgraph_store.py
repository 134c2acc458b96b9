"""AiinfraStore through LangGraph's own BaseStore methods, against the real app over HTTP and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiinfra_client import Client, NotFound
from aiinfra_client.langgraph import AiinfraStore
from langgraph.store.base import GetOp, InvalidNamespaceError, PutOp

from tests.client.conftest import NO_RETRY


@pytest.fixture
def store(api_url: str) -> Iterator[AiinfraStore]:
    built = AiinfraStore(base_url=api_url, retry=NO_RETRY)
    yield built
    built.close()


def test_put_get_delete_and_the_memory_it_maps_to(store: AiinfraStore, api: Client, agent: str) -> None:
    before = datetime.now(UTC)
    store.put((agent, "prefs", "ui"), "theme", {"colour": "teal", "size": 3})
    item = store.get((agent, "prefs", "ui"), "theme")
    assert item is not None
    assert (item.namespace, item.key, item.value) == (
        (agent, "prefs", "ui"),
        "theme",
        {"colour": "teal", "size": 3},
    )
    assert before <= item.created_at == item.updated_at <= datetime.now(UTC)
    # The documented mapping: labels after the agent id and the key, joined by ".".
    memory = api.memories.get(agent, "prefs.ui.theme")
    assert memory.value["value"] == {"colour": "teal", "size": 3}

    store.put((agent,), "top", {"n": 1}, index=["n"])  # accepted: nothing the API does not know is sent
    assert api.memories.get(agent, "top").value["value"] == {"n": 1}
    store.delete((agent, "prefs", "ui"), "theme")
    assert store.get((agent, "prefs", "ui"), "theme") is None
    with pytest.raises(NotFound):
        api.memories.get(agent, "prefs.ui.theme")
    store.delete((agent,), "never-written")  # a no-op, as in every LangGraph store


def test_ttl_in_minutes_becomes_the_memorys_expiry(store: AiinfraStore, api: Client, agent: str) -> None:
    started = datetime.now(UTC)
    store.put((agent, "short"), "k", {"v": 1}, ttl=2)
    expires = api.memories.get(agent, "short.k").expires_at
    assert started + timedelta(seconds=115) < expires < started + timedelta(seconds=125)


def test_search_lists_under_the_prefix_and_filters(store: AiinfraStore, api: Client, agent: str) -> None:
    for i in range(6):
        store.put(
            (agent, "notes", "work" if i % 2 else "home"),
            f"n{i}",
            {"i": i, "kind": "even" if i % 2 == 0 else "odd"},
        )
    store.put((agent, "notesy"), "x", {"i": 99})  # a sibling whose name only starts the same
    api.memories.put(agent, "notes.raw", "not written by the store")

    every = store.search((agent, "notes"), limit=20)
    assert sorted(item.key for item in every) == [f"n{i}" for i in range(6)]
    assert all(item.score is None for item in every)
    home = store.search((agent, "notes", "home"))
    assert [(item.namespace, item.key) for item in home] == [
        ((agent, "notes", "home"), f"n{i}") for i in (0, 2, 4)
    ]
    odd_big = store.search((agent,), filter={"kind": "odd", "i": {"$gte": 3}}, limit=10)
    assert sorted(item.value["i"] for item in odd_big) == [3, 5]
    assert [
        item.value["i"] for item in store.search((agent,), filter={"i": {"$ne": 99}}, limit=2, offset=1)
    ] == [2, 4]
    with pytest.raises(NotImplementedError, match="recall"):
        store.search((agent,), query="what does the user like?")


def test_list_namespaces_within_an_agent(store: AiinfraStore, agent: str) -> None:
    for namespace in [(agent, "a", "b", "c"), (agent, "a", "b", "d", "e"), (agent, "a", "f"), (agent, "g")]:
        store.put(namespace, "k", {"v": 0})
    assert store.list_namespaces(prefix=(agent,)) == [
        (agent, "a", "b", "c"),
        (agent, "a", "b", "d", "e"),
        (agent, "a", "f"),
        (agent, "g"),
    ]
    assert store.list_namespaces(prefix=(agent, "a"), max_depth=3) == [(agent, "a", "b"), (agent, "a", "f")]
    assert store.list_namespaces(prefix=(agent, "*", "b"), suffix=("e",)) == [(agent, "a", "b", "d", "e")]
    assert store.list_namespaces(prefix=(agent,), limit=2, offset=1) == [
        (agent, "a", "b", "d", "e"),
        (agent, "a", "f"),
    ]
    with pytest.raises(InvalidNamespaceError, match="agent id first"):
        store.list_namespaces(suffix=("g",))


def test_what_cannot_be_mapped_is_refused(store: AiinfraStore, agent: str) -> None:
    with pytest.raises(InvalidNamespaceError, match=r"key 'a\.b'"):
        store.put((agent, "x"), "a.b", {"v": 1})
    with pytest.raises(InvalidNamespaceError, match="namespace label 'caf"):
        store.put((agent, "café"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError, match="over 128"):
        store.put((agent, "l" * 100), "k" * 40, {"v": 1})
    with pytest.raises(InvalidNamespaceError, match="agent id"):
        store.search(())


def test_batch_reads_before_its_writes_and_the_last_put_wins(store: AiinfraStore, agent: str) -> None:
    store.put((agent,), "k", {"v": "old"})
    results = store.batch(
        [
            PutOp((agent,), "k", {"v": "first"}),
            GetOp((agent,), "k"),
            PutOp((agent,), "k", {"v": "last"}),
            PutOp((agent,), "gone", None),
        ]
    )
    assert results[0] is None and results[2] is None
    assert results[1] is not None and results[1].value == {"v": "old"}
    item = store.get((agent,), "k")
    assert item is not None and item.value == {"v": "last"}


@pytest.mark.anyio
async def test_async_methods(api_url: str, agent: str) -> None:
    store = AiinfraStore(base_url=api_url, retry=NO_RETRY)
    try:
        await store.aput((agent, "docs"), "d1", {"title": "one", "stars": 5})
        await store.aput((agent, "docs"), "d2", {"title": "two", "stars": 1})
        item = await store.aget((agent, "docs"), "d1")
        assert item is not None and item.value == {"title": "one", "stars": 5}
        found = await store.asearch((agent, "docs"), filter={"stars": {"$gt": 2}})
        assert [hit.key for hit in found] == ["d1"]
        assert await store.alist_namespaces(prefix=(agent,)) == [(agent, "docs")]
        await store.adelete((agent, "docs"), "d1")
        assert await store.aget((agent, "docs"), "d1") is None
        with pytest.raises(NotImplementedError):
            await store.asearch((agent,), query="anything")
    finally:
        store.close()
        await store.aclose()
