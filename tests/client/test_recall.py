"""The client's texts on writes and its recall by meaning, against the real app over a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiinfra_client import AsyncClient, Client, InvalidRequest, NotFound, RateLimited, Retry

from tests.support.local_server import served
from tests.support.redis_server import RedisServer

FACTS = {
    "allergy": "The user is allergic to peanuts and must never eat them.",
    "home": "The user lives in Lisbon, in a flat near the river.",
    "job": "The user works night shifts as a nurse at the city hospital.",
    "pet": "The user has a grey cat called Miso who sleeps all day.",
}


def _write_facts(api: Client, agent: str) -> dict[str, str]:
    """The facts as memories with their text, and one memory without a text; their versions."""
    written = api.memories.batch_put(
        agent,
        [{"key": key, "value": {"fact": key}, "text": text, "ttl": 600} for key, text in FACTS.items()],
    )
    api.memories.put(agent, "plain", {"fact": "peanut butter recipe"})  # no text: recall never sees it
    return {w.key: w.version for w in written}


def test_recall_finds_by_meaning_best_first(api: Client, agent: str) -> None:
    versions = _write_facts(api, agent)
    before = datetime.now(UTC)

    found = api.memories.recall(agent, "what food should this person avoid?", k=3)
    assert found[0].key == "allergy" and len(found) == 3
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    best = found[0]
    assert best.text == FACTS["allergy"] and best.value == {"fact": "allergy"}
    assert best.version == versions["allergy"] and -1 <= best.score <= 1
    assert before < best.expires_at < before + timedelta(seconds=601)

    assert api.memories.recall(agent, "where does the user live?", k=1)[0].key == "home"
    assert api.memories.recall(agent, "their occupation")[0].key == "job"
    # Every memory with a text and none without: k larger than the agent holds.
    assert {m.key for m in api.memories.recall(agent, "peanut butter", k=100)} == set(FACTS)

    bare = api.memories.recall(agent, "what food should this person avoid?", k=3, include_values=False)
    assert [(m.key, m.score, m.text) for m in bare] == [(m.key, m.score, m.text) for m in found]
    assert all(m.value is None for m in bare)


def test_min_score_and_k_bound_the_matches(api: Client, agent: str) -> None:
    _write_facts(api, agent)
    everything = api.memories.recall(agent, "a pet animal at home", k=4)
    assert everything[0].key == "pet" and len(everything) == 4
    between = (everything[0].score + everything[1].score) / 2
    assert [m.key for m in api.memories.recall(agent, "a pet animal at home", min_score=between)] == ["pet"]
    assert api.memories.recall(agent, "a pet animal at home", min_score=1.0) == []
    assert len(api.memories.recall(agent, "a pet animal at home", k=2)) == 2


def test_a_write_replaces_or_drops_the_text(api: Client, agent: str) -> None:
    _write_facts(api, agent)
    api.memories.put(agent, "pet", {"fact": "dog"}, text="The user walks a big black dog every morning.")
    [dog] = api.memories.recall(agent, "a morning walk with the dog", k=1)
    assert (dog.key, dog.value, dog.text) == (
        "pet",
        {"fact": "dog"},
        "The user walks a big black dog every morning.",
    )

    # A write without a text, alone or in a batch, leaves the memory with none.
    api.memories.put(agent, "pet", {"fact": "no pets"})
    api.memories.batch_put(
        agent, [{"key": "home", "value": {"moved": True}}, {"key": "new", "value": 1, "text": "Porto"}]
    )
    assert {m.key for m in api.memories.recall(agent, "anything at all", k=100)} == {"allergy", "job", "new"}
    api.memories.delete(agent, "job")
    assert {m.key for m in api.memories.recall(agent, "anything at all", k=100)} == {"allergy", "new"}
    assert api.memories.recall(f"{agent}-empty", "anything at all") == []


def test_bad_input_is_the_apis_400(api: Client, agent: str) -> None:
    with pytest.raises(InvalidRequest) as blank:
        api.memories.recall(agent, "   ")
    assert (blank.value.status, blank.value.type, blank.value.param) == (
        400,
        "invalid_request_error",
        "query",
    )
    assert "whitespace" in blank.value.message
    with pytest.raises(InvalidRequest) as too_many:
        api.memories.recall(agent, "q", k=101)
    assert too_many.value.param == "k"
    with pytest.raises(InvalidRequest) as score:
        api.memories.recall(agent, "q", min_score=1.5)
    assert score.value.param == "min_score"
    with pytest.raises(InvalidRequest) as text:
        api.memories.put(agent, "k", 1, text="x" * 8193)
    assert text.value.param == "text" and "8192" in text.value.message
    with pytest.raises(NotFound):  # nothing was written
        api.memories.get(agent, "k")


@pytest.fixture
def capped_url(
    redis_factory: Callable[..., RedisServer],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The memory app letting an agent hold two memories with a text."""
    monkeypatch.setenv("MEMORY_MAX_RECALL_PER_AGENT", "2")
    with served(
        "aiinfra.api.memory:create_memory_app", redis_factory().url, tmp_path_factory.mktemp("cap")
    ) as url:
        yield url


def test_the_cap_on_texts_is_a_429_not_retried(capped_url: str, agent: str) -> None:
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda response: statuses.append(response.status_code)]})
    # The default policy retries 429s; a cap is not worth waiting for.
    with http, Client(capped_url, retry=Retry(), http_client=http) as client:
        client.memories.batch_put(
            agent, [{"key": "a", "value": 1, "text": "one"}, {"key": "b", "value": 2, "text": "two"}]
        )
        with pytest.raises(RateLimited) as capped:
            client.memories.put(agent, "c", 3, text="three")
        assert capped.value.retry_after is None
        with pytest.raises(NotFound):
            client.memories.get(agent, "c")
        client.memories.put(agent, "c", 3)  # without a text, the cap does not apply
        assert {m.key for m in client.memories.recall(agent, "a number", k=10)} == {"a", "b"}
    assert (capped.value.status, capped.value.type, capped.value.param) == (
        429,
        "quota_exceeded",
        "max_recall_per_agent",
    )
    assert "2 memories with a text" in capped.value.message
    assert statuses == [200, 429, 404, 201, 200]


@pytest.mark.anyio
async def test_async_texts_and_recall(async_api: AsyncClient, agent: str) -> None:
    created = await async_api.memories.put(agent, "pet", {"n": 1}, text=FACTS["pet"])
    await async_api.memories.batch_put(
        agent, [{"key": key, "value": key, "text": text} for key, text in FACTS.items() if key != "pet"]
    )
    found = await async_api.memories.recall(agent, "a sleepy kitten", k=2)
    assert found[0].key == "pet" and found[0].version == created.version and found[0].value == {"n": 1}
    assert len(found) == 2 and found[0].score > found[1].score
    with pytest.raises(InvalidRequest) as blank:
        await async_api.memories.recall(agent, "")
    assert blank.value.param == "query"
