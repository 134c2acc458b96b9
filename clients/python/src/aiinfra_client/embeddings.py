"""`POST /v1/embeddings` and `GET /v1/models`: the calls and what they answer."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiinfra_client._core import Answer, Call

EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True)
class EmbeddingList:
    """One vector per input text, in input order; `model` is the model that made them."""

    vectors: list[list[float]]
    model: str
    prompt_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Model:
    id: str
    owned_by: str


def _vector(embedding: list[float] | str) -> list[float]:
    if isinstance(embedding, str):  # base64 of little-endian float32
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return embedding


def _embedding_list(answer: Answer) -> EmbeddingList:
    body = answer.json()
    rows = sorted(body["data"], key=lambda row: row["index"])
    usage = body.get("usage") or {}
    return EmbeddingList(
        vectors=[_vector(row["embedding"]) for row in rows],
        model=body["model"],
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        total_tokens=int(usage.get("total_tokens", 0)),
    )


def create(
    input: str | Sequence[str], *, model: str | None = None, encoding_format: EncodingFormat = "float"
) -> Call[EmbeddingList]:
    """Embeds one text or up to 2048; `model` defaults to the service's (EMBED_MODEL).

    `encoding_format="base64"` moves a quarter of the bytes; either way the vectors come back as floats.
    """
    body: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
    if model is not None:
        body["model"] = model
    body["encoding_format"] = encoding_format
    return Call("POST", "/v1/embeddings", _embedding_list, json=body)


def _models(answer: Answer) -> list[Model]:
    return [Model(id=row["id"], owned_by=row.get("owned_by", "")) for row in answer.json()["data"]]


def models() -> Call[list[Model]]:
    """The models the service serves."""
    return Call("GET", "/v1/models", _models)
