"""`POST /v1/embeddings` and `GET /v1/models`, compatible with the OpenAI embeddings API."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator
from starlette.responses import Response

from aiinfra.api.app import create_app, json_response
from aiinfra.api.errors import error_responses
from aiinfra.config import EMBED_MODEL_IDS, embed_settings
from aiinfra.embedding.catalog import ModelCatalog
from aiinfra.observability import MetricUnit, metrics

MAX_INPUTS = 2048
MAX_INPUT_CHARS = 100_000

ModelId = Literal["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]
assert set(EMBED_MODEL_IDS) == set(ModelId.__args__)  # type: ignore[attr-defined]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or whitespace-only")
    return text


Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": r"\S"}),
]


class EmbeddingRequest(BaseModel):
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)] = Field(
        description="A text, or a list of up to 2048 texts (token-id arrays are not accepted)."
    )
    model: ModelId | None = Field(default=None, description="Defaults to the EMBED_MODEL setting.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64` is little-endian float32."
    )
    dimensions: Literal[384] | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_token_ids(cls, data: Any) -> Any:
        items = data.get("input") if isinstance(data, dict) else None
        if (
            isinstance(items, list)
            and items
            and all(
                isinstance(item, int) or (isinstance(item, list) and all(isinstance(t, int) for t in item))
                for item in items
            )
        ):
            raise ValueError("input: token-id arrays are not supported, send text")
        return data


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


def router(catalog: ModelCatalog | None = None) -> APIRouter:
    """The embed routes over `catalog` (built from the environment when None)."""
    if catalog is None:
        settings = embed_settings()
        catalog = ModelCatalog(settings.model_dir, settings.default_model, settings.threads)
        catalog.get()  # the default model serves the first request: load it during init
    routes = APIRouter(tags=["embeddings"])

    @routes.post(
        "/v1/embeddings",
        response_class=Response,
        responses={200: {"model": EmbeddingResponse}, **error_responses()},
    )
    def create_embeddings(request: EmbeddingRequest) -> Response:
        started = time.perf_counter()
        texts = [request.input] if isinstance(request.input, str) else request.input
        model_id = request.model or catalog.default_model
        batch = catalog.get(model_id).embed(texts)
        if request.encoding_format == "base64":
            rows: Any = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in batch.vectors]
        else:
            rows = batch.vectors
        tokens = int(batch.token_counts.sum())
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": rows[i]} for i in range(len(texts))],
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        emf = metrics()
        emf.add_metric(name="Texts", unit=MetricUnit.Count, value=len(texts))
        emf.add_metric(name="Tokens", unit=MetricUnit.Count, value=tokens)
        latency_ms = (time.perf_counter() - started) * 1e3
        emf.add_metric(name="EmbedLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
        return json_response(body)

    @routes.get("/v1/models", response_model=ModelList)
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": 0, "owned_by": "aiinfra"}
                for model_id in catalog.model_ids
            ],
        }

    return routes


def create_embed_app() -> FastAPI:
    return create_app("aiinfra embed", [router()])
