"""`make bench-recall`: recall by meaning through the memory function's Lambda handler, against what a
user would write without us over the same memories, queries and Redis: redis-py + numpy brute force
over plaintext float32 vectors, and redis-py + AES-GCM (cryptography) decrypting every vector before
numpy scores them. Then the quality of its answers against sentence-transformers' own vectors and an
exact cosine, on STS-B's close pairs. Writes docs/benchmarks/recall.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402
from aiinfra._native import encode_commands, roundtrip  # noqa: E402
from aiinfra.api.encoder import TextEncoder, lazy_text_encoder  # noqa: E402
from aiinfra.api.memory import MAX_BATCH_TEXTS, RECALL_MODEL  # noqa: E402
from aiinfra.memory.schema import recall_vectors_key  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from bench.corpus import STS_TEST, english_texts, sts_sentences  # noqa: E402
from bench.memory import (  # noqa: E402
    CLIENT_CPU,
    PINNED,
    REDIS_CPU,
    ROUNDS,
    Row,
    interleaved,
    load_module,
    markdown_table,
    start_redis,
)
from bench.report import machine, verdict, write_report  # noqa: E402
from tests.support.events import LambdaContext, api_gateway_event, response_json  # noqa: E402

K = 5
TTL = 24 * 3600
INIT_BASE = "c0455f7"  # the last commit before recall
INIT_NOW = "this commit"
INIT_BEFORE = f"{INIT_BASE}, before recall"
INIT_RUNS = 20
QUERIES = 200
CLOSE = 4.0  # STS-B gold score from which a pair counts as saying the same thing
BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
# In .venv-bench: the baseline app's own model (bench/baseline/st_app.py), texts in, unit rows out.
ST_EMBED = (
    "import json, sys\nimport numpy\nfrom bench.baseline.st_app import model\n"
    "texts = json.loads(open(sys.argv[1], encoding='utf-8').read())\n"
    "numpy.save(sys.argv[2], model.encode(texts, batch_size=32, normalize_embeddings=True))\n"
)
OURS = "aiinfra recall through the handler, query embedded"
EMBED = "int8 model embedding the query alone"
PLAIN = "redis-py + numpy, plaintext float32 vectors"
SEALED = "redis-py + AES-GCM decrypt-all + numpy"
FETCH = "the ceiling: our HGETALL of the agent's sealed vectors alone, a bare socket"
WITH_EMBEDDING = ", query embedded"
WITHOUT_EMBEDDING = ", query vector given"
ROW_MEANINGS = {
    OURS: f"POST /agents/{{agent}}/recall (k={K}, values included) as an API Gateway HTTP API event to the "
    "memory function's handler (JWT agents claim checked, one log line, EMF flush): the int8 model "
    "embeds the query, one HGETALL of the agent's sealed int8 vectors, opened and scored natively, "
    "then one script fetching the best candidates' values and texts, opened",
    EMBED: "the same int8 model (all-MiniLM-L6-v2-int8, same threads) embedding the same query texts, "
    "one at a time: the part of every `query embedded` row that is not recall",
    PLAIN + WITH_EMBEDDING: "what a user writes without us, in the clear: the int8 model embeds the "
    "query, HGETALL of one hash per agent (key -> float32 vector), numpy matmul + argpartition, then "
    "HMGET of the best k's JSON (text and value) from a second hash",
    PLAIN + WITHOUT_EMBEDDING: "the same, timed from the query's vector",
    SEALED + WITH_EMBEDDING: "the same with each memory's vector and its JSON (text and value) sealed "
    "with AES-256-GCM (random nonce, the Redis key and field as associated data): HGETALL, decrypt "
    "every vector, numpy matmul + argpartition, HMGET and decrypt the best k",
    SEALED + WITHOUT_EMBEDDING: "the same, timed from the query's vector",
    FETCH: "the one read every recall of ours needs, and nothing else: the HGETALL request prebuilt, "
    "sent and its answer parsed by our native round trip over a bare socket (nothing opened, "
    "scored or embedded); with the embedding row, what no recall that reads every vector goes under",
}


def sts_pairs(min_score: float) -> list[tuple[str, str]]:
    """STS-B test pairs (sentence 1, sentence 2) whose gold score is at least `min_score`."""
    with STS_TEST.open(newline="", encoding="utf-8") as tsv:
        rows = list(csv.reader(tsv, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row[5], row[6]) for row in rows if float(row[4]) >= min_score]


def best(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k highest scores, highest first."""
    if len(scores) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]
    return np.argsort(-scores, kind="stable")


