//! The batch data plane on `EnvelopeCodec`: seal or open many memories in one call (the GIL
//! released), seal values straight into the RESP bytes of the commands that store them, and a put's
//! whole MULTI/EXEC round trip on a socket in one native call.
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::marker::Ungil;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::envelope::{
    fresh_writes, random_nonces, EnvelopeCodec, EnvelopeError, IntegrityError, Opened, NONCE_LEN,
};
use crate::resp::{
    check_routing, exchange, first_error, parse_replies, protocol_error, write_bulk,
    write_bulk_bytes, write_bulk_decimal, write_header, Reply,
};

/// `(redis_key, version, expires_at_ms, plaintext)`: one memory to seal.
pub type SealItem<'py> = (Bound<'py, PyBytes>, u64, u64, Bound<'py, PyBytes>);

/// The items' bytes, borrowed so the sealing can run with the GIL released.
fn borrow_items<'a>(items: &'a [SealItem<'_>]) -> Vec<(&'a [u8], u64, u64, &'a [u8])> {
    items
        .iter()
        .map(|(key, version, expires, plaintext)| {
            (key.as_bytes(), *version, *expires, plaintext.as_bytes())
        })
        .collect()
}

/// `work` on `count` memories, with the GIL released when there are many. One (a single put or
/// get) keeps it: releasing and taking it back costs more than sealing or opening one value.
fn detached_for_many<T: Ungil>(
    py: Python<'_>,
    count: usize,
    work: impl Ungil + FnOnce() -> T,
) -> T {
    if count == 1 {
        work()
    } else {
        py.detach(work)
    }
}

/// One memory as stored: what a put answers (`value_json` empty) and what a get opens. A native
/// class, so a batch makes its hundreds without a Python call each.
#[pyclass(frozen, module = "aiinfra._native")]
pub struct Memory {
    #[pyo3(get)]
    key: Py<PyString>,
    #[pyo3(get)]
    version: u64,
    #[pyo3(get)]
    expires_at_ms: u64,
    #[pyo3(get)]
    value_json: Py<PyBytes>,
}

#[pymethods]
impl Memory {
    #[new]
    #[pyo3(signature = (key, version, expires_at_ms, value_json=None))]
    fn new(
        py: Python<'_>,
        key: Py<PyString>,
        version: u64,
        expires_at_ms: u64,
        value_json: Option<Py<PyBytes>>,
    ) -> Self {
        let value_json = value_json.unwrap_or_else(|| PyBytes::new(py, b"").unbind());
        Memory {
            key,
            version,
            expires_at_ms,
            value_json,
        }
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<Memory>() else {
            return Ok(false);
        };
        let other = other.get();
        Ok(self.version == other.version
            && self.expires_at_ms == other.expires_at_ms
            && self.key.bind(py).as_any().eq(other.key.bind(py))?
            && self.value_json.bind(py).as_bytes() == other.value_json.bind(py).as_bytes())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Memory(key={}, version={}, expires_at_ms={}, value_json={})",
            self.key.bind(py).repr()?,
            self.version,
            self.expires_at_ms,
            self.value_json.bind(py).repr()?
        ))
    }
}

/// `(key, value_json, ttl_seconds)`: one memory of a batch put.
pub type PutItem<'py> = (Bound<'py, PyString>, Bound<'py, PyBytes>, u64);

/// A batch put's request bytes, how many replies it gets, and the memories it writes.
pub type SealedBatchPut<'py> = (Bound<'py, PyBytes>, usize, Vec<Bound<'py, Memory>>);

/// A member no memory key can be (`~` is outside the key alphabet), longer than Redis's
/// `zset-max-listpack-value` (64 bytes by default). A batch of many adds it to the index first and
/// removes it again in the same transaction: that turns a small index (a listpack, where every ZADD
/// member is a linear search) into a skiplist, and Redis never turns it back (until a restart loads
/// it as a listpack again). The price is the skiplist's memory per name for a small agent.
pub const INDEX_ENCODING_MEMBER: &[u8] =
    b"~aiinfra~index~encoding~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~";

/// A batch put sealed into its request bytes, with how many replies it gets and each memory's new
/// version and expiry.
struct PutRequest {
    bytes: Vec<u8>,
    replies: usize,
    versions: Vec<u64>,
    expiries: Vec<u64>,
}

