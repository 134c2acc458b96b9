//! The memory envelope: AES-256-GCM with a key-id header, bound to the Redis key it is stored under.
//!
//! Layout (all integers big-endian), the same bytes as `aiinfra.memory.envelope`:
//! `format u8 = 1 | version u64 | expires_at_ms u64 | key id length u8 | key id | nonce (12) | ciphertext | tag (16)`.
//! Associated data = header (format .. key id) || Redis key, so a value copied under another key,
//! agent, version or expiry fails to open.
use std::collections::HashMap;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

pub const FORMAT: u8 = 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;
pub const MAX_KEY_ID_LEN: usize = 64;
const FIXED_HEADER_LEN: usize = 1 + 8 + 8 + 1;

create_exception!(
    _native,
    IntegrityError,
    PyValueError,
    "A stored value failed authentication: tampered, truncated, moved, or sealed with an unknown key."
);

/// What an envelope says about its value once it has been authenticated.
pub struct Opened {
    pub version: u64,
    pub expires_at_ms: u64,
    pub plaintext: Vec<u8>,
}

/// Why a seal or open failed; mapped to a Python exception at the boundary.
pub enum EnvelopeError {
    Integrity(&'static str),
    TooLarge,
    Random,
}

impl From<EnvelopeError> for PyErr {
    fn from(error: EnvelopeError) -> PyErr {
        match error {
            EnvelopeError::Integrity(reason) => IntegrityError::new_err(reason),
            EnvelopeError::TooLarge => PyValueError::new_err("value too large to seal"),
            EnvelopeError::Random => {
                PyOSError::new_err("the operating system gave no random bytes")
            }
        }
    }
}

/// The decrypting keys by id, and the one new values are sealed with.
#[pyclass(frozen, module = "aiinfra._native")]
pub struct EnvelopeCodec {
    ciphers: HashMap<String, LessSafeKey>,
    current: String,
    current_cipher: LessSafeKey,
}

fn valid_key_id(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= MAX_KEY_ID_LEN
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `count` fresh random nonces from one call to the OS generator (one syscall for a whole batch).
pub fn random_nonces(count: usize) -> Result<Vec<[u8; NONCE_LEN]>, EnvelopeError> {
    let mut bytes = vec![0u8; count * NONCE_LEN];
    getrandom::fill(&mut bytes).map_err(|_| EnvelopeError::Random)?;
    Ok(bytes
        .chunks_exact(NONCE_LEN)
        .map(|chunk| chunk.try_into().expect("chunks of NONCE_LEN"))
        .collect())
}

/// A fresh random version (never 0: 0 means "no version") and nonce for each of `count` new
/// envelopes, from one call to the OS generator.
pub fn fresh_writes(count: usize) -> Result<Vec<(u64, [u8; NONCE_LEN])>, EnvelopeError> {
    const WRITE_LEN: usize = 8 + NONCE_LEN;
    let mut bytes = vec![0u8; count * WRITE_LEN];
    getrandom::fill(&mut bytes).map_err(|_| EnvelopeError::Random)?;
    Ok(bytes
        .chunks_exact(WRITE_LEN)
        .map(|chunk| {
            let version = u64::from_be_bytes(chunk[..8].try_into().expect("8 bytes"));
            let nonce = chunk[8..].try_into().expect("NONCE_LEN bytes");
            (version.max(1), nonce)
        })
        .collect())
}

impl EnvelopeCodec {
    /// Seals `plaintext` for `redis_key` with the current key; `nonce` must be fresh from the OS
    /// generator (`random_nonces`) and never used again.
    pub fn seal(
        &self,
        redis_key: &[u8],
        version: u64,
        expires_at_ms: u64,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.sealed_len(plaintext.len()));
        self.seal_into(
            &mut out,
            &mut Vec::new(),
            redis_key,
            version,
            expires_at_ms,
            plaintext,
            nonce,
        )?;
        Ok(out)
    }

    /// How many bytes `seal` makes of a plaintext of `plaintext_len` bytes.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        FIXED_HEADER_LEN + self.current.len() + NONCE_LEN + plaintext_len + TAG_LEN
    }

