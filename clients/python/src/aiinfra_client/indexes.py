"""The search routes `/indexes/{name}[/upsert|/delete|/query|/compact]`: the calls and their answers.

Scores: cosine similarity for `cosine`, inner product for `ip` (higher is better), squared Euclidean
distance for `l2` (lower is better); matches come best first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict

from aiinfra_client._core import Answer, Call, no_content, path

Metric = Literal["cosine", "ip", "l2"]
MetadataValue = str | bool | int | float | None


class IndexItem(TypedDict, total=False):
    """An item to upsert: `id` and exactly one of `vector` or `text` (embedded by the service, for
    indexes of dimension 384); `metadata` holds flat scalars that query filters can test."""

    id: Required[str]
    vector: Sequence[float]
    text: str
    metadata: Mapping[str, MetadataValue]


@dataclass(frozen=True)
class IndexInfo:
    """What the service says about an index; `details` is its whole answer (counts, segments, ...)."""

    name: str
    dimension: int
    metric: str
    factory: str
    version: int
    count: int
    details: Mapping[str, Any]


@dataclass(frozen=True)
class WriteResult:
    count: int
    version: int


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class QueryResult:
    """`results` holds one list of matches per query vector; `matches` is the first (for `vector` or
    `text` queries, the only one). `partial` is true when part of the index did not answer."""

    results: list[list[Match]]
    version: int
    partial: bool

    @property
    def matches(self) -> list[Match]:
        return self.results[0]


class CompactResult(Mapping[str, Any]):
    """The service's answer to a compaction, as it sent it, and its HTTP `status` (200 when compacted
    in the request, 202 when queued as a job whose state the body describes)."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self._body = dict(body)

    def __getitem__(self, key: str) -> Any:
        return self._body[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body)

    def __len__(self) -> int:
        return len(self._body)

    def __repr__(self) -> str:
        return f"CompactResult(status={self.status}, {self._body!r})"


def _info(answer: Answer) -> IndexInfo:
    body = answer.json()
    return IndexInfo(
        name=body["name"],
        dimension=body["dimension"],
        metric=body["metric"],
        factory=body["factory"],
        version=body["version"],
        count=body["count"],
        details=body,
    )


def _write_result(answer: Answer) -> WriteResult:
    body = answer.json()
    return WriteResult(count=body["count"], version=body["version"])


def _matches(rows: list[dict[str, Any]]) -> list[Match]:
    return [Match(id=row["id"], score=row["score"], metadata=row.get("metadata")) for row in rows]


def _query_result(answer: Answer) -> QueryResult:
    body = answer.json()
    if body.get("results") is not None:
        results = [_matches(result["matches"]) for result in body["results"]]
    else:
        results = [_matches(body["matches"])]
    return QueryResult(results=results, version=body["version"], partial=bool(body.get("partial", False)))


def _compact_result(answer: Answer) -> CompactResult:
    return CompactResult(answer.status, answer.json() or {})


def _floats(vector: Iterable[float]) -> list[float]:
    return [float(x) for x in vector]  # numpy rows too


def _item(item: IndexItem) -> dict[str, Any]:
    body: dict[str, Any] = {"id": item["id"]}
    if "vector" in item:
        body["vector"] = _floats(item["vector"])
    if "text" in item:
        body["text"] = item["text"]
    if "metadata" in item:
        body["metadata"] = dict(item["metadata"])
    return body


def create(name: str, *, dimension: int, metric: Metric = "cosine", factory: str = "Flat") -> Call[IndexInfo]:
    """Creates the index (an existing one with the same settings is answered as it is)."""
    body = {"dimension": dimension, "metric": metric, "factory": factory}
    return Call("PUT", path("indexes", name), _info, json=body)


def describe(name: str) -> Call[IndexInfo]:
    return Call("GET", path("indexes", name), _info)


def drop(name: str) -> Call[None]:
    return Call("DELETE", path("indexes", name), no_content)


def upsert(name: str, items: Iterable[IndexItem]) -> Call[WriteResult]:
    """Adds or replaces up to 1000 items."""
    return Call(
        "POST", path("indexes", name, "upsert"), _write_result, json={"items": list(map(_item, items))}
    )


def delete(name: str, ids: Iterable[str]) -> Call[WriteResult]:
    """Deletes up to 1000 items by id."""
    return Call("POST", path("indexes", name, "delete"), _write_result, json={"ids": list(ids)})


def query(
    name: str,
    *,
    vector: Sequence[float] | None = None,
    vectors: Iterable[Sequence[float]] | None = None,
    text: str | None = None,
    k: int = 10,
    filter: Mapping[str, Any] | None = None,
    include_metadata: bool = False,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> Call[QueryResult]:
    """The `k` nearest items to exactly one of `vector`, `vectors` (one result each) or `text`.

    `filter` is Mongo-style over metadata (`{"lang": "en", "year": {"$gte": 2020}}`); `nprobe` (IVF)
    and `ef_search` (HNSW) trade speed for recall.
    """
    body: dict[str, Any] = {"k": k, "include_metadata": include_metadata}
    if vector is not None:
        body["vector"] = _floats(vector)
    if vectors is not None:
        body["vectors"] = [_floats(row) for row in vectors]
    if text is not None:
        body["text"] = text
    optional = {"filter": filter, "nprobe": nprobe, "ef_search": ef_search}
    body.update({key: value for key, value in optional.items() if value is not None})
    return Call("POST", path("indexes", name, "query"), _query_result, json=body)


def compact(name: str) -> Call[CompactResult]:
    """Folds the index's recent writes into a new base segment (or queues that, as the service decides)."""
    return Call("POST", path("indexes", name, "compact"), _compact_result)