class BaselineRecall:
    """Recall as a user writes it with redis-py, numpy and, when `aead` is given, cryptography's
    AES-GCM: one hash of vectors per agent, one of the memories' JSON (text and value)."""

    def __init__(self, client: redis.Redis, agent: str, aead: AESGCM | None) -> None:
        self.client, self.aead = client, aead
        label = "sealed" if aead else "plain"
        self.vectors_key, self.memories_key = f"{label}-vec:{{{agent}}}", f"{label}-mem:{{{agent}}}"

    def _seal(self, key: str, field: str, plaintext: bytes) -> bytes:
        if self.aead is None:
            return plaintext
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, plaintext, f"{key}:{field}".encode())

    def _open(self, key: str, field: bytes, blob: bytes) -> bytes:
        assert self.aead is not None
        return self.aead.decrypt(blob[:12], blob[12:], key.encode() + b":" + field)

    def write(self, keys: list[str], texts: list[str], values: list[Any], vectors: np.ndarray) -> None:
        rows = zip(keys, texts, values, vectors.astype(np.float32), strict=True)
        sealed_vectors, sealed_memories = {}, {}
        for key, text, value, vector in rows:
            sealed_vectors[key] = self._seal(self.vectors_key, key, vector.tobytes())
            memory = json.dumps({"text": text, "value": value}).encode()
            sealed_memories[key] = self._seal(self.memories_key, key, memory)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.vectors_key, mapping=sealed_vectors)
        pipe.hset(self.memories_key, mapping=sealed_memories)
        pipe.execute()

    def recall(self, query: np.ndarray, k: int = K) -> list[dict[str, Any]]:
        entries: dict[bytes, bytes] = self.client.hgetall(self.vectors_key)  # type: ignore[assignment]
        names = list(entries)
        if self.aead is None:
            blobs = list(entries.values())
        else:
            blobs = [self._open(self.vectors_key, name, blob) for name, blob in entries.items()]
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(names), -1)
        scores = matrix @ query
        top = best(scores, k)
        chosen = [names[i] for i in top]
        found: list[bytes] = self.client.hmget(self.memories_key, chosen)  # type: ignore[assignment]
        if self.aead is not None:
            found = [
                self._open(self.memories_key, names[i], blob) for i, blob in zip(top, found, strict=True)
            ]
        return [
            {"key": names[i].decode(), "score": float(scores[i]), **json.loads(memory)}
            for i, memory in zip(top, found, strict=True)
        ]


