"""Fan-out across functions: the search app's RemoteShards invokes shard functions, each under its own
aws-lambda-rie (the real Invoke API, through boto3's Lambda client), and answers exactly what the same
index searched in one process answers; a dead or silent shard function makes the answer partial
within the deadline, never a 5xx; the tenant travels with every shard's query.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiinfra.api.adapter import lambda_handler
from aiinfra.api.search import create_search_app
from aiinfra.config import AuthSettings
from aiinfra.vectors.fanout import ShardRequest
from aiinfra.vectors.manifest import shard_of
from aiinfra.vectors.query import ShardQuery
from aiinfra.vectors.store import FileStore

from tests.support.events import invoke, response_json
from tests.support.rie import LambdaEmulator

JWT = AuthSettings(mode="jwt", agent_claim="agents", tenant_claim="tenant")
DIM = 16
SHARDS = 3
ROWS = 900
DEADLINE_SECONDS = 5.0  # wide: the machine is shared; a dead shard must still not hold the answer
LANGS = ("en", "de", "fr")
Call = Callable[..., tuple[int, Any]]


def _items() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    return [
        {
            "id": f"doc-{i}",
            "vector": rng.normal(size=DIM).tolist(),
            "metadata": {"n": i, "lang": LANGS[i % 3]},
        }
        for i in range(ROWS)
    ]


def _caller(app: Any) -> Call:
    handler = lambda_handler(app, "search")

    def call(tenant: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        answer = invoke(handler, "http", method, path, body, claims={"sub": "user", "tenant": tenant})
        return answer["statusCode"], response_json(answer) if answer.get("body") else None

    return call


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "indexes"


@pytest.fixture
def local(store_dir: Path) -> Call:
    """The search API searching every shard in this process: the reference, and the writer."""
    call = _caller(create_search_app(FileStore(store_dir), auth=JWT))
    assert call("acme", "PUT", "/indexes/docs", {"dimension": DIM, "shards": SHARDS})[0] == 201
    items = _items()
    assert call("acme", "POST", "/indexes/docs/upsert", {"items": items})[0] == 200
    return call


@pytest.fixture
def shard_functions(store_dir: Path, tmp_path: Path, local: Call) -> Iterator[list[LambdaEmulator]]:
    """One shard function per shard, each under its own aws-lambda-rie, warmed on its shard."""
    settings = {"INDEX_STORE": f"file://{store_dir}", "INDEX_REFRESH_SECONDS": "0"}
    emulators = [
        LambdaEmulator("shard", settings, log_path=tmp_path / f"shard-{slot}.log") for slot in range(SHARDS)
    ]
    try:
        for emulator in emulators:
            emulator.start()
        query = ShardQuery(np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM), 1)
        for shard, emulator in enumerate(emulators):  # the cold start happens here, not under a deadline
            status, answer = emulator.invoke(ShardRequest("acme", "docs", shard, query).to_event())
            assert status == 200 and len(answer["matches"][0]) == 1, (answer, emulator.output()[-2000:])
        yield emulators
    finally:
        for emulator in emulators:
            emulator.stop()


def _remote(monkeypatch: pytest.MonkeyPatch, store_dir: Path, slots: list[str]) -> Call:
    """The search function's app as its settings build it, fanning out to `slots`."""
    for name, value in {
        "INDEX_STORE": f"file://{store_dir}",
        "INDEX_SHARD_FUNCTIONS": ",".join(slots),
        "INDEX_SHARD_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        "INDEX_REFRESH_SECONDS": "5",
        "AUTH_MODE": "jwt",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    return _caller(create_search_app())


def _endpoints(emulators: list[LambdaEmulator]) -> list[str]:
    return [f"http://127.0.0.1:{emulator.port}" for emulator in emulators]


QUERIES: list[dict[str, Any]] = [
    {"k": 10},
    {"k": 25, "include_metadata": True},
    {"k": 10, "filter": {"lang": "de", "n": {"$gte": 300}}, "include_metadata": True},
    {"k": 5, "filter": {"$or": [{"lang": "fr"}, {"n": {"$lt": 10}}]}},
]


def _query_vectors(count: int) -> list[list[float]]:
    return np.random.default_rng(11).normal(size=(count, DIM)).tolist()


@pytest.mark.parametrize("query", QUERIES)
def test_fanned_out_answers_equal_the_in_process_ones(
    local: Call,
    shard_functions: list[LambdaEmulator],
    monkeypatch: pytest.MonkeyPatch,
    store_dir: Path,
    query: dict[str, Any],
) -> None:
    remote = _remote(monkeypatch, store_dir, _endpoints(shard_functions))
    body = {"vectors": _query_vectors(4), **query}
    status, expected = local("acme", "POST", "/indexes/docs/query", body)
    assert status == 200 and not expected["partial"]
    status, got = remote("acme", "POST", "/indexes/docs/query", body)
    assert status == 200, got
    assert got["partial"] is False and "missing_shards" not in got
    assert got["version"] == expected["version"]
    assert all(len(result["matches"]) == query["k"] for result in got["results"])
    for mine, theirs in zip(got["results"], expected["results"], strict=True):
        assert [m["id"] for m in mine["matches"]] == [m["id"] for m in theirs["matches"]]
        scores = np.array([m["score"] for m in mine["matches"]])
        assert np.allclose(scores, [m["score"] for m in theirs["matches"]], atol=1e-5)
        assert [m.get("metadata") for m in mine["matches"]] == [m.get("metadata") for m in theirs["matches"]]
    if "filter" in query:
        langs = {m["metadata"]["lang"] for r in got["results"] for m in r["matches"] if "metadata" in m}
        assert langs <= {"de", "fr"}
    # Every shard function answered its own shard: each logged one invocation past its warm-up.
    assert all(len(emulator.reports()) == 2 for emulator in shard_functions)


def test_another_tenants_index_is_404_and_a_shard_answers_only_the_tenant_it_is_sent(
    local: Call, shard_functions: list[LambdaEmulator], monkeypatch: pytest.MonkeyPatch, store_dir: Path
) -> None:
    remote = _remote(monkeypatch, store_dir, _endpoints(shard_functions))
    body = {"vector": _query_vectors(1)[0], "k": 3}
    assert remote("acme", "POST", "/indexes/docs/query", body)[0] == 200
    status, answer = remote("globex", "POST", "/indexes/docs/query", body)
    assert status == 404 and answer["error"]["type"] == "not_found"
    # Asked directly, a shard function searches the tenant its event names, not whoever's index it holds.
    query = ShardQuery(np.ones((1, DIM), dtype=np.float32), 3)
    status, answer = shard_functions[1].invoke(ShardRequest("globex", "docs", 1, query).to_event())
    assert status == 200 and answer["error"]["type"] == "not_found"


def test_an_index_dropped_and_created_again_is_searched_as_it_now_is(
    local: Call, shard_functions: list[LambdaEmulator], monkeypatch: pytest.MonkeyPatch, store_dir: Path
) -> None:
    remote = _remote(monkeypatch, store_dir, _endpoints(shard_functions))
    body = {"vector": _query_vectors(1)[0], "k": 5}
    assert remote("acme", "POST", "/indexes/docs/query", body)[0] == 200  # holds the 3-shard definition
    assert local("acme", "DELETE", "/indexes/docs")[0] == 204
    assert local("acme", "PUT", "/indexes/docs", {"dimension": DIM, "shards": 1})[0] == 201
    assert local("acme", "POST", "/indexes/docs/upsert", {"items": _items()[:50]})[0] == 200
    expected = local("acme", "POST", "/indexes/docs/query", body)[1]
    # Within the search function's refresh window: shard 0 says it holds another incarnation.
    status, got = remote("acme", "POST", "/indexes/docs/query", body)
    assert status == 200, got
    assert got["partial"] is False
    assert [m["id"] for m in got["matches"]] == [m["id"] for m in expected["matches"]]
    status, described = remote("acme", "GET", "/indexes/docs")
    assert status == 200 and (described["shards"], described["count"]) == (1, 50)


def test_a_stopped_shard_function_makes_the_answer_partial_within_the_deadline(
    local: Call, shard_functions: list[LambdaEmulator], monkeypatch: pytest.MonkeyPatch, store_dir: Path
) -> None:
    remote = _remote(monkeypatch, store_dir, _endpoints(shard_functions))
    body = {"vector": _query_vectors(1)[0], "k": 10}
    full = remote("acme", "POST", "/indexes/docs/query", body)[1]
    shard_functions[1].stop()
    started = time.monotonic()
    status, answer = remote("acme", "POST", "/indexes/docs/query", body)
    elapsed = time.monotonic() - started
    assert status == 200, answer
    assert answer["partial"] is True and answer["missing_shards"] == [1]
    assert elapsed < DEADLINE_SECONDS
    # What the two live shards hold of the full answer, in the same order.
    assert [m["id"] for m in answer["matches"]][:3] == [
        m["id"] for m in full["matches"] if m["id"] in {x["id"] for x in answer["matches"]}
    ][:3]


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: a hung shard function."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_shard_that_never_answers_is_missing_once_the_deadline_passes(
    local: Call,
    shard_functions: list[LambdaEmulator],
    monkeypatch: pytest.MonkeyPatch,
    store_dir: Path,
    silent_peer: str,
) -> None:
    slots = _endpoints(shard_functions)
    slots[2] = silent_peer
    remote = _remote(monkeypatch, store_dir, slots)
    started = time.monotonic()
    status, answer = remote("acme", "POST", "/indexes/docs/query", {"vector": _query_vectors(1)[0]})
    elapsed = time.monotonic() - started
    assert status == 200 and answer["partial"] is True and answer["missing_shards"] == [2]
    assert DEADLINE_SECONDS * 0.9 <= elapsed < DEADLINE_SECONDS + 3
    assert len(answer["matches"]) == 10


def test_get_adds_up_the_shard_functions_counts_and_loads_no_shard_in_the_search_function(
    local: Call, shard_functions: list[LambdaEmulator], monkeypatch: pytest.MonkeyPatch, store_dir: Path
) -> None:
    remote = _remote(monkeypatch, store_dir, _endpoints(shard_functions))
    status, expected = local("acme", "GET", "/indexes/docs")
    assert status == 200 and expected["count"] == ROWS and expected["partial"] is False
    status, got = remote("acme", "GET", "/indexes/docs")
    assert status == 200 and got == expected
    # Each shard function answered its shard's count: one invocation each past the warm-up.
    assert all(len(emulator.reports()) == 2 for emulator in shard_functions)
    assert remote("globex", "GET", "/indexes/docs")[0] == 404
    shard_functions[2].stop()
    status, partial = remote("acme", "GET", "/indexes/docs")
    assert status == 200 and partial["partial"] is True and partial["missing_shards"] == [2]
    held_by_two = sum(1 for item in _items() if shard_of(item["id"], SHARDS) == 2)
    assert partial["count"] == ROWS - held_by_two and partial["shards"] == SHARDS
