"""`Segment`: one immutable part of an index, on disk as a directory of files.

vectors.faiss   the rows as a FAISS flat index (exact search, compaction), memory-mapped
index.faiss     base segments only: the index built from the factory string, memory-mapped; for a
                factory ending in `,RFlat` without that suffix (see `stored_factory`)
items.json      external ids, tombstones, metadata column names and vocabularies
metadata.jsonl  one JSON object per row, with metadata.offsets.npy to read a row without parsing all
num-<i>.npy / tok-<i>.npy   columnar metadata for the filter (float64, NaN = absent; uint32 codes)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import orjson

from aiinfra._native import HnswSq8Walk, MetadataColumns
from aiinfra.vectors.filter import is_number, token
from aiinfra.vectors.manifest import Metric, SegmentRef

ABSENT_CODE = np.uint32(0xFFFFFFFF)
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
REFINE_FLAT = ",RFlat"


def stored_factory(factory: str) -> str:
    """The factory of what index.faiss holds. FAISS's `,RFlat` suffix re-ranks the candidates of a
    compressed index (`HNSW32,SQ8`, `IVF…,PQ…`) with exact distances from a second, full copy of every
    vector; vectors.faiss already is that copy, so the suffix is left out of the stored index and
    `read_segment` puts the re-ranking back over vectors.faiss (one copy of the vectors, not two)."""
    return factory.removesuffix(REFINE_FLAT)


READ_AHEAD_CHUNK = 16 << 20


@contextlib.contextmanager
def _reading_ahead(path: Path) -> Iterator[None]:
    """Reads `path` from start to end on a thread while the body runs, and stops with it. FAISS
    copies an HNSW graph out of its memory mapping page by page, which from a cold page cache is
    far slower than the disk's sequential read running just ahead of it (docs/search.md)."""
    done = threading.Event()

    def read() -> None:
        with contextlib.suppress(OSError), open(path, "rb", buffering=0) as file:
            chunk = bytearray(READ_AHEAD_CHUNK)
            while not done.is_set() and file.readinto(chunk):
                pass

    reader = threading.Thread(target=read, name="segment-read-ahead", daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join()


class CorruptSegment(Exception):
    """A segment's files are truncated or unreadable."""


def faiss_metric(metric: Metric) -> int:
    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


def flat_index(dimension: int, metric: Metric) -> faiss.Index:
    return faiss.IndexFlatL2(dimension) if metric == "l2" else faiss.IndexFlatIP(dimension)


def write_segment(
    directory: Path,
    segment_id: str,
    *,
    dimension: int,
    metric: Metric,
    ids: list[str],
    vectors: np.ndarray,
    metadata: list[dict[str, Any]],
    kind: Literal["base", "delta"],
    tombstones: Sequence[str] = (),
    index: faiss.Index | None = None,
    refine: bool = False,
) -> SegmentRef:
    """Write a segment's files into `directory`; `vectors` already normalised for cosine. `refine`:
    `index` was built from `stored_factory` of a `,RFlat` factory, re-ranked against vectors.faiss."""
    flat = flat_index(dimension, metric)
    if len(ids):
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(flat, str(directory / "vectors.faiss"))
    if index is not None:
        faiss.write_index(index, str(directory / "index.faiss"))
    rows = [orjson.dumps(m) for m in metadata]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    (directory / "metadata.jsonl").write_bytes(b"".join(rows))
    np.save(directory / "metadata.offsets.npy", offsets)
    numeric, vocabularies = _write_columns(directory, metadata)
    items = {
        "ids": ids,
        "tombstones": list(tombstones),
        "numeric": numeric,
        "tokens": vocabularies,
        "refine": refine,
    }
    (directory / "items.json").write_bytes(orjson.dumps(items))
    return SegmentRef(
        id=segment_id,
        kind=kind,
        rows=len(ids),
        tombstones=len(tombstones),
        files={p.name: p.stat().st_size for p in sorted(directory.iterdir())},
    )


def _write_columns(directory: Path, metadata: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    n = len(metadata)
    keys = sorted({key for row in metadata for key in row})
    numeric: list[str] = []
    vocabularies: dict[str, list[str]] = {}
    for key in keys:
        values = [row.get(key, _MISSING) for row in metadata]
        if any(is_number(v) for v in values):
            column = np.array([float(v) if is_number(v) else np.nan for v in values], dtype="<f8")
            np.save(directory / f"num-{len(numeric)}.npy", column)
            numeric.append(key)
        present = [token(v) for v in values if v is not _MISSING and not is_number(v)]
        if present:
            vocabulary = sorted(set(present))
            code_of = {t: i for i, t in enumerate(vocabulary)}
            codes = np.full(n, ABSENT_CODE, dtype="<u4")
            for row, v in enumerate(values):
                if v is not _MISSING and not is_number(v):
                    codes[row] = code_of[token(v)]
            np.save(directory / f"tok-{len(vocabularies)}.npy", codes)
            vocabularies[key] = vocabulary
    return numeric, vocabularies


_MISSING = object()


@dataclass
class Segment:
    """A loaded segment: FAISS indexes memory-mapped, ids and columns in memory."""

    ref: SegmentRef
    ids: np.ndarray  # external ids (object array), so a result's rows map to ids in one step
    tombstones: list[str]
    flat: faiss.Index
    index: faiss.Index | None
    columns: MetadataColumns
    metadata_blob: np.ndarray
    metadata_offsets: np.ndarray
    walk: HnswSq8Walk | None = None  # see hnsw_sq8_walk

    def __post_init__(self) -> None:
        self._rows: dict[str, int] | None = None
        self._lock = threading.Lock()

    def row_of(self, item_id: str) -> int | None:
        if self._rows is None:
            with self._lock:
                if self._rows is None:  # built on first need only: a compacted index never pays for it
                    self._rows = {item_id: row for row, item_id in enumerate(self.ids)}
        return self._rows.get(item_id)

    def metadata_bytes(self, row: int) -> int:
        """How long the row's metadata is as stored JSON, read without parsing it."""
        return int(self.metadata_offsets[row + 1] - self.metadata_offsets[row])

    def metadata(self, row: int) -> dict[str, Any]:
        start, end = int(self.metadata_offsets[row]), int(self.metadata_offsets[row + 1])
        value: dict[str, Any] = orjson.loads(self.metadata_blob[start:end].tobytes())
        return value

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, self.flat.d), dtype=np.float32)
        found: np.ndarray = self.flat.reconstruct_batch(rows.astype(np.int64))
        return found


