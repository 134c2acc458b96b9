"""Agent memory routes: `/agents/{agent_id}/memories[/{key}]`, `batch-put`, `batch-get`, `recall`.

Authorization comes first (403 before any Redis call); every answer about one memory carries
its `version` (also the `ETag`) and `expires_at`.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue
from starlette.responses import Response

from aiinfra import snapstart
from aiinfra.api.app import MAX_ANSWER_BYTES, create_app, json_response
from aiinfra.api.auth import principal
from aiinfra.api.encoder import TextEncoder, lazy_text_encoder
from aiinfra.api.errors import (
    AnswerTooLarge,
    Forbidden,
    IntegrityFailure,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    error_responses,
)
from aiinfra.api.openapi import ResponseBody, documented
from aiinfra.config import (
    EMBED_MODEL_IDS,
    MEMORY_MAX_TTL_SECONDS,
    AuthSettings,
    ConfigError,
    MemorySettings,
    auth_settings,
    memory_settings,
)
from aiinfra.memory import store as data
from aiinfra.memory.envelope import IntegrityError
from aiinfra.memory.keyring import KeyringError, KeyringMissing
from aiinfra.memory.recall import MAX_TEXT_CHARS, MemoryRecall, Recalled, RecallItem
from aiinfra.memory.resp import RedisError, RedisUnavailable
from aiinfra.memory.schema import NAME_PATTERN
from aiinfra.observability import MetricUnit, logger, metrics

MAX_BATCH = 1000
MAX_LIST = 1000
MAX_RECALL = 100
# Texts one batch put may carry: each is embedded within the request, on the function's CPU share.
MAX_BATCH_TEXTS = 100
RECALL_MODEL = EMBED_MODEL_IDS[1]  # int8: recall embeds on the memory function's small CPU share
_ETAG = re.compile(r'^(?:"([0-9a-f]{16})"|([0-9a-f]{16}))$')

AgentId = Annotated[str, Path(pattern=NAME_PATTERN, description="`[A-Za-z0-9._-]{1,128}`")]
Key = Annotated[str, Path(pattern=NAME_PATTERN, description="`[A-Za-z0-9._-]{1,128}`")]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _whole_number(value: Any) -> Any:
    # JSON Schema counts 60.0 as an integer; "60" and true are not numbers of seconds.
    if isinstance(value, str | bool):
        raise ValueError("must be a whole number of seconds")
    return value


Seconds = Annotated[int, BeforeValidator(_whole_number), Field(gt=0, le=MEMORY_MAX_TTL_SECONDS)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must hold more than whitespace")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]


def _header(name: str, pattern: str, description: str) -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern}
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


# The precondition headers are read from the request, not declared as FastAPI Header parameters:
# FastAPI resolves a declared header on every request, a cost a put notices. The OpenAPI document
# still lists them.
IF_MATCH = _header(
    "If-Match",
    r'^(\*|[0-9a-f]{16}|"[0-9a-f]{16}")$',
    'a version, bare or quoted as its ETag, or "*" (exists)',
)
IF_NONE_MATCH = _header("If-None-Match", r"^\*$", 'only "*": create, never replace')


class PutMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Any, not JsonValue: the body is parsed JSON already, and JsonValue would walk it once more.
    value: Any = Field(description="any JSON")
    ttl: Seconds | None = Field(default=None, description="seconds; default MEMORY_DEFAULT_TTL")
    text: Text | None = Field(
        default=None,
        description="up to 8,192 characters, embedded and sealed with the value: what `recall` matches",
    )


class BatchItem(PutMemory):
    key: Name


class BatchPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class BatchGet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[Name] = Field(min_length=1, max_length=MAX_BATCH)


class RecallQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text
    k: int = Field(default=5, ge=1, le=MAX_RECALL, strict=True)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0, description="cosine, -1 to 1")
    include_values: bool = Field(default=True, strict=True)


class Written(ResponseBody):
    key: str
    version: str
    expires_at: str


class MemoryOut(Written):
    value: JsonValue


class WrittenOne(Written):
    agent_id: str


class MemoryOne(MemoryOut):
    agent_id: str


class KeyPage(ResponseBody):
    keys: list[str]
    cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class RecallMatch(Written):
    score: float = Field(description="cosine similarity of the query and the memory's text")
    text: str
    value: JsonValue = Field(default=None, description="absent when `include_values` is false")


class RecallAnswer(ResponseBody):
    matches: list[RecallMatch] = Field(description="best first")


class BatchWritten(ResponseBody):
    items: list[Written]


class BatchRead(ResponseBody):
    items: list[MemoryOut]
    missing: list[str]


def _version(version: int) -> str:
    return f"{version:016x}"


@functools.lru_cache(maxsize=4096)
def _expires_at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _written(memory: data.Memory) -> dict[str, Any]:
    return {
        "key": memory.key,
        "version": _version(memory.version),
        "expires_at": _expires_at(memory.expires_at_ms),
    }


def _read(memory: data.Memory) -> dict[str, Any]:
    # The plaintext is JSON we wrote and the envelope authenticated: splice it, never re-parse it.
    return {**_written(memory), "value": orjson.Fragment(memory.value_json)}


def _recalled(found: Recalled, include_values: bool) -> dict[str, Any]:
    match = {**_written(found.memory), "score": round(found.score, 6), "text": found.text}
    if include_values:
        match["value"] = orjson.Fragment(found.memory.value_json)
    return match


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{_version(version)}"'}


def _condition(if_match: str | None, if_none_match: str | None) -> data.Condition:
    if if_match is not None and if_none_match is not None:
        _condition(if_match, None), _condition(None, if_none_match)  # each must still be well-formed
        raise PreconditionFailed(
            "If-Match and If-None-Match: * exclude each other: no memory can satisfy both"
        )
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise InvalidRequest('If-None-Match accepts only "*"', param="If-None-Match")
        return data.Condition("absent")
    if if_match is None:
        return data.UNCONDITIONAL
    if if_match.strip() == "*":
        return data.Condition("exists")
    found = _ETAG.match(if_match.strip())
    if found is None:
        raise InvalidRequest(
            "If-Match must be a version (16 hex digits), bare or quoted, or *", param="If-Match"
        )
    return data.Condition("match", int(found.group(1) or found.group(2), 16))


def _value_json(value: JsonValue, limit: int, param: str) -> bytes:
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        raise InvalidRequest(f"{param}: {error}", param=param) from None
    if len(encoded) > limit:
        raise PayloadTooLarge(
            f"{param} is {len(encoded)} bytes of JSON, over the limit of {limit}", param=param
        )
    return encoded


def _unique(keys: list[str]) -> None:
    if len(set(keys)) != len(keys):
        raise InvalidRequest("keys must be unique within a batch", param="keys")


@contextlib.contextmanager
def _store_faults(agent_id: str) -> Iterator[None]:
    """Maps the data plane's outcomes to API errors; a failed authentication is a security event."""
    try:
        yield
    except data.MemoryNotFound as missing:
        raise NotFound(f"agent {agent_id!r} has no memory {str(missing)!r}", param="key") from None
    except data.PreconditionFailed:
        raise PreconditionFailed("the memory's version does not match the precondition") from None
    except data.QuotaExceeded as error:
        raise TooManyRequests(f"{error}: nothing was written", param=error.quota) from None
    except data.ValuesTooLarge as error:
        raise AnswerTooLarge(
            f"{error}, more than one answer carries: ask for fewer keys", param="keys"
        ) from None
    except IntegrityError as error:
        logger().error(
            "memory integrity failure: a stored value failed authentication",
            extra={"security_event": "memory_integrity_failure", "agent_id": agent_id, "reason": str(error)},
        )
        metrics().add_metric(name="MemoryIntegrityFailures", unit=MetricUnit.Count, value=1)
        raise IntegrityFailure("a stored memory failed authentication and was not returned") from None
    except RedisUnavailable as error:
        logger().warning("memory store unavailable", extra={"reason": str(error)})
        raise Unavailable("the memory store is unavailable, retry shortly", retry_after_seconds=1) from None
    except KeyringError:  # logged and counted (MemoryKeyringFailures) where the keyring loads
        raise Unavailable("the memory keyring is unavailable, retry shortly", retry_after_seconds=5) from None