    /// `seal`, appending the envelope to `out`; `aad` is scratch space a batch reuses.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_into(
        &self,
        out: &mut Vec<u8>,
        aad: &mut Vec<u8>,
        redis_key: &[u8],
        version: u64,
        expires_at_ms: u64,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(), EnvelopeError> {
        let key_id = self.current.as_bytes();
        let start = out.len();
        out.push(FORMAT);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&expires_at_ms.to_be_bytes());
        out.push(key_id.len() as u8);
        out.extend_from_slice(key_id);
        // The associated data is header || Redis key.
        aad.clear();
        aad.extend_from_slice(&out[start..]);
        aad.extend_from_slice(redis_key);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .current_cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut out[body_start..],
            )
            .map_err(|_| EnvelopeError::TooLarge)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    pub fn open(&self, redis_key: &[u8], blob: &[u8]) -> Result<Opened, EnvelopeError> {
        if blob.len() < FIXED_HEADER_LEN || blob[0] != FORMAT {
            return Err(EnvelopeError::Integrity("not an envelope of format 1"));
        }
        let header_len = FIXED_HEADER_LEN + usize::from(blob[FIXED_HEADER_LEN - 1]);
        if blob.len() < header_len + NONCE_LEN + TAG_LEN {
            return Err(EnvelopeError::Integrity("envelope is truncated"));
        }
        let key_id = std::str::from_utf8(&blob[FIXED_HEADER_LEN..header_len])
            .map_err(|_| EnvelopeError::Integrity("key id is not text"))?;
        let cipher = self.ciphers.get(key_id).ok_or(EnvelopeError::Integrity(
            "sealed with a key the keyring does not hold",
        ))?;
        let nonce: [u8; NONCE_LEN] = blob[header_len..header_len + NONCE_LEN]
            .try_into()
            .expect("length checked");
        let tag_start = blob.len() - TAG_LEN;
        let tag = Tag::try_from(&blob[tag_start..]).expect("length checked");
        let mut aad = Vec::with_capacity(header_len + redis_key.len());
        aad.extend_from_slice(&blob[..header_len]);
        aad.extend_from_slice(redis_key);
        let mut plaintext = blob[header_len + NONCE_LEN..tag_start].to_vec();
        cipher
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                tag,
                &mut plaintext,
                0..,
            )
            .map_err(|_| EnvelopeError::Integrity("authentication failed"))?;
        Ok(Opened {
            version: u64::from_be_bytes(blob[1..9].try_into().expect("length checked")),
            expires_at_ms: u64::from_be_bytes(blob[9..17].try_into().expect("length checked")),
            plaintext,
        })
    }
}

#[pymethods]
impl EnvelopeCodec {
    /// `keys` maps key id -> 32-byte AES key; `current` names the key new values are sealed with.
    #[new]
    fn new(keys: &Bound<'_, PyDict>, current: &str) -> PyResult<Self> {
        let mut ciphers = HashMap::with_capacity(keys.len());
        for (key_id, key) in keys.iter() {
            let key_id: String = key_id.extract()?;
            let key: Vec<u8> = key.extract()?;
            if !valid_key_id(&key_id) {
                return Err(PyValueError::new_err(format!(
                    "key id {key_id:?} must match [A-Za-z0-9._-]{{1,64}}"
                )));
            }
            let cipher = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| {
                PyValueError::new_err(format!("key {key_id:?} must be {KEY_LEN} bytes"))
            })?;
            ciphers.insert(key_id, LessSafeKey::new(cipher));
        }
        let Some(current_cipher) = ciphers.get(current).cloned() else {
            return Err(PyValueError::new_err(format!(
                "current key {current:?} is not in the keyring"
            )));
        };
        Ok(Self {
            ciphers,
            current: current.to_owned(),
            current_cipher,
        })
    }

    #[getter]
    fn current_key_id(&self) -> &str {
        &self.current
    }

    #[pyo3(name = "seal")]
    fn py_seal<'py>(
        &self,
        py: Python<'py>,
        redis_key: &[u8],
        version: u64,
        expires_at_ms: u64,
        plaintext: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(
            py,
            &self.seal(
                redis_key,
                version,
                expires_at_ms,
                plaintext,
                random_nonces(1)?[0],
            )?,
        ))
    }

    #[pyo3(name = "open")]
    fn py_open<'py>(
        &self,
        py: Python<'py>,
        redis_key: &[u8],
        blob: &[u8],
    ) -> PyResult<(u64, u64, Bound<'py, PyBytes>)> {
        let opened = self.open(redis_key, blob)?;
        Ok((
            opened.version,
            opened.expires_at_ms,
            PyBytes::new(py, &opened.plaintext),
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EnvelopeCodec>()?;
    m.add("IntegrityError", m.py().get_type::<IntegrityError>())?;
    Ok(())
}
