"""`make bench-compaction`: a compaction's build, today's path against `write_base` (bounded memory).

Vectors: synthetic, normal random 384-d float32 rows, L2-normalised (cosine), factory
`HNSW32,SQ8,RFlat` unless BENCH_COMPACTION_FACTORIES names another for a size (`1000000=Flat`: the
rows, metadata and files without a graph to build, for a run short of time); each row has small
metadata (`lang`, `year`). The index is prepared once per
size in build/bench/compaction-<size>/ through the writer: upserts of 100,000 rows (one delta
segment each), then 1 % of the ids replaced and 1 % deleted, so the build folds shadowed rows and
tombstones. Each contender then runs in a fresh process of its own on 2 threads: it loads the
index's snapshot, then builds the new base segment's files into an empty directory (what compaction
does before its upload and manifest swap): "today" = tests/support/reference_build.py (every row in
memory, the factory index over them, then `write_segment`); "write_base" =
`aiinfra.vectors.build.write_base`. Peak RSS is that process's `ru_maxrss` (the launching process
stays small); "before build" is its RSS once the snapshot is
loaded. Index = the segment's files on disk. CPU s is the build's own user + system time (other
work on the machine does not inflate it); the 6-vCPU column spreads it over the indexer's share at
10 GB, an estimate that assumes the build keeps 6 threads busy (FAISS's HNSW insertion runs on
every thread; reading the rows, metadata and files is the small rest).
Writes docs/benchmarks/compaction.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.report import machine, verdict, write_report  # noqa: E402

CACHE = Path(os.environ.get("BENCH_COMPACTION_CACHE", REPO_ROOT / "build" / "bench"))
DIMENSION = 384
FACTORY = "HNSW32,SQ8,RFlat"
SIZES = tuple(int(s) for s in os.environ.get("BENCH_COMPACTION_SIZES", "250000,1000000").split(","))
BATCH = 100_000
INDEXER_VCPUS = 6
TARGET_RATIO = 2.5
TARGET_SHARD_SECONDS = 300.0
SHARD_ROWS = 250_000
# Today's path holds several copies of the vectors: at 1M it needs far more memory than the rest.
OLD_PATH_MEMORY_BYTES_PER_ROW = 14_000
# Today's path takes as long as write_base: a run short of time may measure it at the smaller sizes only.
TODAY_MAX_ROWS = int(os.environ.get("BENCH_COMPACTION_TODAY_MAX", str(max(SIZES))))
CONTENDERS = ("write_base", "today")
# A size may be built with another factory than FACTORY (a run short of time: Flat has no graph to build).
FACTORIES = dict(
    (int(size), factory)
    for size, factory in (
        item.split("=", 1) for item in os.environ.get("BENCH_COMPACTION_FACTORIES", "").split(";") if item
    )
)
# A run short of time may run the sizes at once; each build's CPU seconds stay its own.
AT_ONCE = os.environ.get("BENCH_COMPACTION_AT_ONCE") == "1"


def factory_at(size: int) -> str:
    return FACTORIES.get(size, FACTORY)


def bench_index() -> Any:
    from aiinfra.vectors.store import IndexPath

    return IndexPath("bench", "bench")


def store_root(size: int) -> Path:
    return CACHE / f"compaction-{size}" / "store"


def prepare(size: int) -> None:
    """The index of `size` rows in deltas, with replaced and deleted ids (cached)."""
    import numpy as np
    from aiinfra.vectors.limits import IndexLimits
    from aiinfra.vectors.reader import IndexRegistry
    from aiinfra.vectors.store import FileStore
    from aiinfra.vectors.writer import IndexWriter

    root = store_root(size)
    if (root / "prepared").is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    store = FileStore(root)
    # One shard, and no compaction starting by itself: the contenders run the build.
    limits = IndexLimits(max_rows=2 * size, compact_after_deltas=1_000, compact_after_rows=10 * size)
    writer = IndexWriter(store, IndexRegistry(store, 3600.0), limits)
    writer.create(bench_index(), DIMENSION, "cosine", FACTORY)
    rng = np.random.default_rng(0)

    def upsert(numbers: np.ndarray) -> None:
        vectors = rng.standard_normal((len(numbers), DIMENSION), dtype=np.float32)
        metadata = [
            {"lang": ("en", "fr", "de", "es")[i % 4], "year": 1990 + i % 35} for i in numbers.tolist()
        ]
        writer.upsert(bench_index(), [f"item-{i}" for i in numbers.tolist()], vectors, metadata)

    for start in range(0, size, BATCH):
        upsert(np.arange(start, min(start + BATCH, size)))
        print(f"prepared {min(start + BATCH, size)}/{size}", file=sys.stderr, flush=True)
    upsert(rng.choice(size, size // 100, replace=False))
    writer.delete(bench_index(), [f"item-{i}" for i in rng.choice(size, size // 100, replace=False).tolist()])
    (root / "prepared").touch()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def contend(path: str, size: int) -> dict[str, Any]:
    """One contender's build in this process: its time, memory and output size."""
    import faiss
    from aiinfra.vectors.build import write_base
    from aiinfra.vectors.reader import IndexReader, IndexSnapshot
    from aiinfra.vectors.store import FileStore

    from tests.support.reference_build import write_reference_base

    faiss.omp_set_num_threads(THREADS)
    snapshot = IndexReader(FileStore(store_root(size)), bench_index().shard(0), 3600.0).snapshot()
    if factory_at(size) != snapshot.manifest.factory:
        manifest = dataclasses.replace(snapshot.manifest, factory=factory_at(size))
        snapshot = IndexSnapshot(manifest, [view.segment for view in snapshot.views])
    out = CACHE / f"compaction-{size}" / f"out-{path}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    before = rss_mb()
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if path == "write_base":
        ref = write_base(snapshot, out, "bench")
    else:
        ref = write_reference_base(snapshot, out, "bench")
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    shutil.rmtree(out)
    return {
        "rows": ref.rows,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_mb": peak,
        "before_mb": before,
        "index_mb": sum(ref.files.values()) / 2**20,
        "load": load,
    }


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def child(*args: str) -> str:
    done = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prepare", type=int)
    parser.add_argument("--contend", nargs=2, metavar=("PATH", "SIZE"))
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if args.contend:
        print(json.dumps(contend(args.contend[0], int(args.contend[1]))))
        return

    load_at_start = os.getloadavg()
    results: dict[tuple[int, str], dict[str, Any] | str] = {
        (size, path): "not finished: the run was stopped" for size in SIZES for path in CONTENDERS
    }
    written = threading.Lock()

    def pipeline(size: int) -> None:
        """Prepares the index of `size` rows, then runs each contender on it, one after the other;
        the report is rewritten after each, so a run stopped early keeps what it measured."""
        child("--prepare", str(size))
        for path in CONTENDERS:
            if path == "today" and size > TODAY_MAX_ROWS:
                found: dict[str, Any] | str = f"not run: above BENCH_COMPACTION_TODAY_MAX={TODAY_MAX_ROWS:,}"
            elif path == "today" and available_bytes() < size * OLD_PATH_MEMORY_BYTES_PER_ROW:
                found = "not run: less memory available than it needs"
            else:
                found = json.loads(child("--contend", path, str(size)))
            with written:
                results[(size, path)] = found
                write_report("compaction", report(results, load_at_start))

    if AT_ONCE:  # each size's pipeline on a thread of its own: their builds share the machine
        with concurrent.futures.ThreadPoolExecutor(len(SIZES)) as pool:
            list(pool.map(pipeline, SIZES))
    else:
        for size in SIZES:
            pipeline(size)


