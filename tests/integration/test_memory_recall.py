"""Recall by meaning over encrypted memories, against a real redis-server and the built int8 model.

Scores are checked against the cosine of the model's own float vectors (computed here, apart from
the service); what Redis holds is read back raw to show that no text or vector is in the clear."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from aiinfra.config import EMBED_MODEL_IDS, MemorySettings
from aiinfra.embedding.catalog import ModelCatalog
from aiinfra.memory.schema import memory_key, recall_texts_key, recall_vectors_key
from fastapi.testclient import TestClient

from tests.support.memory import memory_app, memory_settings_for
from tests.support.redis_server import RedisServer

INT8 = EMBED_MODEL_IDS[1]
TEXTS = {
    "cat": "My cat sleeps on the warm windowsill every afternoon.",
    "flight": "The flight to Lisbon leaves at seven on Friday morning.",
    "allergy": "The user is allergic to peanuts and shellfish.",
    "budget": "Quarterly marketing budget was cut by fifteen percent.",
}


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Callable[[list[str]], np.ndarray]:
    catalog = ModelCatalog(model_dir, INT8, threads=1)
    return lambda texts: catalog.get(INT8).embed(texts).vectors


def _put_all(client: TestClient, agent: str) -> dict[str, str]:
    versions = {}
    for key, text in TEXTS.items():
        response = client.put(f"/agents/{agent}/memories/{key}", json={"value": {"k": key}, "text": text})
        assert response.status_code == 201, response.text
        versions[key] = response.json()["version"]
    return versions


def _recall(client: TestClient, agent: str, **body: object) -> list[dict]:
    response = client.post(f"/agents/{agent}/recall", json=body)
    assert response.status_code == 200, response.text
    matches: list[dict] = response.json()["matches"]
    return matches


def test_recall_ranks_by_the_cosine_of_the_models_vectors(
    client: TestClient, agent: str, model: Callable[[list[str]], np.ndarray]
) -> None:
    versions = _put_all(client, agent)
    query = "what food must the user avoid?"
    matches = _recall(client, agent, query=query, k=4)

    vectors = model([query, *TEXTS.values()])
    expected = dict(zip(TEXTS, (vectors[1:] @ vectors[0]).tolist(), strict=True))
    assert [m["key"] for m in matches] == sorted(expected, key=expected.__getitem__, reverse=True)
    assert matches[0]["key"] == "allergy"
    for match in matches:
        key = match["key"]
        assert match["score"] == pytest.approx(expected[key], abs=0.02)  # the stored vector is int8
        assert match["text"] == TEXTS[key]
        assert match["value"] == {"k": key}
        assert match["version"] == versions[key]
        got = client.get(f"/agents/{agent}/memories/{key}").json()
        assert match["expires_at"] == got["expires_at"]


def test_k_min_score_and_include_values(client: TestClient, agent: str) -> None:
    _put_all(client, agent)
    best = _recall(client, agent, query="travel plans abroad")
    assert len(best) == 4 and best[0]["key"] == "flight"  # k defaults to 5: all four
    assert [m["score"] for m in best] == sorted((m["score"] for m in best), reverse=True)
    two = _recall(client, agent, query="travel plans abroad", k=2)
    assert two == best[:2]
    floor = (best[0]["score"] + best[1]["score"]) / 2
    assert [m["key"] for m in _recall(client, agent, query="travel plans abroad", min_score=floor)] == [
        "flight"
    ]
    bare = _recall(client, agent, query="travel plans abroad", k=1, include_values=False)
    assert "value" not in bare[0] and bare[0]["key"] == "flight" and bare[0]["text"] == TEXTS["flight"]


def test_updates_deletes_and_expiry_show_at_once(client: TestClient, agent: str) -> None:
    _put_all(client, agent)
    url = f"/agents/{agent}/memories"
    # A new text replaces the old one.
    client.put(f"{url}/cat", json={"value": 1, "text": "Weekly standup moved to Tuesday at ten."})
    top = _recall(client, agent, query="when is the team meeting?", k=1)[0]
    assert top["key"] == "cat" and top["text"].startswith("Weekly standup")
    assert all(m["key"] != "cat" for m in _recall(client, agent, query="a cat on a windowsill", k=4)[:1])
    # A put without a text: the memory has no text any more.
    client.put(f"{url}/cat", json={"value": 2})
    assert "cat" not in [m["key"] for m in _recall(client, agent, query="team meeting", k=10)]
    # A delete.
    assert client.delete(f"{url}/allergy").status_code == 204
    assert "allergy" not in [m["key"] for m in _recall(client, agent, query="peanut allergy", k=10)]
    # Expiry.
    client.put(f"{url}/soon", json={"value": 3, "text": "Peanut allergy, severe.", "ttl": 1})
    assert _recall(client, agent, query="peanut allergy", k=1)[0]["key"] == "soon"
    time.sleep(1.2)
    assert {m["key"] for m in _recall(client, agent, query="peanut allergy", k=10)} == {"flight", "budget"}


def test_redis_never_holds_a_text_or_a_vector_in_the_clear(
    client: TestClient, agent: str, raw_redis: redis.Redis, model: Callable[[list[str]], np.ndarray]
) -> None:
    _put_all(client, agent)
    stored = b"".join(
        raw_redis.dump(key) or b"" for key in raw_redis.scan_iter(match=f"*{{{agent}}}*", count=1000)
    )
    assert len(raw_redis.hgetall(recall_vectors_key(agent))) == len(TEXTS)
    assert len(raw_redis.hgetall(recall_texts_key(agent))) == len(TEXTS)
    # The memories' keys are names in the clear (as they always were); their texts are not.
    for word in ("windowsill", "afternoon", "Lisbon", "Friday", "peanuts", "shellfish", "Quarterly"):
        assert word.encode() not in stored
    # Nor the vector: its int8 form as the service would store it, any 16 bytes of it.
    vector = model([TEXTS["cat"]])[0]
    quantized = np.rint(vector / np.abs(vector).max() * 127).astype(np.int8).tobytes()
    assert quantized[100:116] not in stored


def test_a_vector_moved_to_another_agent_fails_authentication(
    client: TestClient, agent: str, raw_redis: redis.Redis
) -> None:
    _put_all(client, agent)
    other = f"{agent}-other"
    client.put(f"/agents/{other}/memories/own", json={"value": 1, "text": "A memory of its own."})
    stolen = raw_redis.hget(recall_vectors_key(agent), "allergy")
    raw_redis.hset(recall_vectors_key(other), "allergy", stolen)
    response = client.post(f"/agents/{other}/recall", json={"query": "allergy"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "integrity_error"
    assert "peanut" not in response.text


def test_a_batch_put_with_texts_is_recalled_and_mixed_items_drop_old_texts(
    client: TestClient, agent: str
) -> None:
    _put_all(client, agent)
    items = [
        {"key": "cat", "value": "no text now"},
        {"key": "dog", "value": 1, "text": "The dog needs a walk before breakfast."},
        {"key": "car", "value": 2, "text": "The car's tyres were changed in March."},
    ]
    response = client.post(f"/agents/{agent}/batch-put", json={"items": items})
    assert response.status_code == 200 and len(response.json()["items"]) == 3
    keys = [m["key"] for m in _recall(client, agent, query="pets and animals", k=10)]
    assert keys[0] == "dog" and "cat" not in keys and "car" in keys
    assert client.get(f"/agents/{agent}/memories/cat").json()["value"] == "no text now"


def test_an_agent_without_texts_recalls_nothing(client: TestClient, agent: str) -> None:
    assert client.put(f"/agents/{agent}/memories/plain", json={"value": 1}).status_code == 201
    assert _recall(client, agent, query="anything") == []
    assert _recall(client, f"{agent}-never", query="anything") == []


@pytest.mark.parametrize(
    "body",
    [
        {"query": ""},
        {"query": "   \n\t"},
        {"query": "x" * 8193},
        {"query": "fine", "k": 0},
        {"query": "fine", "k": 101},
        {"query": "fine", "k": "5"},
        {"query": "fine", "min_score": 1.5},
        {"query": "fine", "include_values": "yes"},
        {"query": "fine", "extra": 1},
        {},
    ],
)
def test_bad_recall_input_is_400(client: TestClient, agent: str, body: dict) -> None:
    response = client.post(f"/agents/{agent}/recall", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("text", ["", "  \n ", "y" * 8193, 7])
def test_a_bad_text_is_400_and_writes_nothing(
    client: TestClient, agent: str, raw_redis: redis.Redis, text: object
) -> None:
    response = client.put(f"/agents/{agent}/memories/k", json={"value": 1, "text": text})
    assert response.status_code == 400, response.text
    batch = {"items": [{"key": "a", "value": 1, "text": "fine"}, {"key": "b", "value": 1, "text": text}]}
    assert client.post(f"/agents/{agent}/batch-put", json=batch).status_code == 400
    assert raw_redis.exists(memory_key(agent, "k"), memory_key(agent, "a"), recall_vectors_key(agent)) == 0


def test_a_text_of_the_limit_is_taken(client: TestClient, agent: str) -> None:
    text = ("word " * 2000)[:8192]
    assert client.put(f"/agents/{agent}/memories/long", json={"value": 1, "text": text}).status_code == 201
    assert _recall(client, agent, query="word word word", k=1)[0]["text"] == text


def test_the_recall_quota_is_a_429_that_writes_nothing(
    memory_settings: MemorySettings, agent: str, raw_redis: redis.Redis
) -> None:
    client = TestClient(memory_app(dataclasses.replace(memory_settings, max_recall_per_agent=3)))
    url = f"/agents/{agent}/memories"
    for key in ("a", "b", "c"):
        assert client.put(f"{url}/{key}", json={"value": 1, "text": f"note {key}"}).status_code == 201
    refused = client.put(f"{url}/d", json={"value": 1, "text": "one too many"})
    assert refused.status_code == 429
    assert refused.json()["error"]["param"] == "max_recall_per_agent"
    assert raw_redis.exists(memory_key(agent, "d")) == 0
    assert raw_redis.hlen(recall_vectors_key(agent)) == 3
    batch = {"items": [{"key": "d", "value": 1, "text": "d"}, {"key": "e", "value": 1}]}
    assert client.post(f"/agents/{agent}/batch-put", json=batch).status_code == 429
    assert raw_redis.exists(memory_key(agent, "d"), memory_key(agent, "e")) == 0
    # Replacing a memory that has a text is no new one; a memory without a text never counts.
    assert client.put(f"{url}/a", json={"value": 2, "text": "note a, again"}).status_code == 200
    assert client.put(f"{url}/plain", json={"value": 2}).status_code == 201
    # A memory replaced without its text frees its place (found stale at the bound).
    assert client.put(f"{url}/b", json={"value": 2}).status_code == 200
    assert client.put(f"{url}/d", json={"value": 1, "text": "now it fits"}).status_code == 201
    assert raw_redis.hlen(recall_vectors_key(agent)) == 3
    # And a delete frees one at once.
    assert client.delete(f"{url}/c").status_code == 204
    assert client.put(f"{url}/e", json={"value": 1, "text": "and this one"}).status_code == 201


def test_a_put_with_text_over_the_memory_quota_writes_neither_value_nor_text(
    memory_settings: MemorySettings, agent: str, raw_redis: redis.Redis
) -> None:
    settings = dataclasses.replace(memory_settings, max_memories_per_agent=1)
    client = TestClient(memory_app(settings))
    url = f"/agents/{agent}/memories"
    assert client.put(f"{url}/a", json={"value": 1, "text": "first"}).status_code == 201
    refused = client.put(f"{url}/b", json={"value": 1, "text": "second"})
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_memories_per_agent"
    assert raw_redis.exists(memory_key(agent, "b")) == 0
    assert raw_redis.hkeys(recall_vectors_key(agent)) == [b"a"]
    assert raw_redis.hkeys(recall_texts_key(agent)) == [b"a"]


def test_preconditions_hold_for_puts_with_text(client: TestClient, agent: str) -> None:
    url = f"/agents/{agent}/memories/k"
    first = client.put(url, json={"value": 1, "text": "first"}, headers={"If-None-Match": "*"})
    assert first.status_code == 201
    assert client.put(url, json={"value": 2, "text": "x"}, headers={"If-None-Match": "*"}).status_code == 412
    stale = client.put(url, json={"value": 2, "text": "x"}, headers={"If-Match": "0000000000000001"})
    assert stale.status_code == 412
    etag = {"If-Match": first.headers["etag"]}
    matched = client.put(url, json={"value": 2, "text": "second"}, headers=etag)
    assert matched.status_code == 200
    assert _recall(client, agent, query="second", k=1)[0]["text"] == "second"


def test_recall_while_redis_is_down_is_503(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory()
    client = TestClient(memory_app(memory_settings_for(server.url, keyring_uri, timeout=0.5)))
    assert client.put(f"/agents/{agent}/memories/k", json={"value": 1, "text": "kept"}).status_code == 201
    server.kill()
    response = client.post(f"/agents/{agent}/recall", json={"query": "kept"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    put = client.put(f"/agents/{agent}/memories/j", json={"value": 1, "text": "lost?"})
    assert put.status_code == 503
    server.start()
    assert [m["key"] for m in _recall(client, agent, query="kept")] == ["k"]


def test_a_model_that_fails_to_load_is_503_naming_it_and_other_routes_work(
    memory_settings: MemorySettings,
    agent: str,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    raw_redis: redis.Redis,
) -> None:
    broken = tmp_path / "model"
    (broken / INT8).mkdir(parents=True)
    shutil.copy(model_dir / "tokenizer.json", broken / "tokenizer.json")
    (broken / INT8 / "model.onnx").write_bytes(b"not an onnx graph")
    monkeypatch.setenv("MODEL_DIR", str(broken))
    client = TestClient(memory_app(memory_settings))
    url = f"/agents/{agent}/memories"
    for response in (
        client.put(f"{url}/k", json={"value": 1, "text": "some text"}),
        client.post(f"/agents/{agent}/recall", json={"query": "some text"}),
        client.post(f"/agents/{agent}/batch-put", json={"items": [{"key": "b", "value": 1, "text": "t"}]}),
    ):
        assert response.status_code == 503, response.text
        assert INT8 in response.json()["error"]["message"]
    assert raw_redis.exists(memory_key(agent, "k"), memory_key(agent, "b")) == 0
    assert client.put(f"{url}/k", json={"value": 1}).status_code == 201
    assert client.get(f"{url}/k").json()["value"] == 1
    assert client.get(url).json()["keys"] == ["k"]


def test_a_batch_of_more_texts_than_one_request_embeds_is_400(client: TestClient, agent: str) -> None:
    items = [{"key": f"k{i}", "value": i, "text": f"note {i}"} for i in range(101)]
    response = client.post(f"/agents/{agent}/batch-put", json={"items": items})
    assert response.status_code == 400 and "at most 100 texts" in response.json()["error"]["message"]
    assert client.get(f"/agents/{agent}/memories").json()["keys"] == []
    items[100].pop("text")  # 100 texts and one value without: taken
    assert client.post(f"/agents/{agent}/batch-put", json={"items": items}).status_code == 200
    assert len(_recall(client, agent, query="note 42", k=100)) == 100


def test_values_too_large_for_one_answer_are_a_400_naming_k(client: TestClient, agent: str) -> None:
    value = "v" * 200_000
    for i in range(40):
        body = {"value": value, "text": f"large note {i}"}
        put = client.put(f"/agents/{agent}/memories/big-{i}", json=body)
        assert put.status_code == 201
    response = client.post(f"/agents/{agent}/recall", json={"query": "large note", "k": 40})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "answer_too_large"
    assert response.json()["error"]["param"] == "k"
    bare = _recall(client, agent, query="large note", k=40, include_values=False)
    assert len(bare) == 40
    assert len(_recall(client, agent, query="large note", k=5)) == 5
