//! The search walk over a FAISS `HNSW..,SQ8` graph, re-ranked with exact inner products.
//!
//! FAISS builds, stores and loads the index; this walks the same graph over the same 8-bit codes
//! as `IndexHNSW::search` does, but starts each load before it is needed (a hop's codes, a
//! candidate's offset, the likely next node's neighbour list), so the walk does not wait on one
//! cache miss after another. Pure Rust over byte slices: `hnsw.rs` hands it FAISS's arrays.
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};

/// A row and its similarity to the query; ordered by similarity.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[inline(always)]
fn i32_at(bytes: &[u8], i: usize) -> i32 {
    bytes
        .get(4 * i..4 * i + 4)
        .map_or(-1, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[inline(always)]
pub(super) fn u64_at(bytes: &[u8], i: usize) -> usize {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
    u64::from_le_bytes(word) as usize
}

pub(super) struct Graph<'a> {
    pub(super) dimension: usize,
    /// int32 rows of `hnsw.neighbors`, -1 past a node's last neighbour
    pub(super) neighbors: &'a [u8],
    /// uint64 start of each node's rows in `neighbors`
    pub(super) offsets: &'a [u8],
    /// Where each level's neighbours start within a node's slice of `neighbors` (FAISS's
    /// `cum_nneighbor_per_level`).
    pub(super) level_starts: &'a [usize],
    pub(super) codes: &'a [u8],
    /// float32 rows, little-endian
    pub(super) vectors: &'a [u8],
    pub(super) vmin: &'a [f32],
    pub(super) vdiff: &'a [f32],
    pub(super) entry: u32,
    pub(super) max_level: usize,
    pub(super) scratch: &'a Mutex<Vec<Visited>>,
}

#[inline(always)]
fn prefetch<T>(slice: &[T], start: usize, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // Every cache line the bytes touch: FAISS's arrays sit at any offset of a mapped file, so
        // a 384-byte code can span seven lines, not six.
        let first = slice.as_ptr().wrapping_add(start) as usize;
        let base = (first & !63) as *const i8;
        for line in (0..first % 64 + bytes).step_by(64) {
            // SAFETY: a prefetch is a hint; it never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    base.wrapping_add(line),
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, start, bytes);
}

#[inline(always)]
fn dot_codes(weights: &[f32], codes: &[u8]) -> f32 {
    let mut lanes = [0f32; 16];
    for (w, c) in weights.chunks_exact(16).zip(codes.chunks_exact(16)) {
        for i in 0..16 {
            lanes[i] += w[i] * f32::from(c[i]);
        }
    }
    let tail = weights.len() / 16 * 16;
    let rest: f32 = weights[tail..]
        .iter()
        .zip(&codes[tail..])
        .map(|(w, &c)| w * f32::from(c))
        .sum();
    lanes.iter().sum::<f32>() + rest
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The inner product of `query` with float32 little-endian `bytes`.
#[inline(always)]
fn dot_bytes(query: &[f32], bytes: &[u8]) -> f32 {
    query
        .iter()
        .zip(bytes.chunks_exact(4))
        .map(|(q, b)| q * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .sum()
}

/// How many queries a thread of a batch takes at a time.
const QUERY_BLOCK: usize = 16;

/// What one search asks: the `k` best rows by exact inner product among the `k * refine` best of a
/// walk keeping `ef` candidates (at least `k * refine`).
#[derive(Clone, Copy)]
pub(super) struct Walk {
    pub(super) k: usize,
    pub(super) ef: usize,
    pub(super) refine: usize,
}

/// Where a chunk of queries writes its answers: `k` scores and rows per query.
struct Answers<'a> {
    scores: &'a mut [f32],
    rows: &'a mut [i64],
}

/// One search's scratch: which rows its query has seen (a stamp per row, so no clearing per query).
/// Kept between searches (`HnswSq8Walk::scratch`): a fresh one would fault in a page per row touched.
pub(super) struct Visited {
    stamps: Vec<u8>,
    stamp: u8,
}

impl Visited {
    fn new(rows: usize) -> Self {
        Self {
            stamps: vec![0; rows],
            stamp: 0,
        }
    }

    fn next_query(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamps.fill(0);
            self.stamp = 1;
        }
    }
}

impl Graph<'_> {
    /// A row's similarity from its code (not a closure: inlined, it compiles for AVX2 / AVX-512 there).
    #[inline(always)]
    fn similarity(&self, weights: &[f32], constant: f32, row: u32) -> f32 {
        let d = self.dimension;
        constant + dot_codes(weights, &self.codes[row as usize * d..][..d])
    }

    /// The neighbours of `node` at `level`. A link past the array reads as -1 (the end of a list):
    /// a valid graph never asks for one; a damaged one is cut short, never read out of bounds.
    fn neighbours(&self, node: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        let start = u64_at(self.offsets, node as usize);
        (start + self.level_starts[level]..start + self.level_starts[level + 1])
            .map(|j| i32_at(self.neighbors, j))
            .take_while(|&n| n >= 0)
            .map(|n| n as u32)
    }

    /// Starts loading the level-0 neighbours of `node` (their offset was prefetched when `node`
    /// became a candidate).
    #[inline(always)]
    fn prefetch_neighbours(&self, node: u32) {
        let start = 4 * u64_at(self.offsets, node as usize);
        prefetch(self.neighbors, start, self.level_starts[1] * 4);
    }

    /// What `walk` asks for `query`, best first.
    #[inline(always)]
    fn search(&self, query: &[f32], walk: Walk, visited: &mut Visited, out: &mut Vec<Scored>) {
        let Walk { k, ef, refine } = walk;
        let d = self.dimension;
        // SQ8 decodes a code c of dimension j as vmin[j] + (c + 0.5) / 255 * vdiff[j]: fold that into
        // the query, so a similarity is one dot product of the codes with weights, plus a constant.
        let weights: Vec<f32> = query
            .iter()
            .zip(self.vdiff)
            .map(|(q, v)| q * v / 255.0)
            .collect();
        let constant = dot(query, self.vmin) + 0.5 * weights.iter().sum::<f32>();

        let mut nearest = self.entry;
        let mut best = self.similarity(&weights, constant, nearest);
        for level in (1..=self.max_level).rev() {
            let mut moved = true;
            while moved {
                moved = false;
                for n in self.neighbours(nearest, level) {
                    prefetch(self.codes, n as usize * d, d);
                }
                for n in self.neighbours(nearest, level) {
                    let s = self.similarity(&weights, constant, n);
                    if s > best {
                        (best, nearest, moved) = (s, n, true);
                    }
                }
            }
        }

        let kept = ef.max(k * refine);
        visited.next_query();
        let stamp = visited.stamp;
        visited.stamps[nearest as usize] = stamp;
        let mut candidates = BinaryHeap::with_capacity(kept * 2);
        let mut found: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(kept + 1);
        candidates.push(Scored(best, nearest));
        found.push(Reverse(Scored(best, nearest)));
        let mut worst = best;
        let mut fresh = Vec::with_capacity(self.level_starts[1]);
        while let Some(Scored(s, node)) = candidates.pop() {
            if found.len() >= kept && s < worst {
                break;
            }
            if let Some(&Scored(_, next)) = candidates.peek() {
                self.prefetch_neighbours(next); // the next node, if none of this one's is better
            }
            for n in self.neighbours(node, 0) {
                prefetch(&visited.stamps, n as usize, 1);
            }
            fresh.clear();
            for n in self.neighbours(node, 0) {
                let row = n as usize;
                if visited.stamps[row] != stamp {
                    visited.stamps[row] = stamp;
                    fresh.push(n);
                    prefetch(self.codes, row * d, d);
                }
            }
            for &row in &fresh {
                let s = self.similarity(&weights, constant, row);
                if found.len() < kept || s > worst {
                    prefetch(self.offsets, 8 * row as usize, 8); // see prefetch_neighbours
                    candidates.push(Scored(s, row));
                    found.push(Reverse(Scored(s, row)));
                    if found.len() > kept {
                        found.pop();
                    }
                    worst = found.peek().map_or(s, |r| r.0 .0);
                }
            }
            if let Some(&Scored(_, next)) = candidates.peek() {
                self.prefetch_neighbours(next); // the next node to expand, unless this one found better
            }
        }

        let mut walked: Vec<Scored> = found.into_iter().map(|r| r.0).collect();
        walked.sort_unstable_by(|a, b| b.cmp(a));
        walked.truncate(k * refine);
        for &Scored(_, row) in &walked {
            prefetch(self.vectors, row as usize * d * 4, d * 4);
        }
        out.clear();
        out.extend(walked.iter().map(|&Scored(_, row)| {
            Scored(
                dot_bytes(query, &self.vectors[row as usize * d * 4..][..d * 4]),
                row,
            )
        }));
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.truncate(k);
    }

    /// Every query of `queries` (rows of `dimension`) on `threads` threads: (scores, rows), `k` per
    /// query, -inf and -1 where the index holds fewer rows. Threads take queries a block at a time,
    /// so one slowed down (a busy core) does not hold the others waiting at the end.
    pub(super) fn search_all(
        &self,
        queries: &[f32],
        walk: Walk,
        threads: usize,
    ) -> (Vec<f32>, Vec<i64>) {
        let count = queries.len() / self.dimension;
        let mut scores = vec![f32::NEG_INFINITY; count * walk.k];
        let mut rows = vec![-1i64; count * walk.k];
        let threads = threads.clamp(1, count.div_ceil(QUERY_BLOCK).max(1));
        if threads == 1 {
            let out = Answers {
                scores: &mut scores,
                rows: &mut rows,
            };
            self.search_chunk(queries, walk, out);
            return (scores, rows);
        }
        let blocks = Mutex::new(
            queries
                .chunks(QUERY_BLOCK * self.dimension)
                .zip(scores.chunks_mut(QUERY_BLOCK * walk.k))
                .zip(rows.chunks_mut(QUERY_BLOCK * walk.k)),
        );
        let next_block = || blocks.lock().unwrap_or_else(PoisonError::into_inner).next();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some(((queries, scores), rows)) = next_block() {
                        self.search_chunk(queries, walk, Answers { scores, rows });
                    }
                });
            }
        });
        (scores, rows)
    }

    fn search_chunk(&self, queries: &[f32], walk: Walk, out: Answers<'_>) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512 F and BW (checked just above).
            return unsafe { self.search_chunk_avx512(queries, walk, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { self.search_chunk_avx2(queries, walk, out) };
        }
        self.search_chunk_portable(queries, walk, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn search_chunk_avx2(&self, queries: &[f32], walk: Walk, out: Answers<'_>) {
        self.search_chunk_portable(queries, walk, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn search_chunk_avx512(&self, queries: &[f32], walk: Walk, out: Answers<'_>) {
        self.search_chunk_portable(queries, walk, out);
    }

    /// Inlined into each caller, so the AVX2 and AVX-512 ones compile the walk's dot products for them.
    #[inline(always)]
    fn search_chunk_portable(&self, queries: &[f32], walk: Walk, out: Answers<'_>) {
        let k = walk.k;
        let rows = self.offsets.len() / 8 - 1;
        let mut visited = lock(self.scratch)
            .pop()
            .unwrap_or_else(|| Visited::new(rows));
        let mut best = Vec::with_capacity(k * walk.refine);
        for (i, query) in queries.chunks_exact(self.dimension).enumerate() {
            self.search(query, walk, &mut visited, &mut best);
            for (j, &Scored(score, row)) in best.iter().enumerate() {
                out.scores[i * k + j] = score;
                out.rows[i * k + j] = i64::from(row);
            }
        }
        lock(self.scratch).push(visited);
    }
}

/// The scratch pool: a search that panicked holding it left nothing half-done in it.
fn lock(scratch: &Mutex<Vec<Visited>>) -> std::sync::MutexGuard<'_, Vec<Visited>> {
    scratch.lock().unwrap_or_else(PoisonError::into_inner)
}
