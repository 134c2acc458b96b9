"""The shard query event and its answers, in one process: what the search function sends a shard
function, what a shard function makes of events that are not one, and what the search function
makes of answers that are not one (every case an error the caller maps, never an exception)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiinfra.config import ConfigError, search_settings
from aiinfra.vectors.fanout import ShardFailed, ShardRequest, _matches
from aiinfra.vectors.filter import compile_filter
from aiinfra.vectors.query import ShardQuery, search_snapshot
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.shard import answer_shard_query
from aiinfra.vectors.store import FileStore, IndexPath
from aiinfra.vectors.writer import IndexWriter

DIM = 8


@pytest.fixture
def registry(tmp_path: Path) -> IndexRegistry:
    store = FileStore(tmp_path / "indexes")
    registry = IndexRegistry(store, 0.0)
    writer = IndexWriter(store, registry)
    index = IndexPath("acme", "docs")
    writer.create(index, DIM, "cosine", "Flat", 2)
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(60)]
    writer.upsert(index, ids, rng.normal(size=(60, DIM)).astype(np.float32), [{"n": i} for i in range(60)])
    return registry


def _query() -> ShardQuery:
    queries = np.random.default_rng(5).normal(size=(3, DIM)).astype(np.float32)
    return ShardQuery(queries, 4, compile_filter({"n": {"$lt": 40}}), None, 32, True)


def test_a_shard_event_survives_json_and_answers_what_the_shard_answers_in_process(
    registry: IndexRegistry,
) -> None:
    request = ShardRequest("acme", "docs", 1, _query())
    event = orjson.loads(orjson.dumps(request.to_event()))
    decoded = ShardRequest.from_event(event)
    assert np.array_equal(decoded.query.queries, request.query.queries)
    assert decoded.query.program == request.query.program
    answer = orjson.loads(orjson.dumps(answer_shard_query(registry, event)))
    version, matches = _matches(answer, 3)
    snapshot = registry.snapshot(request.path)
    expected = search_snapshot(snapshot, request.query)
    assert version == snapshot.manifest.version
    for got, want in zip(matches, expected, strict=True):
        assert [(m.id, m.score, m.metadata()) for m in got] == [(m.id, m.score, m.metadata()) for m in want]
        assert all(m.metadata()["n"] < 40 for m in got)


def _event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(orjson.dumps(ShardRequest("acme", "docs", 0, _query()).to_event()))
    event.update(changes)
    return {name: value for name, value in event.items() if value is not ...}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"Records": []}, "not a shard query event"),
        (_event(tenant=""), "names its tenant"),
        (_event(name=...), "names its tenant"),
        (_event(shard=-1), "shard must be"),
        (_event(k=True), "k must be"),
        (_event(dimension=0), "positive"),
        (_event(queries="not base64!"), "base64"),
        (_event(queries=base64.b64encode(b"abc").decode()), "float32 rows"),
        (_event(queries=base64.b64encode(np.full(DIM, np.inf, "<f4").tobytes()).decode()), "finite"),
        (_event(program=[[1, "n"]]), "every instruction"),
        (_event(program=[["1", "n", [], []]]), "every instruction"),
        (_event(ef_search=0), "ef_search must be positive"),
        (_event(dimension=4, queries=base64.b64encode(np.ones(4, "<f4").tobytes()).decode()), "dimension 4"),
        (_event(tenant="globex"), "has no shard 0"),
    ],
)
def test_an_event_that_is_not_a_good_shard_query_gets_an_error_answer(
    registry: IndexRegistry, event: dict[str, Any], problem: str
) -> None:
    answer = answer_shard_query(registry, event)
    assert problem in answer["error"]["message"], answer
    assert answer["error"]["type"] in ("invalid", "not_found")


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"version": 1},
        {"version": 1, "matches": [[]]},  # one list for three queries
        {"version": 1, "matches": [[{"id": "a"}], [], []]},
        {"version": 1, "matches": [[{"id": "a", "score": 1.0, "metadata": [1]}], [], []]},
        {"version": "x", "matches": [[], [], []]},
        {"error": {"type": "unavailable", "message": "the index cannot be loaded now"}},
    ],
)
def test_an_answer_that_is_not_a_shards_answer_is_that_shards_failure(answer: Any) -> None:
    with pytest.raises(ShardFailed):
        _matches(answer, 3)


@pytest.mark.parametrize(
    ("functions", "slots", "expected"),
    [
        (
            "fn-a,arn:aws:lambda:us-east-1:123456789012:function:fn-b:live",
            None,
            ("fn-a", "arn:aws:lambda:us-east-1:123456789012:function:fn-b:live"),
        ),
        (
            "http://127.0.0.1:9001, http://127.0.0.1:9002",
            None,
            ("http://127.0.0.1:9001", "http://127.0.0.1:9002"),
        ),
        (
            "stack-shard-{slot}:live",
            "0,1,2",
            ("stack-shard-0:live", "stack-shard-1:live", "stack-shard-2:live"),
        ),
    ],
)
def test_shard_functions_setting(
    monkeypatch: pytest.MonkeyPatch, functions: str, slots: str | None, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("INDEX_STORE", "file:///tmp/indexes")
    monkeypatch.setenv("INDEX_SHARD_FUNCTIONS", functions)
    if slots is not None:
        monkeypatch.setenv("INDEX_SHARD_SLOTS", slots)
    assert search_settings().shard_functions == expected


@pytest.mark.parametrize(
    ("functions", "slots", "setting"),
    [
        ("fn a", None, "INDEX_SHARD_FUNCTIONS"),
        ("fn-a,,fn-b", None, "INDEX_SHARD_FUNCTIONS"),
        ("stack-shard-{slot}", None, "INDEX_SHARD_SLOTS"),
        ("stack-shard-{slot}", "0,,2", "INDEX_SHARD_SLOTS"),
    ],
)
def test_a_malformed_shard_functions_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, functions: str, slots: str | None, setting: str
) -> None:
    monkeypatch.setenv("INDEX_STORE", "file:///tmp/indexes")
    monkeypatch.setenv("INDEX_SHARD_FUNCTIONS", functions)
    if slots is not None:
        monkeypatch.setenv("INDEX_SHARD_SLOTS", slots)
    with pytest.raises(ConfigError, match=f"^{setting}=") as raised:
        search_settings()
    assert "\n" not in str(raised.value)
