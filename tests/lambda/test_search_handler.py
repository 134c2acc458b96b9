"""The search function through its Lambda handler, with real API Gateway event shapes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from tests.support.events import invoke, response_json
from tests.support.functions import load_function


@pytest.fixture(scope="module")
def search_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INDEX_STORE", f"file://{tmp_path_factory.mktemp('indexes')}")
        yield load_function("search")


@pytest.mark.parametrize("kind", ["http", "rest"])
def test_create_upsert_query_through_the_handler(search_function: ModuleType, kind: str) -> None:
    name = f"lambda-{kind}"
    handler = search_function.handler
    created = invoke(handler, kind, "PUT", f"/indexes/{name}", {"dimension": 3, "metric": "l2"})
    assert created["statusCode"] == 201
    items = [{"id": f"p{i}", "vector": [float(i), 0.0, 0.0], "metadata": {"i": i}} for i in range(6)]
    assert invoke(handler, kind, "POST", f"/indexes/{name}/upsert", {"items": items})["statusCode"] == 200
    query = {"vector": [2.2, 0.0, 0.0], "k": 2, "filter": {"i": {"$ne": 2}}, "include_metadata": True}
    answer = invoke(search_function.handler, kind, "POST", f"/indexes/{name}/query", query)
    assert answer["statusCode"] == 200
    matches = response_json(answer)["matches"]
    assert [(m["id"], m["metadata"]) for m in matches] == [("p3", {"i": 3}), ("p1", {"i": 1})]
    assert matches[0]["score"] == pytest.approx(0.64, abs=1e-5)  # squared L2 distance


def test_bad_input_through_the_handler(search_function: ModuleType) -> None:
    answer = invoke(search_function.handler, "http", "PUT", "/indexes/UPPER", {"dimension": 3})
    assert answer["statusCode"] == 400
    assert "path.name" in response_json(answer)["error"]["message"]


def test_cold_start_imports_no_embedding_runtime(tmp_path: Path) -> None:
    """A vector-only deployment never loads the model: init must not import onnxruntime."""
    script = (
        "import sys, time; t = time.perf_counter(); "
        "from tests.support.functions import load_function; load_function('search'); "
        "print(time.perf_counter() - t, 'onnxruntime' in sys.modules, 'tokenizers' in sys.modules)"
    )
    env = {"INDEX_STORE": f"file://{tmp_path}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    seconds, onnxruntime, tokenizers = out.stdout.split()
    assert (onnxruntime, tokenizers) == ("False", "False"), out.stderr
    assert float(seconds) < 3.0