impl PutRequest {
    /// `(prefix, index_key, index_ttl_ms)`: where the agent's memories and its index live.
    fn seal(
        py: Python<'_>,
        codec: &EnvelopeCodec,
        (prefix, index_key, index_ttl_ms): (&[u8], &[u8], u64),
        now_ms: u64,
        items: &[PutItem<'_>],
        answer_replaced: bool,
    ) -> PyResult<Self> {
        let keys = (items.iter())
            .map(|(key, _, _)| key.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let values: Vec<&[u8]> = items.iter().map(|(_, value, _)| value.as_bytes()).collect();
        let expiries = (items.iter())
            .map(|(_, _, ttl)| {
                ttl.checked_mul(1000)
                    .and_then(|ttl_ms| now_ms.checked_add(ttl_ms))
                    .ok_or_else(|| PyOverflowError::new_err("ttl out of range"))
            })
            .collect::<PyResult<Vec<u64>>>()?;
        let build = || {
            batch_put_request(
                codec,
                prefix,
                index_key,
                index_ttl_ms,
                &keys,
                &expiries,
                &values,
                answer_replaced,
            )
        };
        let (bytes, replies, versions) = detached_for_many(py, items.len(), build)?;
        Ok(Self {
            bytes,
            replies,
            versions,
            expiries,
        })
    }

    /// The memories as written: each item's key with its new version and expiry.
    fn memories<'py>(
        &self,
        py: Python<'py>,
        items: &[PutItem<'py>],
    ) -> PyResult<Vec<Bound<'py, Memory>>> {
        let empty = PyBytes::new(py, b"").unbind();
        (items.iter().zip(&self.versions).zip(&self.expiries))
            .map(|(((key, _, _), version), expires_at_ms)| {
                let memory = Memory {
                    key: key.clone().unbind(),
                    version: *version,
                    expires_at_ms: *expires_at_ms,
                    value_json: empty.clone_ref(py),
                };
                Bound::new(py, memory)
            })
            .collect()
    }
}

/// `seal_batch_put`'s request bytes, reply count and versions.
#[allow(clippy::too_many_arguments)]
fn batch_put_request(
    codec: &EnvelopeCodec,
    prefix: &[u8],
    index_key: &[u8],
    index_ttl_ms: u64,
    keys: &[&str],
    expiries: &[u64],
    values: &[&[u8]],
    answer_replaced: bool,
) -> Result<(Vec<u8>, usize, Vec<u64>), EnvelopeError> {
    let count = keys.len();
    let encoding_member = count > 1;
    let writes = fresh_writes(count)?;
    let size: usize = (keys.iter().zip(values))
        .map(|(key, value)| codec.sealed_len(value.len()) + 2 * (prefix.len() + key.len()) + 96)
        .sum();
    let mut out = Vec::with_capacity(size + 128);
    let (mut aad, mut redis_key) = (Vec::new(), Vec::new());
    let (set_head, set_tail): (&[u8], &[u8]) = if answer_replaced {
        (b"*6\r\n$3\r\nSET\r\n", b"$3\r\nGET\r\n")
    } else {
        (b"*5\r\n$3\r\nSET\r\n", b"")
    };
    out.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
    for ((key, expires), (value, write)) in
        keys.iter().zip(expiries).zip(values.iter().zip(&writes))
    {
        redis_key.clear();
        redis_key.extend_from_slice(prefix);
        redis_key.extend_from_slice(key.as_bytes());
        out.extend_from_slice(set_head);
        write_bulk_bytes(&mut out, &redis_key);
        write_bulk_sealed(
            &mut out, &mut aad, codec, &redis_key, *write, *expires, value,
        )?;
        out.extend_from_slice(b"$4\r\nPXAT\r\n");
        write_bulk_decimal(&mut out, *expires);
        out.extend_from_slice(set_tail);
    }
    write_header(
        &mut out,
        b'*',
        2 + 2 * (count + usize::from(encoding_member)),
    );
    write_bulk_bytes(&mut out, b"ZADD");
    write_bulk_bytes(&mut out, index_key);
    let first = encoding_member.then_some(INDEX_ENCODING_MEMBER);
    for member in first
        .into_iter()
        .chain(keys.iter().map(|key| key.as_bytes()))
    {
        out.extend_from_slice(b"$1\r\n0\r\n");
        write_bulk_bytes(&mut out, member);
    }
    if encoding_member {
        out.extend_from_slice(b"*3\r\n$4\r\nZREM\r\n");
        write_bulk_bytes(&mut out, index_key);
        write_bulk_bytes(&mut out, INDEX_ENCODING_MEMBER);
    }
    out.extend_from_slice(b"*3\r\n$7\r\nPEXPIRE\r\n");
    write_bulk_bytes(&mut out, index_key);
    write_bulk_decimal(&mut out, index_ttl_ms);
    out.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
    // One reply per command: MULTI's OK, a QUEUED for each queued command, EXEC's array.
    let replies = count + 4 + usize::from(encoding_member);
    Ok((
        out,
        replies,
        writes.iter().map(|(version, _)| *version).collect(),
    ))
}

/// A new envelope of `plaintext` for `redis_key` as one bulk argument, sealed straight into `out`
/// with a fresh `(version, nonce)`; `aad` is scratch space a batch reuses.
fn write_bulk_sealed(
    out: &mut Vec<u8>,
    aad: &mut Vec<u8>,
    codec: &EnvelopeCodec,
    redis_key: &[u8],
    (version, nonce): (u64, [u8; NONCE_LEN]),
    expires_at_ms: u64,
    plaintext: &[u8],
) -> Result<(), EnvelopeError> {
    write_header(out, b'$', codec.sealed_len(plaintext.len()));
    codec.seal_into(
        out,
        aad,
        redis_key,
        version,
        expires_at_ms,
        plaintext,
        nonce,
    )?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[pymethods]
impl EnvelopeCodec {
    /// Seals `(redis_key, version, expires_at_ms, plaintext)` items, the GIL released; the answer is
    /// in the same order.
    fn seal_many<'py>(
        &self,
        py: Python<'py>,
        items: Vec<SealItem<'py>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let borrowed = borrow_items(&items);
        let sealed = py.detach(|| {
            borrowed
                .iter()
                .zip(random_nonces(borrowed.len())?)
                .map(|((key, version, expires, plaintext), nonce)| {
                    self.seal(key, *version, *expires, plaintext, nonce)
                })
                .collect::<Result<Vec<_>, EnvelopeError>>()
        })?;
        Ok(sealed.iter().map(|blob| PyBytes::new(py, blob)).collect())
    }

    /// One command's RESP bytes: `head`, then a new envelope of `plaintext` for `redis_key` (fresh
    /// version and nonce), then `tail`; and the new version. A single write: sealed with the GIL
    /// held, releasing it would cost more than the sealing.
    fn seal_command<'py>(
        &self,
        py: Python<'py>,
        head: Vec<Bound<'py, PyAny>>,
        redis_key: &[u8],
        expires_at_ms: u64,
        plaintext: &[u8],
        tail: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        let [(version, nonce)] = fresh_writes(1)?[..] else {
            unreachable!("one write asked for")
        };
        let mut out = Vec::with_capacity(
            self.sealed_len(plaintext.len()) + 64 * (head.len() + tail.len() + 1),
        );
        write_header(&mut out, b'*', head.len() + 1 + tail.len());
        for arg in &head {
            write_bulk(&mut out, arg)?;
        }
        write_bulk_sealed(
            &mut out,
            &mut Vec::new(),
            self,
            redis_key,
            (version, nonce),
            expires_at_ms,
            plaintext,
        )?;
        for arg in &tail {
            write_bulk(&mut out, arg)?;
        }
        Ok((PyBytes::new(py, &out), version))
    }