def hnsw_sq8_walk(index: faiss.Index | None) -> HnswSq8Walk | None:
    """Our walk of `index` when it is an inner-product `HNSW..,SQ8,RFlat` (HNSW over 8-bit codes,
    re-ranked over vectors.faiss), reading FAISS's arrays in place; None for any other index.

    It walks the same graph over the same codes as FAISS and re-ranks the same way, so it answers
    what FAISS would (when `ef` >= k x refine; below that it keeps k x refine candidates where FAISS
    keeps `ef`, and finds more). It prefetches each hop's codes and the next candidate's
    neighbours, which FAISS does not, and so waits far less on memory (docs/search.md)."""
    if not isinstance(index, faiss.IndexRefine):
        return None
    base, flat = faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
    if not (
        isinstance(base, faiss.IndexHNSWSQ)
        and isinstance(flat, faiss.IndexFlat)
        and base.metric_type == flat.metric_type == faiss.METRIC_INNER_PRODUCT
        and base.ntotal > 0
    ):
        return None
    # faiss's stubs leave out these fields
    quantizer: Any = faiss.downcast_index(base.storage)
    if quantizer.sq.qtype != faiss.ScalarQuantizer.QT_8bit:
        return None
    hnsw: Any = base.hnsw
    vectors: Any = flat.codes

    def view(vector: Any) -> np.ndarray:  # bytes, no copy: the walk holds `index`, which holds them
        array: np.ndarray = faiss.rev_swig_ptr(vector.data(), vector.size())
        return array.view(np.uint8)

    return HnswSq8Walk(
        index,
        base.d,
        base.ntotal,
        view(hnsw.neighbors),
        view(hnsw.offsets),
        faiss.vector_to_array(hnsw.cum_nneighbor_per_level).tolist(),
        view(quantizer.codes),
        view(vectors),
        faiss.vector_to_array(quantizer.sq.trained).tolist(),
        hnsw.entry_point,
        hnsw.max_level,
    )


def read_segment(directory: Path, ref: SegmentRef, dimension: int) -> Segment:
    """Load a segment, refusing it (CorruptSegment) when a file is missing, truncated or unreadable."""
    for name, size in ref.files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            raise CorruptSegment(f"segment {ref.id}: {name} is missing or not {size} bytes")
    try:
        items = orjson.loads((directory / "items.json").read_bytes())
        flat = faiss.read_index(str(directory / "vectors.faiss"), MMAP_FLAGS)
        index = None
        if (directory / "index.faiss").is_file():
            with _reading_ahead(directory / "index.faiss"):
                index = faiss.read_index(str(directory / "index.faiss"), MMAP_FLAGS)
        n = len(items["ids"])
        if flat.ntotal != n or flat.d != dimension or (index is not None and index.ntotal != n):
            raise CorruptSegment(f"segment {ref.id}: row counts or dimension disagree with its ids")
        if index is not None and items.get("refine"):
            index = faiss.IndexRefine(index, flat)  # holds both: see stored_factory
        walk = hnsw_sq8_walk(index)
        numeric = [
            (key, np.load(directory / f"num-{i}.npy").astype("<f8").tobytes())
            for i, key in enumerate(items["numeric"])
        ]
        tokens = [
            (key, list(vocabulary), np.load(directory / f"tok-{i}.npy").astype("<u4").tobytes())
            for i, (key, vocabulary) in enumerate(items["tokens"].items())
        ]
        columns = MetadataColumns(n, numeric, tokens)
        blob = (
            np.memmap(directory / "metadata.jsonl", dtype=np.uint8, mode="r")
            if ref.files.get("metadata.jsonl")
            else np.zeros(0, dtype=np.uint8)
        )
        offsets = np.load(directory / "metadata.offsets.npy", mmap_mode="r")
    except CorruptSegment:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise CorruptSegment(f"segment {ref.id}: unreadable ({exc})") from exc
    ids = np.empty(n, dtype=object)
    ids[:] = items["ids"]
    return Segment(ref, ids, items["tombstones"], flat, index, columns, blob, offsets, walk)
