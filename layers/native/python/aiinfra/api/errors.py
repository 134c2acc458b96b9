"""Error types and their one HTTP mapping: `{"error": {"type": ..., "message": ...}}`."""

from __future__ import annotations

from typing import Any

from aiinfra.api.openapi import ResponseBody, documented


class ErrorDetail(ResponseBody):
    type: str
    message: str
    param: str | None = None


class ErrorBody(ResponseBody):
    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success; `status` < 500 means the caller did something wrong."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            detail["param"] = self.param
        return {"error": detail}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "not_found"


class Conflict(ApiError):
    status = 409
    type = "conflict"


class PreconditionFailed(ApiError):
    status = 412
    type = "precondition_failed"


class PayloadTooLarge(ApiError):
    status = 413
    type = "payload_too_large"


class AnswerTooLarge(ApiError):
    """The answer would not fit in a Lambda response: the caller asked for too much in one request."""

    status = 400
    type = "answer_too_large"


class TooManyRequests(ApiError):
    """A quota is reached (`param` names it); with `retry_after_seconds`, a bound that frees up by itself."""

    status = 429
    type = "quota_exceeded"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_seconds is None else {"Retry-After": str(self.retry_after_seconds)}


class IntegrityFailure(ApiError):
    """A stored value failed authentication (tampered or moved): never returned, always a 500."""

    status = 500
    type = "integrity_error"


class Unavailable(ApiError):
    """A dependency is unreachable: retry later."""

    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


def error_responses(*errors: type[ApiError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the errors a route can answer with."""
    statuses = {400, 413, *(error.status for error in errors)}
    return {status: documented(ErrorBody) for status in sorted(statuses)}
