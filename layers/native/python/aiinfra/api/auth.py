"""The caller's principal, from the API Gateway authorizer context Mangum hands the app.

HTTP API (payload 2.0): JWT claims at `requestContext.authorizer.jwt.claims` (or a Lambda
authorizer's context at `requestContext.authorizer.lambda`). REST API (payload 1.0): the Lambda
authorizer context at `requestContext.authorizer` (Cognito claims at `.claims`). The claim named
by `AUTH_AGENT_CLAIM` lists the agents the caller may use: a JSON list, or a string of ids
separated by spaces or commas (what JWT claims and authorizer contexts can carry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from aiinfra.api.errors import Forbidden, Unauthorized
from aiinfra.config import AuthSettings

_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Principal:
    """Who is calling; `agents` None means every agent (AUTH_MODE=none, local runs only)."""

    agents: frozenset[str] | None

    def require_agent(self, agent_id: str) -> None:
        if self.agents is not None and agent_id not in self.agents:
            raise Forbidden(f"the caller may not use agent {agent_id!r}", param="agent_id")


def _claim_sources(event: dict[str, Any]) -> list[dict[str, Any]]:
    authorizer = (event.get("requestContext") or {}).get("authorizer")
    if not isinstance(authorizer, dict):
        return []
    nested = [(authorizer.get("jwt") or {}).get("claims"), authorizer.get("lambda"), authorizer.get("claims")]
    return [source for source in [*nested, authorizer] if isinstance(source, dict)]


def _agents(value: Any) -> frozenset[str]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return frozenset()
    if isinstance(value, str):
        return frozenset(part for part in _SEPARATORS.split(value) if part)
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def principal(request: Request, settings: AuthSettings) -> Principal:
    if settings.mode == "none":
        return Principal(None)
    event = request.scope.get("aws.event")
    sources = _claim_sources(event) if isinstance(event, dict) else []
    if not sources:
        raise Unauthorized("no authorizer context: the request did not come through an authorizer")
    for source in sources:
        if settings.agent_claim in source:
            return Principal(_agents(source[settings.agent_claim]))
    return Principal(frozenset())
