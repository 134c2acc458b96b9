"""Search routes: create, list, describe and drop an index; upsert, delete, query and compact it.

Every route acts inside the caller's tenant (its token's tenant claim; one local tenant under
AUTH_MODE=none): names are per tenant, and another tenant's index answers 404, as one that does not
exist. Scores in query answers: cosine similarity for `cosine`, inner product for `ip` (higher is
better), squared Euclidean distance for `l2` (lower is better); matches come best first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints, model_validator
from starlette.responses import Response

from aiinfra import snapstart
from aiinfra.api.app import MAX_ANSWER_BYTES, create_app, json_response
from aiinfra.api.auth import principal
from aiinfra.api.encoder import TEXT_DIMENSION, TextEncoder, lazy_text_encoder
from aiinfra.api.errors import (
    AnswerTooLarge,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    error_responses,
)
from aiinfra.api.openapi import ResponseBody, documented
from aiinfra.config import AuthSettings, auth_settings, search_settings
from aiinfra.observability import MetricUnit, logger, metrics
from aiinfra.vectors.errors import (
    IndexBusy,
    IndexConflict,
    IndexNotFound,
    IndexQuotaExceeded,
    IndexUnavailable,
    InvalidIndexInput,
)
from aiinfra.vectors.fanout import RemoteShards
from aiinfra.vectors.filter import FilterError, compile_filter
from aiinfra.vectors.jobs import LambdaCompactions
from aiinfra.vectors.limits import IndexLimits
from aiinfra.vectors.manifest import INDEX_NAME_PATTERN, MAX_SHARDS, IndexManifest, Metric
from aiinfra.vectors.query import Answer, Found, LocalShards, ShardQuery, compaction_state
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import IndexPath, IndexStore, open_store, tenant_folder
from aiinfra.vectors.writer import IndexWriter, normalise

MAX_DIMENSION = 4096
MAX_ITEMS = 1000
MAX_QUERIES = 256
MAX_TEXT_CHARS = 10_000

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
MAX_INTEGER = 2**53  # metadata numbers filter as float64, which holds every integer up to this exactly


def _not_an_integer(value: Any) -> Any:
    # An integer out of range is refused, never turned into a float that is not the caller's number.
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"integers must be within -2**53 and 2**53, got {value}")
    return value


Integer = Annotated[int, Field(ge=-MAX_INTEGER, le=MAX_INTEGER)]
Real = Annotated[float, BeforeValidator(_not_an_integer), Field(allow_inf_nan=False)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)] | bool | Integer | Real | None
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=32)]


class CreateIndex(BaseModel):
    dimension: int = Field(ge=1, le=MAX_DIMENSION)
    metric: Metric = "cosine"
    factory: str = Field(
        default="Flat", min_length=1, max_length=128, description="A FAISS index factory string, e.g. HNSW32."
    )
    shards: int = Field(
        default=1, ge=1, le=MAX_SHARDS, description="Items go to a shard by a hash of their id."
    )


class CompactionOutcomeBody(ResponseBody):
    result: str
    finished_at: str
    seconds: float
    rows: int
    message: str | None = None


class CompactionBody(ResponseBody):
    state: str = Field(description="`idle`, `queued` or `running` (over all shards)")
    last: CompactionOutcomeBody | None


class IndexInfo(ResponseBody):
    name: str
    dimension: int
    metric: Metric
    factory: str
    shards: int
    version: int = Field(description="the sum of the shards' versions: it grows with every change")
    count: int = Field(description="live items, over the shards that answered")
    segments: int = Field(description="over all shards")
    compaction: CompactionBody
    partial: bool = Field(description="true when a shard function did not answer: see `missing_shards`")
    missing_shards: list[int] | None = None


class CompactionAccepted(ResponseBody):
    name: str
    segments: int
    compaction: CompactionBody


class IndexList(ResponseBody):
    indexes: list[str]


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
    version: int = Field(description="the sum of the versions of the shards this write changed")


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
    partial: bool = Field(description="true when a shard did not answer: see `missing_shards`")
    missing_shards: list[int] | None = None


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


def _refuse_overlong(per_query: list[list[Found]], include_metadata: bool) -> None:
    """AnswerTooLarge, before any metadata is read, when what the answer holds at least (the ids,
    and the metadata's stored JSON when asked for) exceeds what one answer carries."""
    least = sum(
        len(m.id) + (m.metadata_size() if include_metadata else 0) for matches in per_query for m in matches
    )
    if least > MAX_ANSWER_BYTES:
        what = "ids and metadata" if include_metadata else "ids"
        raise AnswerTooLarge(
            f"the {sum(map(len, per_query))} matches' {what} alone are {least} bytes, more than one "
            f"answer carries ({MAX_ANSWER_BYTES}): ask for a smaller k, fewer vectors or no metadata",
            param="k",
        )


def _answer(matches: list[Found], include_metadata: bool) -> list[dict[str, Any]]:
    if include_metadata:
        return [{"id": m.id, "score": m.score, "metadata": m.metadata()} for m in matches]
    return [{"id": m.id, "score": m.score} for m in matches]


def _written(count: int, manifests: list[IndexManifest]) -> dict[str, Any]:
    return {"count": count, "version": sum(manifest.version for manifest in manifests)}


@contextlib.contextmanager
def _index_faults(name: str) -> Iterator[None]:
    """Maps the index's outcomes to API errors; the store's own detail goes to the log only."""
    try:
        yield
    except IndexNotFound:
        raise NotFound(f"index {name!r} does not exist", param="name") from None
    except IndexConflict as error:
        raise Conflict(str(error)) from None
    except InvalidIndexInput as error:
        raise InvalidRequest(str(error), param=error.param) from None
    except IndexQuotaExceeded as error:
        raise TooManyRequests(str(error), param=error.quota) from None
    except IndexBusy as error:
        raise TooManyRequests(str(error), retry_after_seconds=error.retry_after_seconds) from None
    except IndexUnavailable as error:
        logger().warning("index store unavailable", extra={"index": name, "reason": error.detail})
        raise Unavailable(str(error), retry_after_seconds=error.retry_after_seconds) from None


def router(
    registry: IndexRegistry,
    writer: IndexWriter,
    encode: TextEncoder,
    auth: AuthSettings,
    shards: LocalShards | RemoteShards | None = None,
) -> APIRouter:
    """The search routes over the indexes `registry` reads and `writer` writes, each caller inside its
    tenant; queries go to `shards` (this process's, by default; the shard functions' when set)."""
    routes = APIRouter(tags=["search"])
    shards = shards or LocalShards(registry)
    errors = error_responses(Unauthorized, Forbidden, NotFound, Unavailable)
    writes = error_responses(Unauthorized, Forbidden, NotFound, TooManyRequests, Unavailable)

    def locate(request: Request, name: str) -> IndexPath:
        return IndexPath(principal(request, auth).require_tenant(), name)

    def items_matrix(dimension: int, items: list[Item]) -> np.ndarray:
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

    @routes.get("/indexes", response_class=Response, responses={200: documented(IndexList), **errors})
    def list_indexes(request: Request) -> Response:
        tenant = principal(request, auth).require_tenant()
        with _index_faults(""):
            names = writer.store.list_indexes(tenant_folder(tenant))
        return json_response({"indexes": names})

    @routes.put(
        "/indexes/{name}",
        status_code=201,
        response_class=Response,
        responses={
            200: documented(IndexInfo),
            201: documented(IndexInfo),
            **writes,
            **error_responses(Conflict),
        },
    )
    def create_index(request: Request, name: IndexName, body: CreateIndex) -> Response:
        index = locate(request, name)
        with _index_faults(name):
            _, created = writer.create(index, body.dimension, body.metric, body.factory, body.shards)
            return json_response(shards.describe(index), 201 if created else 200)

    @routes.get("/indexes/{name}", response_class=Response, responses={200: documented(IndexInfo), **errors})
    def describe_index(request: Request, name: IndexName) -> Response:
        index = locate(request, name)
        with _index_faults(name):
            return json_response(shards.describe(index))

    @routes.delete("/indexes/{name}", status_code=204, response_class=Response, responses=errors)
    def drop_index(request: Request, name: IndexName) -> Response:
        index = locate(request, name)
        with _index_faults(name):
            writer.drop(index)
        return Response(status_code=204)

    @routes.post(
        "/indexes/{name}/upsert", response_class=Response, responses={200: documented(WriteResult), **writes}
    )
    def upsert(request: Request, name: IndexName, body: UpsertRequest) -> Response:
        index = locate(request, name)
        ids = [item.id for item in body.items]
        with _index_faults(name):
            first, _ = writer.manifest(index.shard(0))
            vectors = items_matrix(first.dimension, body.items)
            manifests = writer.upsert(index, ids, vectors, [item.metadata for item in body.items], first)
        metrics().add_metric(name="UpsertedItems", unit=MetricUnit.Count, value=len(ids))
        return json_response(_written(len(ids), manifests))

    @routes.post(
        "/indexes/{name}/delete", response_class=Response, responses={200: documented(WriteResult), **writes}
    )
    def delete(request: Request, name: IndexName, body: DeleteRequest) -> Response:
        index = locate(request, name)
        with _index_faults(name):
            manifests = writer.delete(index, body.ids)
        return json_response(_written(len(body.ids), manifests))

    @routes.post(
        "/indexes/{name}/query", response_class=Response, responses={200: documented(QueryResponse), **errors}
    )
    def query(request: Request, name: IndexName, body: QueryRequest) -> Response:
        started = time.perf_counter()
        index = locate(request, name)
        try:
            program = compile_filter(body.filter) if body.filter is not None else None
        except FilterError as exc:
            raise InvalidRequest(str(exc), param="filter") from None
        with _index_faults(name):
            first = shards.first(index)
            if body.text is not None:
                queries = _text_matrix(encode, [body.text], first.dimension)
            else:
                queries = _matrix(body.vectors or [body.vector or []], first.dimension, "vector")
            shard_query = ShardQuery(
                normalise(queries, first.metric),
                body.k,
                program,
                body.nprobe,
                body.ef_search,
                body.include_metadata,
            )
            answer: Answer = shards.search(index, first, shard_query)
        _refuse_overlong(answer.matches, body.include_metadata)
        result: dict[str, Any] = {"version": answer.version, "partial": bool(answer.missing)}
        if answer.missing:
            result["missing_shards"] = answer.missing
        if body.vectors is not None:
            result["results"] = [{"matches": _answer(m, body.include_metadata)} for m in answer.matches]
        else:
            result["matches"] = _answer(answer.matches[0], body.include_metadata)
        latency_ms = (time.perf_counter() - started) * 1e3
        metrics().add_metric(name="QueryLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
        return json_response(result)

    @routes.post(
        "/indexes/{name}/compact",
        status_code=202,
        response_class=Response,
        responses={202: documented(CompactionAccepted), **errors},
    )
    def compact(request: Request, name: IndexName) -> Response:
        index = locate(request, name)
        with _index_faults(name):
            manifests = writer.request_compaction(index)
        accepted = {
            "name": name,
            "segments": sum(len(manifest.segments) for manifest in manifests),
            "compaction": compaction_state(manifests, writer.clock()),
        }
        return json_response(accepted, 202)

    return routes


def create_search_app(
    store: IndexStore | None = None,
    encode: TextEncoder | None = None,
    refresh_seconds: float = 0.0,
    limits: IndexLimits | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    """The search function's app over `store` (from the environment when None, with its settings:
    refresh window, limits, indexer, shard functions). Nothing is loaded now: a shard loads on its
    first use."""
    compactions = None
    shards: LocalShards | RemoteShards | None = None
    if store is None:
        settings = search_settings()
        store, refresh_seconds, limits = (
            open_store(settings.index_store),
            settings.refresh_seconds,
            settings.limits,
        )
        if settings.compaction_function:
            compactions = LambdaCompactions(settings.compaction_function)
        if settings.shard_functions:
            shards = RemoteShards(
                settings.shard_functions, store, refresh_seconds, settings.shard_deadline_seconds
            )
    registry = IndexRegistry(store, refresh_seconds)
    snapstart.after_restore(registry.expire)  # a restored copy re-checks each shard at its next use
    writer = IndexWriter(store, registry, limits, compactions)
    auth = auth or auth_settings()
    routes = router(registry, writer, encode or lazy_text_encoder(), auth, shards)
    return create_app("aiinfra search", [routes])
