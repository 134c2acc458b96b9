"""`write_base`: a compaction's new base segment, built in bounded memory.

The live rows are streamed from the source segments' memory-mapped vectors.faiss in chunks: each
chunk is appended to the new vectors.faiss and added to the factory's index, so the only full
structure in memory is the FAISS index itself. Metadata is copied as stored, row by row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from aiinfra.observability import logger
from aiinfra.vectors.factory import HNSW_EF_CONSTRUCTION, factory_index
from aiinfra.vectors.manifest import IndexManifest, SegmentRef
from aiinfra.vectors.reader import IndexSnapshot
from aiinfra.vectors.segment import (
    MetadataWriter,
    Segment,
    segment_ref,
    stored_factory,
    write_flat_vectors,
    write_items,
)

CHUNK_ROWS = 1 << 16
# Training rows at most: as many as FAISS itself keeps to train 1,024 IVF lists (256 per list).
TRAIN_SAMPLE_ROWS = 256 * 1024
TRAIN_ROWS_PER_LIST = 256
SAMPLE_SEED = 0


def write_base(snapshot: IndexSnapshot, directory: Path, segment_id: str) -> SegmentRef:
    """Writes into `directory` the base segment that folds every live row of `snapshot`, and returns
    its manifest entry (kind "base", no tombstones). Nothing is written outside `directory`.

    Needs: `directory` exists and is empty (every file in it is listed in the entry); the snapshot's
    segments stay loaded, their files in place, until this returns (their vectors are read from
    the memory mappings); FAISS's OpenMP threads are the caller's to set.

    Guarantees: the files `read_segment` loads, in the same formats, rows, ids, metadata and column
    files as today's compaction (`write_segment(kind="base")` over the live rows): rows in the
    snapshot's segment order, each segment's live rows (not shadowed by a newer segment) in row
    order; the stored metadata JSON copied byte for byte. index.faiss is built from the manifest's
    factory (`stored_factory`, so `,RFlat` re-ranks over vectors.faiss) unless the factory is Flat
    or no row is live; when its training fails (too few rows, e.g. IVF with fewer rows than lists)
    there is no index.faiss, a warning "index left untrained" is logged and the base is searched
    exactly. Training uses every live row up to TRAIN_SAMPLE_ROWS (or 256 per IVF list, as FAISS
    keeps), else a fixed-seed uniform sample of that many. HNSW graphs are built with at least
    `factory.HNSW_EF_CONSTRUCTION`. Vectors are copied as stored (already normalised for cosine).

    Memory: the FAISS index being built, one chunk of CHUNK_ROWS vectors, the training sample (freed
    before the rows are added), the ids, the metadata columns as (row, value) arrays; plus the
    source files' mapped pages, which the kernel can reclaim.

    Raises `InvalidIndexInput` (aiinfra.vectors.errors) when `factory.factory_index` refuses the
    factory string, as today's path does: only when at least one row is live and the factory is not
    Flat. Any exception leaves partial files in `directory`, and nothing anywhere else.
    """
    manifest = snapshot.manifest
    sources = [(view.segment, _live_rows(view.segment, view.live)) for view in snapshot.views]
    sources = [(segment, rows) for segment, rows in sources if len(rows)]
    total = sum(len(rows) for _, rows in sources)
    refine = _write_vectors(manifest, sources, total, directory)
    metadata = MetadataWriter(directory, total)
    for segment, rows in sources:
        starts, ends = segment.metadata_offsets[rows].tolist(), segment.metadata_offsets[rows + 1].tolist()
        blob = segment.metadata_blob.data
        for start, end in zip(starts, ends, strict=True):
            metadata.append(bytes(blob[start:end]))
    numeric, vocabularies = metadata.close()
    ids = (segment.ids[rows[s : s + CHUNK_ROWS]].tolist() for segment, rows in sources for s in _starts(rows))
    write_items(directory, ids, (), numeric, vocabularies, refine)
    return segment_ref(directory, segment_id, "base", total, 0)


Source = tuple[Segment, np.ndarray]


def _live_rows(segment: Segment, live: np.ndarray | None) -> np.ndarray:
    if live is None:
        return np.arange(segment.ref.rows)
    return np.flatnonzero(np.unpackbits(live, bitorder="little")[: segment.ref.rows])


def _starts(rows: np.ndarray) -> range:
    return range(0, len(rows), CHUNK_ROWS)


def _mapped_vectors(segment: Segment) -> np.ndarray:
    """The segment's rows as an array over vectors.faiss's memory mapping (nothing copied)."""
    flat = segment.flat
    codes = flat.codes  # type: ignore[attr-defined]  # missing from faiss's stubs
    if flat.ntotal == 0:
        return np.zeros((0, flat.d), dtype=np.float32)
    raw: np.ndarray = faiss.rev_swig_ptr(codes.data(), codes.size())
    return raw.view(np.float32).reshape(flat.ntotal, flat.d)


def _gather(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """vectors[rows] for ascending rows: a view of the mapping when they are consecutive."""
    if int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return vectors[int(rows[0]) : int(rows[-1]) + 1]
    gathered: np.ndarray = vectors[rows]
    return gathered


def _chunks(sources: list[Source]) -> Iterator[np.ndarray]:
    for segment, rows in sources:
        vectors = _mapped_vectors(segment)
        for start in _starts(rows):
            yield _gather(vectors, rows[start : start + CHUNK_ROWS])


def _write_vectors(manifest: IndexManifest, sources: list[Source], total: int, directory: Path) -> bool:
    """Writes vectors.faiss and, when the factory builds one, index.faiss; whether it is re-ranked."""
    index = _trained_index(manifest, sources, total)

    def added(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            if index is not None:
                index.add(chunk)
            yield chunk

    write_flat_vectors(
        directory / "vectors.faiss", manifest.dimension, manifest.metric, total, added(_chunks(sources))
    )
    if index is None:
        return False
    faiss.write_index(index, str(directory / "index.faiss"))
    return stored_factory(manifest.factory) != manifest.factory


def _trained_index(manifest: IndexManifest, sources: list[Source], total: int) -> faiss.Index | None:
    """The empty factory index, trained; None for Flat, no rows, or too few rows to train."""
    if manifest.factory == "Flat" or total == 0:
        return None  # vectors.faiss already is the flat index
    index = factory_index(manifest.dimension, manifest.metric, stored_factory(manifest.factory))
    if isinstance(index, faiss.IndexHNSW):
        # A better graph than FAISS's efConstruction 40 reaches the same recall with a smaller efSearch.
        index.hnsw.efConstruction = max(index.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        limit = max(TRAIN_SAMPLE_ROWS, TRAIN_ROWS_PER_LIST * ivf.nlist if ivf is not None else 0)
        try:
            index.train(_sample(sources, total, limit, manifest.dimension))
        except RuntimeError as exc:
            logger().warning("index left untrained", extra={"index": manifest.name, "problem": str(exc)})
            return None
    return index


def _sample(sources: list[Source], total: int, limit: int, dimension: int) -> np.ndarray:
    """Every live row when there are at most `limit`, else `limit` of them drawn uniformly (fixed
    seed), in row order."""
    picks = np.arange(total)
    if total > limit:
        picks = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, size=limit, replace=False))
    sample = np.empty((len(picks), dimension), dtype=np.float32)
    first, filled = 0, 0
    for segment, rows in sources:
        mine = picks[(picks >= first) & (picks < first + len(rows))] - first
        np.take(_mapped_vectors(segment), rows[mine], axis=0, out=sample[filled : filled + len(mine)])
        first, filled = first + len(rows), filled + len(mine)
    return sample
