"""Fan-out across functions: the search function asks each shard of an index of the shard function
that serves it (Lambda Invoke, RequestResponse, all shards at once under one deadline) and merges
their best k as `LocalShards` would. A shard that fails or misses the deadline is named in
`Answer.missing`; only shard 0's definition, read from the store here, must be at hand.

Slots: `INDEX_SHARD_FUNCTIONS` lists N shard functions; shard k of every index goes to slot k mod N,
so each function's instances keep the same shards warm. A slot is a function name or ARN (the
Lambda API), or `http://host:port`, an Invoke endpoint serving one function as `function` the way
aws-lambda-rie does.

The event (`ShardRequest.to_event`) and its answer are plain JSON: queries travel as base64 of
little-endian float32 rows, already normalised for the metric; the filter as its compiled program.
An answer is `{"version", "matches": [[{"id", "score", "metadata"?}, ...] per query]}` or
`{"error": {"type": "not_found" | "unavailable" | "invalid" | "too_large" | "stale", "message"}}`;
`too_large` (the matches exceed what one Invoke answer carries) is the caller's 400; `stale` (the
index was dropped and created again since the caller read its definition: the event names the
incarnation it meant) makes the caller read the definition again and ask once more; the others make
the shard missing (shard 0 `not_found`: the index is gone, 404).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexNotFound, IndexUnavailable, InvalidIndexInput
from aiinfra.vectors.filter import Instruction
from aiinfra.vectors.manifest import CorruptManifest, IndexManifest
from aiinfra.vectors.query import Answer, Found, ShardQuery, description, merge
from aiinfra.vectors.store import IndexPath, IndexStore

SHARD_EVENT = "shard-query"
COUNT_EVENT = "shard-count"  # {"aiinfra", "tenant", "name", "shard"}: answered {"version", "count"}
RIE_FUNCTION = "function"  # the one function an aws-lambda-rie endpoint serves


@dataclass(frozen=True)
class RemoteMatch:
    """One match as a shard function answered it."""

    id: str
    score: float
    found_metadata: dict[str, Any] | None = None

    def metadata_size(self) -> int:
        return len(orjson.dumps(self.found_metadata or {}))

    def metadata(self) -> dict[str, Any]:
        return self.found_metadata or {}


@dataclass(frozen=True)
class ShardRequest:
    """What one shard function is asked: one shard of one tenant's index, and the query."""

    tenant: str
    name: str
    shard: int
    query: ShardQuery
    incarnation: str = ""  # of the definition the caller holds; "" for any

    @property
    def path(self) -> str:
        return IndexPath(self.tenant, self.name).shard(self.shard)

    def to_event(self) -> dict[str, Any]:
        queries = np.ascontiguousarray(self.query.queries, dtype="<f4")
        return {
            "aiinfra": SHARD_EVENT,
            "tenant": self.tenant,
            "name": self.name,
            "shard": self.shard,
            "queries": base64.b64encode(queries.tobytes()).decode(),
            "dimension": int(queries.shape[1]),
            "k": self.query.k,
            "program": self.query.program,
            "nprobe": self.query.nprobe,
            "ef_search": self.query.ef_search,
            "include_metadata": self.query.include_metadata,
            "incarnation": self.incarnation,
        }

    @classmethod
    def from_event(cls, event: Any) -> ShardRequest:
        """The request a shard event carries; ValueError naming what is wrong when it is not one."""
        if not isinstance(event, dict) or event.get("aiinfra") != SHARD_EVENT:
            raise ValueError("not a shard query event")
        tenant, name = event.get("tenant"), event.get("name")
        if not isinstance(tenant, str) or not tenant or not isinstance(name, str) or not name:
            raise ValueError("a shard query names its tenant and index")
        shard, dimension, k = (_count(event, field) for field in ("shard", "dimension", "k"))
        if dimension < 1 or k < 1:
            raise ValueError("dimension and k must be positive")
        try:
            raw = base64.b64decode(str(event.get("queries")), validate=True)
        except ValueError:
            raise ValueError("queries must be base64") from None
        if not raw or len(raw) % (4 * dimension):
            raise ValueError(f"queries must be float32 rows of dimension {dimension}")
        queries = np.frombuffer(raw, dtype="<f4").reshape(-1, dimension)
        if not np.isfinite(queries).all():
            raise ValueError("queries must be finite")
        query = ShardQuery(
            queries.astype(np.float32),
            k,
            _program(event.get("program")),
            _optional_count(event, "nprobe"),
            _optional_count(event, "ef_search"),
            event.get("include_metadata") is True,
        )
        incarnation = event.get("incarnation", "")
        if not isinstance(incarnation, str):
            raise ValueError("incarnation must be a string")
        return cls(tenant, name, shard, query, incarnation)


def _count(event: dict[str, Any], field: str) -> int:
    value = event.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer")
    return value


def _optional_count(event: dict[str, Any], field: str) -> int | None:
    if event.get(field) is None:
        return None
    value = _count(event, field)
    if value < 1:
        raise ValueError(f"{field} must be positive")
    return value


