"""The memory function through its Lambda handler, with real API Gateway events and authorizer claims."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import redis
from aiinfra.memory.schema import memory_key

from tests.support.events import LambdaContext, api_gateway_event, response_json
from tests.support.events import invoke as call_handler
from tests.support.functions import load_function
from tests.support.redis_server import RedisServer, free_port

EVENT_KINDS = ["http", "rest"]


def _load(monkeypatch: pytest.MonkeyPatch, redis_url: str, keyring_uri: str) -> ModuleType:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MEMORY_KEYS", keyring_uri)
    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("AUTH_AGENT_CLAIM", "agents")
    return load_function("memory")


@pytest.fixture(scope="module")
def memory_function(redis_server: RedisServer, keyring_uri: str) -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _load(monkeypatch, redis_server.url, keyring_uri)


def invoke(
    function: ModuleType,
    kind: str,
    method: str,
    path: str,
    body: Any = None,
    agents: Any = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    claims = {"sub": "user-1", "agents": agents} if agents is not None else {"sub": "user-1"}
    request = {"headers": headers, "query": query, "claims": claims}
    return call_handler(function.handler, kind, method, path, body, **request)


def header(response: dict[str, Any], name: str) -> str:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    return str(headers[name] if name in headers else multi[name][0])


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_round_trip_through_the_handler(memory_function: ModuleType, kind: str, agent: str) -> None:
    grant = [agent]
    path = f"/agents/{agent}/memories/prefs"
    put = invoke(memory_function, kind, "PUT", path, {"value": {"lang": "en"}, "ttl": 60}, grant)
    assert put["statusCode"] == 201
    version = response_json(put)["version"]
    assert header(put, "etag") == f'"{version}"'
    got = invoke(memory_function, kind, "GET", path, agents=grant)
    assert got["statusCode"] == 200 and response_json(got)["value"] == {"lang": "en"}
    stale = invoke(
        memory_function, kind, "PUT", path, {"value": 1}, grant, headers={"If-Match": '"0000000000000000"'}
    )
    assert stale["statusCode"] == 412
    batch = {"items": [{"key": f"k{i}", "value": i} for i in range(20)]}
    assert (
        invoke(memory_function, kind, "POST", f"/agents/{agent}/batch-put", batch, grant)["statusCode"] == 200
    )
    listed = invoke(
        memory_function, kind, "GET", f"/agents/{agent}/memories", agents=grant, query={"limit": "5"}
    )
    assert response_json(listed) == {"keys": ["k0", "k1", "k10", "k11", "k12"], "cursor": "k12"}
    got = invoke(memory_function, kind, "POST", f"/agents/{agent}/batch-get", {"keys": ["k3", "x"]}, grant)
    assert response_json(got)["missing"] == ["x"] and response_json(got)["items"][0]["value"] == 3
    deleted = invoke(memory_function, kind, "DELETE", path, agents=grant, headers={"If-Match": version})
    assert deleted["statusCode"] == 204


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_ttl_expiry_through_the_handler(memory_function: ModuleType, kind: str, agent: str) -> None:
    grant = f"{agent} other-agent"  # a space-separated claim, as a JWT scope-like string
    invoke(memory_function, kind, "PUT", f"/agents/{agent}/memories/brief", {"value": 1, "ttl": 1}, grant)
    invoke(memory_function, kind, "PUT", f"/agents/{agent}/memories/lasting", {"value": 2, "ttl": 60}, grant)
    listed = response_json(invoke(memory_function, kind, "GET", f"/agents/{agent}/memories", agents=grant))
    assert listed["keys"] == ["brief", "lasting"]
    time.sleep(1.2)
    assert (
        invoke(memory_function, kind, "GET", f"/agents/{agent}/memories/brief", agents=grant)["statusCode"]
        == 404
    )
    listed = response_json(invoke(memory_function, kind, "GET", f"/agents/{agent}/memories", agents=grant))
    assert listed == {"keys": ["lasting"], "cursor": None}


ROUTES = [
    ("PUT", "/memories/k", {"value": 1}),
    ("GET", "/memories/k", None),
    ("DELETE", "/memories/k", None),
    ("GET", "/memories", None),
    ("POST", "/batch-put", {"items": [{"key": "k", "value": 1}]}),
    ("POST", "/batch-get", {"keys": ["k"]}),
    ("PUT", "/memories/k", {"value": 1, "text": "a text to embed"}),
    ("POST", "/recall", {"query": "what was said"}),
]


@pytest.fixture(scope="module")
def function_without_redis(keyring_uri: str) -> Iterator[ModuleType]:
    """Pointed at a port nobody listens on: any Redis call would answer 503, never 403."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _load(monkeypatch, f"redis://127.0.0.1:{free_port()}/0", keyring_uri)


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES)
@pytest.mark.parametrize(
    "agents", [["agent-a"], "agent-a,agent-b", [], None], ids=["list", "csv", "empty", "absent"]
)
def test_every_route_refuses_another_agent_before_any_redis_call(
    function_without_redis: ModuleType, kind: str, method: str, suffix: str, body: Any, agents: Any
) -> None:
    response = invoke(function_without_redis, kind, method, f"/agents/agent-c{suffix}", body, agents)
    assert response["statusCode"] == 403
    assert response_json(response)["error"]["type"] == "forbidden"


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_an_allowed_agent_reaches_redis(function_without_redis: ModuleType, kind: str) -> None:
    response = invoke(function_without_redis, kind, "GET", "/agents/agent-a/memories/k", agents=["agent-a"])
    assert response["statusCode"] == 503 and header(response, "retry-after") == "1"


def test_no_authorizer_context_is_401(function_without_redis: ModuleType) -> None:
    event = api_gateway_event("rest", "GET", "/agents/agent-a/memories/k")
    event["requestContext"].pop("authorizer", None)
    response: dict[str, Any] = function_without_redis.handler(event, LambdaContext("memory"))
    assert response["statusCode"] == 401


def test_a_tampered_value_is_a_500_and_a_counted_security_event(
    memory_function: ModuleType, raw_redis: redis.Redis, agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = f"/agents/{agent}/memories/k"
    assert invoke(memory_function, "http", "PUT", path, {"value": "v"}, [agent])["statusCode"] == 201
    stored = bytearray(raw_redis.get(memory_key(agent, "k")))  # type: ignore[arg-type]
    stored[-1] ^= 0x01
    raw_redis.set(memory_key(agent, "k"), bytes(stored), keepttl=True)
    capsys.readouterr()
    response = invoke(memory_function, "http", "GET", path, agents=[agent])
    assert response["statusCode"] == 500
    assert response_json(response)["error"]["type"] == "integrity_error"
    emitted = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')
    ]
    assert [metric.get("MemoryIntegrityFailures") for metric in emitted] == [[1.0]]