def report(results: dict[tuple[int, str], dict[str, Any] | str], load: tuple[float, float, float]) -> str:
    rows = [
        "| rows | factory | build | wall s (2 threads) | CPU s | est. s at 6 vCPU | peak RSS MB "
        "| RSS before build MB | index on disk MB | peak / index | load (1 min) at its start |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (size, path), found in results.items():
        if isinstance(found, str):
            rows.append(f"| {size:,} | {factory_at(size)} | {path} | {found} | | | | | | | |")
            continue
        rows.append(
            f"| {found['rows']:,} | {factory_at(size)} | {path} | {found['seconds']:.1f} | "
            f"{found['cpu_seconds']:.1f} | "
            f"{found['cpu_seconds'] / INDEXER_VCPUS:.1f} | {found['peak_mb']:,.0f} | "
            f"{found['before_mb']:,.0f} | {found['index_mb']:,.0f} | "
            f"{found['peak_mb'] / found['index_mb']:.2f} | {found['load']:.2f} |"
        )
    ours = {
        s: found for (s, path), found in results.items() if path == "write_base" and isinstance(found, dict)
    }
    targets = [
        f"- write_base's peak RSS / index at {size:,} rows ({factory_at(size)}): "
        f"{found['peak_mb'] / found['index_mb']:.2f} "
        f"(target < {TARGET_RATIO}: {verdict(found['peak_mb'] / found['index_mb'] < TARGET_RATIO)})"
        for size, found in ours.items()
    ]
    if SHARD_ROWS in ours and factory_at(SHARD_ROWS) == FACTORY:
        shard = ours[SHARD_ROWS]["cpu_seconds"] / INDEXER_VCPUS
        targets.append(
            f"- a {SHARD_ROWS:,}-row shard's build at the indexer's {INDEXER_VCPUS} vCPUs (estimated): "
            f"{shard:.0f} s (target <= {TARGET_SHARD_SECONDS:.0f} s: "
            f"{verdict(shard <= TARGET_SHARD_SECONDS)})"
        )
    header = (
        f"# Compaction benchmark\n\n{machine()}; dimension {DIMENSION}, {THREADS} threads. "
        f"Shared machine: load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) "
        "when the run started (other work was running beside it), and per build below"
        + (": the sizes ran at once, each build sharing the cores with the other size's" if AT_ONCE else "")
        + ".\n\n"
    )
    return (
        header + (__doc__ or "") + "\n\n" + "\n".join(rows) + "\n\nTargets:\n\n" + "\n".join(targets) + "\n"
    )


if __name__ == "__main__":
    main()
