"""Each function's init (imports + app build, what Lambda's Init Duration counts) stays within its budget.

The budgets are the functions' Init Duration targets (TARGET_MS), held as a ratio to the web stack
every function imports (FastAPI + Mangum + Powertools, WEB_STACK_MS where the targets were set) so a
loaded CI machine slows both alike, with 50 % margin: a regression fails, noise does not.
bench/coldstart.py measures the real thing through aws-lambda-rie.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PROBE = """
import importlib.util, json, sys, time
started = time.perf_counter()
if sys.argv[1] == "web-stack":
    import aws_lambda_powertools, fastapi, mangum
else:
    spec = importlib.util.spec_from_file_location("app", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(json.dumps({"init_ms": (time.perf_counter() - started) * 1e3, "modules": sorted(sys.modules)}))
"""
WEB_STACK_MS = 270.0
MARGIN = 1.5
TARGET_MS = {"embed": 600.0, "search": 500.0, "memory": 350.0}
# What each function's init must not import: its requests never use it (cold start is a feature).
# pydantic.v1 is what FastAPI imports to probe every declared field for a v1 model, at a cost to every init.
NEVER_IMPORTS = {
    "embed": {"faiss", "redis", "cryptography", "boto3", "uvicorn", "pydantic.v1"},
    "search": {"onnxruntime", "tokenizers", "redis", "cryptography", "uvicorn", "pydantic.v1"},
    "memory": {
        *("onnxruntime", "faiss", "numpy", "tokenizers", "redis", "cryptography", "boto3", "uvicorn"),
        "pydantic.v1",
    },
}


def _init(target: str, settings: dict[str, str]) -> tuple[float, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, target],
        capture_output=True,
        text=True,
        env={"PATH": "", "AUTH_MODE": "none", **settings},
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    modules = set(probe["modules"])
    return float(probe["init_ms"]), modules | {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("function", sorted(TARGET_MS))
def test_function_init_fits_its_budget(function: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if function == "embed":
        model_dir = request.getfixturevalue("model_dir")
        settings = {"MODEL_DIR": str(model_dir), "EMBED_MODEL": "all-MiniLM-L6-v2-int8"}
    elif function == "search":
        settings = {"INDEX_STORE": f"file://{tmp_path}"}
    else:
        settings = {"REDIS_URL": "redis://127.0.0.1:1/0", "MEMORY_KEYS": f"file://{tmp_path}/keyring.json"}
    app = str(REPO_ROOT / "functions" / function / "app.py")
    runs = [(_init("web-stack", {})[0], _init(app, settings)) for _ in range(3)]
    needless = runs[0][1][1] & NEVER_IMPORTS[function]
    assert not needless, f"{function} init imports {sorted(needless)}"
    web_stack = min(web for web, _ in runs)
    init = min(ms for _, (ms, _) in runs)
    budget = web_stack * TARGET_MS[function] / WEB_STACK_MS * MARGIN
    assert init <= budget, (
        f"{function} init {init:.0f} ms > budget {budget:.0f} ms (web stack {web_stack:.0f} ms)"
    )
