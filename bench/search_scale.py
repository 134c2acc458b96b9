"""`make bench-search-scale`: one index in shards, built shard by shard and queried through the fan-out
over shard functions under aws-lambda-rie, beside the same index unsharded in one process.

Vectors: the search bench's real-plus-mixed set (bench/search.py `prepare`, cached in build/bench)
with WordNet's glosses as its real part, `--size` rows (2M by default), and its 1,000 held-out
queries with exact top 10. The index
(`HNSW32,SQ8,RFlat`, cosine) is written through the writer into a file:// store as delta segments,
then each shard's base is built by `IndexWriter.run_compaction` (the indexer's code path) in a fresh
process of its own on 2 threads: its wall time, CPU seconds and peak RSS (VmHWM) are its own. The
6-vCPU column spreads the CPU seconds over the indexer's share at 10 GB (an estimate: HNSW insertion
keeps every thread busy); the parallel build's wall time is the slowest shard's, as every shard
builds in an indexer invocation of its own. The unsharded index is built the same way, one shard.

Queries: the fan-out is `RemoteShards` (what the search function runs) invoking one shard function
per shard, each under its own aws-lambda-rie on 1 thread (8 emulators share this machine's 2 cores);
each is warmed on its shard first (its cold start is not a query's). Beside it: the same shards
searched in this process (`LocalShards`), and the unsharded index in this process. Recall@10 and
batch QPS come from the 1,000 queries sent 100 at a time; p50/p99 from 200 queries sent one at a
time. The Invoke overhead is a one-shard fan-out's latency minus that shard searched in-process.
Writes docs/benchmarks/search-scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# boto3 signs every Invoke, also to aws-lambda-rie, which ignores the signature.
for name, value in {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
}.items():
    os.environ.setdefault(name, value)

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.report import machine, verdict, write_report  # noqa: E402
from bench.search import CACHE, EF_GRID, K, embedded, peak_rss_mb, prepare, wordnet_glosses  # noqa: E402

FACTORY = "HNSW32,SQ8,RFlat"
SIZE = 2_000_000
SHARDS = 8
BATCH = 100_000
QUERY_BATCH = 100
SINGLE_QUERIES = 200
INDEXER_VCPUS = 6
TARGET_P99_MS = 25.0
TARGET_RECALL = 0.95
TARGET_SHARD_SECONDS = 300.0
TARGET_RATIO = 2.5
MAX_SHARD_ROWS = 1_562_500  # 100M rows over the 64 shards an index may have
# Lambda (x86, us-east-1): per GB-second and per request.
GB_SECOND_USD = 0.0000166667
REQUEST_USD = 0.20 / 1e6
SEARCH_MB, SHARD_MB = 2048, 2048


def real_base() -> Path:
    """The real part of the set: every distinct WordNet gloss, embedded (cached). The search bench
    adds the GCIDE definitions; embedding those too takes over an hour of this machine."""
    path = CACHE / "search-scale-wordnet.npy"
    if not path.is_file():
        embedded(sorted(set(wordnet_glosses())), path)
    return path


def store_root(size: int, shards: int) -> Path:
    return CACHE / f"search-scale-{size}" / f"store-{shards}"


def bench_index() -> Any:
    from aiinfra.vectors.store import IndexPath

    return IndexPath("bench", "scale")


def limits(size: int) -> Any:
    from aiinfra.vectors.limits import IndexLimits

    # No compaction starts by itself: each shard's build runs in a process of its own below.
    return IndexLimits(
        max_rows=2 * size, max_deltas=1000, compact_after_deltas=1000, compact_after_rows=4 * size
    )


def write_deltas(size: int, shards: int) -> None:
    """The index of `size` rows in `shards` shards, as delta segments (cached)."""
    from aiinfra.vectors.reader import IndexRegistry
    from aiinfra.vectors.store import FileStore
    from aiinfra.vectors.writer import IndexWriter

    root = store_root(size, shards)
    if (root / "written").is_file():
        return
    data = np.load(prepare(size, real_base()) / "data.npy", mmap_mode="r")
    store = FileStore(root)
    writer = IndexWriter(store, IndexRegistry(store, 3600.0), limits(size))
    writer.create(bench_index(), data.shape[1], "cosine", FACTORY, shards)
    for start in range(0, size, BATCH):
        rows = np.arange(start, min(start + BATCH, size))
        writer.upsert(
            bench_index(), [f"v{i}" for i in rows.tolist()], np.asarray(data[rows]), [{}] * len(rows)
        )
        print(f"{shards} shards: written {rows[-1] + 1}/{size}", file=sys.stderr, flush=True)
    (root / "written").touch()


def build_shard(size: int, shards: int, shard: int) -> dict[str, Any]:
    """One shard's compaction in this (fresh) process, through the indexer's code path."""
    import faiss
    from aiinfra.vectors.manifest import IndexManifest
    from aiinfra.vectors.reader import IndexRegistry
    from aiinfra.vectors.store import FileStore
    from aiinfra.vectors.writer import IndexWriter

    faiss.omp_set_num_threads(THREADS)
    store = FileStore(store_root(size, shards))
    outcomes: list[Any] = []
    writer = IndexWriter(store, IndexRegistry(store, 3600.0), limits(size), lambda job: outcomes.append(job))
    path = bench_index().shard(shard)
    found = store.read_manifest(path)
    assert found is not None
    segments = IndexManifest.from_json(found[0]).segments
    if len(segments) == 1 and segments[0].kind == "base":
        return {"shard": shard, "cached": True}
    writer.request_compaction(bench_index(), [shard])
    load = os.getloadavg()[0]
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    started = time.perf_counter()
    outcome = writer.run_compaction(outcomes[0])
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert outcome is not None and outcome.result == "ok", outcome
    manifest = writer.manifest(path)[0]
    return {
        "shard": shard,
        "rows": outcome.rows,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_mb": peak_rss_mb(),
        "index_mb": sum(manifest.segments[0].files.values()) / 2**20,
        "load": load,
    }


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def builds(size: int, shards: int) -> list[dict[str, Any]]:
    """Every shard's build, one fresh process after the other; cached builds keep their figures."""
    record = store_root(size, shards) / "builds.json"
    known = {b["shard"]: b for b in json.loads(record.read_text())} if record.is_file() else {}
    for shard in range(shards):
        result = child("--build", str(size), str(shards), str(shard))
        if not result.get("cached"):
            known[shard] = result
            record.write_text(json.dumps(list(known.values())))
        print(f"{shards} shards: built shard {shard}: {known.get(shard)}", file=sys.stderr, flush=True)
    return [known[shard] for shard in range(shards)]


