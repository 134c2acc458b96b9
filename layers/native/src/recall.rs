//! Recall's scoring: an agent's sealed recall vectors opened and scored against a query in one
//! native call, the GIL released, so no decrypted vector ever becomes a Python object.
//!
//! A recall vector's plaintext (written by `aiinfra.memory.recall`): `factor f32 LE | int8 x d`,
//! where `factor * q` is the unit vector the model gave, so `factor * (query . q)` is the cosine.
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::envelope::{EnvelopeCodec, EnvelopeError, IntegrityError};

const FACTOR_LEN: usize = 4;
const LANES: usize = 8;

/// One live candidate: its name, cosine score, version and expiry.
pub type Candidate = (String, f32, u64, u64);

/// The cosine of a unit `query` with a recall vector's plaintext; None when the plaintext is not a
/// vector of the query's dimension (one a model of another dimension wrote).
fn score(query: &[f32], plaintext: &[u8]) -> Option<f32> {
    if plaintext.len() != FACTOR_LEN + query.len() {
        return None;
    }
    let factor = f32::from_le_bytes(plaintext[..FACTOR_LEN].try_into().expect("length checked"));
    // Eight running sums, not one: float addition is not associative, so a single sum keeps the
    // compiler from spreading the products over SIMD lanes.
    let mut lanes = [0f32; LANES];
    let stored = plaintext[FACTOR_LEN..].chunks_exact(LANES);
    let wanted = query.chunks_exact(LANES);
    let (rest_q, rest_x) = (stored.remainder(), wanted.remainder());
    for (q, x) in stored.zip(wanted) {
        for lane in 0..LANES {
            lanes[lane] += f32::from(q[lane] as i8) * x[lane];
        }
    }
    let tail: f32 = rest_q
        .iter()
        .zip(rest_x)
        .map(|(&q, &x)| f32::from(q as i8) * x)
        .sum();
    Some(factor * (lanes.iter().sum::<f32>() + tail))
}

/// What a recall asks of the agent's vectors.
struct Ask<'a> {
    query: &'a [f32],
    now_ms: u64,
    limit: usize,
    min_score: f32,
}

/// A live vector's score: its position among the entries, its score, version and expiry.
struct Scored {
    at: usize,
    score: f32,
    version: u64,
    expires_at_ms: u64,
}

/// The live entries among `entries` (name, blob pairs) scored against the ask's query, best first
/// (ties by position), at most `limit`, none under `min_score`. Any blob that fails authentication fails the whole call, naming its Redis key.
fn best(
    codec: &EnvelopeCodec,
    prefix: &[u8],
    entries: &[(&[u8], &[u8])],
    ask: &Ask<'_>,
) -> Result<Vec<Scored>, (Vec<u8>, EnvelopeError)> {
    let mut scored = Vec::with_capacity(entries.len());
    let mut redis_key = Vec::with_capacity(prefix.len() + 128);
    for (at, (name, blob)) in entries.iter().enumerate() {
        redis_key.clear();
        redis_key.extend_from_slice(prefix);
        redis_key.extend_from_slice(name);
        let opened = codec
            .open(&redis_key, blob)
            .map_err(|error| (redis_key.clone(), error))?;
        if opened.expires_at_ms <= ask.now_ms {
            continue;
        }
        let Some(score) = score(ask.query, &opened.plaintext) else {
            continue;
        };
        if score >= ask.min_score {
            let (version, expires_at_ms) = (opened.version, opened.expires_at_ms);
            scored.push(Scored {
                at,
                score,
                version,
                expires_at_ms,
            });
        }
    }
    let by_score = |a: &Scored, b: &Scored| b.score.total_cmp(&a.score).then(a.at.cmp(&b.at));
    if scored.len() > ask.limit && ask.limit > 0 {
        scored.select_nth_unstable_by(ask.limit - 1, by_score);
    }
    scored.truncate(ask.limit);
    scored.sort_unstable_by(by_score);
    Ok(scored)
}

/// Milliseconds since the Unix epoch, as expiries are written.
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[pymethods]
impl EnvelopeCodec {
    /// Opens the recall vectors in `entries` (HGETALL's flat answer: name, blob, name, blob, ...),
    /// each sealed under `<prefix><name>`, and answers the best `limit` that are live now against
    /// `query` (a unit vector, float32 little-endian), none scoring under `min_score`:
    /// `(name, score, version, expires_at_ms)` best first (ties by position). A vector of another
    /// dimension is not scored.
    #[pyo3(signature = (prefix, entries, query, limit, min_score=None))]
    fn recall_best<'py>(
        &self,
        py: Python<'py>,
        prefix: &[u8],
        entries: Vec<Bound<'py, PyBytes>>,
        query: &[u8],
        limit: usize,
        min_score: Option<f32>,
    ) -> PyResult<Vec<Candidate>> {
        if !entries.len().is_multiple_of(2) {
            return Err(PyValueError::new_err("entries must be name, blob pairs"));
        }
        if query.is_empty() || !query.len().is_multiple_of(4) {
            return Err(PyValueError::new_err("query must be float32 values"));
        }
        let query: Vec<f32> = query
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("chunk of 4")))
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = entries
            .chunks_exact(2)
            .map(|pair| (pair[0].as_bytes(), pair[1].as_bytes()))
            .collect();
        let ask = Ask {
            query: &query,
            now_ms: now_ms(),
            limit,
            min_score: min_score.unwrap_or(f32::NEG_INFINITY),
        };
        let found = py.detach(|| best(self, prefix, &pairs, &ask));
        match found {
            Ok(best) => {
                let candidates = best
                    .into_iter()
                    .map(|s| {
                        let name = String::from_utf8_lossy(pairs[s.at].0).into_owned();
                        (name, s.score, s.version, s.expires_at_ms)
                    })
                    .collect();
                Ok(candidates)
            }
            Err((key, EnvelopeError::Integrity(reason))) => Err(IntegrityError::new_err(format!(
                "{}: {reason}",
                String::from_utf8_lossy(&key)
            ))),
            Err((_, error)) => Err(error.into()),
        }
    }
}