class MemoryFunction:
    """The memory function's handler (functions/memory/app.py) against one redis-server, JWT mode,
    called with API Gateway HTTP API events as Lambda calls it."""

    def __init__(self, port: int, keyring: Path, agents: list[str]) -> None:
        os.environ.update(
            REDIS_URL=f"redis://127.0.0.1:{port}/0",
            MEMORY_KEYS=f"file://{keyring}",
            AUTH_MODE="jwt",
            POWERTOOLS_METRICS_NAMESPACE="aiinfra",
        )
        self.handler = load_module(REPO_ROOT / "functions" / "memory" / "app.py", "memory_app").handler
        self.claims = {"sub": "bench", "agents": agents}
        self.context = LambdaContext("memory", 1024)

    def event(self, path: str, body: Any) -> dict[str, Any]:
        return api_gateway_event("http", "POST", path, json.dumps(body), claims=self.claims)

    def call(self, event: dict[str, Any]) -> dict[str, Any]:
        response = self.handler(event, self.context)
        assert response["statusCode"] == 200, response
        return response

    def matches(self, agent: str, query: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = response_json(self.call(self.recall_event(agent, query)))["matches"]
        return found

    def batch_put(self, agent: str, keys: list[str], texts: list[str], values: list[Any]) -> list[float]:
        """Writes the memories with their texts in batch-puts of as many texts as one may carry; each
        call's time."""
        times = []
        for start in range(0, len(keys), MAX_BATCH_TEXTS):
            batch = range(start, min(start + MAX_BATCH_TEXTS, len(keys)))
            items = [{"key": keys[i], "value": values[i], "ttl": TTL, "text": texts[i]} for i in batch]
            event = self.event(f"/agents/{agent}/batch-put", {"items": items})
            started = time.perf_counter()
            self.call(event)
            times.append(time.perf_counter() - started)
        return times

    def recall_event(self, agent: str, query: str) -> dict[str, Any]:
        return self.event(f"/agents/{agent}/recall", {"query": query, "k": K})


def memories(size: int) -> tuple[list[str], list[str], list[Any]]:
    """`size` memories of real English: keys, texts, values."""
    texts = english_texts(size)
    keys = [f"m{i:05d}" for i in range(size)]
    return keys, texts, [{"n": i, "kind": "fact"} for i in range(size)]


def cycling(run: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[int], object]:
    """An operation whose i-th call runs `run` on the i-th input, round the inputs: every contender
    meets the same inputs in the same order."""
    return lambda i: run(inputs[i % len(inputs)])


def embedded(baseline: BaselineRecall, encode: TextEncoder) -> Callable[[str], object]:
    """The baseline's recall of a query text: embedded by the int8 model first."""
    return lambda query: baseline.recall(encode([query])[0])


def bare_fetch(port: int, agent: str) -> Callable[[int], object]:
    """The HGETALL of the agent's recall vectors, prebuilt, over a socket of its own."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = encode_commands([["HGETALL", recall_vectors_key(agent)]])
    return lambda i: roundtrip(connection.fileno(), request, 1, 1 << 30)


def latency(
    function: MemoryFunction,
    client: redis.Redis,
    port: int,
    encode: TextEncoder,
    sizes: list[int],
    recalls: int,
) -> tuple[dict[str, Row], dict[int, list[float]]]:
    """Every contender's recall latency at each size, in interleaved rounds; ours' write times."""
    queries = list(dict.fromkeys(sts_sentences()[1::2]))[:QUERIES]  # sentence 2 of STS-B test pairs
    query_vectors = encode(queries)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    contenders: dict[str, dict[str, Callable[[int], object]]] = {name: {} for name in ROW_MEANINGS}
    writes = {}
    for size in sizes:
        agent = f"recall-{size}"
        keys, texts, values = memories(size)
        writes[size] = function.batch_put(agent, keys, texts, values)
        vectors = encode(texts)
        events = [function.recall_event(agent, query) for query in queries]
        plain, sealed = BaselineRecall(client, agent, None), BaselineRecall(client, agent, aead)
        for baseline in (plain, sealed):
            baseline.write(keys, texts, values, vectors)
        for query in query_vectors[:3]:
            assert plain.recall(query) == sealed.recall(query), "the baselines must answer alike"
        assert len(function.matches(agent, queries[0])) == K
        op = str(size)
        contenders[OURS][op] = cycling(function.call, events)
        contenders[EMBED][op] = cycling(lambda query: encode([query]), queries)
        contenders[PLAIN + WITH_EMBEDDING][op] = cycling(embedded(plain, encode), queries)
        contenders[PLAIN + WITHOUT_EMBEDDING][op] = cycling(plain.recall, query_vectors)
        contenders[SEALED + WITH_EMBEDDING][op] = cycling(embedded(sealed, encode), queries)
        contenders[SEALED + WITHOUT_EMBEDDING][op] = cycling(sealed.recall, query_vectors)
        contenders[FETCH][op] = bare_fetch(port, agent)
    return interleaved(contenders, {str(size): recalls for size in sizes}), writes


def st_vectors(texts: list[str]) -> np.ndarray:
    """sentence-transformers' own unit vectors of `texts`, computed in .venv-bench."""
    with tempfile.TemporaryDirectory() as scratch:
        given, answer = Path(scratch) / "texts.json", Path(scratch) / "vectors.npy"
        given.write_text(json.dumps(texts), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run([str(BENCH_PYTHON), "-c", ST_EMBED, given, answer], check=True, env=env, cwd="/")
        return np.load(answer)


def quality(function: MemoryFunction, pairs: list[tuple[str, str]]) -> dict[str, tuple[float, float]]:
    """recall@1 and recall@5 of sentence 2 finding its sentence 1 among every pair's sentence 1 (one
    memory per distinct sentence), by our handler and by sentence-transformers with exact cosine."""
    firsts = list(dict.fromkeys(first for first, _ in pairs))
    keys = [f"s{i:04d}" for i in range(len(firsts))]
    function.batch_put("recall-sts", keys, firsts, [{"n": i} for i in range(len(firsts))])
    hits = {"ours": [0, 0], "st": [0, 0]}
    for first, second in pairs:
        found = [match["text"] for match in function.matches("recall-sts", second)]
        hits["ours"][0] += found[:1] == [first]
        hits["ours"][1] += first in found
    stored, asked = st_vectors(firsts), st_vectors([second for _, second in pairs])
    for (first, _), scores in zip(pairs, asked @ stored.T, strict=True):
        found = [firsts[i] for i in best(scores, K)]
        hits["st"][0] += found[:1] == [first]
        hits["st"][1] += first in found
    return {name: (at1 / len(pairs), at5 / len(pairs)) for name, (at1, at5) in hits.items()}


def init_times(runs: int) -> dict[str, list[float]]:
    """The memory function's init (its imports and app build: what Init Duration counts past the
    runtime's own start) in fresh processes, recall unused: this tree against INIT_BASE's, one after
    the other, `runs` times each. The base's Python runs on this tree's native module (it calls
    nothing recall added)."""
    from tests.perf.test_function_init_cost import PROBE

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        base.mkdir()
        tree = ["layers/native/python", "functions/memory"]
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", INIT_BASE, *tree], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        native = REPO_ROOT / "layers" / "native" / "python" / "aiinfra" / "_native.abi3.so"
        shutil.copy(native, base / "layers" / "native" / "python" / "aiinfra")
        settings = {
            "PATH": "",
            "AUTH_MODE": "none",
            "REDIS_URL": "redis://127.0.0.1:1/0",  # closed: the keyring defers, as it may in Lambda
            "MEMORY_KEYS": f"file://{scratch}/keyring.json",
        }
        trees = {
            INIT_NOW: (REPO_ROOT, settings),
            INIT_BEFORE: (base, {**settings, "PYTHONPATH": str(base / "layers" / "native" / "python")}),
        }
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(runs):
            for name, (root, env) in trees.items():
                done = subprocess.run(
                    [sys.executable, "-c", PROBE, str(root / "functions" / "memory" / "app.py")],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd="/",
                    check=True,
                )
                probe = json.loads(done.stdout.splitlines()[-1])
                # Each tree's own code answered: only this one has the recall module.
                assert ("aiinfra.memory.recall" in probe["modules"]) == (name == INIT_NOW)
                times[name].append(probe["init_ms"])
    return times


def cell(row: Row) -> str:
    return f"{row['p50']:.2f} / {row['p99']:.2f}"


def report(
    rows: dict[str, Row],
    writes: dict[int, list[float]],
    recall_at: dict[str, tuple[float, float]],
    pairs: int,
    memories_sts: int,
    recalls: int,
    load: tuple[float, float],
    inits: dict[str, list[float]],
) -> str:
    sizes = [int(op) for op in rows[OURS]]
    init_rows = [
        [name, f"{np.median(times):.0f}", f"{min(times):.0f}", f"{max(times):.0f}"]
        for name, times in inits.items()
    ]
    init_change = np.median(inits[INIT_NOW]) - np.median(inits[INIT_BEFORE])
    spread = np.percentile(inits[INIT_BEFORE], 75) - np.percentile(inits[INIT_BEFORE], 25)
    ratios = {
        size: {
            p: rows[SEALED + WITH_EMBEDDING][str(size)][p] / rows[OURS][str(size)][p] for p in ("p50", "p99")
        }
        for size in sizes
    }
    latency_rows = [[name, *(cell(rows[name][str(size)]) for size in sizes)] for name in ROW_MEANINGS]
    latency_rows.append(
        [
            "decrypt-all (query embedded) / ours: p50 / p99",
            *(f"{ratios[s]['p50']:.1f}x / {ratios[s]['p99']:.1f}x" for s in sizes),
        ]
    )
    write_rows = [
        [
            f"{size:,}",
            str(len(times)),
            f"{sum(times):.2f}",
            f"{size / sum(times):,.0f}",
            f"{sorted(times)[len(times) // 2] * 1e3:,.0f}",
        ]
        for size, times in writes.items()
    ]
    ours_at, st_at = recall_at["ours"], recall_at["st"]
    quality_rows = [
        [
            "aiinfra recall through the handler (int8 model, int8 vectors sealed)",
            *(f"{v:.1%}" for v in ours_at),
        ],
        ["sentence-transformers (PyTorch) vectors, exact cosine", *(f"{v:.1%}" for v in st_at)],
    ]

    def p99(size: int) -> float:
        return rows[OURS][str(size)]["p99"]

    targets = []
    for size, bound in ((1000, 10.0), (10000, 40.0)):
        if size in sizes:
            targets.append(
                f"- recall at {size:,} memories per agent through the handler, query embedded: p99 "
                f"{p99(size):.2f} ms (target <= {bound:.0f} ms: {verdict(p99(size) <= bound)})"
            )
    for size in sizes:
        sealed_p50 = rows[SEALED + WITHOUT_EMBEDDING][str(size)]["p50"]
        ours_less = rows[OURS][str(size)]["p50"] - rows[EMBED][str(size)]["p50"]
        apart = f"{sealed_p50 / ours_less:.1f}x" if ours_less > 0 else "not measurable: no difference"
        targets.append(
            f"- {size:,} memories: decrypt-all takes {ratios[size]['p50']:.1f}x our time at p50, "
            f"{ratios[size]['p99']:.1f}x at p99, both embedding the query (target >= 3x at p50: "
            f"{verdict(ratios[size]['p50'] >= 3)}); without the embedding, decrypt-all's p50 from the "
            f"query vector ({sealed_p50:.2f} ms) against our p50 less the embedding's ({ours_less:.2f} ms, "
            f"a difference of medians): {apart}"
        )
    gap = (st_at[1] - ours_at[1]) * 100
    targets.append(
        f"- recall@5 {ours_at[1]:.1%} against sentence-transformers' {st_at[1]:.1%}: "
        f"{abs(gap):.1f} points {'under' if gap > 0 else 'over'} "
        f"(target within 1 point, or over: {verdict(gap <= 1)})"
    )
    targets.append(
        f"- the memory function's init, recall unused: {init_change:+.0f} ms at the median against "
        f"{INIT_BASE} (its own spread, quartile to quartile: {spread:.0f} ms; target unchanged within "
        f"noise, so no slower than that spread: {verdict(init_change <= max(spread, 5.0))})"
    )
    pinning = (
        f"redis-server is pinned to CPU {REDIS_CPU}, this process (the handler, the model, the baselines) "
        f"to CPU {CLIENT_CPU}"
        if PINNED
        else "nothing is pinned: this machine offers fewer than two CPUs"
    )
    return "\n".join(
        [
            "# Recall benchmark",
            "",
            f"`make bench-recall`, {machine()}, load average {load[0]:.1f} at the start and {load[1]:.1f} "
            f"at the end. One local redis-server (no persistence); {pinning}; the model on one thread "
            "(EMBED_THREADS=1, as template.yaml sets it for the memory function), ours and the "
            "baselines' alike. Memories of real English (STS-B test sentences, then WordNet glosses), "
            f"each agent holding the size's memories, written by batch-puts of {MAX_BATCH_TEXTS} with "
            f"their texts (the most one carries); queries: {QUERIES} distinct sentences 2 of STS-B test "
            f"pairs, k={K}. {recalls} recalls per contender and size in {ROUNDS} interleaved rounds (so "
            "load from elsewhere hits every contender alike), after a warm-up. Every `query embedded` "
            "row embeds the query with the same int8 model, so the rows compare like for like; the "
            "baselines are plain Python calls, no handler, no HTTP event, no authorization (which "
            "favours them). redis-py runs with its own parser (hiredis is not installed).",
            "",
            "What each row means:",
            "",
            *(f"- {name}: {meaning}" for name, meaning in ROW_MEANINGS.items()),
            "",
            "## Recall latency, p50 / p99 ms, by memories per agent",
            "",
            markdown_table(["contender", *(f"{size:,} memories" for size in sizes)], latency_rows),
            "",
            "## Writing the memories through the handler",
            "",
            "Each batch-put embeds its texts with the int8 model, then writes the values, vectors and "
            "texts sealed in one script.",
            "",
            markdown_table(
                ["memories", "batch-puts", "total s", "memories/s", "p50 ms per batch-put"], write_rows
            ),
            "",
            "## Quality: STS-B test pairs with gold score >= 4",
            "",
            f"Every distinct sentence 1 of the {pairs} pairs is a memory of one agent ({memories_sts} "
            "memories); each pair's sentence 2 is the query. recall@1: its own sentence 1 is the best "
            "match; recall@5: among the best 5.",
            "",
            markdown_table(["contender", "recall@1", "recall@5"], quality_rows),
            "",
            "## The memory function's init when no request uses recall",
            "",
            f"{len(inits[INIT_NOW])} fresh processes of each, one after the other: the function's "
            "imports and app build (what Lambda's Init Duration counts beyond the runtime's own start; "
            "tests/perf's probe), Redis unreachable so the keyring defers. The base is the last commit "
            "before recall, on this tree's native module. The recall model is not loaded by either.",
            "",
            markdown_table(["code", "median ms", "min ms", "max ms"], init_rows),
            "",
            "## Targets",
            "",
            *targets,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 100 and 1,000 memories, 50 STS pairs, 20 recalls"
    )
    args = parser.parse_args()
    if args.quick:
        sizes, recalls, pairs = [100, 1000], 20, sts_pairs(CLOSE)[:50]
    else:
        sizes, recalls, pairs = [100, 1000, 10000], 500, sts_pairs(CLOSE)
    started_load = os.getloadavg()[0]
    os.environ.setdefault("MODEL_DIR", str(REPO_ROOT / "build" / "model"))
    with tempfile.TemporaryDirectory() as scratch:
        process, port = start_redis(Path(scratch))
        if PINNED:
            os.sched_setaffinity(0, {CLIENT_CPU})
        # As template.yaml sets it for the memory function, whose share of a CPU is under one.
        os.environ["EMBED_THREADS"] = "1"
        try:
            agents = [f"recall-{size}" for size in sizes] + ["recall-sts"]
            function = MemoryFunction(port, Path(scratch) / "keyring.json", agents)
            client = redis.Redis(port=port)
            encode = lazy_text_encoder(RECALL_MODEL)
            rows, writes = latency(function, client, port, encode, sizes, recalls)
            recall_at = quality(function, pairs)
        finally:
            process.terminate()
            process.wait()
    inits = init_times(5 if args.quick else INIT_RUNS)
    firsts = len({first for first, _ in pairs})
    load = (started_load, os.getloadavg()[0])
    markdown = report(rows, writes, recall_at, len(pairs), firsts, recalls, load, inits)
    write_report("recall", markdown)


if __name__ == "__main__":
    main()
