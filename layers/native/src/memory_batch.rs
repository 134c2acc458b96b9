//! The batch data plane: seal or open many memories in one call (GIL released), the RESP request
//! bytes of a pipeline, and the Redis Cluster slot a key routes to.
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::envelope::{EnvelopeCodec, EnvelopeError, IntegrityError, Opened};

/// Seals `(redis_key, version, expires_at_ms, plaintext)` items; the answer is in the same order.
pub fn seal_many<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    items: Vec<(Bound<'py, PyBytes>, u64, u64, Bound<'py, PyBytes>)>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let borrowed: Vec<(&[u8], u64, u64, &[u8])> = items
        .iter()
        .map(|(key, version, expires, plaintext)| {
            (key.as_bytes(), *version, *expires, plaintext.as_bytes())
        })
        .collect();
    let sealed = py.detach(|| {
        borrowed
            .iter()
            .map(|(key, version, expires, plaintext)| {
                codec.seal(key, *version, *expires, plaintext)
            })
            .collect::<Result<Vec<_>, EnvelopeError>>()
    })?;
    Ok(sealed.iter().map(|blob| PyBytes::new(py, blob)).collect())
}

pub type OpenedTuple<'py> = (u64, u64, Bound<'py, PyBytes>);

/// Opens the blobs stored under `redis_keys` (None = absent, answered as None). Any blob that fails
/// authentication fails the whole call with IntegrityError naming its key: no value of a batch that
/// holds a forged one is returned.
pub fn open_many<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    redis_keys: Vec<Bound<'py, PyBytes>>,
    blobs: Vec<Option<Bound<'py, PyBytes>>>,
) -> PyResult<Vec<Option<OpenedTuple<'py>>>> {
    if redis_keys.len() != blobs.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "redis_keys and blobs differ in length",
        ));
    }
    let borrowed: Vec<(&[u8], Option<&[u8]>)> = redis_keys
        .iter()
        .zip(&blobs)
        .map(|(key, blob)| (key.as_bytes(), blob.as_ref().map(|b| b.as_bytes())))
        .collect();
    let opened = py.detach(|| {
        borrowed
            .iter()
            .map(|(key, blob)| match blob {
                None => Ok(None),
                Some(blob) => codec
                    .open(key, blob)
                    .map(Some)
                    .map_err(|error| (*key, error)),
            })
            .collect::<Result<Vec<Option<Opened>>, (&[u8], EnvelopeError)>>()
    });
    match opened {
        Ok(opened) => Ok(opened
            .into_iter()
            .map(|item| item.map(|o| (o.version, o.expires_at_ms, PyBytes::new(py, &o.plaintext))))
            .collect()),
        Err((key, EnvelopeError::Integrity(reason))) => Err(IntegrityError::new_err(format!(
            "{}: {reason}",
            String::from_utf8_lossy(key)
        ))),
        Err((_, error)) => Err(error.into()),
    }
}

/// One argument of a Redis command as RESP wants it: bytes as they are, text as UTF-8, integers in decimal.
fn write_bulk(out: &mut Vec<u8>, arg: &Bound<'_, PyAny>) -> PyResult<()> {
    let text;
    let decimal;
    let data: &[u8] = if let Ok(bytes) = arg.cast::<PyBytes>() {
        bytes.as_bytes()
    } else if let Ok(string) = arg.cast::<PyString>() {
        text = string.to_cow()?;
        text.as_bytes()
    } else {
        decimal = arg.extract::<i64>()?.to_string();
        decimal.as_bytes()
    };
    out.push(b'$');
    out.extend_from_slice(data.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The RESP2 request bytes of a pipeline of commands (each a sequence of bytes, str or int arguments).
#[pyfunction]
pub fn encode_commands<'py>(
    py: Python<'py>,
    commands: Vec<Vec<Bound<'py, PyAny>>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(64 * commands.len());
    for command in &commands {
        out.push(b'*');
        out.extend_from_slice(command.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        for arg in command {
            write_bulk(&mut out, arg)?;
        }
    }
    Ok(PyBytes::new(py, &out))
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its `{hash tag}` if it has one, mod 16384.
#[pyfunction]
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
