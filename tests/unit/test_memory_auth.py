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
    caller = principal(_request({"jwt": {"claims": {"custom:agents": "x"}}}), settings)
    caller.require_agent("x")


def test_no_authorizer_context_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        principal(Request({"type": "http", "method": "GET", "path": "/", "headers": []}), JWT)


def test_auth_mode_none_allows_every_agent() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    principal(request, AuthSettings(mode="none", agent_claim="agents")).require_agent("anyone")
