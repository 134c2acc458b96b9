"""The client's embeddings against the real app: the vectors the route itself answers, either encoding."""

from __future__ import annotations

import struct

import httpx
import pytest
from aiinfra_client import AsyncClient, Client, InvalidRequest

TEXTS = ["a cat sat on the mat", "stock markets fell sharply", "the kitten slept"]


def _route_vectors(api_url: str, texts: list[str], model: str) -> list[list[float]]:
    """What POST /v1/embeddings answers, read without the client."""
    answer = httpx.post(f"{api_url}/v1/embeddings", json={"input": texts, "model": model})
    answer.raise_for_status()
    return [row["embedding"] for row in answer.json()["data"]]


def _float32(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"])
def test_embed_many_matches_the_route_in_float_and_base64(api: Client, api_url: str, model: str) -> None:
    expected = _route_vectors(api_url, TEXTS, model)
    as_floats = api.embeddings.create(TEXTS, model=model)
    as_base64 = api.embeddings.create(TEXTS, model=model, encoding_format="base64")
    assert as_floats.vectors == expected
    assert as_floats.model == as_base64.model == model
    assert as_floats.prompt_tokens > len(TEXTS) and as_floats.total_tokens == as_floats.prompt_tokens
    # base64 carries the float32 bits themselves: the same bits the JSON decimals round to.
    assert [_float32(v) for v in as_base64.vectors] == [_float32(v) for v in expected]
    assert all(len(v) == 384 for v in as_base64.vectors)


def test_embed_one_text_and_list_models(api: Client, api_url: str) -> None:
    one = api.embeddings.create(TEXTS[1])
    assert len(one.vectors) == 1
    assert one.vectors == _route_vectors(api_url, [TEXTS[1]], one.model)
    models = api.embeddings.models()
    assert {m.id for m in models} == {"all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"}
    assert {m.owned_by for m in models} == {"aiinfra"}


def test_bad_input_raises_invalid_request(api: Client) -> None:
    with pytest.raises(InvalidRequest) as refused:
        api.embeddings.create(["fine", "   "])
    assert refused.value.status == 400 and refused.value.type == "invalid_request_error"
    assert "whitespace" in refused.value.message and refused.value.param == "input"


@pytest.mark.anyio
async def test_async_embeddings(async_api: AsyncClient, api_url: str) -> None:
    result = await async_api.embeddings.create(TEXTS, encoding_format="base64")
    expected = _route_vectors(api_url, TEXTS, result.model)
    assert [_float32(v) for v in result.vectors] == [_float32(v) for v in expected]
    assert {m.id for m in await async_api.embeddings.models()} == {
        "all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2-int8",
    }
    with pytest.raises(InvalidRequest):
        await async_api.embeddings.create([])
