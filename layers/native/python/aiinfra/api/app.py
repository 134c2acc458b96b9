"""The one app factory every capability uses: error mapping, body limit, OpenAPI shape."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import fastapi.utils
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiinfra.api.errors import ApiError, InvalidRequest, PayloadTooLarge
from aiinfra.api.openapi import add_documented_schemas

# What a caller is told about a fault of ours: nothing of it (the log line has the traceback).
INTERNAL_ERROR = ApiError("an internal error occurred; it has been logged")


def _no_pydantic_v1(annotation: Any) -> bool:
    return False


# FastAPI probes every parameter and response field it declares for a pydantic.v1 model (to refuse
# it) by importing pydantic.v1: a cost in every function's init where pydantic.v1 is installed, one
# failed import per field where it is not (the layer strips it). None of our models is v1, so our
# routes skip the probe. Drop this once FastAPI stops probing (planned with pydantic.v1's removal).
fastapi.utils.annotation_is_pydantic_v1 = _no_pydantic_v1  # type: ignore[attr-defined]

# A synchronous Lambda invocation carries at most 6 MB; refuse the same locally.
MAX_BODY_BYTES = 6 * 1024 * 1024
# The most a function may answer: bytes of the JSON the runtime posts (6 MiB + 100). The runtime
# interface refuses a longer answer, and API Gateway then says no more than 502 Bad Gateway.
MAX_ANSWER_BYTES = 6 * 1024 * 1024 + 100
HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded answer; numpy arrays are written natively, never float by float."""
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers())


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return "malformed JSON body: " + str(first.get("ctx", {}).get("error", "")), None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(loc)
    message = str(first.get("msg", "invalid request"))
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return (f"{where}: {message}" if where else message), (loc[0] if loc else None)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, whether declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self.too_large(scope, receive, send)
            return
        # Read the body here: the app's own parser would turn an error raised mid-read into a 400.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self.too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def too_large(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        refusal = error_response(PayloadTooLarge(f"request body exceeds {self.limit} bytes"))
        return refusal(scope, receive, send)


class InternalErrors:
    """An exception no route mapped is a 500 whose body says nothing of it: its message may name a
    bucket, a path or a key id. The log line keeps it, with the traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            from aiinfra.observability import logger

            logger().exception(
                "unhandled error", extra={"method": scope.get("method"), "path": scope.get("path")}
            )
            if started:
                raise  # the answer is on its way: nothing left to replace it with
            await error_response(INTERNAL_ERROR)(scope, receive, send)


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` serves at `path`."""
    matching = (r for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(path))
    return sorted({method for route in matching for method in route.methods or ()})


def create_app(title: str, routers: Sequence[APIRouter]) -> FastAPI:
    # FastAPI's native OpenTelemetry is off: Lambda traces through X-Ray, and checking for a
    # configured OTel provider costs every request a few microseconds.
    telemetry: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    # The routers' API routes themselves, not the routers: FastAPI matches the routes of an included
    # router twice a request (the router's, then its own). An app's router also holds its OpenAPI
    # route, which the new app makes its own of.
    routes: list[BaseRoute] = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    app = FastAPI(
        title=title, version="1.0.0", docs_url=None, redoc_url=None, telemetry=telemetry, routes=routes
    )

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Routing and body-parsing refusals (404, 405, undecodable body) speak our error shape too.
        kind = HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
        body = {"error": {"type": kind, "message": str(exc.detail)}}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only; a path has one per method.
            headers["Allow"] = ", ".join(_methods_of(app, request.url.path))
        return json_response(body, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        return error_response(InvalidRequest(message, param=param))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            # Validation failures answer 400 with our error body, never FastAPI's 422.
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
            schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
            add_documented_schemas(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit)
    return app
