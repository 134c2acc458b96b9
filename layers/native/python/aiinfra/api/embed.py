"""`POST /v1/embeddings` and `GET /v1/models`, compatible with the OpenAI embeddings API."""

from __future__ import annotations

import base64
import functools
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints
from starlette.responses import Response

from aiinfra import snapstart
from aiinfra.api.app import create_app, json_response
from aiinfra.api.errors import NotFound, Unavailable, error_responses
from aiinfra.api.openapi import ResponseBody, documented
from aiinfra.config import EMBED_MODEL_IDS, embed_settings
from aiinfra.embedding.catalog import ModelCatalog, ModelFetchFailed, ModelNotDeployed
from aiinfra.observability import MetricUnit, metrics

if TYPE_CHECKING:
    from aiinfra.embedding.embedder import Embedder

MAX_INPUTS = 2048
MAX_INPUT_CHARS = 100_000

ModelId = Literal["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]
assert set(EMBED_MODEL_IDS) == set(ModelId.__args__)  # type: ignore[attr-defined]


def _check_texts(value: Any) -> Any:
    """Names the first problem of `input` in words a caller can act on."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ValueError("must be a string or a list of strings")
    if not texts:
        raise ValueError("must hold at least 1 text")
    if len(texts) > MAX_INPUTS:
        raise ValueError(f"must hold at most {MAX_INPUTS} texts, got {len(texts)}")
    if all(isinstance(t, int) or (isinstance(t, list) and all(isinstance(i, int) for i in t)) for t in texts):
        raise ValueError("token-id arrays are not supported, send text")
    for index, text in enumerate(texts):
        where = "" if isinstance(value, str) else f"item {index} "
        if not isinstance(text, str):
            raise ValueError(f"{where}must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{where}must not be empty or whitespace-only")
        if len(text) > MAX_INPUT_CHARS:
            raise ValueError(f"{where}must be at most {MAX_INPUT_CHARS} characters, got {len(text)}")
    return value


# Something other than whitespace, as str.isspace() counts it: the Unicode White_Space that JSON
# Schema's \s means, plus the separators U+001C..U+001F.
NOT_BLANK = r"[^\s\x1c-\x1f]"
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS, pattern=NOT_BLANK)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


class EmbeddingRequest(BaseModel):
    input: Annotated[Text | Texts, BeforeValidator(_check_texts)] = Field(
        description="A text, or a list of up to 2048 texts (token-id arrays are not accepted)."
    )
    model: ModelId | None = Field(default=None, description="Defaults to the EMBED_MODEL setting.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64` is little-endian float32."
    )
    dimensions: Literal[384] | None = Field(default=None, description="Only 384, the model's own.")
    user: str | None = None


class Embedding(ResponseBody):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(ResponseBody):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(ResponseBody):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class Model(ResponseBody):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(ResponseBody):
    object: Literal["list"]
    data: list[Model]


def warm_up(catalog: ModelCatalog) -> None:
    for model_id in catalog.model_ids:
        catalog.get(model_id).embed(["SnapStart warm-up"])


def embedder(catalog: ModelCatalog, model_id: str) -> Embedder:
    """The model's Embedder, or the API error that says why it cannot be had."""
    try:
        return catalog.get(model_id)
    except ModelNotDeployed as exc:
        raise NotFound(str(exc), param="model") from exc
    except ModelFetchFailed as exc:
        raise Unavailable(str(exc), retry_after_seconds=5) from exc


def router(catalog: ModelCatalog) -> APIRouter:
    """The embed routes over the models of `catalog`."""
    routes = APIRouter(tags=["embeddings"])

    @routes.post(
        "/v1/embeddings",
        response_class=Response,
        responses={200: documented(EmbeddingResponse), **error_responses(NotFound, Unavailable)},
    )
    def create_embeddings(request: EmbeddingRequest) -> Response:
        started = time.perf_counter()
        texts = [request.input] if isinstance(request.input, str) else request.input
        model_id = request.model or catalog.default_model
        batch = embedder(catalog, model_id).embed(texts)
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

    @routes.get("/v1/models", response_class=Response, responses={200: documented(ModelList)})
    def list_models() -> Response:
        models = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "aiinfra"}
            for model_id in catalog.model_ids
        ]
        return json_response({"object": "list", "data": models})

    return routes


def create_embed_app(catalog: ModelCatalog | None = None) -> FastAPI:
    """The embed function's app over `catalog` (from the environment when None). Unless the catalog
    is one a test made without `preload`, its default model is loaded before this returns, during
    the init."""
    if catalog is None:
        catalog = ModelCatalog.from_settings(embed_settings()).preload()
    if catalog.preloading:
        catalog.wait_for_preload()
        # Before a SnapStart snapshot: load every served model (fetching those from MODEL_STORE) and
        # run one inference each, so restored instances start with warm sessions.
        snapstart.before_snapshot(functools.partial(warm_up, catalog))
    return create_app("aiinfra embed", [router(catalog)])
