"""Search routes: create, describe and drop an index; upsert, delete, query and compact it.

Scores in query answers: cosine similarity for `cosine`, inner product for `ip` (higher is better),
squared Euclidean distance for `l2` (lower is better); matches come best first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, StringConstraints, model_validator
from starlette.responses import Response

from aiinfra import snapstart
from aiinfra.api.app import MAX_ANSWER_BYTES, create_app, json_response
from aiinfra.api.errors import (
    AnswerTooLarge,
    Conflict,
    InvalidRequest,
    NotFound,
    Unavailable,
    error_responses,
)
from aiinfra.api.openapi import ResponseBody, documented
from aiinfra.config import ConfigError, embed_settings, search_settings
from aiinfra.embedding.catalog import ModelCatalog, ModelFetchFailed
from aiinfra.observability import MetricUnit, logger, metrics
from aiinfra.vectors.errors import IndexConflict, IndexNotFound, IndexUnavailable, InvalidIndexInput
from aiinfra.vectors.filter import FilterError, compile_filter
from aiinfra.vectors.manifest import INDEX_NAME_PATTERN, Metric
from aiinfra.vectors.reader import IndexRegistry, IndexSnapshot, Match
from aiinfra.vectors.store import IndexStore, open_store
from aiinfra.vectors.writer import IndexWriter, normalise

MAX_DIMENSION = 4096
MAX_ITEMS = 1000
MAX_QUERIES = 256
MAX_TEXT_CHARS = 10_000
TEXT_DIMENSION = 384

TextEncoder = Callable[[list[str]], np.ndarray]

IndexName = Annotated[
    str,
    PathParam(
        pattern=INDEX_NAME_PATTERN, description="`[a-z0-9-]{1,64}`: lower-case letters, digits, dashes."
    ),
]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[Finite], Field(min_length=1, max_length=MAX_DIMENSION)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")]
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^$\x00-\x1f][^\x00-\x1f]*$")
]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)] | bool | int | Finite | None
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=32)]


class CreateIndex(BaseModel):
    dimension: int = Field(ge=1, le=MAX_DIMENSION)
    metric: Metric = "cosine"
    factory: str = Field(
        default="Flat", min_length=1, max_length=128, description="A FAISS index factory string, e.g. HNSW32."
    )


class IndexInfo(ResponseBody):
    name: str
    dimension: int
    metric: Metric
    factory: str
    version: int
    count: int
    segments: int


class Item(BaseModel):
    id: ItemId
    vector: Vector | None = None
    text: Text | None = Field(default=None, description="Embedded in-process (384 dimensions).")
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> Item:
        if (self.vector is None) == (self.text is None):
            raise ValueError("give exactly one of vector or text")
        return self


class UpsertRequest(BaseModel):
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)


class DeleteRequest(BaseModel):
    ids: list[ItemId] = Field(min_length=1, max_length=MAX_ITEMS)


class WriteResult(ResponseBody):
    count: int
    version: int


class QueryRequest(BaseModel):
    vector: Vector | None = None
    vectors: list[Vector] | None = Field(default=None, min_length=1, max_length=MAX_QUERIES)
    text: Text | None = None
    k: int = Field(default=10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(default=None, description="Mongo-style: $eq $ne $in $nin $gt ...")
    include_metadata: bool = False
    nprobe: int | None = Field(default=None, ge=1, le=65536, description="IVF indexes: lists to visit.")
    ef_search: int | None = Field(default=None, ge=1, le=4096, description="HNSW indexes: search width.")

    @model_validator(mode="after")
    def _one_query(self) -> QueryRequest:
        if sum(x is not None for x in (self.vector, self.vectors, self.text)) != 1:
            raise ValueError("give exactly one of vector, vectors or text")
        return self


class QueryMatch(ResponseBody):
    id: str
    score: float
    metadata: dict[str, Any] | None = None


class QueryResult(ResponseBody):
    matches: list[QueryMatch]


class QueryResponse(ResponseBody):
    matches: list[QueryMatch] | None = Field(default=None, description="For `vector` and `text`.")
    results: list[QueryResult] | None = Field(default=None, description="For `vectors`, one per query.")
    version: int


def lazy_text_encoder() -> TextEncoder:
    """Embeds with the layer's model, loaded on the first text only (vector-only use never pays for it)."""
    catalogs: list[ModelCatalog] = []  # the catalog loads its model once, under its own lock

    def encode(texts: list[str]) -> np.ndarray:
        if not catalogs:
            try:
                catalogs.append(ModelCatalog.from_settings(embed_settings()))
            except ConfigError as exc:
                raise Unavailable(f"text embedding is not available: {exc}", retry_after_seconds=60) from exc
        try:
            model = catalogs[0].get()
        except ModelFetchFailed as exc:
            raise Unavailable(str(exc), retry_after_seconds=5) from exc
        vectors: np.ndarray = model.embed(texts).vectors
        return vectors

    return encode


