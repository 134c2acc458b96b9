"""The Lambda entry point for an ASGI app: Mangum, plus logging and metrics per invocation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from mangum import Mangum

from aiinfra import snapstart
from aiinfra.api.app import MAX_ANSWER_BYTES
from aiinfra.api.errors import AnswerTooLarge
from aiinfra.observability import log_request, logger, metrics

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

BAD_EVENT = {
    "statusCode": 400,
    "headers": {"content-type": "application/json"},
    "body": '{"error":{"type":"invalid_event","message":"event is neither an API Gateway HTTP API '
    '(payload 2.0) nor a REST API (payload 1.0) request"}}',
}


def _is_api_gateway_event(event: object) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        return False
    if event.get("version") == "2.0":
        return isinstance(event["requestContext"].get("http"), dict)
    return "httpMethod" in event and "path" in event


# No character of a body takes more than 6 bytes in that JSON (a control character as \u00XX);
# headers and the rest of the envelope get this much room.
_ENVELOPE_ROOM = 64 * 1024


def _fitting(response: dict[str, Any]) -> dict[str, Any]:
    """`response`, or a 400 in its place when it is too long for Lambda to return (measured only
    for a body that could be: the answer of a read, never of a write, is the long one)."""
    if len(response.get("body") or "") * 6 + _ENVELOPE_ROOM <= MAX_ANSWER_BYTES:
        return response
    size = len(json.dumps(response, ensure_ascii=False).encode())  # as the python3.12 runtime posts it
    if size <= MAX_ANSWER_BYTES:
        return response
    logger().warning("answer too large for a Lambda response", extra={"answer_bytes": size})
    error = AnswerTooLarge(
        f"the answer is {size} bytes, over the {MAX_ANSWER_BYTES} a Lambda function can return: "
        "ask for less in one request"
    )
    return {
        "statusCode": error.status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(error.body(), separators=(",", ":")),
        "isBase64Encoded": False,
    }


def lambda_handler(app: Any, service: str) -> LambdaHandler:
    """What Lambda calls: `handler(event, context)` for HTTP API and REST API events."""
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", service)
    log, emf = logger(), metrics()
    snapstart.install()
    asgi = Mangum(app, lifespan="off")

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        # API Gateway's request id, read directly: a JMESPath correlation_id_path is evaluated per request.
        request = event.get("requestContext") if isinstance(event, dict) else None
        log.set_correlation_id(request.get("requestId") if isinstance(request, dict) else None)
        if not _is_api_gateway_event(event):
            shape = sorted(event)[:20] if isinstance(event, dict) else type(event).__name__
            log.error("unsupported event shape", extra={"event_shape": shape})
            return dict(BAD_EVENT)
        started = time.perf_counter()
        response = _fitting(asgi(event, context))
        http = event["requestContext"].get("http", {})
        log_request(
            method=http.get("method", event.get("httpMethod")),
            path=event.get("rawPath", event.get("path")),
            status=response.get("statusCode"),
            duration_ms=round((time.perf_counter() - started) * 1e3, 3),
        )
        return response

    with_logs = log.inject_lambda_context(handler)
    instrumented: LambdaHandler = emf.log_metrics(with_logs, capture_cold_start_metric=True)
    return instrumented
