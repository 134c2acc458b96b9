"""Retries, errors and the bearer token: a real 503 from the memory route with its Redis down, and
API Gateway's own answers (429 throttling, its authorizer's 401) from a stand-in gateway."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from aiinfra_client import (
    AsyncClient,
    Client,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Retry,
    Unauthorized,
    Unavailable,
)

from tests.client.conftest import Gateway
from tests.support.local_server import served
from tests.support.redis_server import RedisServer


@pytest.fixture
def memory_alone(
    redis_factory: Callable[..., RedisServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RedisServer]]:
    """The memory app over a redis-server of its own, which the test may kill and restart."""
    redis = redis_factory()
    with served("aiinfra.api.memory:create_memory_app", redis.url, tmp_path_factory.mktemp("memory")) as url:
        yield url, redis


def _counting() -> tuple[list[int], httpx.Client]:
    statuses: list[int] = []
    return statuses, httpx.Client(
        event_hooks={"response": [lambda response: statuses.append(response.status_code)]}
    )


def test_unavailable_after_the_retries_each_waiting_retry_after(
    memory_alone: tuple[str, RedisServer],
) -> None:
    url, redis = memory_alone
    statuses, http = _counting()
    with http, Client(url, retry=Retry(attempts=3, backoff=0.05), http_client=http) as client:
        client.memories.put("a1", "k", 1)
        redis.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable) as down:
            client.memories.get("a1", "k")
        elapsed = time.monotonic() - started
    assert statuses == [201, 503, 503, 503]
    assert down.value.status == 503 and down.value.type == "service_unavailable"
    assert down.value.retry_after == 1.0 and "unavailable" in down.value.message
    assert 2.0 <= elapsed < 10  # two waits of at least Retry-After: 1


def test_a_retry_succeeds_once_the_dependency_is_back(memory_alone: tuple[str, RedisServer]) -> None:
    url, redis = memory_alone
    statuses, http = _counting()
    with http, Client(url, retry=Retry(attempts=5, backoff=0.05), http_client=http) as client:
        written = client.memories.put("a1", "k", {"v": 1})
        redis.kill()
        restart = threading.Timer(0.3, redis.start)  # back before the Retry-After: 1 wait ends
        restart.start()
        try:
            assert client.memories.get("a1", "k").version == written.version
        finally:
            restart.join()  # the fixture then stops the restarted server
    assert statuses[0] == 201 and statuses[1] == 503 and statuses[-1] == 200


@pytest.mark.anyio
async def test_async_client_retries_too(memory_alone: tuple[str, RedisServer]) -> None:
    url, redis = memory_alone
    statuses: list[int] = []

    async def count(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with (
        httpx.AsyncClient(event_hooks={"response": [count]}) as http,
        AsyncClient(url, retry=Retry(attempts=2), http_client=http) as client,
    ):
        redis.kill()
        with pytest.raises(Unavailable):
            await client.memories.put("a1", "k", 1)
    assert statuses == [503, 503]


def test_no_retry_on_other_refusals(api_url: str, agent: str) -> None:
    statuses, http = _counting()
    with http, Client(api_url, retry=Retry(attempts=4, backoff=0.05), http_client=http) as client:
        with pytest.raises(NotFound):
            client.memories.get(agent, "missing")
        written = client.memories.put(agent, "k", 1)
        client.memories.put(agent, "k", 2)
        with pytest.raises(PreconditionFailed):
            client.memories.put(agent, "k", 3, if_match=written.version)
    assert statuses == [404, 201, 200, 412]


def test_throttling_is_retried_honouring_retry_after(gateway: Gateway) -> None:
    throttled = b'{"message":"Too Many Requests"}'
    gateway.script = [(429, {"Retry-After": "1"}, throttled), (429, {}, throttled)]
    with Client(gateway.url, retry=Retry(attempts=3, backoff=0.1)) as client:
        started = time.monotonic()
        assert [m.id for m in client.embeddings.models()] == ["m"]
        assert time.monotonic() - started >= 1.0
    assert len(gateway.requests) == 3

    # A Retry-After beyond the policy's total wait is not waited for.
    gateway.script = [(429, {"Retry-After": "120"}, throttled)]
    with (
        Client(gateway.url, retry=Retry(attempts=3, max_wait=5)) as client,
        pytest.raises(RateLimited) as refused,
    ):
        client.embeddings.models()
    assert refused.value.status == 429 and refused.value.message == "Too Many Requests"
    assert refused.value.retry_after == 120 and len(gateway.requests) == 4


def test_retry_after_as_an_http_date(gateway: Gateway) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1-2 s from now
    gateway.script = [(503, {"Retry-After": when}, b'{"error":{"type":"service_unavailable","message":"x"}}')]
    with Client(gateway.url, retry=Retry(attempts=2)) as client:
        started = time.monotonic()
        client.embeddings.models()
        assert time.monotonic() - started >= 0.9
    assert len(gateway.requests) == 2


def test_bearer_token_reaches_the_server_and_the_authorizers_refusal(gateway: Gateway) -> None:
    with Client(gateway.url, token="header.payload.signature") as client:
        client.embeddings.models()
    with Client(gateway.url) as anonymous:
        gateway.script = [(401, {}, b'{"message":"Unauthorized"}')]
        with pytest.raises(Unauthorized) as refused:
            anonymous.embeddings.models()
    assert gateway.requests[0]["authorization"] == "Bearer header.payload.signature"
    assert "authorization" not in gateway.requests[1]
    assert (refused.value.status, refused.value.type, refused.value.message) == (
        401,
        "unauthorized",
        "Unauthorized",
    )


@pytest.mark.anyio
async def test_async_bearer_token_and_throttling(gateway: Gateway) -> None:
    gateway.script = [(429, {"Retry-After": "0"}, b"{}")]
    async with AsyncClient(gateway.url, token="t0k3n", retry=Retry(backoff=0.05)) as client:
        assert [m.id for m in await client.embeddings.models()] == ["m"]
    assert [r["authorization"] for r in gateway.requests] == ["Bearer t0k3n", "Bearer t0k3n"]
