"""Cold starts through the real runtime: N fresh aws-lambda-rie environments per function.

Each environment inits once (Init Duration) and answers one typical request (its first Duration),
from the cp312 layer under python3.12 when the machine has one. The baseline is the stack aiinfra
replaces: the same model on sentence-transformers + PyTorch behind FastAPI + Mangum (.venv-bench).
Writes docs/benchmarks/coldstart.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import machine, write_report
from tests.support.events import api_gateway_event
from tests.support.redis_server import RedisServer
from tests.support.rie import REPO_ROOT, LambdaEmulator, Report, Runtime, lambda_runtime

INDEX_VECTORS = 100_000
INDEX_CACHE = REPO_ROOT / "build" / "bench" / "coldstart-index"
# Init Duration medians this machine must meet, and the share of the PyTorch baseline.
TARGET_INIT_MS = {"embed": 600.0, "search": 500.0, "memory": 350.0}
BASELINE_SHARE = 0.1
BASELINE_LABEL = "python3.11, .venv-bench"
Request = Callable[[], dict[str, Any]]


def search_index() -> None:
    """A 100k x 384 HNSW index in a file:// store (INDEX_CACHE), built once and kept in build/bench,
    in the one tenant of AUTH_MODE=none. The search function loads it on the first query, not at init."""
    from aiinfra.api.auth import LOCAL_TENANT
    from aiinfra.vectors.limits import IndexLimits
    from aiinfra.vectors.reader import IndexRegistry
    from aiinfra.vectors.store import FileStore, IndexPath
    from aiinfra.vectors.writer import IndexWriter

    index = IndexPath(LOCAL_TENANT, "docs")
    store = FileStore(INDEX_CACHE)
    if store.read_manifest(index.shard(0)) is not None:
        return
    writer = IndexWriter(store, IndexRegistry(store, 60.0), IndexLimits(compact_after_rows=INDEX_VECTORS + 1))
    vectors = np.random.default_rng(5).standard_normal((INDEX_VECTORS, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer.create(index, 384, "ip", "HNSW32")
    writer.upsert(index, [str(i) for i in range(INDEX_VECTORS)], vectors, [{} for _ in range(INDEX_VECTORS)])
    writer.compact_now(index)


def embed_request() -> dict[str, Any]:
    body = json.dumps({"input": ["A man is playing a guitar.", "Ein Mann spielt Gitarre."]})
    return api_gateway_event("http", "POST", "/v1/embeddings", body)


def search_request() -> dict[str, Any]:
    vector = np.random.default_rng(1).standard_normal(384).tolist()
    return api_gateway_event("http", "POST", "/indexes/docs/query", json.dumps({"vector": vector, "k": 10}))


def memory_request() -> dict[str, Any]:
    return api_gateway_event("http", "PUT", "/agents/bench/memories/note", json.dumps({"value": {"n": 1}}))


def cold_starts(
    function: str,
    settings: dict[str, str],
    request: Request,
    runs: int,
    logs: Path,
    runtime: Runtime,
    **kw: Any,
) -> list[Report]:
    found = []
    for run in range(runs):
        emulator = LambdaEmulator(
            function, settings, runtime=runtime, log_path=logs / f"{function}-{run}.log", **kw
        )
        with emulator:
            status, answer = emulator.invoke(request())
        if status != 200 or answer.get("statusCode", 500) >= 400:
            raise RuntimeError(f"{function}: {status} {answer}\n{emulator.output()[-2000:]}")
        found.append(emulator.reports()[0])
    return found


def row(name: str, label: str, reports: list[Report], verdicts: str) -> str:
    inits = [r.init_ms or 0.0 for r in reports]
    firsts = [r.duration_ms for r in reports]
    return (
        f"| {name} | {label} | {len(reports)} | {statistics.median(inits):.0f} | {max(inits):.0f} "
        f"| {statistics.median(firsts):.1f} | {max(firsts):.1f} | {verdicts} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="fresh environments per function")
    parser.add_argument("--baseline-runs", type=int, default=3, help="fresh environments of the baseline")
    parser.add_argument("--functions", nargs="+", default=list(TARGET_INIT_MS), choices=list(TARGET_INIT_MS))
    args = parser.parse_args()
    runtime = lambda_runtime()
    load = os.getloadavg()[0]  # a shared machine's load shows in every number below
    results: dict[str, list[Report]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        redis = RedisServer(logs / "redis")
        redis.start()
        try:
            plan = {
                "embed": ({}, embed_request),
                "search": ({"INDEX_STORE": f"file://{INDEX_CACHE}"}, search_request),
                "memory": (
                    {
                        "REDIS_URL": redis.url,
                        "MEMORY_KEYS": f"file://{logs / 'keyring.json'}",
                        "AUTH_MODE": "none",
                    },
                    memory_request,
                ),
            }
            if "search" in args.functions:
                search_index()
            for function in args.functions:
                settings, request = plan[function]
                results[function] = cold_starts(function, settings, request, args.runs, logs, runtime)
            bench_python = REPO_ROOT / ".venv-bench" / "bin" / "python"
            baseline_runtime = Runtime(str(bench_python), (REPO_ROOT,), runtime.opt_model, BASELINE_LABEL)
            results["baseline"] = cold_starts(
                "embed",
                {},
                embed_request,
                args.baseline_runs,
                logs,
                baseline_runtime,
                handler="bench.baseline.st_app.handler",
                task_root=REPO_ROOT,
            )
        finally:
            redis.kill()
    write_report("coldstart", report(results, runtime.label, load))


def report(results: dict[str, list[Report]], label: str, load: float) -> str:
    baseline = statistics.median(r.init_ms or 0.0 for r in results["baseline"])
    lines = [
        "# Cold start",
        "",
        f"{machine()}, load average {load:.1f} at the start.",
        "",
        "`make bench-coldstart`: each run is a fresh aws-lambda-rie + awslambdaric environment",
        "(the function's folder as /var/task, the layer as /opt) that inits and answers one request:",
        "embed 2 texts, search a 100k x 384 HNSW32 index (k=10), memory one PUT to a local redis-server.",
        "Init Duration and the first Duration are the runtime's own phase timings, in ms.",
        "",
        "| function | runtime | runs | Init median | Init max | first Duration median | max "
        "| Init target / share of baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for function, target in TARGET_INIT_MS.items():
        if function not in results:
            continue
        median = statistics.median(r.init_ms or 0.0 for r in results[function])
        met = "met" if median <= target else "missed"
        share = f"1/{baseline / median:.1f} ({'met' if median <= baseline * BASELINE_SHARE else 'missed'})"
        lines.append(row(function, label, results[function], f"<= {target:.0f}: {met} / {share}"))
    lines.append(row("baseline: sentence-transformers + PyTorch", BASELINE_LABEL, results["baseline"], "-"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
