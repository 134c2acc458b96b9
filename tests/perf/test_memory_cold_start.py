"""The memory function's init: within its budget, and none of the heavy imports it never uses.

The budget is 350 ms where the web stack alone (FastAPI + Mangum + Powertools) imports in 270 ms;
on a shared, loaded machine both slow down alike, so the test holds the ratio, not the milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
elapsed_ms = (time.perf_counter() - started) * 1e3
print(json.dumps({"init_ms": elapsed_ms, "modules": sorted(sys.modules)}))
"""
BUDGET_RATIO = 350 / 270
NEVER = ("onnxruntime", "faiss", "numpy", "redis", "cryptography", "boto3", "uvicorn", "tokenizers")


def _init(target: str) -> dict[str, object]:
    env = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "MEMORY_KEYS": "file:///nonexistent/keyring.json",
        "PATH": "",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, target],
        capture_output=True,
        check=True,
        env=env,
        cwd="/",
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


@pytest.mark.perf
def test_memory_init_imports_nothing_heavy_and_fits_the_budget() -> None:
    app = str(REPO_ROOT / "functions" / "memory" / "app.py")
    runs = [(_init("web-stack"), _init(app)) for _ in range(5)]
    modules = set(runs[0][1]["modules"])  # type: ignore[call-overload]
    assert not {name for name in modules if name.split(".")[0] in NEVER}
    web_stack = min(float(web["init_ms"]) for web, _ in runs)  # type: ignore[arg-type]
    memory = min(float(function["init_ms"]) for _, function in runs)  # type: ignore[arg-type]
    assert memory <= web_stack * BUDGET_RATIO, (memory, web_stack)
