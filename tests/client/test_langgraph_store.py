"""AiinfraStore through LangGraph's own BaseStore methods, against the real app over HTTP and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiinfra_client import Client, InvalidRequest, NotFound
from aiinfra_client.langgraph import AiinfraStore
from langgraph.store.base import GetOp, InvalidNamespaceError, PutOp, SearchItem

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

    store.put((agent,), "top", {"n": 1}, index=["n"])
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
    assert [item.key for item in store.search((agent, "notes", "home"), query="")] == ["n0", "n2", "n4"]


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
        recalled = await store.asearch((agent,), query="the best rated document")
        assert {hit.key for hit in recalled} == {"d1", "d2"} and all(
            hit.score is not None for hit in recalled
        )
        await store.adelete((agent, "docs"), "d1")
        assert await store.aget((agent, "docs"), "d1") is None
        assert [hit.key for hit in await store.asearch((agent,), query="the best rated document")] == ["d2"]
    finally:
        store.close()
        await store.aclose()


NOTES = {
    "allergy": {"text": "The user is allergic to peanuts.", "kind": "health", "stars": 5},
    "home": {"text": "The user lives in Lisbon, near the river.", "kind": "place", "stars": 2},
    "pet": {"text": "The user has a grey cat called Miso.", "kind": "home", "stars": 4},
    "job": {"text": "The user works night shifts as a nurse.", "kind": "work", "stars": 3},
}


def test_search_with_a_query_recalls_best_first(store: AiinfraStore, agent: str) -> None:
    for key, value in NOTES.items():
        store.put((agent, "facts"), key, value)
    found = store.search((agent,), query="which foods must the user avoid?")
    assert isinstance(found[0], SearchItem) and (found[0].namespace, found[0].key) == (
        (agent, "facts"),
        "allergy",
    )
    assert found[0].value == NOTES["allergy"] and found[0].created_at == found[0].updated_at
    assert len(found) == 4 and all(item.score is not None for item in found)
    scores = [item.score for item in found if item.score is not None]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1

    assert [item.key for item in store.search((agent, "facts"), query="a pet animal", limit=1)] == ["pet"]
    second = store.search((agent,), query="a pet animal", limit=2)[1]
    assert store.search((agent,), query="a pet animal", limit=1, offset=1) == [second]
    healthy = store.search((agent,), query="a pet animal", filter={"stars": {"$gte": 4}})
    assert [item.key for item in healthy] == ["pet", "allergy"]
    assert store.search((agent, "elsewhere"), query="a pet animal") == []


def test_a_query_stays_within_the_namespace_prefix(store: AiinfraStore, api: Client, agent: str) -> None:
    # Closer to the query than anything under "work": the first recall's best are all outside it.
    for i in range(5):
        store.put((agent, "home"), f"cat{i}", {"text": f"My cat number {i} sleeps on the sofa."})
    store.put((agent, "work"), "shift", {"text": "I work night shifts at the hospital."})
    api.memories.put(agent, "raw", {"not": "an item"}, text="A cat sleeping on a sofa.")  # not the store's
    found = store.search((agent, "work"), query="a cat asleep on the sofa", limit=1)
    assert [(item.namespace, item.key) for item in found] == [((agent, "work"), "shift")]
    at_home = store.search((agent, "home"), query="a cat asleep on the sofa", limit=10)
    assert sorted(item.key for item in at_home) == [f"cat{i}" for i in range(5)]
    everywhere = store.search((agent,), query="a cat asleep on the sofa", limit=10)
    assert len(everywhere) == 6 and everywhere[-1].key == "shift"


def test_index_chooses_the_text(store: AiinfraStore, api: Client, agent: str) -> None:
    value = {"title": "Quarterly tax return due", "body": "Take the dog to the vet.", "tags": ["a", "b"]}
    store.put((agent,), "default", value)  # the store's default: the whole value as JSON
    store.put((agent,), "title", value, index=["title"])
    store.put((agent,), "both", value, index=["title", "body", "missing"])
    store.put((agent,), "none", value, index=False)
    store.put((agent,), "nothing-there", value, index=["missing"])
    texts = {m.key: m.text for m in api.memories.recall(agent, "paying taxes", k=10)}
    assert texts == {
        "default": json.dumps(value, sort_keys=True, ensure_ascii=False),  # LangGraph's "$"
        "title": "Quarterly tax return due",
        "both": "Quarterly tax return due\nTake the dog to the vet.",
    }
    assert {item.key for item in store.search((agent,), query="paying taxes")} == set(texts)
    # Not found by a query, but still items.
    assert {item.key for item in store.search((agent,))} == {*texts, "none", "nothing-there"}


def test_the_store_index_config_sets_the_default_fields(api_url: str, api: Client, agent: str) -> None:
    store = AiinfraStore(base_url=api_url, index={"fields": ["memory.content"]}, retry=NO_RETRY)
    try:
        store.put((agent,), "a", {"memory": {"content": "The user prefers tea to coffee."}, "id": 7})
        store.put((agent,), "b", {"other": "no content field"})
        store.put((agent,), "c", {"memory": {"content": "ignored"}, "x": "kept"}, index=["x"])
        assert {m.key: m.text for m in api.memories.recall(agent, "hot drinks", k=10)} == {
            "a": "The user prefers tea to coffee.",
            "c": "kept",
        }
    finally:
        store.close()
    unindexed = AiinfraStore(base_url=api_url, index={"fields": []}, retry=NO_RETRY)
    try:
        unindexed.put((agent,), "d", {"text": "The user prefers tea to coffee."})
        assert "d" not in {m.key for m in api.memories.recall(agent, "hot drinks", k=10)}
    finally:
        unindexed.close()
    with pytest.raises(ValueError, match="own model"):
        AiinfraStore(base_url=api_url, index={"dims": 384, "embed": "openai:text-embedding-3-small"})


def test_a_new_value_replaces_the_text(store: AiinfraStore, api: Client, agent: str) -> None:
    store.put((agent, "prefs"), "drink", {"text": "The user drinks green tea every morning."})
    store.put((agent, "prefs"), "drink", {"text": "The user now only drinks black coffee."})
    [match] = api.memories.recall(agent, "a morning beverage", k=10)
    assert match.text == '{"text": "The user now only drinks black coffee."}'
    [item] = store.search((agent,), query="green tea")
    assert item.value == {"text": "The user now only drinks black coffee."}
    store.put((agent, "prefs"), "drink", {"text": "unindexed now"}, index=False)
    assert store.search((agent,), query="a morning beverage") == []
    store.delete((agent, "prefs"), "drink")
    assert store.search((agent,), query="a morning beverage") == []


def test_a_long_text_is_cut_and_a_bad_query_is_the_apis_400(
    store: AiinfraStore, api: Client, agent: str
) -> None:
    store.put((agent,), "long", {"text": "tea " * 3000}, index=["text"])
    [match] = api.memories.recall(agent, "tea", k=10)
    assert match.text == ("tea " * 3000)[:8192]
    with pytest.raises(InvalidRequest) as blank:
        store.search((agent,), query="   ")
    assert (blank.value.status, blank.value.type, blank.value.param) == (
        400,
        "invalid_request_error",
        "query",
    )
    assert "whitespace" in blank.value.message


def test_a_batch_of_more_texts_than_one_request_embeds_is_sent_in_parts(
    store: AiinfraStore, agent: str
) -> None:
    # The service embeds at most 100 texts per batch put: 250 puts with texts go as three.
    store.batch([PutOp((agent, "notes"), f"n{i}", {"text": f"note number {i}"}) for i in range(250)])
    assert len(store.search((agent, "notes"), limit=1000)) == 250
    found = store.search((agent,), query="note number 217", limit=3)
    assert "n217" in [item.key for item in found]
