"""The caller's principal, from the API Gateway authorizer context Mangum hands the app.

HTTP API (payload 2.0): JWT claims at `requestContext.authorizer.jwt.claims` (or a Lambda
authorizer's context at `requestContext.authorizer.lambda`). REST API (payload 1.0): the Lambda
authorizer context at `requestContext.authorizer` (Cognito claims at `.claims`). The claim named
by `AUTH_AGENT_CLAIM` lists the agents the caller may use: a JSON list, a string of ids separated by
spaces or commas, or the `[a1 a2]` form in which the HTTP API hands a JWT's array claim over. The claim
named by `AUTH_TENANT_CLAIM` is the tenant whose indexes the caller uses. Both must be set by the
issuer, never by the user (docs/security.md).
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


# The one tenant of AUTH_MODE=none (local runs only): every caller shares its indexes.
LOCAL_TENANT = "local"


@dataclass(frozen=True)
class Principal:
    """Who is calling; `agents` None means every agent (AUTH_MODE=none, local runs only), `tenant`
    None that the token names none."""

    agents: frozenset[str] | None
    tenant: str | None = LOCAL_TENANT

    def require_agent(self, agent_id: str) -> None:
        if self.agents is not None and agent_id not in self.agents:
            raise Forbidden(f"the caller may not use agent {agent_id!r}", param="agent_id")

    def require_tenant(self) -> str:
        if not self.tenant:
            raise Forbidden("the caller's token names no tenant: the issuer must set the tenant claim")
        return self.tenant


def _claim_sources(event: dict[str, Any]) -> list[dict[str, Any]]:
    authorizer = (event.get("requestContext") or {}).get("authorizer")
    if not isinstance(authorizer, dict):
        return []
    nested = [(authorizer.get("jwt") or {}).get("claims"), authorizer.get("lambda"), authorizer.get("claims")]
    return [source for source in [*nested, authorizer] if isinstance(source, dict)]


def _agents(value: Any) -> frozenset[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            value = value.strip().removeprefix("[").removesuffix("]")  # the HTTP API's `[a1 a2]`
    if isinstance(value, str):
        return frozenset(part for part in _SEPARATORS.split(value) if part)
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def _tenant(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def principal(request: Request, settings: AuthSettings) -> Principal:
    if settings.mode == "none":
        return Principal(None)
    event = request.scope.get("aws.event")
    sources = _claim_sources(event) if isinstance(event, dict) else []
    if not sources:
        raise Unauthorized("no authorizer context: the request did not come through an authorizer")
    agents = next(
        (_agents(s[settings.agent_claim]) for s in sources if settings.agent_claim in s), frozenset()
    )
    tenant = next((_tenant(s[settings.tenant_claim]) for s in sources if settings.tenant_claim in s), None)
    return Principal(agents, tenant)
