"""schemathesis against the embed function's own OpenAPI document: no 5xx, no schema violations."""

from __future__ import annotations

from types import ModuleType

import schemathesis

from tests.support.openapi import assert_conforms


def test_embed_api_conforms_to_its_schema(embed_function: ModuleType) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", embed_function.app)
    assert assert_conforms(schema, max_examples=30) == 2