def _matrix(rows: list[list[float]], dimension: int, what: str) -> np.ndarray:
    lengths = {len(row) for row in rows}
    if lengths != {dimension}:
        found = ", ".join(str(n) for n in sorted(lengths))
        raise InvalidRequest(f"{what}: dimension {found}, the index has {dimension}", param=what)
    with np.errstate(over="ignore"):  # overflow is reported to the caller just below
        matrix = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise InvalidRequest(f"{what}: values overflow float32", param=what)
    return matrix


def _text_matrix(encode: TextEncoder, texts: list[str], dimension: int) -> np.ndarray:
    if dimension != TEXT_DIMENSION:
        raise InvalidRequest(f"text needs an index of dimension {TEXT_DIMENSION}, this one has {dimension}")
    return encode(texts)


def _refuse_overlong(per_query: list[list[Match]], include_metadata: bool) -> None:
    """AnswerTooLarge, before any metadata is read, when what the answer holds at least (the ids,
    and the metadata's stored JSON when asked for) exceeds what one answer carries."""
    least = sum(
        len(m.id) + (m.segment.metadata_bytes(m.row) if include_metadata else 0)
        for matches in per_query
        for m in matches
    )
    if least > MAX_ANSWER_BYTES:
        what = "ids and metadata" if include_metadata else "ids"
        raise AnswerTooLarge(
            f"the {sum(map(len, per_query))} matches' {what} alone are {least} bytes, more than one "
            f"answer carries ({MAX_ANSWER_BYTES}): ask for a smaller k, fewer vectors or no metadata",
            param="k",
        )


def _answer(matches: list[Match], include_metadata: bool) -> list[dict[str, Any]]:
    if include_metadata:
        return [{"id": m.id, "score": m.score, "metadata": m.segment.metadata(m.row)} for m in matches]
    return [{"id": m.id, "score": m.score} for m in matches]


def _info(snapshot: IndexSnapshot) -> dict[str, Any]:
    manifest = snapshot.manifest
    return {
        "name": manifest.name,
        "dimension": manifest.dimension,
        "metric": manifest.metric,
        "factory": manifest.factory,
        "version": manifest.version,
        "count": snapshot.count,
        "segments": len(manifest.segments),
    }


@contextlib.contextmanager
def _index_faults() -> Iterator[None]:
    """Maps the index's outcomes to API errors; the store's own detail goes to the log only."""
    try:
        yield
    except IndexNotFound as error:
        raise NotFound(str(error), param="name") from None
    except IndexConflict as error:
        raise Conflict(str(error)) from None
    except InvalidIndexInput as error:
        raise InvalidRequest(str(error), param=error.param) from None
    except IndexUnavailable as error:
        logger().warning("index store unavailable", extra={"reason": error.detail})
        raise Unavailable(str(error), retry_after_seconds=error.retry_after_seconds) from None


