//! `HnswSq8Walk`, the Python face of the search walk (`hnsw/walk.rs`) over a FAISS `HNSW..,SQ8`
//! index: it reads FAISS's own arrays in place through the buffer protocol, nothing copied. A
//! memory-mapped index holds them at any byte offset, so they are read as bytes, unaligned.
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

mod walk;

use walk::{u64_at, Graph, Visited, Walk};

/// The bytes of one read-only C-contiguous array exported by Python (a NumPy view of a FAISS vector).
struct Bytes(PyBuffer<u8>);

impl Bytes {
    fn new(object: &Bound<'_, PyAny>, name: &str, len: Option<usize>) -> PyResult<Self> {
        let buffer = PyBuffer::<u8>::get(object)?;
        if !buffer.is_c_contiguous() || len.is_some_and(|len| buffer.item_count() != len) {
            return Err(PyValueError::new_err(format!(
                "{name}: expected {len:?} contiguous bytes, got {}",
                buffer.item_count()
            )));
        }
        Ok(Self(buffer))
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is held (so its exporter keeps the memory) for as long as `self`, is
        // C-contiguous with `item_count` bytes (checked in `new`), and nothing writes to it.
        unsafe { std::slice::from_raw_parts(self.0.buf_ptr() as *const u8, self.0.item_count()) }
    }
}

/// FAISS `IndexRefine(IndexHNSWSQ(QT_8bit, inner product), IndexFlatIP)` arrays, searched in place.
#[pyclass(frozen)]
struct HnswSq8Walk {
    /// What keeps the arrays' memory alive: the FAISS index they belong to.
    _owner: Py<PyAny>,
    dimension: usize,
    rows: usize,
    neighbors: Bytes,
    offsets: Bytes,
    level_starts: Vec<usize>,
    codes: Bytes,
    vectors: Bytes,
    trained: Vec<f32>,
    entry: u32,
    max_level: usize,
    /// One `Visited` per search running at once, reused.
    scratch: Mutex<Vec<Visited>>,
}

#[pymethods]
impl HnswSq8Walk {
    /// Byte views of `owner`'s `hnsw.neighbors`, `hnsw.offsets`, SQ8 `codes` and flat `vectors` (owner
    /// keeps their memory: it is held as long as this object); `level_starts` is
    /// `hnsw.cum_nneighbor_per_level` and `trained` the quantizer's `vmin` then `vdiff`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        owner: Py<PyAny>,
        dimension: usize,
        rows: usize,
        neighbors: &Bound<'_, PyAny>,
        offsets: &Bound<'_, PyAny>,
        level_starts: Vec<usize>,
        codes: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
        trained: Vec<f32>,
        entry: u32,
        max_level: usize,
    ) -> PyResult<Self> {
        let neighbors = Bytes::new(neighbors, "neighbors", None)?;
        let offsets = Bytes::new(offsets, "offsets", Some(8 * (rows + 1)))?;
        let (links, starts) = (neighbors.as_slice(), offsets.as_slice());
        let link_count = links.len() / 4;
        // Every node's span holds its level-0 links, spans tile the array, every link is a row or
        // -1: so a walk never reads outside the arrays, however the file was damaged.
        let well_formed = rows > 0
            && (entry as usize) < rows
            && trained.len() == 2 * dimension
            && level_starts.len() >= max_level + 2
            && u64_at(starts, rows) == link_count
            && (0..rows)
                .all(|node| u64_at(starts, node) + level_starts[1] <= u64_at(starts, node + 1))
            && links.chunks_exact(4).fold(true, |ok, b| {
                let link = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                ok & (link >= -1) & (i64::from(link) < rows as i64)
            });
        if !well_formed {
            return Err(PyValueError::new_err(
                "not the arrays of one HNSW SQ8 index",
            ));
        }
        Ok(Self {
            _owner: owner,
            dimension,
            rows,
            neighbors,
            offsets,
            level_starts,
            codes: Bytes::new(codes, "codes", Some(rows * dimension))?,
            vectors: Bytes::new(vectors, "vectors", Some(4 * rows * dimension))?,
            trained,
            entry,
            max_level,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// The `k` best rows of each query (float32 rows of `dimension`, as bytes) by exact inner
    /// product among the `k * refine` best of a walk keeping `ef` candidates; answers (scores as
    /// float32 bytes, rows as int64 bytes), `k` per query, -inf and -1 past the index's rows.
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyBytes>,
        k: usize,
        ef: usize,
        refine: usize,
        threads: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let raw = queries.as_bytes();
        if k == 0 || refine == 0 || raw.len() % (4 * self.dimension) != 0 {
            return Err(PyValueError::new_err(
                "queries must be float32 rows of the index's dimension",
            ));
        }
        let queries: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let graph = Graph {
            dimension: self.dimension,
            neighbors: self.neighbors.as_slice(),
            offsets: self.offsets.as_slice(),
            level_starts: &self.level_starts,
            codes: self.codes.as_slice(),
            vectors: self.vectors.as_slice(),
            vmin: &self.trained[..self.dimension],
            vdiff: &self.trained[self.dimension..],
            entry: self.entry,
            max_level: self.max_level,
            scratch: &self.scratch,
        };
        let k_found = k.min(self.rows);
        let walk = Walk {
            k: k_found,
            ef,
            refine,
        };
        let (scores, rows) = py.detach(|| graph.search_all(&queries, walk, threads));
        let count = queries.len() / self.dimension;
        let mut score_bytes = Vec::with_capacity(count * k * 4);
        let mut row_bytes = Vec::with_capacity(count * k * 8);
        for i in 0..count {
            for j in 0..k {
                let (score, row) = if j < k_found {
                    (scores[i * k_found + j], rows[i * k_found + j])
                } else {
                    (f32::NEG_INFINITY, -1)
                };
                score_bytes.extend_from_slice(&score.to_le_bytes());
                row_bytes.extend_from_slice(&row.to_le_bytes());
            }
        }
        Ok((PyBytes::new(py, &score_bytes), PyBytes::new(py, &row_bytes)))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HnswSq8Walk>()
}
