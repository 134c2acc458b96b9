"""schemathesis against the memory function's own OpenAPI document, healthy Redis: every default
check of `call_and_validate` (no 5xx, answers as documented, invalid input refused) but positive
data acceptance."""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance

from tests.support.memory import memory_app, memory_settings_for
from tests.support.openapi import assert_conforms
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def memory_schema(redis_server: RedisServer, keyring_uri: str) -> schemathesis.BaseSchema:
    app = memory_app(memory_settings_for(redis_server.url, keyring_uri))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_memory_api_conforms_to_its_schema(memory_schema: schemathesis.BaseSchema) -> None:
    # A random version in If-Match is stale: 412 is the right answer there, not a rejection.
    assert assert_conforms(memory_schema, excluded_checks=[positive_data_acceptance]) == 7


def test_the_precondition_headers_are_documented(memory_schema: schemathesis.BaseSchema) -> None:
    operations = memory_schema.raw_schema["paths"]["/agents/{agent_id}/memories/{key}"]

    def headers(method: str) -> dict[str, str]:
        parameters = operations[method]["parameters"]
        return {p["name"]: p["schema"]["pattern"] for p in parameters if p["in"] == "header"}

    assert headers("put") == {"If-Match": r'^(\*|[0-9a-f]{16}|"[0-9a-f]{16}")$', "If-None-Match": r"^\*$"}
    assert headers("delete") == {"If-Match": r'^(\*|[0-9a-f]{16}|"[0-9a-f]{16}")$'}
    assert "If-Match" not in headers("get")


def test_every_answer_is_described_by_a_schema_the_document_holds(
    memory_schema: schemathesis.BaseSchema,
) -> None:
    # The response bodies are documented by reference, their schemas added when the document is
    # first served (not built at init): each reference must resolve, to the body the routes write.
    document = memory_schema.raw_schema
    schemas = document["components"]["schemas"]
    assert set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document))) <= schemas.keys()
    put = document["paths"]["/agents/{agent_id}/memories/{key}"]["put"]["responses"]
    assert sorted(put) == ["200", "201", "400", "401", "403", "404", "412", "413", "429", "500", "503"]
    assert put["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert put["503"]["description"] == "Service Unavailable"
    assert schemas["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert schemas["ErrorDetail"]["required"] == ["type", "message"]
    assert schemas["WrittenOne"]["required"] == ["key", "version", "expires_at", "agent_id"]
