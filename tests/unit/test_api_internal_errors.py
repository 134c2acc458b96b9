"""A fault of ours answers 500 with a body that names none of it; the log line keeps it."""

from __future__ import annotations

import pytest
from aiinfra.api.app import create_app
from fastapi import APIRouter
from fastapi.testclient import TestClient

# What an exception's message may carry that a caller must never see.
INTERNALS = (
    "my-index-bucket",
    "https://s3.eu-west-1.amazonaws.com",
    "/var/task/indexes/t-1/docs",
    "k20261203",
)


def _failing_app() -> TestClient:
    routes = APIRouter()

    @routes.get("/boom")
    async def boom() -> None:
        raise RuntimeError(
            f"GetObject s3://{INTERNALS[0]} at {INTERNALS[1]}: {INTERNALS[2]} key {INTERNALS[3]}"
        )

    return TestClient(create_app("t", [routes]))


def test_an_unexpected_exception_is_a_generic_500_and_its_detail_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = _failing_app().get("/boom")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {"type": "internal_error", "message": "an internal error occurred; it has been logged"}
    }
    for internal in INTERNALS:
        assert internal not in answer.text
    [logged] = [record for record in caplog.records if record.getMessage() == "unhandled error"]
    assert logged.exc_info is not None and INTERNALS[0] in str(logged.exc_info[1])
    assert logged.path == "/boom"
