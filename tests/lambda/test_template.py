"""template.yaml: lint-clean, built by `sam build` without Docker, within Lambda's limits, routing all routes.

The SAM CLI and cfn-lint come from .venv-sam (`make sam-tools`); `sam build` runs once per session.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiinfra.api import embed, search
from aiinfra.api import memory as memory_api
from aiinfra.config import AuthSettings
from aiinfra.embedding.catalog import ModelCatalog
from aiinfra.vectors.store import FileStore
from fastapi.routing import APIRoute

from tests.conftest import REPO_ROOT
from tests.support.memory import memory_settings_for
from tests.support.redis_server import RedisServer
from tests.support.template import TEMPLATE
from tests.support.template import template as load_template

SAM_BIN = REPO_ROOT / ".venv-sam" / "bin"
# Lambda: function code plus all its layers, unzipped, at most 250 MiB.
UNZIPPED_LIMIT = 250 * 1024 * 1024
FUNCTIONS = {
    "EmbedFunction": "embed",
    "SearchFunction": "search",
    "MemoryFunction": "memory",
    "IndexerFunction": "indexer",
}
# One per slot: the ShardSlots parameter's default, 8.
SHARD_FUNCTIONS = {f"ShardFunction{slot}": "shard" for slot in range(8)}


def _sam_env() -> dict[str, str]:
    # No Docker daemon to reach, no telemetry: what a build on a bare CI machine has.
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=REPO_ROOT, env=_sam_env(), capture_output=True, text=True
    )


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    done = _run(SAM_BIN / "sam", "build", "--template-file", TEMPLATE, "--build-dir", build_dir)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return build_dir


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def test_cfn_lint_finds_nothing() -> None:
    done = _run(SAM_BIN / "cfn-lint", TEMPLATE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sam_validate_with_lint_accepts_the_template() -> None:
    done = _run(SAM_BIN / "sam", "validate", "--lint", "--template-file", TEMPLATE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_sam_build_lays_out_the_layer_and_the_functions_like_opt_and_var_task(sam_build: Path) -> None:
    layer = sam_build / "NativeLayer"
    assert (layer / "python" / "aiinfra" / "api" / "adapter.py").is_file()
    assert list((layer / "python" / "aiinfra").glob("_native*.so"))
    assert list(
        (layer / "python" / "numpy" / "_core").glob("_multiarray_umath.cpython-312-x86_64-linux-gnu.so")
    )
    assert (layer / "model" / "tokenizer.json").is_file()
    assert (layer / "model" / "all-MiniLM-L6-v2-int8" / "model.onnx").is_file()
    for stripped in ("huggingface_hub", "hf_xet", "onnxruntime/transformers", "numpy/f2py", "pydantic/v1"):
        assert not (layer / "python" / stripped).exists(), stripped
    for logical_id, name in {**FUNCTIONS, **SHARD_FUNCTIONS}.items():
        built = sam_build / logical_id
        assert sorted(p.name for p in built.iterdir()) == ["app.py"]
        assert (built / "app.py").read_bytes() == (REPO_ROOT / "functions" / name / "app.py").read_bytes()


def test_every_function_with_its_layers_fits_lambdas_unzipped_limit(sam_build: Path) -> None:
    layer = _bytes(sam_build / "NativeLayer")
    for logical_id in {**FUNCTIONS, **SHARD_FUNCTIONS}:
        total = _bytes(sam_build / logical_id) + layer
        assert total <= UNZIPPED_LIMIT, f"{logical_id}: {total / 2**20:.1f} MiB unzipped"


def test_functions_run_python312_on_x86_64_with_snapstart_behind_an_alias(template: dict[str, Any]) -> None:
    function = template["Globals"]["Function"]
    assert function["Runtime"] == "python3.12" and function["Architectures"] == ["x86_64"]
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"} and function["AutoPublishAlias"]
    resources = template["Resources"]
    for logical_id in FUNCTIONS:
        assert resources[logical_id]["Metadata"]["BuildMethod"] == "makefile"
    assert resources["NativeLayer"]["Metadata"]["BuildMethod"] == "makefile"
    assert "VpcConfig" in resources["MemoryFunction"]["Properties"]
    assert resources["MemoryFunction"]["Properties"]["Environment"]["Variables"]["REDIS_URL"][
        "Sub"
    ].startswith("rediss://")


def _template_routes(template: dict[str, Any], logical_id: str) -> list[tuple[str, re.Pattern[str]]]:
    events = template["Resources"][logical_id]["Properties"]["Events"].values()
    return [
        (
            event["Properties"]["Method"],
            re.compile(re.sub(r"\{[^}]+\}", "[^/]+", event["Properties"]["Path"])),
        )
        for event in events
        if event["Type"] == "HttpApi"
    ]


def test_the_http_api_routes_every_route_each_function_serves(
    template: dict[str, Any], tmp_path: Path, redis_server: RedisServer, keyring_uri: str
) -> None:
    no_auth = AuthSettings(mode="none", agent_claim="agents")
    apps = {
        "EmbedFunction": embed.create_embed_app(ModelCatalog(tmp_path, "all-MiniLM-L6-v2", 1)),
        "SearchFunction": search.create_search_app(FileStore(tmp_path / "indexes")),
        "MemoryFunction": memory_api.create_memory_app(
            settings=memory_settings_for(redis_server.url, keyring_uri), auth=no_auth
        ),
    }
    for logical_id, app in apps.items():
        routed = _template_routes(template, logical_id)
        for route in app.routes:
            if not isinstance(route, APIRoute):
                continue  # the OpenAPI document's own route, not served through API Gateway
            concrete = re.sub(r"\{[^}]+\}", "x", route.path)
            for method in route.methods:
                assert any(
                    allowed in (method, "ANY") and pattern.fullmatch(concrete) for allowed, pattern in routed
                ), f"{logical_id}: {method} {route.path} has no HttpApi event"


# What each API's routes only read: GETs, and the POSTs that ask (a query, a batch get, a recall).
_READS = re.compile(r"^(GET .*|POST .*/(query|batch-get|recall))$")
_API_OF = {"EmbedFunction": "embed", "SearchFunction": "search", "MemoryFunction": "memory"}


def test_every_route_requires_a_read_or_write_scope_of_its_api(template: dict[str, Any]) -> None:
    # A route without scopes accepts an ID token, whose claims a user may be able to write.
    assert template["Resources"]["HttpApi"]["Properties"]["Auth"]["DefaultAuthorizer"] == "Jwt"
    checked = 0
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for name, event in resource["Properties"].get("Events", {}).items():
            if event["Type"] != "HttpApi":
                continue
            route = f"{event['Properties']['Method']} {event['Properties']['Path']}"
            assert event["Properties"]["Method"] != "ANY", f"{name}: one method per route, one scope"
            scopes = [scope["Sub"] for scope in event["Properties"]["Auth"]["AuthorizationScopes"]]
            api = _API_OF[logical_id]
            wanted = api if api == "embed" else f"{api}.{'read' if _READS.match(route) else 'write'}"
            assert scopes == [f"${{ScopePrefix}}/{wanted}"], f"{name} ({route}): {scopes}"
            checked += 1
    assert checked == 17