def _load_keyring_at_init(store: data.MemoryStore) -> None:
    """An unreadable or malformed key source is a misconfiguration: the init fails with one line
    naming the setting (MEMORY_KEYS, MEMORY_KEYRING_STORE). A kms:// keyring document missing over
    existing memories is not: nothing may be sealed, so requests answer 503 until it is restored.
    Nor is a Redis outage (asked whether memories exist before a first key is made): the keyring
    then loads on first use, and requests answer 503 until Redis is back."""
    try:
        store.codec  # noqa: B018 - loading it is the point
    except KeyringMissing:
        pass  # logged and counted where it loads
    except KeyringError as error:
        raise ConfigError(f"{error.setting}={error}") from None
    except (RedisUnavailable, RedisError) as error:
        logger().warning("memory keyring deferred to the first request", extra={"reason": str(error)})


def router(
    store: data.MemoryStore, settings: MemorySettings, auth: AuthSettings, encode: TextEncoder
) -> APIRouter:
    """The memory routes over `store`; texts embedded by `encode`."""
    routes = APIRouter(tags=["memory"])
    recall = MemoryRecall(store, settings.max_recall_per_agent)
    # Routes are async on purpose: a Redis round trip is shorter than the worker-thread hand-off a
    # sync route costs per Lambda invocation (Mangum runs a fresh event loop each time).
    one = error_responses(
        Unauthorized, Forbidden, NotFound, PreconditionFailed, IntegrityFailure, Unavailable
    )
    # A write may also meet the agent's quotas.
    write = {**one, **error_responses(TooManyRequests)}

    def allow(request: Request, agent_id: str) -> None:
        principal(request, auth).require_agent(agent_id)

    @routes.put(
        "/agents/{agent_id}/memories/{key}",
        response_class=Response,
        responses={200: documented(WrittenOne), 201: documented(WrittenOne), **write},
        openapi_extra={"parameters": [IF_MATCH, IF_NONE_MATCH]},
    )
    async def put_memory(request: Request, agent_id: AgentId, key: Key, body: PutMemory) -> Response:
        allow(request, agent_id)
        condition = _condition(request.headers.get("if-match"), request.headers.get("if-none-match"))
        value = _value_json(body.value, settings.max_value_bytes, "value")
        ttl = body.ttl or settings.default_ttl
        if body.text is None:
            with _store_faults(agent_id):
                memory, created = store.put(agent_id, key, value, ttl, condition)
        else:
            item = RecallItem(key, value, ttl, body.text, encode([body.text])[0])
            with _store_faults(agent_id):
                [memory], created = recall.write(agent_id, [item], condition)
        answer = {"agent_id": agent_id, **_written(memory)}
        return json_response(answer, 201 if created else 200, _etag(memory.version))

    @routes.get(
        "/agents/{agent_id}/memories/{key}",
        response_class=Response,
        responses={200: documented(MemoryOne), **one},
    )
    async def get_memory(request: Request, agent_id: AgentId, key: Key) -> Response:
        allow(request, agent_id)
        with _store_faults(agent_id):
            memory = store.get(agent_id, key)
        return json_response({"agent_id": agent_id, **_read(memory)}, headers=_etag(memory.version))

    @routes.delete(
        "/agents/{agent_id}/memories/{key}",
        status_code=204,
        response_class=Response,
        responses=one,
        openapi_extra={"parameters": [IF_MATCH]},
    )
    async def delete_memory(request: Request, agent_id: AgentId, key: Key) -> Response:
        allow(request, agent_id)
        condition = _condition(request.headers.get("if-match"), None)
        with _store_faults(agent_id):
            store.delete(agent_id, key, condition)
        return Response(status_code=204)

    @routes.get(
        "/agents/{agent_id}/memories", response_class=Response, responses={200: documented(KeyPage), **one}
    )
    async def list_memories(
        request: Request,
        agent_id: AgentId,
        prefix: Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{0,128}$")] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
        cursor: Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{0,128}$")] = "",
    ) -> Response:
        allow(request, agent_id)
        with _store_faults(agent_id):
            keys, next_cursor = store.list_keys(agent_id, prefix, limit, cursor)
        return json_response({"keys": keys, "cursor": next_cursor})

    @routes.post(
        "/agents/{agent_id}/batch-put",
        response_class=Response,
        responses={200: documented(BatchWritten), **write},
    )
    async def batch_put(request: Request, agent_id: AgentId, body: BatchPut) -> Response:
        allow(request, agent_id)
        _unique([item.key for item in body.items])
        items = [
            (
                item.key,
                _value_json(item.value, settings.max_value_bytes, f"items.{i}.value"),
                item.ttl or settings.default_ttl,
            )
            for i, item in enumerate(body.items)
        ]
        texts = [item.text for item in body.items if item.text is not None]
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidRequest(
                f"a batch carries at most {MAX_BATCH_TEXTS} texts, this one {len(texts)}: split it",
                param="items",
            )
        if not texts:
            with _store_faults(agent_id):
                memories = store.batch_put(agent_id, items)
            return json_response({"items": [_written(memory) for memory in memories]})
        vectors = iter(encode(texts))
        with_text = [
            RecallItem(key, value, ttl, item.text, None if item.text is None else next(vectors))
            for (key, value, ttl), item in zip(items, body.items, strict=True)
        ]
        with _store_faults(agent_id):
            memories, _ = recall.write(agent_id, with_text)
        return json_response({"items": [_written(memory) for memory in memories]})

    @routes.post(
        "/agents/{agent_id}/recall",
        response_class=Response,
        responses={200: documented(RecallAnswer), **one, **error_responses(TooManyRequests)},
    )
    async def recall_memories(request: Request, agent_id: AgentId, body: RecallQuery) -> Response:
        """The agent's live memories whose text is closest in meaning to `query`, best first."""
        allow(request, agent_id)
        query = encode([body.query])[0]
        with _store_faults(agent_id):
            try:
                found = recall.recall(
                    agent_id, query, body.k, body.min_score, body.include_values, MAX_ANSWER_BYTES
                )
            except data.ValuesTooLarge as error:
                raise AnswerTooLarge(
                    f"{error}, more than one answer carries: ask for a smaller k, or no values",
                    param="k",
                ) from None
        return json_response({"matches": [_recalled(match, body.include_values) for match in found]})

    @routes.post(
        "/agents/{agent_id}/batch-get", response_class=Response, responses={200: documented(BatchRead), **one}
    )
    async def batch_get(request: Request, agent_id: AgentId, body: BatchGet) -> Response:
        allow(request, agent_id)
        _unique(body.keys)
        with _store_faults(agent_id):
            memories = store.batch_get(agent_id, body.keys, MAX_ANSWER_BYTES)
        found = [_read(memory) for memory in memories if memory is not None]
        missing = [key for key, memory in zip(body.keys, memories, strict=True) if memory is None]
        return json_response({"items": found, "missing": missing})

    return routes


def create_memory_app(
    store: data.MemoryStore | None = None,
    settings: MemorySettings | None = None,
    auth: AuthSettings | None = None,
    encode: TextEncoder | None = None,
) -> FastAPI:
    """The memory function's app over `store` (from the settings, themselves from the environment,
    when None): its keyring is loaded now, during the init; the recall model on the first text, or
    in the SnapStart warm-up with MEMORY_RECALL_WARM."""
    settings = settings or memory_settings()
    encode = encode or lazy_text_encoder(RECALL_MODEL)
    if settings.recall_warm:
        snapstart.before_snapshot(functools.partial(encode, ["SnapStart warm-up"]))
    if store is None:
        store = data.memory_store(settings)
        _load_keyring_at_init(store)
    # A snapshot must hold no live sockets: drop them before it, open fresh ones after each restore.
    snapstart.before_snapshot(store.redis.close)
    snapstart.after_restore(store.redis.close)
    # A snapshot may be restored long after it was taken: its keyring may be rotated or retired since.
    snapstart.after_restore(store.reload_keyring)
    return create_app("aiinfra memory", [router(store, settings, auth or auth_settings(), encode)])
