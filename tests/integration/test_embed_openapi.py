"""schemathesis against the embed function's own OpenAPI document: no 5xx, no schema violations."""

from __future__ import annotations

from types import ModuleType

import pytest
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture(scope="module")
def embed_schema(embed_function: ModuleType) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", embed_function.app)


schema = schemathesis.pytest.from_fixture("embed_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_embed_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()
