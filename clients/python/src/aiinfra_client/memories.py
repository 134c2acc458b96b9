"""The memory routes `/agents/{agent_id}/memories[/{key}]`, `batch-put`, `batch-get`, `recall`: calls
and answers.

Agent ids and keys match `[A-Za-z0-9._-]{1,128}`. Every memory expires (`ttl` seconds, else the
service's default); its `version` changes on every write, so a read-modify-write passes the version
it read as `if_match` and gets PreconditionFailed instead of overwriting someone else's update.

A write may carry a `text` (1 to 8,192 characters, not only whitespace): the service embeds it and
seals it with the value, and `recall` finds the memory by the meaning of that text. The text belongs
to the write: a later write without one leaves the memory with no text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, Required, TypedDict

from aiinfra_client._core import Answer, Call, no_content, path

MAX_TEXT_CHARS = 8192  # the service's bound on a memory's text and on a recall query
MAX_BATCH_TEXTS = 100  # texts one batch put may carry: the service embeds them within the request
MAX_RECALL = 100  # the most matches one recall answers


class MemoryItem(TypedDict):
    """A memory to write in a batch: `ttl` in seconds, else the service's default; `text`, what
    `recall` matches (an item without one drops the memory's old text)."""

    key: Required[str]
    value: Required[Any]
    ttl: NotRequired[int]
    text: NotRequired[str]


@dataclass(frozen=True)
class Written:
    key: str
    version: str
    expires_at: datetime


@dataclass(frozen=True)
class PutResult(Written):
    created: bool


@dataclass(frozen=True)
class Memory(Written):
    value: Any


@dataclass(frozen=True)
class RecallMatch(Memory):
    """A memory `recall` found: `score` is the cosine similarity of the query and the memory's `text`
    (-1 to 1, higher is closer); `value` is None when values were not asked for."""

    score: float
    text: str


@dataclass(frozen=True)
class KeyPage:
    """Keys in name order; pass `cursor` back for the next page (None: this was the last)."""

    keys: list[str]
    cursor: str | None


@dataclass(frozen=True)
class BatchRead:
    items: list[Memory]
    missing: list[str]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _written(row: dict[str, Any]) -> Written:
    return Written(key=row["key"], version=row["version"], expires_at=_when(row["expires_at"]))


def _memory(row: dict[str, Any]) -> Memory:
    return Memory(
        key=row["key"], version=row["version"], expires_at=_when(row["expires_at"]), value=row["value"]
    )


def _recall_matches(answer: Answer) -> list[RecallMatch]:
    return [
        RecallMatch(
            key=row["key"],
            version=row["version"],
            expires_at=_when(row["expires_at"]),
            value=row.get("value"),
            score=row["score"],
            text=row["text"],
        )
        for row in answer.json()["matches"]
    ]


def _put_result(answer: Answer) -> PutResult:
    row = answer.json()
    return PutResult(
        key=row["key"],
        version=row["version"],
        expires_at=_when(row["expires_at"]),
        created=answer.status == 201,
    )


def _one(answer: Answer) -> Memory:
    return _memory(answer.json())


def _key_page(answer: Answer) -> KeyPage:
    body = answer.json()
    return KeyPage(keys=body["keys"], cursor=body["cursor"])


def _batch_written(answer: Answer) -> list[Written]:
    return [_written(row) for row in answer.json()["items"]]


def _batch_read(answer: Answer) -> BatchRead:
    body = answer.json()
    return BatchRead(items=[_memory(row) for row in body["items"]], missing=body["missing"])


def _if_match(version: str | None) -> dict[str, str]:
    if version is None:
        return {}
    return {"If-Match": version if version == "*" or version.startswith('"') else f'"{version}"'}


def put(
    agent_id: str,
    key: str,
    value: Any,
    *,
    ttl: int | None = None,
    text: str | None = None,
    if_match: str | None = None,
    create_only: bool = False,
) -> Call[PutResult]:
    """Writes any JSON `value`, with `text` for `recall` to match (without it, the memory has none).
    `if_match`: only over that version ("*": only if it exists); `create_only`: only if absent. A
    refused condition raises PreconditionFailed; a text past the agent's cap of memories with a
    text raises RateLimited (type quota_exceeded, param max_recall_per_agent)."""
    body: dict[str, Any] = {"value": value}
    if ttl is not None:
        body["ttl"] = ttl
    if text is not None:
        body["text"] = text
    headers = _if_match(if_match) | ({"If-None-Match": "*"} if create_only else {})
    return Call("PUT", path("agents", agent_id, "memories", key), _put_result, json=body, headers=headers)


def get(agent_id: str, key: str) -> Call[Memory]:
    """The memory, or NotFound once it is deleted or expired."""
    return Call("GET", path("agents", agent_id, "memories", key), _one)


def delete(agent_id: str, key: str, *, if_match: str | None = None) -> Call[None]:
    return Call("DELETE", path("agents", agent_id, "memories", key), no_content, headers=_if_match(if_match))


def list_keys(
    agent_id: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
) -> Call[KeyPage]:
    """One page of up to `limit` (at most 1000) live keys starting with `prefix`, after `cursor`."""
    params: dict[str, str | int] = {"limit": limit}
    if prefix:
        params["prefix"] = prefix
    if cursor:
        params["cursor"] = cursor
    return Call("GET", path("agents", agent_id, "memories"), _key_page, params=params)


def batch_put(agent_id: str, items: Iterable[MemoryItem]) -> Call[list[Written]]:
    """Writes up to 1000 memories atomically: all of them or none."""
    rows = [dict(item) for item in items]
    return Call("POST", path("agents", agent_id, "batch-put"), _batch_written, json={"items": rows})


def batch_get(agent_id: str, keys: Iterable[str]) -> Call[BatchRead]:
    """Up to 1000 memories by key; the keys not found are in `missing`."""
    return Call("POST", path("agents", agent_id, "batch-get"), _batch_read, json={"keys": list(keys)})


def recall(
    agent_id: str,
    query: str,
    *,
    k: int = 5,
    min_score: float | None = None,
    include_values: bool = True,
) -> Call[list[RecallMatch]]:
    """The agent's live memories whose text is closest in meaning to `query` (1 to 8,192 characters,
    not only whitespace), best first: at most `k` (1 to 100), none scoring under `min_score` (-1 to
    1). Memories written without a text are never found; an agent with none answers []."""
    body: dict[str, Any] = {"query": query, "k": k, "include_values": include_values}
    if min_score is not None:
        body["min_score"] = min_score
    return Call("POST", path("agents", agent_id, "recall"), _recall_matches, json=body)
