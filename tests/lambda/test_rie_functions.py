"""Every function under aws-lambda-rie + awslambdaric, sent API Gateway HTTP API and REST API events.

Each test starts fresh execution environments (tests/support/rie.py): the function inits from its
folder as from /var/task, with the cp312 layer where /opt is and template.yaml's settings (those that
name AWS resources replaced by local ones), then answers the events.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.support.events import api_gateway_event, response_json
from tests.support.redis_server import RedisServer
from tests.support.rie import LambdaEmulator
from tests.support.search import new_bucket

KINDS = ("http", "rest")
Start = Callable[[str, dict[str, str]], LambdaEmulator]


def _call(emulator: LambdaEmulator, kind: str, method: str, path: str, body: Any = None, **extra: Any) -> Any:
    raw = json.dumps(body) if body is not None else None
    status, response = emulator.invoke(api_gateway_event(kind, method, path, raw, **extra))
    assert status == 200, (status, response, emulator.output()[-3000:])
    return response


def test_embed_answers_both_event_kinds_with_the_reference_vectors(
    lambda_function: Start, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, vectors = reference
    emulator = lambda_function("embed", {})
    for kind in KINDS:
        response = _call(emulator, kind, "POST", "/v1/embeddings", {"input": texts[:4]})
        assert response["statusCode"] == 200
        body = response_json(response)
        got = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
        assert got.shape == (4, 384)
        cosines = (got * vectors[:4]).sum(axis=1) / np.linalg.norm(got, axis=1)
        assert cosines.min() > 0.97, cosines
        assert body["model"] == "all-MiniLM-L6-v2-int8" and body["usage"]["total_tokens"] > 0
    models = response_json(_call(emulator, "http", "GET", "/v1/models"))
    assert "all-MiniLM-L6-v2-int8" in [model["id"] for model in models["data"]]
    cold, warm = emulator.reports()[:2]
    assert cold.init_ms is not None and warm.init_ms is None


def test_search_builds_and_queries_an_s3_index_through_both_event_kinds(
    lambda_function: Start, moto_endpoint: str
) -> None:
    bucket = new_bucket(moto_endpoint)
    emulator = lambda_function(
        "search",
        {
            "INDEX_STORE": f"s3://{bucket}/indexes",
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
    )
    # Under the template's AUTH_MODE=jwt every search route acts in the caller's tenant claim.
    claims = {"sub": "user-1", "tenant": "acme"}
    for kind in KINDS:
        name = f"docs-{kind}"
        created = _call(
            emulator, kind, "PUT", f"/indexes/{name}", {"dimension": 3, "metric": "cosine"}, claims=claims
        )
        assert created["statusCode"] in (200, 201), response_json(created)
        items = [
            {"id": "x", "vector": [1, 0, 0]},
            {"id": "y", "vector": [0, 1, 0]},
            {"id": "z", "vector": [0, 0, 1], "metadata": {"lang": "de"}},
        ]
        upserted = _call(emulator, kind, "POST", f"/indexes/{name}/upsert", {"items": items}, claims=claims)
        assert upserted["statusCode"] == 200, response_json(upserted)
        query = {"vector": [0.1, 0.9, 0.0], "k": 2}
        found = response_json(_call(emulator, kind, "POST", f"/indexes/{name}/query", query, claims=claims))
        assert [match["id"] for match in found["matches"]] == ["y", "x"]
    # Text items and queries: embedded in the search function with the layer's model.
    _call(emulator, "http", "PUT", "/indexes/notes", {"dimension": 384}, claims=claims)
    notes = [
        {"id": "guitar", "text": "A man is playing a guitar."},
        {"id": "pasta", "text": "Boiling pasta."},
    ]
    written = _call(emulator, "http", "POST", "/indexes/notes/upsert", {"items": notes}, claims=claims)
    assert written["statusCode"] == 200, response_json(written)
    found = response_json(
        _call(emulator, "rest", "POST", "/indexes/notes/query", {"text": "music", "k": 1}, claims=claims)
    )
    assert [match["id"] for match in found["matches"]] == ["guitar"]


def _memory(lambda_function: Start, redis_server: RedisServer, keyring_uri: str) -> LambdaEmulator:
    settings = {"REDIS_URL": redis_server.url, "MEMORY_KEYS": keyring_uri, "AUTH_MODE": "jwt"}
    return lambda_function("memory", settings)


def test_memory_round_trips_through_redis_with_the_callers_claims(
    lambda_function: Start, redis_server: RedisServer, keyring_uri: str, agent: str
) -> None:
    emulator = _memory(lambda_function, redis_server, keyring_uri)
    claims = {"sub": "user-1", "agents": agent}
    for kind in KINDS:
        path = f"/agents/{agent}/memories/note-{kind}"
        put = _call(emulator, kind, "PUT", path, {"value": {"kind": kind}}, claims=claims)
        assert put["statusCode"] in (200, 201), response_json(put)
        got = _call(emulator, kind, "GET", path, claims=claims)
        assert got["statusCode"] == 200 and response_json(got)["value"] == {"kind": kind}
        stranger = _call(emulator, kind, "GET", path, claims={"sub": "user-2", "agents": "someone-else"})
        assert stranger["statusCode"] == 403
    # The warm invocations added no metric: Powertools' warning of that stays out of the log.
    assert "UserWarning" not in emulator.output()


def test_an_answer_too_long_for_lambda_is_a_400_and_one_that_fits_arrives_whole(
    lambda_function: Start, redis_server: RedisServer, keyring_uri: str, agent: str
) -> None:
    # A batch get of 26 values of 250,000 bytes (6.5 MB) is more than the 6 MiB + 100 bytes the
    # runtime interface lets a function answer (API Gateway would say 502); 25 of them (6.25 MB) fit.
    emulator = _memory(lambda_function, redis_server, keyring_uri)
    claims = {"sub": "user-1", "agents": agent}
    keys = [f"big-{i}" for i in range(26)]
    for start in range(0, len(keys), 10):  # a request carries at most 6 MB too
        items = [{"key": key, "value": "x" * 250_000} for key in keys[start : start + 10]]
        written = _call(
            emulator, "http", "POST", f"/agents/{agent}/batch-put", {"items": items}, claims=claims
        )
        assert written["statusCode"] == 200, response_json(written)
    too_long = _call(emulator, "http", "POST", f"/agents/{agent}/batch-get", {"keys": keys}, claims=claims)
    assert too_long["statusCode"] == 400
    error = response_json(too_long)["error"]
    assert (error["type"], error["param"]) == ("answer_too_large", "keys")
    assert "fewer keys" in error["message"]
    fits = _call(emulator, "http", "POST", f"/agents/{agent}/batch-get", {"keys": keys[:25]}, claims=claims)
    assert fits["statusCode"] == 200
    body = response_json(fits)
    assert [item["key"] for item in body["items"]] == keys[:25] and body["missing"] == []
    assert {item["value"] for item in body["items"]} == {"x" * 250_000}


@pytest.mark.parametrize("function", ["embed", "search", "memory"])
def test_an_event_of_another_shape_gets_a_400_answer_and_one_error_log_line(
    lambda_function: Start, function: str, tmp_path: Path
) -> None:
    settings = {"INDEX_STORE": f"file://{tmp_path}", "MEMORY_KEYS": f"file://{tmp_path}/keyring.json"}
    emulator = lambda_function(function, settings)
    status, answer = emulator.invoke({"Records": [{"eventSource": "aws:sqs", "body": "hi"}]})
    assert status == 200 and answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["type"] == "invalid_event"
    errors = [line for line in emulator.output().splitlines() if '"unsupported event shape"' in line]
    assert len(errors) == 1 and '"level":"ERROR"' in errors[0]
    assert "Traceback" not in emulator.output()


NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("function", "settings", "setting"),
    [
        ("embed", {"MODEL_DIR": "/nonexistent/model"}, "MODEL_DIR"),
        ("embed", {"EMBED_MODEL": "gpt-4"}, "EMBED_MODEL"),
        ("search", {}, "INDEX_STORE"),
        ("memory", {"REDIS_URL": "http://cache:6379", "MEMORY_KEYS": "file:///k.json"}, "REDIS_URL"),
        ("memory", {"REDIS_URL": "redis://127.0.0.1:1/0", "MEMORY_KEYS": "vault://k"}, "MEMORY_KEYS"),
        # an unreadable key source, and one that holds no keyring
        ("memory", {"REDIS_URL": NO_REDIS, "MEMORY_KEYS": "file:///dev/null/k.json"}, "MEMORY_KEYS"),
        ("memory", {"REDIS_URL": NO_REDIS, "MEMORY_KEYS": "file:///etc/passwd"}, "MEMORY_KEYS"),
    ],
)
def test_a_misconfigured_function_fails_its_init_with_one_line_naming_the_setting(
    lambda_function: Start, function: str, settings: dict[str, str], setting: str
) -> None:
    emulator = lambda_function(function, settings)
    status, answer = emulator.invoke(api_gateway_event("http", "GET", "/v1/models"))
    assert answer["errorType"] == "ConfigError", answer
    assert answer["errorMessage"].startswith(f"{setting}=") or answer["errorMessage"].startswith(setting)
    assert "\n" not in answer["errorMessage"]
    assert f"[ERROR] ConfigError: {answer['errorMessage']}" in emulator.output()
    assert status != 200 or answer.get("statusCode") is None


def test_make_invoke_prints_the_functions_answer_and_the_runtime_log(tmp_path: Path) -> None:
    event = tmp_path / "models.json"
    event.write_text(json.dumps(api_gateway_event("http", "GET", "/v1/models")))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.rie", "embed", str(event)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["statusCode"] == 200
    assert "INIT REPORT" in done.stderr and "REPORT RequestId" in done.stderr
