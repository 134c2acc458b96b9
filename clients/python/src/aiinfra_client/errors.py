"""The API's refusals as exceptions: one class per HTTP status, each carrying the answer's error body."""

from __future__ import annotations

from typing import Any, ClassVar


class AiinfraError(Exception):
    """An answer other than success: the API's error `type`, `message`, `param` and the HTTP `status`.

    `retry_after` is the answer's Retry-After in seconds, when it had one.
    """

    default_type: ClassVar[str] = "http_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type or self.default_type
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        return f"{self.status} {self.type}: {self.message}{where}"


class InvalidRequest(AiinfraError):
    default_type = "invalid_request_error"


class Unauthorized(AiinfraError):
    default_type = "unauthorized"


class Forbidden(AiinfraError):
    default_type = "forbidden"


class NotFound(AiinfraError):
    default_type = "not_found"


class Conflict(AiinfraError):
    default_type = "conflict"


class PreconditionFailed(AiinfraError):
    """A stale If-Match version, or If-None-Match: * on a memory that exists."""

    default_type = "precondition_failed"


class PayloadTooLarge(AiinfraError):
    default_type = "payload_too_large"


class RateLimited(AiinfraError):
    default_type = "rate_limited"


class ServerError(AiinfraError):
    default_type = "internal_error"


class Unavailable(ServerError):
    """A dependency of the service is down: raised once the client's retries are spent."""

    default_type = "service_unavailable"


_BY_STATUS: dict[int, type[AiinfraError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_from_answer(status: int, body: Any, text: str, retry_after: float | None) -> AiinfraError:
    """The exception for an error answer: our `{"error": {...}}` body, or whatever a gateway sent."""
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else AiinfraError)
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        param = detail.get("param")
        return kind(
            detail["message"],
            status=status,
            type=str(detail.get("type") or kind.default_type),
            param=param if isinstance(param, str) else None,
            retry_after=retry_after,
        )
    # API Gateway's own refusals (its authorizer, throttling) answer {"message": ...}.
    message = body.get("message") if isinstance(body, dict) else None
    return kind(
        message if isinstance(message, str) else (text or f"HTTP {status}"),
        status=status,
        retry_after=retry_after,
    )
