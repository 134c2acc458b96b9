"""The FAISS factory strings an index may be built from: a short allowlist with bounds.

FAISS allocates per list, per level or per code up front, and builds whatever string it is handed:
an unbounded factory lets one caller exhaust a function's memory or its build time. So a factory
must be one of these shapes, with its numbers in range; anything else is refused naming them.
"""

from __future__ import annotations

import re

import faiss

from aiinfra.vectors.errors import InvalidIndexInput
from aiinfra.vectors.manifest import Metric
from aiinfra.vectors.segment import faiss_metric

MAX_HNSW_M = 64
# FAISS builds HNSW graphs with efConstruction 40 (hnswlib: 200). A better graph reaches the same
# recall with a smaller efSearch, so queries are faster (docs/search.md).
HNSW_EF_CONSTRUCTION = 200
MAX_IVF_LISTS = 65536
ALLOWED_SHAPES = (
    "Flat; HNSW<M>, HNSW<M>,Flat, HNSW<M>,SQ8 or HNSW<M>,SQfp16 (4 <= M <= 64); "
    "IVF<lists>,Flat, IVF<lists>,SQ8 or IVF<lists>,PQ<m>[x<bits>][fs] (1 <= lists <= 65536, "
    "m divides the dimension, 4 <= bits <= 8); a compressed shape (SQ8, SQfp16, PQ) may end in ,RFlat"
)
_SHAPE = re.compile(
    r"^(?:(?P<flat>Flat)"
    r"|HNSW(?P<m>\d+)(?:,(?P<hnsw_codes>Flat|SQ8|SQfp16))?"
    r"|IVF(?P<lists>\d+),(?P<ivf_codes>Flat|SQ8|PQ(?P<pq>\d+)(?:x(?P<bits>\d+))?(?:fs)?))"
    r"(?P<refine>,RFlat)?$"
)


def _refuse(factory: str, why: str) -> InvalidIndexInput:
    return InvalidIndexInput(f"factory {factory!r}: {why}; allowed: {ALLOWED_SHAPES}", param="factory")


def check_factory(dimension: int, factory: str) -> None:
    """InvalidIndexInput naming the allowed shapes unless `factory` is one of them, in bounds."""
    shape = _SHAPE.match(factory)
    if shape is None:
        raise _refuse(factory, "not an allowed shape")
    if shape["m"] is not None and not 4 <= int(shape["m"]) <= MAX_HNSW_M:
        raise _refuse(factory, f"HNSW's M must be 4 to {MAX_HNSW_M}")
    if shape["lists"] is not None and not 1 <= int(shape["lists"]) <= MAX_IVF_LISTS:
        raise _refuse(factory, f"IVF's lists must be 1 to {MAX_IVF_LISTS}")
    if shape["pq"] is not None:
        m = int(shape["pq"])
        if not 1 <= m <= dimension or dimension % m:
            raise _refuse(factory, f"PQ's m must divide the dimension {dimension}")
        if shape["bits"] is not None and not 4 <= int(shape["bits"]) <= 8:
            raise _refuse(factory, "PQ's bits must be 4 to 8")
    codes = shape["hnsw_codes"] or shape["ivf_codes"] or "Flat"
    if shape["refine"] and (shape["flat"] or codes == "Flat"):
        raise _refuse(factory, ",RFlat re-ranks a compressed index, and this one stores every vector whole")


def factory_index(dimension: int, metric: Metric, factory: str) -> faiss.Index:
    """The empty index an allowed factory string describes; InvalidIndexInput when FAISS refuses it."""
    check_factory(dimension, factory)
    try:
        return faiss.index_factory(dimension, factory, faiss_metric(metric))
    except RuntimeError as exc:
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", str(exc).strip().splitlines()[0])
        raise _refuse(factory, f"FAISS refuses it ({reason})") from None
