"""The memory routes against a real redis-server: versions, TTL, listing, validation, tampering."""

from __future__ import annotations

import time

import pytest
import redis
from aiinfra.memory.schema import memory_key
from fastapi.testclient import TestClient


def _put(client: TestClient, agent: str, key: str, value: object, **extra: object) -> dict:
    headers = extra.pop("headers", None)
    response = client.put(f"/agents/{agent}/memories/{key}", json={"value": value, **extra}, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_put_get_delete_round_trip(client: TestClient, agent: str) -> None:
    value = {"plan": ["search", "summarise"], "n": 3, "ok": True, "none": None, "pi": 3.25, "txt": "café ✓"}
    created = client.put(f"/agents/{agent}/memories/plan", json={"value": value, "ttl": 600})
    assert created.status_code == 201
    body = created.json()
    assert created.headers["etag"] == f'"{body["version"]}"'
    assert body["agent_id"] == agent and body["key"] == "plan" and body["expires_at"].endswith("Z")

    got = client.get(f"/agents/{agent}/memories/plan")
    assert got.status_code == 200
    assert got.json() == {**body, "value": value}
    assert got.headers["etag"] == created.headers["etag"]

    replaced = client.put(f"/agents/{agent}/memories/plan", json={"value": [1]})
    assert replaced.status_code == 200 and replaced.json()["version"] != body["version"]
    assert client.delete(f"/agents/{agent}/memories/plan").status_code == 204
    missing = client.get(f"/agents/{agent}/memories/plan")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert client.delete(f"/agents/{agent}/memories/plan").status_code == 404


@pytest.mark.parametrize("value", [None, 0, -1.5, "", [], {}, [[[]]], "x" * 1000, 2**63 - 1])
def test_any_json_value_round_trips(client: TestClient, agent: str, value: object) -> None:
    _put(client, agent, "v", value)
    assert client.get(f"/agents/{agent}/memories/v").json()["value"] == value


def test_preconditions(client: TestClient, agent: str) -> None:
    url = f"/agents/{agent}/memories/k"
    first = client.put(url, json={"value": 1}, headers={"If-None-Match": "*"})
    assert first.status_code == 201
    again = client.put(url, json={"value": 2}, headers={"If-None-Match": "*"})
    assert again.status_code == 412 and again.json()["error"]["type"] == "precondition_failed"

    version = first.json()["version"]
    second = client.put(url, json={"value": 2}, headers={"If-Match": version})  # bare
    assert second.status_code == 200
    stale = client.put(url, json={"value": 3}, headers={"If-Match": f'"{version}"'})
    assert stale.status_code == 412
    assert client.get(url).json()["value"] == 2
    assert client.delete(url, headers={"If-Match": f'"{version}"'}).status_code == 412
    assert client.delete(url, headers={"If-Match": second.headers["etag"]}).status_code == 204
    assert client.put(url, json={"value": 4}, headers={"If-Match": "*"}).status_code == 412
    both = client.put(url, json={"value": 4}, headers={"If-Match": "*", "If-None-Match": "*"})
    assert both.status_code == 412
    assert (
        client.put(
            f"/agents/{agent}/memories/new", json={"value": 1}, headers={"If-Match": version}
        ).status_code
        == 412
    )


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"If-Match": "12"}, "If-Match"),
        ({"If-Match": 'W/"0123456789abcdef"'}, "If-Match"),
        ({"If-Match": "0123456789ABCDEG"}, "If-Match"),
        ({"If-None-Match": '"0123456789abcdef"'}, "If-None-Match"),
        ({"If-Match": "*", "If-None-Match": "0123456789abcdef"}, "If-None-Match"),
    ],
)
def test_malformed_preconditions_are_400(client: TestClient, agent: str, headers: dict, param: str) -> None:
    response = client.put(f"/agents/{agent}/memories/k", json={"value": 1}, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/agents/bad agent/memories/k", {"value": 1}, 400),
        ("PUT", "/agents/a/memories/" + "k" * 129, {"value": 1}, 400),
        ("PUT", "/agents/a/memories/k:x", {"value": 1}, 400),
        ("PUT", "/agents/a/memories/k", {"value": 1, "ttl": 0}, 400),
        ("PUT", "/agents/a/memories/k", {"value": 1, "ttl": -5}, 400),
        ("PUT", "/agents/a/memories/k", {"value": 1, "ttl": 30 * 86400 + 1}, 400),
        ("PUT", "/agents/a/memories/k", {"value": 1, "ttl": "60"}, 400),
        ("PUT", "/agents/a/memories/k", {"ttl": 60}, 400),
        ("PUT", "/agents/a/memories/k", {"value": 2**64}, 400),
        ("PUT", "/agents/a/memories/k", {"value": "x" * (256 * 1024)}, 413),
        ("POST", "/agents/a/batch-put", {"items": []}, 400),
        ("POST", "/agents/a/batch-put", {"items": [{"key": f"k{i}", "value": i} for i in range(1001)]}, 400),
        ("POST", "/agents/a/batch-put", {"items": [{"key": "k", "value": 1}, {"key": "k", "value": 2}]}, 400),
        ("POST", "/agents/a/batch-put", {"items": [{"key": "bad/key", "value": 1}]}, 400),
        ("POST", "/agents/a/batch-get", {"keys": ["a", "a"]}, 400),
        ("POST", "/agents/a/batch-get", {"keys": [f"k{i}" for i in range(1001)]}, 400),
        ("GET", "/agents/a/memories?limit=0", None, 400),
        ("GET", "/agents/a/memories?limit=1001", None, 400),
        ("GET", "/agents/a/memories?prefix=a*", None, 400),
    ],
)
def test_bad_input_is_4xx_with_a_message(
    client: TestClient, method: str, path: str, body: object, status: int
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] and error["message"]


