"""`make bench-embed`: sentence-transformers on PyTorch vs our fp32 and int8, through the handler.

10,000 real English texts (STS-B test sentences + WordNet glosses), requests of 32 texts sent by
2 threads, each contender in a fresh process of its own (so time-to-first-vector and peak RSS are
its own). Writes docs/benchmarks/embed.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.corpus import english_texts  # noqa: E402
from bench.report import machine, write_report  # noqa: E402
from tests.support.events import LambdaContext, api_gateway_event  # noqa: E402

TEXTS = 10_000
REQUEST_SIZE = 32
THREADS = 2
CONTENDERS = {
    "sentence-transformers (PyTorch)": ("st", REPO_ROOT / ".venv-bench" / "bin" / "python"),
    "aiinfra fp32": ("all-MiniLM-L6-v2", REPO_ROOT / ".venv" / "bin" / "python"),
    "aiinfra int8": ("all-MiniLM-L6-v2-int8", REPO_ROOT / ".venv" / "bin" / "python"),
}


def http_event(body: dict[str, Any]) -> dict[str, Any]:
    return api_gateway_event("http", "POST", "/v1/embeddings", json.dumps(body))


def worker(contender: str, texts_file: Path) -> None:
    """Runs inside the contender's fresh interpreter; prints one JSON line per phase."""
    if contender == "st":
        from bench.baseline.st_app import handler
    else:
        os.environ["EMBED_MODEL"] = contender
        import importlib.util

        spec = importlib.util.spec_from_file_location("app", REPO_ROOT / "functions" / "embed" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler = module.handler
    first = handler(http_event({"input": "the first vector"}), LambdaContext("embed", 2048))
    assert first["statusCode"] == 200, first
    print(json.dumps({"phase": "first_vector"}), flush=True)

    texts = json.loads(texts_file.read_text())
    requests: queue.Queue[list[str]] = queue.Queue()
    for start in range(0, len(texts), REQUEST_SIZE):
        requests.put(texts[start : start + REQUEST_SIZE])
    latencies: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal tokens
        asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum runs the app on the caller's loop
        while True:
            try:
                batch = requests.get_nowait()
            except queue.Empty:
                return
            event = http_event({"input": batch})
            started = time.perf_counter()
            response = handler(event, LambdaContext("embed", 2048))
            elapsed = time.perf_counter() - started
            assert response["statusCode"] == 200, response["body"][:200]
            usage = json.loads(response["body"])["usage"]["total_tokens"]
            with lock:
                latencies.append(elapsed)
                tokens += usage

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    result = {
        "phase": "done",
        "texts_per_s": len(texts) / wall,
        "tokens_per_s": tokens / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result), flush=True)


def run_contender(contender: str, python: Path, texts_file: Path) -> dict[str, Any]:
    spawned = time.perf_counter()
    process = subprocess.Popen(
        [str(python), __file__, "--worker", contender, "--texts", str(texts_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    result: dict[str, Any] = {}
    for line in process.stdout:
        if not line.startswith('{"phase"'):
            continue  # the function's own output: EMF metrics, logs
        message = json.loads(line)
        if message["phase"] == "first_vector":
            result["first_vector_s"] = time.perf_counter() - spawned
        else:
            result.update(message)
    assert process.wait() == 0, f"{contender} failed"
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    base = results["sentence-transformers (PyTorch)"]
    lines = [
        "| contender | texts/s | vs PyTorch | tokens/s | p50 ms | p99 ms | peak RSS MB | RSS vs PyTorch "
        "| fresh interpreter to first vector s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['texts_per_s']:.0f} | {r['texts_per_s'] / base['texts_per_s']:.2f}x "
            f"| {r['tokens_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['first_vector_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--texts", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.texts)
        return
    texts_file = REPO_ROOT / "build" / "bench" / "embed-texts.json"
    texts_file.parent.mkdir(parents=True, exist_ok=True)
    texts_file.write_text(json.dumps(english_texts(TEXTS)))
    results = {name: run_contender(c, python, texts_file) for name, (c, python) in CONTENDERS.items()}
    report = "\n".join(
        [
            "# Embed benchmark",
            "",
            f"`make bench-embed`, {machine()}.",
            f"{TEXTS:,} real English texts (STS-B test sentences + WordNet glosses), requests of "
            f"{REQUEST_SIZE} texts from {THREADS} threads, each request through the Lambda handler with an "
            "API Gateway HTTP API event; each contender in a fresh process.",
            "",
            table(results),
            "",
            "Targets: int8 >= 4.0x and fp32 >= 1.3x the texts/s of sentence-transformers; peak RSS <= 1/3 "
            "of it; fresh interpreter to first vector (web stack included) <= 0.6 s.",
            "",
        ]
    )
    write_report("embed", report)


if __name__ == "__main__":
    main()
