"""Compactions as deployed: the search function queues each job as an asynchronous Lambda invocation
(boto3 `Invoke`, `InvocationType=Event`) of the indexer, which runs under aws-lambda-rie with the
template's settings; the job lands in the store the search function reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiinfra.api.search import create_search_app
from fastapi.testclient import TestClient

from tests.support.invoke_api import InvokeApi
from tests.support.search import wait_for_compaction

DIM = 16


@pytest.fixture
def indexer(lambda_function: Any, tmp_path: Path) -> Any:
    store = f"file://{tmp_path / 'indexes'}"
    return store, lambda_function("indexer", {"INDEX_STORE": store})


def test_the_search_function_queues_its_compactions_on_the_indexer(
    indexer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, function = indexer
    api = InvokeApi(function.port)
    try:
        for name, value in {
            "INDEX_STORE": store,
            "INDEX_COMPACTION_FUNCTION": "aiinfra-indexer:live",
            "AWS_ENDPOINT_URL_LAMBDA": api.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AUTH_MODE": "none",
        }.items():
            monkeypatch.setenv(name, value)
        client = TestClient(create_search_app())  # from the environment, as the search function builds it
        assert client.put("/indexes/docs", json={"dimension": DIM, "factory": "HNSW16"}).status_code == 201
        rng = np.random.default_rng(4)
        vectors = rng.normal(size=(2000, DIM))
        for start in (0, 1000):
            items = [{"id": f"i{i}", "vector": vectors[i].tolist()} for i in range(start, start + 1000)]
            assert client.post("/indexes/docs/upsert", json={"items": items}).status_code == 200
        accepted = client.post("/indexes/docs/compact")
        assert accepted.status_code == 202 and accepted.json()["compaction"]["state"] == "queued"
        [answer] = api.wait_for(1, timeout=180)
        assert json.loads(answer)["result"] == "ok" and json.loads(answer)["rows"] == 2000
        done = wait_for_compaction(client, "docs")
        assert done["segments"] == 1 and done["count"] == 2000
        assert done["compaction"]["last"]["result"] == "ok"
        query = client.post("/indexes/docs/query", json={"vector": vectors[42].tolist(), "k": 1})
        assert query.json()["matches"][0]["id"] == "i42"
    finally:
        api.close()


def test_the_indexer_answers_a_stale_or_malformed_job_without_failing(indexer: Any) -> None:
    _, function = indexer
    job = {"aiinfra": "compact", "tenant": "t", "name": "gone", "shard": 0, "incarnation": "x", "token": "y"}
    status, answer = function.invoke(job)
    assert status == 200 and answer == {"result": "obsolete"}  # the index was dropped meanwhile
    status, answer = function.invoke({"aiinfra": "compact", "name": "no tenant"})
    assert status == 200 and answer["result"] == "refused" and "tenant" in answer["message"]
    assert "Traceback" not in function.output()
