"""The embed function through its Lambda handler, with real API Gateway event shapes."""

from __future__ import annotations

import base64
import io
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.support.events import LambdaContext, api_gateway_event, invoke, response_json

EVENT_KINDS = ["http", "rest"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_reference_vectors_through_the_handler(
    embed_function: ModuleType, reference: tuple[list[str], np.ndarray], kind: str
) -> None:
    texts, expected = reference
    response = invoke(
        embed_function.handler, kind, "POST", "/v1/embeddings", {"input": texts, "model": "all-MiniLM-L6-v2"}
    )
    assert response["statusCode"] == 200
    body = response_json(response)
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert vectors.shape == (252, 384)
    assert cosine_rows(vectors, expected).min() >= 0.9999


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_base64_is_little_endian_float32_of_the_same_vectors(embed_function: ModuleType, kind: str) -> None:
    request = {"input": ["a cat sat on the mat", "stock markets fell sharply"]}
    handler = embed_function.handler
    floats = response_json(invoke(handler, kind, "POST", "/v1/embeddings", request))
    as_base64 = request | {"encoding_format": "base64"}
    packed = response_json(invoke(handler, kind, "POST", "/v1/embeddings", as_base64))
    for as_float, as_text in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(as_text["embedding"]), dtype="<f4")
        assert decoded.shape == (384,)
        np.testing.assert_array_equal(decoded, np.array(as_float["embedding"], dtype=np.float32))


def test_usage_counts_the_tokens_of_every_text(embed_function: ModuleType) -> None:
    from tokenizers import Tokenizer

    from tests.conftest import MODEL_DIR

    texts = ["hello world", "  padded with spaces  ", "word " * 400]
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    expected = sum(min(len(tokenizer.encode(text.strip()).ids), 256) for text in texts)
    body = response_json(invoke(embed_function.handler, "http", "POST", "/v1/embeddings", {"input": texts}))
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert body["model"] == "all-MiniLM-L6-v2"


def test_a_single_string_and_the_int8_model(embed_function: ModuleType) -> None:
    request = {"input": "A man is playing a guitar.", "model": "all-MiniLM-L6-v2-int8"}
    body = response_json(invoke(embed_function.handler, "http", "POST", "/v1/embeddings", request))
    assert body["model"] == "all-MiniLM-L6-v2-int8"
    (item,) = body["data"]
    assert len(item["embedding"]) == 384
    assert abs(np.linalg.norm(item["embedding"]) - 1.0) < 1e-4


def test_models_are_listed(embed_function: ModuleType) -> None:
    body = response_json(invoke(embed_function.handler, "rest", "GET", "/v1/models"))
    assert [model["id"] for model in body["data"]] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]


BAD_REQUESTS = [
    ({"input": ""}, "empty or whitespace-only"),
    ({"input": ["fine", "   \n\t "]}, "empty or whitespace-only"),
    ({"input": ["fine", 42]}, "input"),
    ({"input": [101, 2023, 102]}, "token-id arrays"),
    ({"input": [[101, 2023, 102]]}, "token-id arrays"),
    ({"input": []}, "at least 1"),
    ({"input": ["x"] * 2049}, "at most 2048"),
    ({"input": "a" * 100_001}, "at most 100000"),
    ({"input": "hi", "model": "text-embedding-3-small"}, "all-MiniLM-L6-v2"),
    ({"input": "hi", "dimensions": 256}, "384"),
    ({"model": "all-MiniLM-L6-v2"}, "input"),
    ('{"input": ["unterminated"', "malformed JSON"),
]


@pytest.mark.parametrize(("body", "names"), BAD_REQUESTS)
@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_bad_input_gets_a_400_naming_the_problem(
    embed_function: ModuleType, kind: str, body: Any, names: str
) -> None:
    response = invoke(embed_function.handler, kind, "POST", "/v1/embeddings", body)
    assert response["statusCode"] == 400, response["body"][:300]
    error = response_json(response)["error"]
    assert error["type"] == "invalid_request_error"
    assert names in error["message"]
    # The function stays healthy after every refusal.
    ok = invoke(embed_function.handler, kind, "POST", "/v1/embeddings", {"input": "still serving"})
    assert ok["statusCode"] == 200


def test_a_body_over_the_lambda_payload_limit_gets_413(embed_function: ModuleType) -> None:
    body = json.dumps({"input": ["word " * 19_000] * 70})
    assert len(body) > 6 * 1024 * 1024
    response = invoke(embed_function.handler, "http", "POST", "/v1/embeddings", body)
    assert response["statusCode"] == 413
    assert response_json(response)["error"]["type"] == "payload_too_large"