def _program(raw: Any) -> list[Instruction] | None:
    """A compiled filter program as it travelled (lists for tuples), its shape checked."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ValueError("program must be a non-empty list of instructions")
    program: list[Instruction] = []
    for step in raw:
        if not (isinstance(step, list) and len(step) == 4):
            raise ValueError("program: every instruction is [op, field, numbers, tokens]")
        op, field, numbers, tokens = step
        well_formed = (
            isinstance(op, int)
            and isinstance(field, str)
            and isinstance(numbers, list)
            and all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers)
            and isinstance(tokens, list)
            and all(isinstance(t, str) for t in tokens)
        )
        if not well_formed:
            raise ValueError("program: every instruction is [op, field, numbers, tokens]")
        program.append((op, field, [float(n) for n in numbers], tokens))
    return program


def shard_answer(version: int, matches: list[list[Found]], include_metadata: bool) -> dict[str, Any]:
    """What a shard function answers for its matches."""
    if include_metadata:
        rows = [[{"id": m.id, "score": m.score, "metadata": m.metadata()} for m in q] for q in matches]
    else:
        rows = [[{"id": m.id, "score": m.score} for m in q] for q in matches]
    return {"version": version, "matches": rows}


def shard_error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


class _Recreated(Exception):
    """A shard holds another incarnation of the index than the definition the query was sent with."""


class ShardFailed(Exception):
    """A shard function did not answer its part (an error it reported, or one on the way)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _matches(answer: Any, queries: int) -> tuple[int, list[list[Found]]]:
    """The version and matches of a shard function's answer; ShardFailed when it is an error or is
    not an answer at all."""
    if not isinstance(answer, dict):
        raise ShardFailed("invalid", "the shard answered something other than an object")
    error = answer.get("error")
    if isinstance(error, dict):
        raise ShardFailed(str(error.get("type")), str(error.get("message")))
    try:
        version, rows = int(answer["version"]), answer["matches"]
        if not isinstance(rows, list) or len(rows) != queries:
            raise ValueError("a list of matches per query")
        matches: list[list[Found]] = [[_match(m) for m in row] for row in rows]
    except (KeyError, TypeError, ValueError, AttributeError) as problem:
        raise ShardFailed("invalid", f"the shard's answer is malformed: {problem}") from None
    return version, matches


def _match(found: Any) -> RemoteMatch:
    metadata = found.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata must be an object")
    return RemoteMatch(str(found["id"]), float(found["score"]), metadata)


