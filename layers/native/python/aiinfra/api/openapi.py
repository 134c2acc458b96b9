"""Response bodies the OpenAPI document names by reference, their schemas built when it is asked for.

FastAPI builds a validator (a pydantic TypeAdapter) for every `{"model": ...}` entry of a route's
`responses=` when the route is declared, though it only ever documents them: dozens for the memory
routes' error statuses alone, all paid in the init. `documented(Model)` documents the
same body by a `$ref` instead, and `add_documented_schemas` adds the schemas the document refers to
when `/openapi.json` is first served: the function's init no longer pays for its documentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMAS = "#/components/schemas/"


class ResponseBody(BaseModel):
    """A response body that routes write themselves (orjson) and the document describes: pydantic
    builds its schema when the document is first served, not when the class is defined."""

    model_config = ConfigDict(defer_build=True)


# Every model `documented` named, by the name the document refers to it by.
_documented: dict[str, type[BaseModel]] = {}


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """A `responses=` entry whose JSON body is `model`, referred to by name (unique among them)."""
    if _documented.setdefault(model.__name__, model) is not model:
        raise ValueError(f"another documented model is named {model.__name__}")
    return {"content": {"application/json": {"schema": {"$ref": SCHEMAS + model.__name__}}}}


def _referred(node: Any) -> Iterator[str]:
    """The names of the schemas `node` (part of an OpenAPI document) refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMAS):
            yield ref.removeprefix(SCHEMAS)
        for value in node.values():
            yield from _referred(value)
    elif isinstance(node, list):
        for item in node:
            yield from _referred(item)


def add_documented_schemas(document: dict[str, Any]) -> None:
    """Adds to `document` the schema of every documented model it refers to (and of the models
    those contain), in serialization mode as FastAPI writes a response model's."""
    from pydantic.json_schema import models_json_schema

    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    missing = sorted(set(_referred(document)) - schemas.keys())
    models: list[tuple[type[BaseModel], Literal["serialization"]]] = [
        (_documented[name], "serialization") for name in missing if name in _documented
    ]
    if not models:
        return
    _, definitions = models_json_schema(models, ref_template=SCHEMAS + "{model}")
    merged = {**definitions.get("$defs", {}), **schemas}
    document["components"]["schemas"] = dict(sorted(merged.items()))