    /// The whole request of an atomic batch put of `(key, value_json, ttl_seconds)` items, sealed
    /// and written in one pass, a batch of many with the GIL released (no sealed value becomes a
    /// Python object on its way to the socket): `MULTI`, then `SET <prefix><key> <sealed> PXAT
    /// <expires_at_ms>` per memory, `ZADD <index_key> 0 <key> ...`, `PEXPIRE <index_key>
    /// <index_ttl_ms>` and `EXEC`, plus the index's `INDEX_ENCODING_MEMBER` for a batch of more
    /// than one; how many replies it gets; and the memories as written (each expiring `ttl` seconds
    /// after `now_ms`, with a new version). With `answer_replaced` each SET ends in `GET`, answering
    /// the value it replaced (nil when it created one): how a single put tells created from replaced.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prefix, index_key, index_ttl_ms, now_ms, items, answer_replaced=false))]
    fn seal_batch_put<'py>(
        &self,
        py: Python<'py>,
        prefix: &[u8],
        index_key: &[u8],
        index_ttl_ms: u64,
        now_ms: u64,
        items: Vec<PutItem<'py>>,
        answer_replaced: bool,
    ) -> PyResult<SealedBatchPut<'py>> {
        let agent = (prefix, index_key, index_ttl_ms);
        let put = PutRequest::seal(py, self, agent, now_ms, &items, answer_replaced)?;
        let request = PyBytes::new(py, &put.bytes);
        Ok((request, put.replies, put.memories(py, &items)?))
    }

    /// `seal_batch_put` and its round trip in one call, on the connected plain TCP socket `fd` (as
    /// `roundtrip`, the GIL released while it waits): answers the memories as written and, with
    /// `answer_replaced`, whether each SET created its memory (its GET answered nil; else the list
    /// is empty). RedisError naming the cause when Redis refused the transaction (EXECABORT: then
    /// nothing of it ran) or a command in it; RedisRedirect or RedisReadOnly when the node is not
    /// the one to write to (it ran nothing of it).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (fd, prefix, index_key, index_ttl_ms, now_ms, items, answer_replaced=false))]
    fn put_on_socket<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        prefix: &[u8],
        index_key: &[u8],
        index_ttl_ms: u64,
        now_ms: u64,
        items: Vec<PutItem<'py>>,
        answer_replaced: bool,
    ) -> PyResult<(Vec<Bound<'py, Memory>>, Vec<bool>)> {
        let agent = (prefix, index_key, index_ttl_ms);
        let put = PutRequest::seal(py, self, agent, now_ms, &items, answer_replaced)?;
        let received = py.detach(|| exchange(fd, &put.bytes, put.replies, usize::MAX))?;
        let replies = parse_replies(&received, put.replies)?.expect("exchange read every reply");
        check_routing(&replies)?;
        let executed = match replies.last() {
            Some(Reply::Array(executed)) => executed,
            // EXECABORT names no cause: the command Redis refused to queue does (OOM when it is full).
            _ => {
                return Err(first_error(&replies).unwrap_or_else(|| {
                    protocol_error("EXEC answered neither replies nor an error")
                }))
            }
        };
        if let Some(error) = first_error(executed) {
            return Err(error);
        }
        // MULTI and EXEC answer for themselves; EXEC for every command queued between them.
        if executed.len() != put.replies - 2 {
            return Err(protocol_error("EXEC answered another number of commands"));
        }
        let created = if answer_replaced {
            let sets = &executed[..items.len()];
            (sets.iter())
                .map(|set| match set {
                    Reply::Nil => Ok(true),
                    Reply::Bulk(_) => Ok(false),
                    _ => Err(protocol_error(
                        "SET .. GET answered neither a value nor nil",
                    )),
                })
                .collect::<PyResult<Vec<bool>>>()?
        } else {
            Vec::new()
        };
        Ok((put.memories(py, &items)?, created))
    }

    /// Opens the blobs stored under `<prefix><key>` for `keys` (None = absent, answered as None)
    /// into the memories they hold, the GIL released while many open. Any blob that fails
    /// authentication fails the whole call with IntegrityError naming its Redis key: no value of a
    /// batch that holds a forged one is returned.
    fn open_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &[u8],
        keys: Vec<Bound<'py, PyString>>,
        blobs: Vec<Option<Bound<'py, PyBytes>>>,
    ) -> PyResult<Vec<Option<Bound<'py, Memory>>>> {
        if keys.len() != blobs.len() {
            return Err(PyValueError::new_err("keys and blobs differ in length"));
        }
        let names = keys
            .iter()
            .map(|key| key.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let borrowed: Vec<Option<&[u8]>> = blobs
            .iter()
            .map(|blob| blob.as_ref().map(|b| b.as_bytes()))
            .collect();
        let open_all = || {
            let mut redis_key = Vec::new();
            (names.iter().zip(&borrowed))
                .map(|(name, blob)| {
                    let Some(blob) = blob else { return Ok(None) };
                    redis_key.clear();
                    redis_key.extend_from_slice(prefix);
                    redis_key.extend_from_slice(name.as_bytes());
                    self.open(&redis_key, blob)
                        .map(Some)
                        .map_err(|error| (redis_key.clone(), error))
                })
                .collect::<Result<Vec<Option<Opened>>, (Vec<u8>, EnvelopeError)>>()
        };
        let opened = detached_for_many(py, keys.len(), open_all);
        match opened {
            Ok(opened) => (keys.iter().zip(opened))
                .map(|(key, item)| {
                    item.map(|o| {
                        let memory = Memory {
                            key: key.clone().unbind(),
                            version: o.version,
                            expires_at_ms: o.expires_at_ms,
                            value_json: PyBytes::new(py, &o.plaintext).unbind(),
                        };
                        Bound::new(py, memory)
                    })
                    .transpose()
                })
                .collect(),
            Err((key, EnvelopeError::Integrity(reason))) => Err(IntegrityError::new_err(format!(
                "{}: {reason}",
                String::from_utf8_lossy(&key)
            ))),
            Err((_, error)) => Err(error.into()),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Memory>()?;
    m.add(
        "INDEX_ENCODING_MEMBER",
        PyBytes::new(m.py(), INDEX_ENCODING_MEMBER),
    )?;
    Ok(())
}
