"""What the sync and async clients share: a request described once (`Call`), how its answer is read,
when to retry, and the descriptors that turn a call builder into a method of either client."""

from __future__ import annotations

import email.utils
import functools
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar, overload
from urllib.parse import quote

import httpx

from aiinfra_client.errors import AiinfraError, error_from_answer

if TYPE_CHECKING:
    from aiinfra_client.client import AsyncClient, Client

T = TypeVar("T")
P = ParamSpec("P")

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text) if self.text else None

    @property
    def retry_after(self) -> float | None:
        """Retry-After in seconds: delay-seconds or an HTTP date."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        if value.strip().isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    @property
    def is_quota_reached(self) -> bool:
        """A 429 for one of the caller's own quotas (type quota_exceeded) with no Retry-After: a cap
        that frees only when the caller deletes something, so no wait helps."""
        if self.status != 429 or self.retry_after is not None:
            return False
        try:
            body = self.json()
        except ValueError:
            return False
        error = body.get("error") if isinstance(body, dict) else None
        return isinstance(error, dict) and error.get("type") == "quota_exceeded"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, described without sending it, and how to read its successful answer."""

    method: str
    path: str
    parse: Callable[[Answer], T]
    json: Any = None
    params: Mapping[str, str | int] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, answer: Answer) -> T:
        """The parsed answer, or the API's error raised as an exception."""
        if 200 <= answer.status < 300:
            return self.parse(answer)
        try:
            body = answer.json()
        except ValueError:
            body = None
        raise error_from_answer(answer.status, body, answer.text, answer.retry_after)


def path(*segments: str) -> str:
    """`/a/b/c` with every segment percent-encoded (names never reshape the path)."""
    return "".join("/" + quote(segment, safe="") for segment in segments)


def no_content(_: Answer) -> None:
    return None


@dataclass(frozen=True)
class Retry:
    """When to send a refused request again: on 429 and 503 only (never on a 429 for a quota reached,
    see `Answer.is_quota_reached`), up to `attempts` sends in all and at most `max_wait` seconds of
    waiting. Each wait honours Retry-After (plus up to half the backoff as jitter); without it, an
    exponential backoff from `backoff` seconds, capped at `max_backoff`, with equal jitter.
    `Retry(attempts=1)` never retries."""

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_wait: float = 30.0

    def delay(self, attempt: int, answer: Answer, waited: float) -> float | None:
        """Seconds to wait before sending again after `attempt` sends, or None to stop."""
        if answer.status not in RETRY_STATUSES or attempt >= self.attempts or answer.is_quota_reached:
            return None
        step = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        retry_after = answer.retry_after
        if retry_after is None:
            delay = step / 2 + random.uniform(0, step / 2)
        else:
            delay = retry_after + random.uniform(0, step / 2)
        return delay if waited + delay <= self.max_wait else None


class Transport:
    """Base URL, bearer token, timeout and retry policy: how a `Call` becomes an HTTP request."""

    def __init__(self, base_url: str, token: str | None, timeout: float, retry: Retry) -> None:
        if not base_url:
            raise ValueError("base_url is required, e.g. https://abc123.execute-api.eu-west-1.amazonaws.com")
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    def request(self, call: Call[Any]) -> dict[str, Any]:
        """httpx `request()` arguments for `call`."""
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "params": dict(call.params) or None,
            "json": call.json,
            "headers": {**self._headers, **call.headers},
            "timeout": self.timeout,
        }

    @staticmethod
    def answer(response: httpx.Response) -> Answer:
        return Answer(response.status_code, response.headers, response.text)


class Namespace:
    """A group of endpoints (embeddings, indexes, memories) bound to one client."""

    def __init__(self, client: Any) -> None:
        self._client = client


class SyncNamespace(Namespace):
    _client: Client


class AsyncNamespace(Namespace):
    _client: AsyncClient


def _method_signature(build: Callable[..., Any]) -> inspect.Signature:
    """The builder's parameters without its `Call[...]` return, for help() on the method."""
    return inspect.signature(build).replace(return_annotation=inspect.Signature.empty)


class sends(Generic[P, T]):
    """A `Call` builder as a method of a sync namespace: builds the call and sends it."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self._signature = _method_signature(build)

    @overload
    def __get__(self, namespace: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, namespace: SyncNamespace, owner: type[Any] | None = None) -> Callable[P, T]: ...
    def __get__(
        self, namespace: SyncNamespace | None, owner: type[Any] | None = None
    ) -> Self | Callable[P, T]:
        if namespace is None:  # looked up on the class (help(), documentation tools)
            return self
        send, build = namespace._client.send, self._build

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return send(build(*args, **kwargs))

        method.__signature__ = self._signature  # type: ignore[attr-defined]
        return method


class async_sends(Generic[P, T]):
    """A `Call` builder as a method of an async namespace: builds the call, the method awaits it."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self._signature = _method_signature(build)

    @overload
    def __get__(self, namespace: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(
        self, namespace: AsyncNamespace, owner: type[Any] | None = None
    ) -> Callable[P, Awaitable[T]]: ...
    def __get__(
        self, namespace: AsyncNamespace | None, owner: type[Any] | None = None
    ) -> Self | Callable[P, Awaitable[T]]:
        if namespace is None:  # looked up on the class (help(), documentation tools)
            return self
        send, build = namespace._client.send, self._build

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
            return send(build(*args, **kwargs))

        method.__signature__ = self._signature  # type: ignore[attr-defined]
        return method


# A multi-step job written once for both clients: a generator that yields each Call it needs and is
# sent back the answer (or has the API's error thrown into it), returning its result at the end.
Plan = Generator[Call[Any], Any, T]


def run_plan(plan: Plan[T], client: Client) -> T:
    try:
        call = next(plan)
        while True:
            try:
                answer = client.send(call)
            except AiinfraError as error:
                call = plan.throw(error)
            else:
                call = plan.send(answer)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_plan_async(plan: Plan[T], client: AsyncClient) -> T:
    try:
        call = next(plan)
        while True:
            try:
                answer = await client.send(call)
            except AiinfraError as error:
                call = plan.throw(error)
            else:
                call = plan.send(answer)
    except StopIteration as done:
        result: T = done.value
        return result
