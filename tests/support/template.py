"""template.yaml as data: what the tests check and what a local run takes from it (sizing, environment)."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
LOGICAL_IDS = {
    "embed": "EmbedFunction",
    "search": "SearchFunction",
    "memory": "MemoryFunction",
    "indexer": "IndexerFunction",
    "shard": "ShardFunction0",  # one per slot, all alike
}


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads the short-form intrinsics (!Ref, !Sub, ...) as {"Ref": ...}-style mappings."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@cache
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)
    return loaded


def resource(logical_id: str) -> dict[str, Any]:
    found: dict[str, Any] = template()["Resources"][logical_id]
    return found


def function_properties(function: str) -> dict[str, Any]:
    """The function's properties over the template's Globals (what SAM merges)."""
    merged: dict[str, Any] = dict(template()["Globals"]["Function"])
    merged.update(resource(LOGICAL_IDS[function])["Properties"])
    return merged


def function_environment(function: str) -> dict[str, str]:
    """Its environment variables with plain values or parameter defaults; AWS-resolved ones left out."""
    parameters = template()["Parameters"]
    variables = {
        **template()["Globals"]["Function"]["Environment"]["Variables"],
        **resource(LOGICAL_IDS[function])["Properties"]["Environment"]["Variables"],
    }
    found = {}
    for name, value in variables.items():
        if isinstance(value, dict) and "Ref" in value and "Default" in parameters.get(value["Ref"], {}):
            value = parameters[value["Ref"]]["Default"]
        if isinstance(value, str | int):
            found[name] = str(value)
    return found
