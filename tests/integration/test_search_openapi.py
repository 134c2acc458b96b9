"""schemathesis against the search function's own OpenAPI document: every default check of
`call_and_validate` (no 5xx; status code, content type, headers and body as documented; schema-
invalid input refused; required headers), on every operation, but positive data acceptance.

The app runs over a file:// store (a pytest temp dir) holding one small index; text goes to the
real embedder (MODEL_DIR, built by `make build`)."""

from __future__ import annotations

import pytest
import schemathesis
from aiinfra.api.search import create_search_app
from aiinfra.vectors.store import FileStore
from fastapi.testclient import TestClient
from schemathesis.checks import positive_data_acceptance

from tests.support.openapi import assert_conforms


@pytest.fixture(scope="module")
def search_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    app = create_search_app(FileStore(tmp_path_factory.mktemp("search-openapi")))
    with TestClient(app) as client:
        assert client.put("/indexes/docs", json={"dimension": 2, "metric": "l2"}).status_code == 201
        items = [{"id": str(i), "vector": [float(i), 0.5], "metadata": {"n": i}} for i in range(5)]
        assert client.post("/indexes/docs/upsert", json={"items": items}).status_code == 200
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_search_api_conforms_to_its_schema(search_schema: schemathesis.BaseSchema) -> None:
    # Input the schema allows can still be wrong: a factory string FAISS cannot build is a 400, rightly.
    assert assert_conforms(search_schema, max_examples=30, excluded_checks=[positive_data_acceptance]) == 8
