"""Real API Gateway events (shapes from `sam local generate-event`) for a request of ours.

Standard library only: the benchmarks import it in environments without pytest.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

EVENTS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "events"


@dataclass(frozen=True)
class LambdaContext:
    """The fields of the Lambda context object Powertools reads."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "0d5b6a1c-1111-2222-3333-444455556666"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"


@cache
def _template(kind: str) -> dict[str, Any]:
    name = {"http": "http-api.json", "rest": "rest-api.json"}[kind]
    template: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return template


def api_gateway_event(
    kind: str,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload 2.0, kind "http") or REST API (payload 1.0, kind "rest") event."""
    event = copy.deepcopy(_template(kind))
    raw = body.encode() if isinstance(body, str) else body
    all_headers = {"content-type": "application/json", **(headers or {})}
    event["body"] = base64.b64encode(raw).decode() if raw is not None else None
    event["isBase64Encoded"] = raw is not None
    context = event["requestContext"]
    if kind == "http":
        event["rawPath"] = path
        event["rawQueryString"] = urlencode(query or {})
        event["queryStringParameters"] = query or None
        event["headers"] = all_headers
        event["routeKey"] = "$default"
        event.pop("cookies", None)
        event.pop("pathParameters", None)
        context["http"].update(method=method, path=path)
        context["authorizer"] = {"jwt": {"claims": claims or {}, "scopes": None}}
    else:
        event.update(httpMethod=method, path=path, resource="/{proxy+}")
        event["pathParameters"] = {"proxy": path.lstrip("/")}
        event["queryStringParameters"] = query or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
        event["headers"] = all_headers
        event["multiValueHeaders"] = {k: [v] for k, v in all_headers.items()}
        context.update(httpMethod=method, path=path, resourcePath="/{proxy+}")
        context["authorizer"] = dict(claims or {})
    return event


def invoke(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
    kind: str,
    method: str,
    path: str,
    body: Any = None,
    **request: Any,
) -> dict[str, Any]:
    """Calls a Lambda handler with the API Gateway event for this request; `body` may be JSON-able."""
    raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    return handler(api_gateway_event(kind, method, path, raw, **request), LambdaContext("aiinfra"))


def response_json(response: dict[str, Any]) -> Any:
    """The JSON body of a Lambda proxy response."""
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return json.loads(body)
