//! Metadata pre-filter: columnar metadata of one segment, and a compiled filter program evaluated over it
//! into an id bitmap in FAISS `IDSelectorBitmap` layout (bit `i` is `byte[i / 8] >> (i % 8) & 1`).
use std::collections::{HashMap, HashSet};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// One instruction of a postfix program, as `aiinfra.vectors.filter` compiles it:
/// `(opcode, key, numbers, tokens)`.
type Instruction = (u8, String, Vec<f64>, Vec<String>);

const OP_NUM_IN: u8 = 1;
const OP_GT: u8 = 2;
const OP_GTE: u8 = 3;
const OP_LT: u8 = 4;
const OP_LTE: u8 = 5;
const OP_TOKEN_IN: u8 = 6;
const OP_AND: u8 = 10;
const OP_OR: u8 = 11;
const OP_NOT: u8 = 12;
const OP_ALL: u8 = 13;

struct TokenColumn {
    codes: Vec<u32>,
    vocabulary: HashMap<String, u32>,
}

/// The metadata of one segment, one column per key: numbers as f64 (NaN = absent) and every other
/// scalar as a code into the column's vocabulary of canonical JSON tokens (`u32::MAX` = absent).
#[pyclass(frozen, module = "aiinfra._native")]
pub struct MetadataColumns {
    rows: usize,
    numeric: HashMap<String, Vec<f64>>,
    tokens: HashMap<String, TokenColumn>,
}

fn words_for(rows: usize) -> usize {
    rows.div_ceil(64)
}

/// Bits set where `pred(row)` holds, 64 rows per word.
fn bits_where(rows: usize, pred: impl Fn(usize) -> bool) -> Vec<u64> {
    let mut words = vec![0u64; words_for(rows)];
    for (w, word) in words.iter_mut().enumerate() {
        let start = w * 64;
        let end = (start + 64).min(rows);
        let mut bits = 0u64;
        for row in start..end {
            bits |= u64::from(pred(row)) << (row - start);
        }
        *word = bits;
    }
    words
}

fn little_endian_f64(raw: &[u8], rows: usize, key: &str) -> PyResult<Vec<f64>> {
    if raw.len() != rows * 8 {
        return Err(PyValueError::new_err(format!(
            "numeric column {key:?}: expected {rows} float64 values"
        )));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

fn little_endian_u32(raw: &[u8], rows: usize, key: &str) -> PyResult<Vec<u32>> {
    if raw.len() != rows * 4 {
        return Err(PyValueError::new_err(format!(
            "token column {key:?}: expected {rows} uint32 codes"
        )));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect())
}

impl MetadataColumns {
    fn leaf(&self, op: u8, key: &str, numbers: &[f64], tokens: &[String]) -> PyResult<Vec<u64>> {
        let rows = self.rows;
        if op == OP_TOKEN_IN {
            let Some(column) = self.tokens.get(key) else {
                return Ok(vec![0; words_for(rows)]);
            };
            let wanted: HashSet<u32> = tokens
                .iter()
                .filter_map(|t| column.vocabulary.get(t).copied())
                .collect();
            return Ok(match wanted.len() {
                0 => vec![0; words_for(rows)],
                1 => {
                    let code = *wanted.iter().next().expect("one code");
                    bits_where(rows, |row| column.codes[row] == code)
                }
                _ => bits_where(rows, |row| wanted.contains(&column.codes[row])),
            });
        }
        let Some(values) = self.numeric.get(key) else {
            return Ok(vec![0; words_for(rows)]);
        };
        if op == OP_NUM_IN {
            return Ok(bits_where(rows, |row| numbers.contains(&values[row])));
        }
        let bound = *numbers
            .first()
            .ok_or_else(|| PyValueError::new_err("comparison without a value"))?;
        // Comparisons with NaN are false, so an absent number never matches.
        Ok(match op {
            OP_GT => bits_where(rows, |row| values[row] > bound),
            OP_GTE => bits_where(rows, |row| values[row] >= bound),
            OP_LT => bits_where(rows, |row| values[row] < bound),
            OP_LTE => bits_where(rows, |row| values[row] <= bound),
            _ => return Err(PyValueError::new_err(format!("unknown filter opcode {op}"))),
        })
    }

    fn evaluate(&self, program: &[Instruction]) -> PyResult<Vec<u64>> {
        let mut stack: Vec<Vec<u64>> = Vec::new();
        let underflow = || PyValueError::new_err("malformed filter program");
        for (op, key, numbers, tokens) in program {
            let result = match *op {
                OP_AND | OP_OR => {
                    let right = stack.pop().ok_or_else(underflow)?;
                    let mut left = stack.pop().ok_or_else(underflow)?;
                    for (l, r) in left.iter_mut().zip(&right) {
                        *l = if *op == OP_AND { *l & r } else { *l | r };
                    }
                    left
                }
                OP_NOT => {
                    let mut operand = stack.pop().ok_or_else(underflow)?;
                    operand.iter_mut().for_each(|w| *w = !*w);
                    operand
                }
                OP_ALL => vec![u64::MAX; words_for(self.rows)],
                _ => self.leaf(*op, key, numbers, tokens)?,
            };
            stack.push(result);
        }
        let mut words = stack.pop().ok_or_else(underflow)?;
        if !stack.is_empty() {
            return Err(underflow());
        }
        if !self.rows.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << (self.rows % 64)) - 1;
            }
        }
        Ok(words)
    }
}

#[pymethods]
impl MetadataColumns {
    /// `numeric`: (key, little-endian float64 bytes); `tokens`: (key, vocabulary, little-endian uint32 codes).
    #[new]
    fn new<'py>(
        rows: usize,
        numeric: Vec<(String, Bound<'py, PyBytes>)>,
        tokens: Vec<(String, Vec<String>, Bound<'py, PyBytes>)>,
    ) -> PyResult<Self> {
        let mut numeric_columns = HashMap::with_capacity(numeric.len());
        for (key, raw) in numeric {
            let values = little_endian_f64(raw.as_bytes(), rows, &key)?;
            numeric_columns.insert(key, values);
        }
        let mut token_columns = HashMap::with_capacity(tokens.len());
        for (key, vocabulary, raw) in tokens {
            let codes = little_endian_u32(raw.as_bytes(), rows, &key)?;
            let vocabulary = vocabulary.into_iter().zip(0u32..).collect();
            token_columns.insert(key, TokenColumn { codes, vocabulary });
        }
        Ok(Self {
            rows,
            numeric: numeric_columns,
            tokens: token_columns,
        })
    }

    #[getter]
    fn rows(&self) -> usize {
        self.rows
    }

    /// The rows matching `program` as a FAISS bitmap (`ceil(rows / 8)` bytes), and how many match.
    fn select<'py>(
        &self,
        py: Python<'py>,
        program: Vec<Instruction>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let words = py.detach(|| self.evaluate(&program))?;
        let count = words.iter().map(|w| w.count_ones() as usize).sum();
        let bytes: Vec<u8> = words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(self.rows.div_ceil(8))
            .collect();
        Ok((PyBytes::new(py, &bytes), count))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MetadataColumns>()
}
