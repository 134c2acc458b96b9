"""AiinfraEmbeddings and AiinfraVectorStore through LangChain's base-class methods, against the real app."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import pytest
from aiinfra_client import Client
from aiinfra_client.langchain import AiinfraEmbeddings, AiinfraVectorStore
from langchain_core.documents import Document

from tests.client.conftest import NO_RETRY

PASSAGES = [
    ("The cat slept all afternoon on the warm windowsill.", {"topic": "pets", "year": 2021}),
    ("Our dog loves chasing the ball in the park.", {"topic": "pets", "year": 2024}),
    ("The central bank raised interest rates again.", {"topic": "finance", "year": 2024}),
    ("Bond yields fell after the inflation report.", {"topic": "finance", "year": 2022}),
]
TEXTS = [text for text, _ in PASSAGES]
METADATAS = [metadata for _, metadata in PASSAGES]


def _route(api_url: str, texts: list[str], model: str | None = None) -> np.ndarray:
    """The vectors POST /v1/embeddings answers, read without the client."""
    body: dict[str, object] = {"input": texts, **({"model": model} if model else {})}
    answer = httpx.post(f"{api_url}/v1/embeddings", json=body)
    answer.raise_for_status()
    return np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)


def _bits(vectors: list[list[float]] | np.ndarray) -> list[bytes]:
    return [struct.pack(f"<{len(v)}f", *v) for v in vectors]


@pytest.mark.parametrize("model", [None, "all-MiniLM-L6-v2-int8"])
def test_embeddings_are_the_routes_vectors(api_url: str, model: str | None) -> None:
    embeddings = AiinfraEmbeddings(base_url=api_url, model=model, retry=NO_RETRY)
    try:
        expected = _route(api_url, TEXTS, model)
        assert _bits(embeddings.embed_documents(TEXTS)) == _bits(expected)
        # A text alone is padded unlike one in a batch: compare with the route's answer for it alone.
        assert _bits([embeddings.embed_query(TEXTS[2])]) == _bits(_route(api_url, TEXTS[2:3], model))
    finally:
        embeddings.close()


@pytest.mark.anyio
async def test_async_embeddings(api_url: str) -> None:
    embeddings = AiinfraEmbeddings(base_url=api_url, retry=NO_RETRY)
    try:
        expected = _route(api_url, TEXTS)
        assert _bits(await embeddings.aembed_documents(TEXTS)) == _bits(expected)
        assert _bits([await embeddings.aembed_query(TEXTS[0])]) == _bits(_route(api_url, TEXTS[:1]))
    finally:
        embeddings.close()
        await embeddings.aclose()


def test_vector_store_with_texts_embedded_by_the_service(api_url: str, api: Client, index_name: str) -> None:
    store = AiinfraVectorStore.from_texts(
        TEXTS, None, METADATAS, ids=["cat", "dog", "bank", "bonds"], index_name=index_name, base_url=api_url
    )
    try:
        assert api.indexes.describe(index_name).dimension == 384
        query = "a kitten napping in the sun"
        found = store.similarity_search_with_score(query, k=2)
        assert found[0][0] == Document(
            id="cat", page_content=TEXTS[0], metadata={"topic": "pets", "year": 2021}
        )
        # The score is the cosine of the service's own embeddings of the query and the text.
        vectors = _route(api_url, [query, *TEXTS])
        assert [s for _, s in found] == pytest.approx(
            [float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])], abs=1e-4
        )

        recent_finance = store.similarity_search_with_score(
            "money and markets", k=4, filter={"topic": "finance", "year": {"$gte": 2023}}
        )
        assert [d.id for d, _ in recent_finance] == ["bank"]
        assert [d.id for d in store.similarity_search("pets at play", k=1, filter={"topic": "pets"})] == [
            "dog"
        ]

        added = store.add_texts(["Stocks rallied at the close."], [{"topic": "finance", "year": 2025}])
        assert len(added) == 1 and len(added[0]) == 32  # an id made here, as none was given
        assert store.add_documents([Document(id="fish", page_content="Goldfish need clean water.")]) == [
            "fish"
        ]
        assert api.indexes.describe(index_name).count == 6

        assert store.delete(["cat", added[0]]) is True
        ids = [d.id for d in store.similarity_search("a kitten napping in the sun", k=10)]
        assert "cat" not in ids and added[0] not in ids and len(ids) == 4
        with pytest.raises(ValueError, match="ids"):
            store.delete()
    finally:
        store.close()


def test_vector_store_with_an_embedding_of_the_callers_choice(api_url: str, index_name: str) -> None:
    embedding = AiinfraEmbeddings(base_url=api_url, model="all-MiniLM-L6-v2-int8")
    store = AiinfraVectorStore.from_texts(
        TEXTS, embedding, METADATAS, index_name=index_name, base_url=api_url
    )
    try:
        found = store.similarity_search_with_score("interest rates and central banks", k=1)
        vectors = _route(api_url, ["interest rates and central banks", TEXTS[2]], "all-MiniLM-L6-v2-int8")
        assert found[0][0].page_content == TEXTS[2]
        assert found[0][1] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)
        by_vector = store.similarity_search_by_vector(vectors[1].tolist(), k=1)
        assert by_vector[0].page_content == TEXTS[2]
    finally:
        store.close()
        embedding.close()


@pytest.mark.anyio
async def test_async_vector_store(api_url: str, api: Client, index_name: str) -> None:
    api.indexes.create(index_name, dimension=384)
    store = AiinfraVectorStore(index_name, base_url=api_url, retry=NO_RETRY)
    try:
        ids = await store.aadd_texts(TEXTS, METADATAS, ids=["cat", "dog", "bank", "bonds"])
        assert ids == ["cat", "dog", "bank", "bonds"]
        found = await store.asimilarity_search_with_score("bond markets", k=1, filter={"topic": "finance"})
        assert found[0][0].id == "bonds" and found[0][0].metadata == {"topic": "finance", "year": 2022}
        assert await store.adelete(["bonds"]) is True
        assert [
            d.id for d in await store.asimilarity_search("bond markets", k=1, filter={"topic": "finance"})
        ] == ["bank"]
    finally:
        store.close()
        await store.aclose()