def router(registry: IndexRegistry, writer: IndexWriter, encode: TextEncoder) -> APIRouter:
    """The search routes over the indexes `registry` reads and `writer` writes."""
    routes = APIRouter(tags=["search"])
    errors = error_responses(NotFound, Unavailable)

    def items_matrix(name: str, items: list[Item]) -> np.ndarray:
        dimension = writer.manifest(name)[0].dimension
        rows = np.zeros((len(items), dimension), dtype=np.float32)
        vector_rows = [i for i, item in enumerate(items) if item.vector is not None]
        text_rows = [i for i, item in enumerate(items) if item.text is not None]
        if vector_rows:
            rows[vector_rows] = _matrix(
                [items[i].vector or [] for i in vector_rows], dimension, "items.vector"
            )
        if text_rows:
            rows[text_rows] = _text_matrix(encode, [items[i].text or "" for i in text_rows], dimension)
        return rows

    @routes.put(
        "/indexes/{name}",
        status_code=201,
        response_class=Response,
        responses={
            200: documented(IndexInfo),
            201: documented(IndexInfo),
            **error_responses(Conflict, Unavailable),
        },
    )
    def create_index(name: IndexName, request: CreateIndex) -> Response:
        with _index_faults():
            _, created = writer.create(name, request.dimension, request.metric, request.factory)
            return json_response(_info(registry.snapshot(name)), 201 if created else 200)

    @routes.get("/indexes/{name}", response_class=Response, responses={200: documented(IndexInfo), **errors})
    def describe_index(name: IndexName) -> Response:
        with _index_faults():
            return json_response(_info(registry.snapshot(name)))

    @routes.delete("/indexes/{name}", status_code=204, response_class=Response, responses=errors)
    def drop_index(name: IndexName) -> Response:
        with _index_faults():
            writer.drop(name)
        return Response(status_code=204)

    @routes.post(
        "/indexes/{name}/upsert", response_class=Response, responses={200: documented(WriteResult), **errors}
    )
    def upsert(name: IndexName, request: UpsertRequest) -> Response:
        ids = [item.id for item in request.items]
        with _index_faults():
            vectors = items_matrix(name, request.items)
            manifest = writer.upsert(name, ids, vectors, [item.metadata for item in request.items])
        metrics().add_metric(name="UpsertedItems", unit=MetricUnit.Count, value=len(ids))
        return json_response({"count": len(ids), "version": manifest.version})

    @routes.post(
        "/indexes/{name}/delete", response_class=Response, responses={200: documented(WriteResult), **errors}
    )
    def delete(name: IndexName, request: DeleteRequest) -> Response:
        with _index_faults():
            manifest = writer.delete(name, request.ids)
        return json_response({"count": len(request.ids), "version": manifest.version})

    @routes.post(
        "/indexes/{name}/query", response_class=Response, responses={200: documented(QueryResponse), **errors}
    )
    def query(name: IndexName, request: QueryRequest) -> Response:
        started = time.perf_counter()
        try:
            program = compile_filter(request.filter) if request.filter is not None else None
        except FilterError as exc:
            raise InvalidRequest(str(exc), param="filter") from None
        with _index_faults():
            snapshot = registry.snapshot(name)
        dimension = snapshot.manifest.dimension
        if request.text is not None:
            queries = _text_matrix(encode, [request.text], dimension)
        else:
            queries = _matrix(request.vectors or [request.vector or []], dimension, "vector")
        queries = normalise(queries, snapshot.manifest.metric)
        found = snapshot.search(queries, request.k, program, request.nprobe, request.ef_search)
        per_query = [found.matches(q) for q in range(len(queries))]
        _refuse_overlong(per_query, request.include_metadata)
        body: dict[str, Any] = {"version": snapshot.manifest.version}
        if request.vectors is not None:
            body["results"] = [
                {"matches": _answer(matches, request.include_metadata)} for matches in per_query
            ]
        else:
            body["matches"] = _answer(per_query[0], request.include_metadata)
        latency_ms = (time.perf_counter() - started) * 1e3
        metrics().add_metric(name="QueryLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
        return json_response(body)

    @routes.post(
        "/indexes/{name}/compact",
        response_class=Response,
        responses={200: documented(IndexInfo), **error_responses(NotFound, Conflict, Unavailable)},
    )
    def compact(name: IndexName) -> Response:
        with _index_faults():
            writer.compact(name)
            return json_response(_info(registry.snapshot(name)))

    return routes


def create_search_app(
    store: IndexStore | None = None, encode: TextEncoder | None = None, refresh_seconds: float = 0.0
) -> FastAPI:
    """The search function's app over `store` (from the environment when None). Every index in the
    store is loaded now, during the init, and re-checked after each SnapStart restore."""
    if store is None:
        settings = search_settings()
        store, refresh_seconds = open_store(settings.index_store), settings.refresh_seconds
    registry = IndexRegistry(store, refresh_seconds)
    registry.preload()
    snapstart.after_restore(registry.preload)  # restored copies re-read what changed since the snapshot
    writer = IndexWriter(store, registry)
    return create_app("aiinfra search", [router(registry, writer, encode or lazy_text_encoder())])
