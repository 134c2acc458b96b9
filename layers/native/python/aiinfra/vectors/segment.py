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
import struct
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
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
    write_flat_vectors(
        directory / "vectors.faiss", dimension, metric, len(ids), [vectors] if len(ids) else []
    )
    if index is not None:
        faiss.write_index(index, str(directory / "index.faiss"))
    rows = MetadataWriter(directory, len(metadata))
    for value in metadata:
        rows.append(orjson.dumps(value))
    numeric, vocabularies = rows.close()
    write_items(directory, [ids], tombstones, numeric, vocabularies, refine)
    return segment_ref(directory, segment_id, kind, len(ids), len(tombstones))


def write_flat_vectors(
    path: Path, dimension: int, metric: Metric, rows: int, chunks: Iterable[np.ndarray]
) -> None:
    """vectors.faiss as FAISS writes a flat index (its header, then the raw float32 rows), written
    chunk by chunk as `chunks` yields them, so no second copy of the rows is ever made."""
    header = faiss.serialize_index(flat_index(dimension, metric)).tobytes()
    # FAISS's layout: ntotal (int64) at byte 8; the header ends with the row data's float count.
    fixed, empty = header[:-8], header[-8:]
    if header[8:16] != bytes(8) or empty != bytes(8):
        raise RuntimeError("unexpected FAISS flat index layout")
    written = 0
    with open(path, "wb") as file:
        file.write(fixed[:8] + struct.pack("<q", rows) + fixed[16:] + struct.pack("<Q", rows * dimension))
        for chunk in chunks:
            if chunk.ndim != 2 or chunk.shape[1] != dimension:
                raise ValueError(f"vectors of shape {chunk.shape}, expected rows of {dimension}")
            file.write(np.ascontiguousarray(chunk, dtype="<f4").data)
            written += len(chunk)
    if written != rows:
        raise ValueError(f"{written} vectors written, {rows} announced")


class MetadataWriter:
    """metadata.jsonl and metadata.offsets.npy, appended row by row from each row's stored JSON,
    and the filter columns (num-<i>.npy, tok-<i>.npy), collected sparsely as (row, value) arrays so
    that memory follows the metadata's size, never a dict per row."""

    def __init__(self, directory: Path, rows: int) -> None:
        self.directory = directory
        self.rows = rows
        self.offsets = np.zeros(rows + 1, dtype=np.int64)
        self.count = 0
        self.file = open(directory / "metadata.jsonl", "wb")  # noqa: SIM115  # closed by close()
        self.numbers: dict[str, tuple[array[int], array[float]]] = {}
        self.tokens: dict[str, tuple[array[int], array[int], dict[str, int]]] = {}

    def append(self, raw: bytes) -> None:
        """One row's metadata as stored: a JSON object."""
        row = self.count
        self.file.write(raw)
        self.offsets[row + 1] = self.offsets[row] + len(raw)
        self.count += 1
        if raw == b"{}":
            return
        value: dict[str, Any] = orjson.loads(raw)
        for key, item in value.items():
            if is_number(item):
                rows, numbers = self.numbers.setdefault(key, (array("I"), array("d")))
                rows.append(row)
                numbers.append(float(item))
            else:
                rows, codes, vocabulary = self.tokens.setdefault(key, (array("I"), array("I"), {}))
                rows.append(row)
                codes.append(vocabulary.setdefault(token(item), len(vocabulary)))

    def close(self) -> tuple[list[str], dict[str, list[str]]]:
        """Writes the offsets and columns; the numeric keys and each token key's vocabulary, both
        numbered in key order as the column files are."""
        self.file.close()
        if self.count != self.rows:
            raise ValueError(f"{self.count} metadata rows written, {self.rows} announced")
        np.save(self.directory / "metadata.offsets.npy", self.offsets)
        numeric: list[str] = []
        for key in sorted(self.numbers):
            rows, numbers = self.numbers.pop(key)
            column = np.full(self.rows, np.nan, dtype="<f8")
            column[np.frombuffer(rows, dtype=np.uint32)] = np.frombuffer(numbers, dtype=np.float64)
            np.save(self.directory / f"num-{len(numeric)}.npy", column)
            numeric.append(key)
        vocabularies: dict[str, list[str]] = {}
        for key in sorted(self.tokens):
            rows, codes, seen = self.tokens.pop(key)
            vocabulary = sorted(seen)
            code_of = np.empty(len(seen), dtype="<u4")  # first-seen code -> position in the sorted vocabulary
            code_of[[seen[t] for t in vocabulary]] = np.arange(len(vocabulary), dtype="<u4")
            column = np.full(self.rows, ABSENT_CODE, dtype="<u4")
            column[np.frombuffer(rows, dtype=np.uint32)] = code_of[np.frombuffer(codes, dtype=np.uint32)]
            np.save(self.directory / f"tok-{len(vocabularies)}.npy", column)
            vocabularies[key] = vocabulary
        return numeric, vocabularies


def write_items(
    directory: Path,
    ids: Iterable[list[str]],
    tombstones: Sequence[str],
    numeric: list[str],
    vocabularies: dict[str, list[str]],
    refine: bool,
) -> None:
    """items.json, its ids written chunk by chunk as `ids` yields them."""
    rest = {"tombstones": list(tombstones), "numeric": numeric, "tokens": vocabularies, "refine": refine}
    with open(directory / "items.json", "wb") as file:
        file.write(b'{"ids":[')
        separator = b""
        for chunk in ids:
            if chunk:
                file.write(separator + orjson.dumps(chunk)[1:-1])
                separator = b","
        file.write(b"]," + orjson.dumps(rest)[1:])


def segment_ref(
    directory: Path, segment_id: str, kind: Literal["base", "delta"], rows: int, tombstones: int
) -> SegmentRef:
    """The manifest's entry for the segment written in `directory` (every file there, with its size)."""
    return SegmentRef(
        id=segment_id,
        kind=kind,
        rows=rows,
        tombstones=tombstones,
        files={p.name: p.stat().st_size for p in sorted(directory.iterdir())},
    )


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
