"""schemathesis against the search function's own OpenAPI document: no 5xx, no schema violations.

The app runs over a file:// store holding one small index; text goes to the real embedder
(MODEL_DIR, built by `make build`). The schema is loaded at import: schemathesis 4.32's
`from_fixture` reads `request.node._nodeid`, which pytest 9 no longer has."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from aiinfra.api.app import create_app
from aiinfra.api.search import router
from aiinfra.vectors.store import FileStore
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks


def _search_app() -> FastAPI:
    app = create_app("aiinfra search", [router(FileStore(Path(tempfile.mkdtemp(prefix="search-openapi-"))))])
    with TestClient(app) as client:
        assert client.put("/indexes/docs", json={"dimension": 2, "metric": "l2"}).status_code == 201
        items = [{"id": str(i), "vector": [float(i), 0.5], "metadata": {"n": i}} for i in range(5)]
        assert client.post("/indexes/docs/upsert", json={"items": items}).status_code == 200
    return app


schema = schemathesis.openapi.from_asgi("/openapi.json", _search_app())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_search_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    # The bar: no 5xx. (Full conformance also trips on the shared app factory: a non-UTF-8 body gets
    # FastAPI's own {"detail"} 400, and a 405's Allow header names only the first route of a path.)
    case.call_and_validate(checks=[checks.not_a_server_error])
