"""`Client` and `AsyncClient`: the same endpoints (built once, in embeddings / indexes / memories),
sent over httpx with retries on 429 and 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Self, TypeVar

import httpx

from aiinfra_client import embeddings, indexes, memories
from aiinfra_client._core import (
    AsyncNamespace,
    Call,
    Retry,
    SyncNamespace,
    Transport,
    async_sends,
    sends,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class Embeddings(SyncNamespace):
    create = sends(embeddings.create)
    models = sends(embeddings.models)


class Indexes(SyncNamespace):
    create = sends(indexes.create)
    describe = sends(indexes.describe)
    drop = sends(indexes.drop)
    upsert = sends(indexes.upsert)
    delete = sends(indexes.delete)
    query = sends(indexes.query)
    compact = sends(indexes.compact)


class Memories(SyncNamespace):
    put = sends(memories.put)
    get = sends(memories.get)
    delete = sends(memories.delete)
    list_keys = sends(memories.list_keys)
    batch_put = sends(memories.batch_put)
    batch_get = sends(memories.batch_get)
    recall = sends(memories.recall)

    def iter_keys(self, agent_id: str, *, prefix: str = "", page_size: int = 100) -> Iterator[str]:
        """Every live key starting with `prefix`, in name order, a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list_keys(agent_id, prefix=prefix, limit=page_size, cursor=cursor)
            yield from page.keys
            if page.cursor is None:
                return
            cursor = page.cursor


class AsyncEmbeddings(AsyncNamespace):
    create = async_sends(embeddings.create)
    models = async_sends(embeddings.models)


class AsyncIndexes(AsyncNamespace):
    create = async_sends(indexes.create)
    describe = async_sends(indexes.describe)
    drop = async_sends(indexes.drop)
    upsert = async_sends(indexes.upsert)
    delete = async_sends(indexes.delete)
    query = async_sends(indexes.query)
    compact = async_sends(indexes.compact)


class AsyncMemories(AsyncNamespace):
    put = async_sends(memories.put)
    get = async_sends(memories.get)
    delete = async_sends(memories.delete)
    list_keys = async_sends(memories.list_keys)
    batch_put = async_sends(memories.batch_put)
    batch_get = async_sends(memories.batch_get)
    recall = async_sends(memories.recall)

    async def iter_keys(self, agent_id: str, *, prefix: str = "", page_size: int = 100) -> AsyncIterator[str]:
        """Every live key starting with `prefix`, in name order, a page at a time."""
        cursor: str | None = None
        while True:
            page = await self.list_keys(agent_id, prefix=prefix, limit=page_size, cursor=cursor)
            for key in page.keys:
                yield key
            if page.cursor is None:
                return
            cursor = page.cursor


class Client(Transport):
    """The aiinfra APIs over HTTP: `client.embeddings`, `client.indexes`, `client.memories`.

    `token` is sent as `Authorization: Bearer <token>` (the API's JWT authorizer). Pass `http_client`
    to bring your own httpx.Client (proxies, limits, event hooks); the client then leaves it open.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry or Retry())
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self.embeddings = Embeddings(self)
        self.indexes = Indexes(self)
        self.memories = Memories(self)

    def send(self, call: Call[T]) -> T:
        """Sends `call`, again while the answer is 429 or 503 and the retry policy allows."""
        attempt, waited = 1, 0.0
        while True:
            answer = self.answer(self._http.request(**self.request(call)))
            delay = self.retry.delay(attempt, answer, waited)
            if delay is None:
                return call.outcome(answer)
            time.sleep(delay)
            attempt, waited = attempt + 1, waited + delay

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncClient(Transport):
    """`Client`'s asyncio twin: the same namespaces, each method awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry or Retry())
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()
        self.embeddings = AsyncEmbeddings(self)
        self.indexes = AsyncIndexes(self)
        self.memories = AsyncMemories(self)

    async def send(self, call: Call[T]) -> T:
        """Sends `call`, again while the answer is 429 or 503 and the retry policy allows."""
        attempt, waited = 1, 0.0
        while True:
            answer = self.answer(await self._http.request(**self.request(call)))
            delay = self.retry.delay(attempt, answer, waited)
            if delay is None:
                return call.outcome(answer)
            await asyncio.sleep(delay)
            attempt, waited = attempt + 1, waited + delay

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
