"""The caller's agents from the authorizer context, in every shape API Gateway hands them over."""

from __future__ import annotations

from typing import Any

import pytest
from aiinfra.api.auth import principal
from aiinfra.api.errors import Forbidden, Unauthorized
from aiinfra.config import AuthSettings
from starlette.requests import Request

JWT = AuthSettings(mode="jwt", agent_claim="agents")


def _request(authorizer: Any) -> Request:
    event = {"requestContext": {"authorizer": authorizer}}
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "aws.event": event})


@pytest.mark.parametrize(
    "authorizer",
    [
        {"jwt": {"claims": {"agents": ["a1", "a2"]}}},
        {"jwt": {"claims": {"agents": '["a1","a2"]'}}},
        {"jwt": {"claims": {"agents": "a1 a2"}}},
        {"lambda": {"agents": "a1,a2"}},
        {"agents": "a1, a2", "principalId": "user"},
        {"claims": {"agents": "a1 a2"}},
    ],
)
def test_agents_claim_shapes(authorizer: dict[str, Any]) -> None:
    caller = principal(_request(authorizer), JWT)
    assert caller.agents == frozenset({"a1", "a2"})
    caller.require_agent("a2")
    with pytest.raises(Forbidden):
        caller.require_agent("a3")


def test_a_caller_without_the_claim_may_use_no_agent() -> None:
    caller = principal(_request({"jwt": {"claims": {"sub": "u"}}}), JWT)
    with pytest.raises(Forbidden):
        caller.require_agent("a1")


def test_the_claim_name_is_a_setting() -> None:
    settings = AuthSettings(mode="jwt", agent_claim="custom:agents")
    claims = {"custom:agents": "x", "agents": "y"}
    caller = principal(_request({"jwt": {"claims": claims}}), settings)
    assert caller.agents == frozenset({"x"})
    caller.require_agent("x")
    # The default claim's name means nothing once another is configured.
    with pytest.raises(Forbidden):
        caller.require_agent("y")


def test_no_authorizer_context_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        principal(Request({"type": "http", "method": "GET", "path": "/", "headers": []}), JWT)


@pytest.mark.parametrize(
    "request_",
    [
        Request({"type": "http", "method": "GET", "path": "/", "headers": []}),
        _request({"jwt": {"claims": {"agents": "a1"}}}),
    ],
    ids=["no-authorizer", "claims-a1"],
)
def test_auth_mode_none_allows_every_agent(request_: Request) -> None:
    caller = principal(request_, AuthSettings(mode="none", agent_claim="agents"))
    assert caller.agents is None
    for agent_id in ("a1", "anyone", "a2"):
        caller.require_agent(agent_id)