def ids_to_rows(matches: list[list[Any]]) -> np.ndarray:
    rows = np.full((len(matches), K), -1, dtype=np.int64)
    for q, found in enumerate(matches):
        for rank, match in enumerate(found[:K]):
            rows[q, rank] = int(match.id[1:])
    return rows


def measure(search: Any, queries: np.ndarray, truth: np.ndarray, ef: int) -> dict[str, float]:
    """`search(queries, ef)` -> matches per query: recall, batch QPS, single-query p50/p99."""
    search(queries[:QUERY_BATCH], ef)  # first touch of each segment's pages is not the steady state
    found: list[list[Any]] = []
    started = time.perf_counter()
    for start in range(0, len(queries), QUERY_BATCH):
        found += search(queries[start : start + QUERY_BATCH], ef)
    qps = len(queries) / (time.perf_counter() - started)
    latencies = []
    for q in queries[:SINGLE_QUERIES]:
        t = time.perf_counter()
        search(q[None, :], ef)
        latencies.append((time.perf_counter() - t) * 1e3)
    rows = ids_to_rows(found)
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(rows, truth, strict=True)]))
    return {
        "recall": recall,
        "qps": qps,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def queries_and_truth(size: int) -> tuple[np.ndarray, np.ndarray]:
    folder = prepare(size, real_base())
    return np.load(folder / "queries.npy"), np.load(folder / "truth.npy")


def query_contenders(size: int, shards: int) -> dict[str, Any]:
    """Recall, QPS, p50/p99 per ef for: the fan-out over RIE shard functions, the same shards in this
    process, the unsharded index in this process; and the Invoke overhead of one shard call."""
    from aiinfra.vectors.fanout import COUNT_EVENT, RemoteShards, ShardRequest
    from aiinfra.vectors.query import LocalShards, ShardQuery, search_snapshot
    from aiinfra.vectors.reader import IndexRegistry
    from aiinfra.vectors.store import FileStore

    from tests.support.rie import LambdaEmulator

    queries, truth = queries_and_truth(size)
    index = bench_index()
    sharded = FileStore(store_root(size, shards))
    local = LocalShards(IndexRegistry(sharded, 3600.0))
    single = LocalShards(IndexRegistry(FileStore(store_root(size, 1)), 3600.0))
    logs = CACHE / f"search-scale-{size}" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = {
        "INDEX_STORE": f"file://{store_root(size, shards)}",
        "INDEX_REFRESH_SECONDS": "3600",
        "OMP_NUM_THREADS": "1",
    }
    emulators = [
        LambdaEmulator("shard", settings, log_path=logs / f"shard-{slot}.log") for slot in range(shards)
    ]
    results: dict[str, Any] = {"fan-out": {}, "in-process shards": {}, "unsharded": {}}
    try:
        inits = []
        for shard, emulator in enumerate(emulators):
            emulator.start()
            warm = ShardQuery(queries[:1], K)
            started = time.perf_counter()
            status, answer = emulator.invoke(ShardRequest(index.tenant, index.name, shard, warm).to_event())
            assert status == 200 and "matches" in answer, answer
            inits.append((time.perf_counter() - started) * 1e3)
        results["cold_ms"] = inits
        slots = tuple(f"http://127.0.0.1:{emulator.port}" for emulator in emulators)
        remote = RemoteShards(slots, sharded, 3600.0, 30.0)
        first = remote.first(index)

        def fan_out(batch: np.ndarray, ef: int) -> list[list[Any]]:
            return remote.search(index, first, ShardQuery(batch, K, ef_search=ef)).matches

        def in_process(batch: np.ndarray, ef: int) -> list[list[Any]]:
            return local.search(index, first, ShardQuery(batch, K, ef_search=ef)).matches

        single_first = single.first(index)

        def unsharded(batch: np.ndarray, ef: int) -> list[list[Any]]:
            return single.search(index, single_first, ShardQuery(batch, K, ef_search=ef)).matches

        for ef in EF_GRID:
            for name, search in (
                ("fan-out", fan_out),
                ("in-process shards", in_process),
                ("unsharded", unsharded),
            ):
                results[name][ef] = measure(search, queries, truth, ef)
                print(f"ef {ef} {name}: {results[name][ef]}", file=sys.stderr, flush=True)
        # One shard's call through Invoke against the same search in this process.
        one = RemoteShards(slots[:1], sharded, 3600.0, 30.0)
        snapshot = local.registry.snapshot(index.shard(0))
        invoked, searched = [], []
        for q in queries[:SINGLE_QUERIES]:
            query = ShardQuery(q[None, :], K, ef_search=64)
            t = time.perf_counter()
            one._invoke(ShardRequest(index.tenant, index.name, 0, query))
            invoked.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            search_snapshot(snapshot, query)
            searched.append((time.perf_counter() - t) * 1e3)
        results["invoke_ms"] = statistics.median(invoked)
        results["search_ms"] = statistics.median(searched)
        # The floor of any fan-out here: every shard function asked at once for what costs it nothing
        # (its live count), so what is left is the Invoke path and the 8 emulators sharing 2 cores.
        events = [
            {"aiinfra": COUNT_EVENT, "tenant": index.tenant, "name": index.name, "shard": s}
            for s in range(shards)
        ]
        floor = []
        for _ in range(SINGLE_QUERIES):
            t = time.perf_counter()
            list(remote._pool.map(remote._count, events))
            floor.append((time.perf_counter() - t) * 1e3)
        results["floor_ms"] = [float(np.percentile(floor, 50)), float(np.percentile(floor, 99))]
        results["shard_rss_mb"] = [rss_of(emulator) for emulator in emulators]
        # What Lambda would bill a shard call: the function's own duration, as the runtime reports it.
        durations = [report.duration_ms for emulator in emulators for report in emulator.reports()[1:]]
        results["shard_ms"] = statistics.median(durations)
    finally:
        for emulator in emulators:
            emulator.stop()
    return results


def rss_of(emulator: Any) -> float:
    """The shard function's runtime process's resident memory (a child of aws-lambda-rie)."""
    root = Path(f"/proc/{emulator._process.pid}/task")
    children = [pid for task in root.iterdir() for pid in (task / "children").read_text().split()]
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def paper(
    rows: int, per_row_build_cpu: float, per_row_mb: float, peak_ratio: float, query: dict[str, Any]
) -> str:
    """What `rows` vectors need, from the measured per-row figures (linear in rows: an estimate; an
    HNSW build grows slightly faster than linearly)."""
    shards = min(64, max(1, -(-rows // 250_000)))
    per_shard = -(-rows // shards)
    build_s = per_row_build_cpu * per_shard / INDEXER_VCPUS
    memory = per_row_mb * per_shard
    peak = peak_ratio * memory
    # One query: the search function waits for the fan-out; every shard function runs its search.
    gb_s = (
        SEARCH_MB / 1024 * query["wall_ms"] / 1e3
        + shards * SHARD_MB / 1024 * max(query["shard_ms"], 1.0) / 1e3
    )
    cost = 1e6 * (gb_s * GB_SECOND_USD + (shards + 1) * REQUEST_USD)
    return (
        f"| {rows / 1e6:g}M | {shards} | {per_shard:,} | {memory:,.0f} MB | {peak:,.0f} MB | "
        f"{build_s / 60:.1f} min | ${cost:.2f} |"
    )


def report(
    size: int,
    shards: int,
    sharded: list[dict[str, Any]],
    whole: dict[str, Any],
    queries: dict[str, Any],
    load: tuple[float, ...],
) -> str:
    lines = [
        "# Search at scale: shards, their builds, the fan-out",
        "",
        f"{machine()}. Load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
        f"at the end {os.getloadavg()[0]:.2f} (the machine is shared).",
        f"{size:,} vectors (the search bench's real-plus-mixed set, its real part WordNet's glosses; "
        f"384-d, cosine), `{FACTORY}`, {shards} shards; 1,000 queries, recall@10 against exact search.",
        "",
        "## Builds (each shard in a fresh process, 2 threads, `run_compaction`)",
        "",
        "| shard | rows | wall s | CPU s | at 6 vCPU (est.) | peak RSS | index | peak / index | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in [*sharded, whole]:
        label = "unsharded" if b is whole else str(b["shard"])
        lines.append(
            f"| {label} | {b['rows']:,} | {b['seconds']:.1f} | {b['cpu_seconds']:.1f} | "
            f"{b['cpu_seconds'] / INDEXER_VCPUS:.1f} s | {b['peak_mb']:,.0f} MB | {b['index_mb']:,.0f} MB | "
            f"{b['peak_mb'] / b['index_mb']:.2f} | {b['load']:.2f} |"
        )
    slowest = max(b["cpu_seconds"] for b in sharded) / INDEXER_VCPUS
    ratio = max(b["peak_mb"] / b["index_mb"] for b in sharded)
    per_row_cpu = sum(b["cpu_seconds"] for b in sharded) / sum(b["rows"] for b in sharded)
    at_250k = per_row_cpu * 250_000 / INDEXER_VCPUS
    lines += [
        "",
        "The whole build with every shard in an indexer invocation of its own (in parallel): the "
        f"slowest shard, {max(b['seconds'] for b in sharded):.0f} s here, about {slowest:.0f} s at the "
        f"indexer's 6 vCPUs (one process after the other here: {sum(b['seconds'] for b in sharded):.0f} s). "
        f"Unsharded: {whole['seconds']:.0f} s here.",
        f"Target: a 250k-vector shard builds in <= 5 min at the indexer's share: {at_250k:.0f} s from "
        f"the measured CPU s per row, {verdict(at_250k <= TARGET_SHARD_SECONDS)}; peak RSS <= 2.5x its "
        f"index: worst {ratio:.2f}, {verdict(ratio <= TARGET_RATIO)}.",
        "",
        "## Queries",
        "",
        f"Fan-out: `RemoteShards` in this process invoking {shards} shard functions, each under its own "
        "aws-lambda-rie on 1 thread; in-process shards: the same shards searched by `LocalShards` here "
        "(2 threads); unsharded: the one-shard index here. Each cell: recall@10, p50 / p99, batch QPS.",
        "",
        "| ef | fan-out | in-process shards | unsharded |",
        "| --- | --- | --- | --- |",
    ]
    for ef in EF_GRID:
        cells = [str(ef)]
        for name in ("fan-out", "in-process shards", "unsharded"):
            r = queries[name][ef]
            cells.append(f"{r['recall']:.3f}, {r['p50']:.2f} / {r['p99']:.2f} ms, {r['qps']:,.0f} QPS")
        lines.append("| " + " | ".join(cells) + " |")
    good = [ef for ef in EF_GRID if queries["fan-out"][ef]["recall"] >= TARGET_RECALL]
    chosen = queries["fan-out"][good[0]] if good else None
    overhead = queries["invoke_ms"] - queries["search_ms"]
    cold, rss = queries["cold_ms"], queries["shard_rss_mb"]
    lines += [
        "",
        f"Invoke overhead of one shard call: {queries['invoke_ms']:.2f} ms through boto3 and "
        f"aws-lambda-rie against {queries['search_ms']:.2f} ms for the same search in-process (median "
        f"of {SINGLE_QUERIES}): {overhead:.2f} ms per call. A fan-out pays it once (the calls run in "
        f"parallel) plus the wait for the slowest of {shards} shard functions sharing 2 cores. The "
        f"shard function's own duration per call: {queries['shard_ms']:.2f} ms (median, as the runtime "
        f"reports it). Cold start of a shard function (init + loading its shard): "
        f"{min(cold):,.0f}-{max(cold):,.0f} ms. Its RSS once warm: {min(rss):,.0f}-{max(rss):,.0f} MB.",
    ]
    if "floor_ms" in queries:
        low, high = queries["floor_ms"]
        lines.append(
            f"The floor of a fan-out on this machine: all {shards} shard functions asked at once for their "
            f"live count (no search) answer in {low:.2f} ms p50 / {high:.2f} ms p99 ({SINGLE_QUERIES} "
            "rounds): the Invoke path and the emulators' scheduling on 2 cores, which no search can go under."
        )
    if chosen is not None:
        met = verdict(chosen["p99"] <= TARGET_P99_MS)
        lines.append(
            f"Target: fan-out p99 <= {TARGET_P99_MS:g} ms at recall@10 >= {TARGET_RECALL}: ef {good[0]}, "
            f"recall {chosen['recall']:.3f}, p99 {chosen['p99']:.2f} ms, {met}."
        )
    else:
        lines.append(
            f"Target: no ef of the grid reaches recall@10 {TARGET_RECALL} through the fan-out: **missed**."
        )
    per_row_mb = sum(b["index_mb"] for b in sharded) / sum(b["rows"] for b in sharded)
    reference = chosen or queries["fan-out"][EF_GRID[-1]]
    query_cost = {"wall_ms": reference["p50"], "shard_ms": queries["shard_ms"]}
    lines += [
        "",
        "## On paper: 10M and 100M vectors",
        "",
        "From the figures above, linear in rows (an HNSW build grows slightly faster). Shards of 250k "
        "rows, up to the 64 an index may have. Memory per shard: its index files (what a shard function "
        "holds, beside the runtime and layer); peak build RSS: that times the worst peak / index above; "
        "build wall time: one shard at the indexer's 6 vCPUs, all shards building at once. Cost per "
        f"million queries: the search function ({SEARCH_MB} MB) for the fan-out's p50 "
        f"({reference['p50']:.1f} ms), each shard function ({SHARD_MB} MB) for its own duration (billed "
        f"per ms, at least 1 ms), one request per function; ${GB_SECOND_USD * 1e6:.2f} per million "
        "GB-s and $0.20 per million requests (x86).",
        "",
        "| vectors | shards | rows per shard | memory per shard | peak build RSS | build wall | 1M queries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        paper(10_000_000, per_row_cpu, per_row_mb, ratio, query_cost),
        paper(100_000_000, per_row_cpu, per_row_mb, ratio, query_cost),
        "",
        f"At 100M the 64-shard cap makes shards of {MAX_SHARD_ROWS:,} rows: each shard function needs "
        "that much memory (up to 10 GB), and each build must fit one indexer invocation (15 minutes).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=int(os.environ.get("BENCH_SCALE_SIZE", SIZE)))
    parser.add_argument("--shards", type=int, default=SHARDS)
    parser.add_argument("--build", nargs=3, type=int, metavar=("SIZE", "SHARDS", "SHARD"))
    parser.add_argument("--report-only", action="store_true", help="the report from the last run's figures")
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build_shard(*args.build)))
        return
    load = os.getloadavg()
    for shards in (args.shards, 1):
        write_deltas(args.size, shards)
    sharded = builds(args.size, args.shards)
    whole = builds(args.size, 1)[0]
    record = CACHE / f"search-scale-{args.size}" / "queries.json"
    if args.report_only:
        queries = json.loads(record.read_text())
        for name in ("fan-out", "in-process shards", "unsharded"):
            queries[name] = {int(ef): found for ef, found in queries[name].items()}
    else:
        queries = query_contenders(args.size, args.shards)
        record.write_text(json.dumps(queries))
    write_report("search-scale", report(args.size, args.shards, sharded, whole, queries, load))


if __name__ == "__main__":
    main()