class RemoteShards:
    """Searches an index's shards through the shard functions in `slots` (see the module)."""

    def __init__(
        self,
        slots: tuple[str, ...],
        store: IndexStore,
        refresh_seconds: float,
        deadline_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not slots:
            raise ValueError("RemoteShards needs at least one shard function")
        self.slots = slots
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.deadline_seconds = deadline_seconds
        self.clock = clock
        self._clients: dict[str, Any] = {}
        self._firsts: dict[str, tuple[float, IndexManifest]] = {}
        self._lock = threading.Lock()
        # Threads block on the network only; one per shard an index may have.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="shard-invoke")

    def first(self, index: IndexPath) -> IndexManifest:
        """Shard 0's manifest, read from the store at most once per refresh window (IndexNotFound when
        the index does not exist): the definition a query needs, without loading any shard here."""
        path = index.shard(0)
        cached = self._firsts.get(path)
        now = self.clock()
        if cached is not None and now - cached[0] < self.refresh_seconds:
            return cached[1]
        found = self.store.read_manifest(path)
        if found is None:
            self._firsts.pop(path, None)
            raise IndexNotFound(index.name)
        try:
            manifest = IndexManifest.from_json(found[0])
        except CorruptManifest as error:
            raise IndexUnavailable(
                "the index cannot be loaded now, retry shortly", detail=f"{path}: {error}"
            ) from None
        self._firsts[path] = (now, manifest)
        return manifest

    def describe(self, index: IndexPath) -> dict[str, Any]:
        """The index as GET answers it: the shards' manifests read from the store here, their live
        counts from the shard functions (which load them; this function loads none). A shard
        function that does not answer in time leaves its count out and is in `missing_shards`."""
        first = self.first(index)
        paths = [index.shard(shard) for shard in range(first.shards)]
        read = list(self._pool.map(self.store.read_manifest, paths))  # fresh: GET shows jobs as they stand
        if read[0] is None:
            self._firsts.pop(index.shard(0), None)
            raise IndexNotFound(index.name)
        manifests = [IndexManifest.from_json(found[0]) for found in read if found is not None]
        if manifests[0].incarnation != first.incarnation:
            # Dropped and created again since the definition held here was read: hold the new one,
            # whose shards may be others.
            self._firsts[index.shard(0)] = (self.clock(), manifests[0])
            return self.describe(index)
        events = [
            {"aiinfra": COUNT_EVENT, "tenant": index.tenant, "name": index.name, "shard": s}
            for s in range(first.shards)
        ]
        futures = {self._pool.submit(self._count, event): shard for shard, event in enumerate(events)}
        wait(futures, timeout=self.deadline_seconds)
        counts: list[int] = []
        missing: list[int] = []
        for future, shard in futures.items():
            problem = self._problem(future)
            if problem is None:
                counts.append(future.result())
            else:
                logger().warning(
                    "shard missing from a description", extra={"shard": shard, "problem": str(problem)}
                )
                missing.append(shard)
        return description(index, manifests, counts, sorted(missing))

    def search(self, index: IndexPath, first: IndexManifest, query: ShardQuery) -> Answer:
        """Every shard's best `k`, merged; shards that failed or missed the deadline in `missing`.
        IndexNotFound when shard 0 says the index is gone (dropped since `first` was read). When a
        shard holds another incarnation (dropped and created again since), asks once more with the
        definition read again if it takes the same queries; else IndexUnavailable (retry)."""
        try:
            return self._search(index, first, query)
        except _Recreated:
            self._firsts.pop(index.shard(0), None)
            fresh = self.first(index)
            if (fresh.dimension, fresh.metric) != (first.dimension, first.metric):
                raise IndexUnavailable(
                    "the index was created again meanwhile, retry", detail=f"{index.name}: new definition"
                ) from None
            try:
                return self._search(index, fresh, query)
            except _Recreated:
                raise IndexUnavailable(
                    "the index is being created again, retry shortly", detail=f"{index.name}: still stale"
                ) from None

    def _search(self, index: IndexPath, first: IndexManifest, query: ShardQuery) -> Answer:
        requests = [
            ShardRequest(index.tenant, index.name, shard, query, first.incarnation)
            for shard in range(first.shards)
        ]
        futures = {self._pool.submit(self._invoke, request): request.shard for request in requests}
        wait(futures, timeout=self.deadline_seconds)
        per_shard: list[list[list[Found]]] = []
        version, missing = 0, []
        for future, shard in futures.items():
            problem = self._problem(future)
            if problem is None:
                shard_version, matches = future.result()
                version += shard_version
                per_shard.append(matches)
                continue
            if isinstance(problem, ShardFailed) and problem.kind == "too_large":
                raise InvalidIndexInput(str(problem), param="k")
            if isinstance(problem, ShardFailed) and problem.kind == "stale":
                raise _Recreated
            if shard == 0 and isinstance(problem, ShardFailed) and problem.kind == "not_found":
                self._firsts.pop(index.shard(0), None)
                raise IndexNotFound(index.name)
            logger().warning(
                "shard missing from an answer",
                extra={"shard": shard, "slot": self.slot(shard), "problem": str(problem)},
            )
            missing.append(shard)
        similarity = first.metric != "l2"
        return Answer(merge(per_shard, query.k, similarity, len(query.queries)), version, sorted(missing))

    @staticmethod
    def _problem(future: Future[Any]) -> BaseException | None:
        if not future.done():
            future.cancel()
            return TimeoutError("no answer within the deadline")
        return future.exception()

    def slot(self, shard: int) -> str:
        return self.slots[shard % len(self.slots)]

    def _invoke(self, request: ShardRequest) -> tuple[int, list[list[Found]]]:
        return _matches(self._call(request.shard, request.to_event()), len(request.query.queries))

    def _count(self, event: dict[str, Any]) -> int:
        answer = self._call(event["shard"], event)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            raise ShardFailed(str(answer["error"].get("type")), str(answer["error"].get("message")))
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ShardFailed("invalid", "the shard's count is not a count")
        return count

    def _call(self, shard: int, event: dict[str, Any]) -> Any:
        """The decoded answer of the shard function serving `shard` to `event`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client, function = self._client(self.slot(shard))
            answer = client.invoke(
                FunctionName=function, InvocationType="RequestResponse", Payload=orjson.dumps(event)
            )
            body = answer["Payload"].read()
        except (BotoCoreError, ClientError) as error:
            raise ShardFailed("unavailable", f"Invoke failed: {error.__class__.__name__}") from None
        if answer.get("FunctionError"):
            raise ShardFailed("unavailable", f"the shard function failed: {body[:200]!r}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ShardFailed("invalid", "the shard answered something other than JSON") from None

    def _client(self, slot: str) -> tuple[Any, str]:
        """The Lambda client for a slot and the function name to invoke on it."""
        endpoint = slot if slot.startswith(("http://", "https://")) else ""
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = self._clients[endpoint] = self._new_client(endpoint or None)
        return client, RIE_FUNCTION if endpoint else slot

    def _new_client(self, endpoint: str | None) -> Any:
        import boto3
        from botocore.config import Config

        # The deadline bounds each call: no retries, a connect and read timeout of the deadline itself.
        # The calls' parameters are ours (a set function name, bytes we encoded): checking them again
        # costs each call a sixth of its CPU, paid per shard under the GIL.
        config = Config(
            connect_timeout=self.deadline_seconds,
            read_timeout=self.deadline_seconds,
            retries={"total_max_attempts": 1},
            max_pool_connections=64,
            parameter_validation=False,
        )
        return boto3.client("lambda", endpoint_url=endpoint, config=config)