def test_an_answer_over_the_lambda_limit_gets_400_and_base64_fits(embed_function: ModuleType) -> None:
    # 2,048 vectors as JSON floats are ~9.7 MB, over the 6 MiB + 100 bytes a function may answer;
    # as base64 they are ~4.3 MB. (tests/lambda/test_rie_functions.py shows where the runtime cuts.)
    request = {
        "input": [f"text number {i} about guitars" for i in range(2048)],
        "model": "all-MiniLM-L6-v2-int8",
    }
    refused = invoke(embed_function.handler, "http", "POST", "/v1/embeddings", request)
    assert refused["statusCode"] == 400
    error = response_json(refused)["error"]
    assert error["type"] == "answer_too_large" and "6291556" in error["message"], error
    packed = invoke(
        embed_function.handler, "http", "POST", "/v1/embeddings", request | {"encoding_format": "base64"}
    )
    assert packed["statusCode"] == 200 and len(response_json(packed)["data"]) == 2048


def test_an_event_that_is_not_api_gateway_gets_a_clear_400(embed_function: ModuleType) -> None:
    response = embed_function.handler({"Records": [{"eventSource": "aws:sqs"}]}, LambdaContext("embed"))
    assert response["statusCode"] == 400
    assert response_json(response)["error"]["type"] == "invalid_event"


def logged_lines(
    handler: Any, event: dict[str, Any], capsys: pytest.CaptureFixture[str], status: int = 200
) -> list[dict[str, Any]]:
    """The JSON lines one invocation writes: the Logger's (to its own stream) and EMF's (stdout)."""
    from aiinfra.observability import logger, metrics

    metrics().clear_metrics()  # what other tests' app-level calls left unflushed
    log_stream = io.StringIO()
    previous = logger().registered_handler.setStream(log_stream)  # the Logger's stdout, captured here
    capsys.readouterr()
    try:
        assert handler(event, LambdaContext("embed"))["statusCode"] == status
    finally:
        logger().registered_handler.setStream(previous)
    output = log_stream.getvalue() + capsys.readouterr().out
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


EMBED_TWO = json.dumps({"input": ["one text", "two"]})


def test_every_invocation_logs_json_and_emits_emf_metrics(
    embed_function: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    monkeypatch.setenv("_X_AMZN_TRACE_ID", trace)
    event = api_gateway_event("http", "POST", "/v1/embeddings", EMBED_TWO)
    lines = logged_lines(embed_function.handler, event, capsys)
    (log,) = [line for line in lines if line.get("message") == "request"]
    assert log["level"] == "INFO" and log["service"] == "embed"
    assert log["status"] == 200 and log["path"] == "/v1/embeddings" and log["method"] == "POST"
    assert log["function_request_id"] == LambdaContext("embed").aws_request_id
    assert log["correlation_id"] == event["requestContext"]["requestId"]
    assert log["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert isinstance(log["cold_start"], bool) and log["duration_ms"] > 0
    (emf,) = [line for line in lines if "_aws" in line and "Texts" in line]
    names = {m["Name"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"Texts", "Tokens", "EmbedLatency"} <= names
    assert emf["Texts"] == [2.0] and emf["Tokens"][0] >= 4 and emf["EmbedLatency"][0] > 0
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "aiinfra"


def test_a_log_level_above_info_drops_the_request_line(
    embed_function: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiinfra.observability import logger

    level = logger().log_level
    logger().setLevel("WARNING")
    try:
        lines = logged_lines(
            embed_function.handler, api_gateway_event("http", "POST", "/v1/embeddings", EMBED_TWO), capsys
        )
    finally:
        logger().setLevel(level)
    assert [line for line in lines if "_aws" in line]  # the metrics still go out
    assert not [line for line in lines if line.get("message") == "request"]


def test_no_log_line_carries_the_previous_requests_correlation_id(
    embed_function: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    first = api_gateway_event("http", "POST", "/v1/embeddings", EMBED_TWO)
    (request,) = [line for line in logged_lines(embed_function.handler, first, capsys) if "status" in line]
    assert request["correlation_id"] == first["requestContext"]["requestId"]
    lines = logged_lines(embed_function.handler, {"Records": []}, capsys, status=400)
    (refusal,) = [line for line in lines if line.get("message") == "unsupported event shape"]
    assert "correlation_id" not in refusal
