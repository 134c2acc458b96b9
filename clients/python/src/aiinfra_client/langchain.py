"""LangChain's `Embeddings` and `VectorStore` over the aiinfra APIs (extra: aiinfra-client[langchain]).

`AiinfraVectorStore` keeps each document's text in its item's metadata under `text_key` (the index
stores vectors and metadata only), so a text can be at most 1,024 characters, the API's limit on a
metadata string, and metadata values must be flat scalars (str, int, float, bool, None). Without an
`embedding` the service embeds texts and queries itself (the index needs dimension 384); with one,
vectors are made here with it and sent as vectors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from aiinfra_client._core import Retry
from aiinfra_client.client import DEFAULT_TIMEOUT, AsyncClient, Client
from aiinfra_client.indexes import IndexItem, Match, Metric

MAX_TEXTS = 2048  # per embeddings request
MAX_ITEMS = 1000  # per upsert or delete
TEXT_DIMENSION = 384


def _id_chunks(ids: list[str] | None) -> list[list[str]]:
    if not ids:
        raise ValueError("delete needs the ids to delete (a whole index is dropped with client.indexes.drop)")
    return [ids[start : start + MAX_ITEMS] for start in range(0, len(ids), MAX_ITEMS)]


class _Clients:
    """A sync client, and an async one made on first use (inside the event loop that uses it)."""

    def __init__(self, base_url: str, token: str | None, timeout: float, retry: Retry | None) -> None:
        self.settings: dict[str, Any] = {"token": token, "timeout": timeout, "retry": retry}
        self.base_url = base_url
        self.client = Client(base_url, **self.settings)
        self._async_client: AsyncClient | None = None

    @property
    def async_client(self) -> AsyncClient:
        if self._async_client is None:
            self._async_client = AsyncClient(self.base_url, **self.settings)
        return self._async_client

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()


class AiinfraEmbeddings(Embeddings):
    """Vectors from `POST /v1/embeddings` (base64 on the wire: the float32 values exactly)."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
    ) -> None:
        self.model = model
        self._clients = _Clients(base_url, token, timeout, retry)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        create = self._clients.client.embeddings.create
        return [
            vector
            for start in range(0, len(texts), MAX_TEXTS)
            for vector in create(
                texts[start : start + MAX_TEXTS], model=self.model, encoding_format="base64"
            ).vectors
        ]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        create = self._clients.async_client.embeddings.create
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_TEXTS):
            chunk = texts[start : start + MAX_TEXTS]
            vectors += (await create(chunk, model=self.model, encoding_format="base64")).vectors
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def close(self) -> None:
        self._clients.client.close()

    async def aclose(self) -> None:
        await self._clients.aclose()


class AiinfraVectorStore(VectorStore):
    """A LangChain vector store over one aiinfra search index (which must exist: see `from_texts`).

    `filter` in the searches is the API's Mongo-style metadata filter (`{"lang": "en"}`,
    `{"year": {"$gte": 2020}}`); scores are the index's: cosine similarity or inner product (higher
    is better) or squared L2 distance (lower is better).
    """

    def __init__(
        self,
        index_name: str,
        *,
        base_url: str,
        token: str | None = None,
        embedding: Embeddings | None = None,
        text_key: str = "text",
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
    ) -> None:
        self.index_name = index_name
        self.text_key = text_key
        self._embedding = embedding
        self._clients = _Clients(base_url, token, timeout, retry)

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def close(self) -> None:
        self._clients.client.close()

    async def aclose(self) -> None:
        await self._clients.aclose()

    def _items(
        self,
        texts: list[str],
        metadatas: Sequence[Mapping[str, Any]] | None,
        ids: Sequence[str] | None,
        vectors: list[list[float]] | None,
    ) -> list[IndexItem]:
        metadatas = metadatas or [{} for _ in texts]
        ids = ids or [uuid.uuid4().hex for _ in texts]
        if not len(texts) == len(metadatas) == len(ids):
            raise ValueError(
                f"{len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids: give one of each"
            )
        items: list[IndexItem] = []
        for i, (text, metadata, item_id) in enumerate(zip(texts, metadatas, ids, strict=True)):
            if self.text_key in metadata:
                raise ValueError(f"metadata {i} has {self.text_key!r}, the key that holds the text")
            item: IndexItem = {"id": item_id, "metadata": {**metadata, self.text_key: text}}
            if vectors is None:
                item["text"] = text
            else:
                item["vector"] = vectors[i]
            items.append(item)
        return items

    def _query(self, query: str | None, vector: list[float] | None, k: int, filter: Any) -> dict[str, Any]:
        return {
            "text": query if vector is None else None,
            "vector": vector,
            "k": k,
            "filter": filter,
            "include_metadata": True,
        }

    def _document(self, match: Match) -> tuple[Document, float]:
        metadata = dict(match.metadata or {})
        text = metadata.pop(self.text_key, "")
        return Document(id=match.id, page_content=str(text), metadata=metadata), match.score

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if self._embedding else None
        items = self._items(texts, metadatas, ids, vectors)
        for start in range(0, len(items), MAX_ITEMS):
            self._clients.client.indexes.upsert(self.index_name, items[start : start + MAX_ITEMS])
        return [item["id"] for item in items]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if self._embedding else None
        items = self._items(texts, metadatas, ids, vectors)
        for start in range(0, len(items), MAX_ITEMS):
            await self._clients.async_client.indexes.upsert(self.index_name, items[start : start + MAX_ITEMS])
        return [item["id"] for item in items]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = self._embedding.embed_query(query) if self._embedding else None
        found = self._clients.client.indexes.query(self.index_name, **self._query(query, vector, k, filter))
        return [self._document(match) for match in found.matches]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query) if self._embedding else None
        query_args = self._query(query, vector, k, filter)
        found = await self._clients.async_client.indexes.query(self.index_name, **query_args)
        return [self._document(match) for match in found.matches]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [document for document, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        found = self._clients.client.indexes.query(self.index_name, **self._query(None, embedding, k, filter))
        return [self._document(match)[0] for match in found.matches]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        for chunk in _id_chunks(ids):
            self._clients.client.indexes.delete(self.index_name, chunk)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        for chunk in _id_chunks(ids):
            await self._clients.async_client.indexes.delete(self.index_name, chunk)
        return True

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        index_name: str | None = None,
        base_url: str | None = None,
        token: str | None = None,
        metric: Metric = "cosine",
        factory: str = "Flat",
        **kwargs: Any,
    ) -> Self:
        """Creates the index if it is missing (dimension 384 when the service embeds, else the
        embedding's own) and adds the texts. `embedding=None`: the service embeds."""
        if not index_name or not base_url:
            raise ValueError("from_texts needs index_name= and base_url=")
        store = cls(index_name, base_url=base_url, token=token, embedding=embedding, **kwargs)
        dimension = len(embedding.embed_query(texts[0])) if embedding and texts else TEXT_DIMENSION
        store._clients.client.indexes.create(index_name, dimension=dimension, metric=metric, factory=factory)
        store.add_texts(texts, metadatas, ids=ids)
        return store