def test_batch_put_and_get(client: TestClient, agent: str) -> None:
    items = [{"key": f"item-{i:03d}", "value": {"i": i, "pad": "x" * 250}} for i in range(100)]
    put = client.post(f"/agents/{agent}/batch-put", json={"items": items})
    assert put.status_code == 200
    versions = {item["key"]: item["version"] for item in put.json()["items"]}
    assert list(versions) == [item["key"] for item in items]
    wanted = ["item-005", "nope", "item-099"]
    got = client.post(f"/agents/{agent}/batch-get", json={"keys": wanted}).json()
    assert [item["key"] for item in got["items"]] == ["item-005", "item-099"]
    assert got["items"][0]["value"] == {"i": 5, "pad": "x" * 250}
    assert got["items"][1]["version"] == versions["item-099"]
    assert got["missing"] == ["nope"]
    single = client.get(f"/agents/{agent}/memories/item-042")
    assert single.json()["version"] == versions["item-042"]


def test_listing_pages_by_cursor_and_prefix(client: TestClient, agent: str) -> None:
    names = [f"a-{i:02d}" for i in range(25)] + ["b-1", "b-2"]
    client.post(f"/agents/{agent}/batch-put", json={"items": [{"key": n, "value": 1} for n in names]})
    seen, cursor, pages = [], "", 0
    while True:
        page = client.get(f"/agents/{agent}/memories", params={"limit": 10, "cursor": cursor}).json()
        seen += page["keys"]
        pages += 1
        if page["cursor"] is None:
            break
        cursor = page["cursor"]
    assert seen == sorted(names) and pages == 3
    page = client.get(f"/agents/{agent}/memories", params={"prefix": "b-"}).json()
    assert page == {"keys": ["b-1", "b-2"], "cursor": None}
    other = client.get("/agents/someone-else/memories").json()
    assert other["keys"] == []


def test_ttl_expiry_is_observed_and_listing_skips_expired(client: TestClient, agent: str) -> None:
    _put(client, agent, "short", "soon gone", ttl=1)
    _put(client, agent, "long", "stays", ttl=600)
    client.post(f"/agents/{agent}/batch-put", json={"items": [{"key": "short-batch", "value": 1, "ttl": 1}]})
    assert client.get(f"/agents/{agent}/memories").json()["keys"] == ["long", "short", "short-batch"]
    time.sleep(1.2)
    assert client.get(f"/agents/{agent}/memories/short").status_code == 404
    assert client.get(f"/agents/{agent}/memories").json() == {"keys": ["long"], "cursor": None}
    got = client.post(f"/agents/{agent}/batch-get", json={"keys": ["short", "short-batch", "long"]}).json()
    assert got["missing"] == ["short", "short-batch"] and got["items"][0]["value"] == "stays"
    # The page is filled with live keys even when expired ones sat in front of them.
    _put(client, agent, "a-live", 1)
    assert client.get(f"/agents/{agent}/memories", params={"limit": 2}).json()["keys"] == ["a-live", "long"]


def test_expires_at_tracks_the_ttl(client: TestClient, agent: str, raw_redis: redis.Redis) -> None:
    _put(client, agent, "k", 1, ttl=120)
    remaining = raw_redis.pttl(memory_key(agent, "k"))
    assert 115_000 < remaining <= 120_000


def test_flipping_any_byte_of_a_stored_value_is_an_integrity_error(
    client: TestClient, agent: str, raw_redis: redis.Redis
) -> None:
    _put(client, agent, "secret", {"card": "4111", "note": "x" * 40})
    redis_key = memory_key(agent, "secret")
    stored = raw_redis.get(redis_key)
    assert isinstance(stored, bytes) and b"4111" not in stored
    for position in range(len(stored)):
        forged = bytearray(stored)
        forged[position] ^= 0x01 if position % 2 else 0x80
        raw_redis.set(redis_key, bytes(forged), keepttl=True)
        response = client.get(f"/agents/{agent}/memories/secret")
        assert response.status_code == 500, position
        assert response.json()["error"]["type"] == "integrity_error"
        assert "4111" not in response.text
    batch = client.post(f"/agents/{agent}/batch-get", json={"keys": ["secret"]})
    assert batch.status_code == 500 and batch.json()["error"]["type"] == "integrity_error"
    raw_redis.set(redis_key, stored, keepttl=True)
    assert client.get(f"/agents/{agent}/memories/secret").json()["value"]["card"] == "4111"


def test_a_value_copied_to_another_key_or_agent_is_detected(
    client: TestClient, agent: str, raw_redis: redis.Redis
) -> None:
    _put(client, agent, "mine", "private")
    stored = raw_redis.get(memory_key(agent, "mine"))
    victim = f"{agent}-other"
    for target_agent, target_key in ((agent, "copy"), (victim, "mine")):
        raw_redis.set(memory_key(target_agent, target_key), stored, ex=60)
        response = client.get(f"/agents/{target_agent}/memories/{target_key}")
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "integrity_error"


def test_redis_holds_no_plaintext(client: TestClient, agent: str, raw_redis: redis.Redis) -> None:
    _put(client, agent, "k", {"password": "hunter2-hunter2"})
    client.post(f"/agents/{agent}/batch-put", json={"items": [{"key": "b", "value": "hunter2-hunter2"}]})
    for key in raw_redis.scan_iter(match=f"mem:{{{agent}}}:*"):
        assert b"hunter2" not in raw_redis.get(key)
