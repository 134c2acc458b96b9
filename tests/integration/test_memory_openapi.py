"""schemathesis against the memory function's own OpenAPI document, healthy Redis: no 5xx."""

from __future__ import annotations

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
    assert assert_conforms(memory_schema, excluded_checks=[positive_data_acceptance]) == 6
