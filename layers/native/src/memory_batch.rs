//! The batch data plane: seal or open many memories in one call (GIL released), the RESP request
//! bytes of a pipeline, a pipeline's round trip on a plain TCP connection, and the Redis Cluster
//! slot a key routes to.
use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyException, PyTimeoutError};
use pyo3::marker::Ungil;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::envelope::{
    fresh_writes, random_nonces, EnvelopeCodec, EnvelopeError, IntegrityError, Opened, NONCE_LEN,
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

/// Seals `(redis_key, version, expires_at_ms, plaintext)` items; the answer is in the same order.
pub fn seal_many<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    items: Vec<SealItem<'py>>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let borrowed = borrow_items(&items);
    let sealed = py.detach(|| {
        borrowed
            .iter()
            .zip(random_nonces(borrowed.len())?)
            .map(|((key, version, expires, plaintext), nonce)| {
                codec.seal(key, *version, *expires, plaintext, nonce)
            })
            .collect::<Result<Vec<_>, EnvelopeError>>()
    })?;
    Ok(sealed.iter().map(|blob| PyBytes::new(py, blob)).collect())
}

/// One command's RESP bytes: `head`, then a new envelope of `plaintext` for `redis_key` (fresh
/// version and nonce), then `tail`; and the new version. A single write: sealed with the GIL held,
/// releasing it would cost more than the sealing.
pub fn seal_command<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    head: Vec<Bound<'py, PyAny>>,
    redis_key: &[u8],
    expires_at_ms: u64,
    plaintext: &[u8],
    tail: Vec<Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyBytes>, u64)> {
    let [(version, nonce)] = fresh_writes(1)?[..] else {
        unreachable!("one write asked for")
    };
    let mut out =
        Vec::with_capacity(codec.sealed_len(plaintext.len()) + 64 * (head.len() + tail.len() + 1));
    write_header(&mut out, b'*', head.len() + 1 + tail.len());
    for arg in &head {
        write_bulk(&mut out, arg)?;
    }
    write_bulk_sealed(
        &mut out,
        &mut Vec::new(),
        codec,
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
/// removes it again in the same transaction: that turns an index of up to 128 names (a listpack,
/// where every ZADD member is a linear search: ~115 us for 100 names into 100) into a skiplist
/// (~11 us), and Redis never turns it back (until a restart loads it as a listpack again). The
/// price is ~100 bytes of Redis memory more per name for an agent of up to 128 memories.
pub const INDEX_ENCODING_MEMBER: &[u8] =
    b"~aiinfra~index~encoding~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~";

/// The whole request of an atomic batch put, sealed and written in one pass, a batch of many with
/// the GIL released (no sealed value becomes a Python object on its way to the socket): `MULTI`, then
/// `SET <prefix><key> <sealed> PXAT <expires_at_ms>` per memory, `ZADD <index_key> 0 <key> ...`,
/// `PEXPIRE <index_key> <index_ttl_ms>` and `EXEC`, plus the index's `INDEX_ENCODING_MEMBER` for a
/// batch of more than one; how many replies it gets; and the memories as written (each expiring
/// `ttl` seconds after `now_ms`, with a new version). With `answer_replaced` each SET ends in
/// `GET`, answering the value it replaced (nil when it created one): how a single put tells created
/// from replaced.
#[allow(clippy::too_many_arguments)]
pub fn seal_batch_put<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    prefix: &[u8],
    index_key: &[u8],
    index_ttl_ms: u64,
    now_ms: u64,
    items: Vec<PutItem<'py>>,
    answer_replaced: bool,
) -> PyResult<SealedBatchPut<'py>> {
    let put = PutRequest::seal(
        py,
        codec,
        (prefix, index_key, index_ttl_ms),
        now_ms,
        &items,
        answer_replaced,
    )?;
    let request = PyBytes::new(py, &put.bytes);
    Ok((request, put.replies, put.memories(py, &items)?))
}

/// `seal_batch_put` and its round trip in one call, on the connected plain TCP socket `fd` (as
/// `roundtrip`, the GIL released while it waits): answers the memories as written and, with
/// `answer_replaced`, whether each SET created its memory (its GET answered nil; else the list is
/// empty). RedisError naming the cause when Redis refused the transaction (EXECABORT: then nothing
/// of it ran) or a command in it; RedisRedirect or RedisReadOnly when the node is not the one to
/// write to (it ran nothing of it).
#[allow(clippy::too_many_arguments)]
pub fn put_on_socket<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    fd: RawFd,
    prefix: &[u8],
    index_key: &[u8],
    index_ttl_ms: u64,
    now_ms: u64,
    items: Vec<PutItem<'py>>,
    answer_replaced: bool,
) -> PyResult<(Vec<Bound<'py, Memory>>, Vec<bool>)> {
    let put = PutRequest::seal(
        py,
        codec,
        (prefix, index_key, index_ttl_ms),
        now_ms,
        &items,
        answer_replaced,
    )?;
    let received = py.detach(|| exchange(fd, &put.bytes, put.replies, usize::MAX))?;
    let replies = parse_replies(&received, put.replies)?.expect("exchange read every reply");
    check_routing(&replies)?;
    let executed = match replies.last() {
        Some(Reply::Array(executed)) => executed,
        // EXECABORT names no cause: the command Redis refused to queue does (OOM when it is full).
        _ => {
            return Err(first_error(&replies)
                .unwrap_or_else(|| protocol_error("EXEC answered neither replies nor an error")))
        }
    };
    if let Some(error) = first_error(executed) {
        return Err(error);
    }
    let created = if answer_replaced {
        let sets = &executed[..items.len().min(executed.len())];
        sets.iter().map(|set| matches!(set, Reply::Nil)).collect()
    } else {
        Vec::new()
    };
    Ok((put.memories(py, &items)?, created))
}

/// RedisError with the first error reply among `replies`, if there is one.
fn first_error(replies: &[Reply<'_>]) -> Option<PyErr> {
    replies.iter().find_map(|reply| match reply {
        Reply::Error(message) => Some(RedisError::new_err(
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => None,
    })
}

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
                    .ok_or_else(|| pyo3::exceptions::PyOverflowError::new_err("ttl out of range"))
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

/// Opens the blobs stored under `<prefix><key>` for `keys` (None = absent, answered as None) into
/// the memories they hold, the GIL released while many open. Any blob that fails authentication
/// fails the whole call with IntegrityError naming its Redis key: no value of a batch that holds a
/// forged one is returned.
pub fn open_many<'py>(
    py: Python<'py>,
    codec: &EnvelopeCodec,
    prefix: &[u8],
    keys: Vec<Bound<'py, PyString>>,
    blobs: Vec<Option<Bound<'py, PyBytes>>>,
) -> PyResult<Vec<Option<Bound<'py, Memory>>>> {
    if keys.len() != blobs.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "keys and blobs differ in length",
        ));
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
                codec
                    .open(&redis_key, blob)
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

/// `number` in decimal, without going through `fmt` (a batch writes hundreds of them).
fn write_decimal(out: &mut Vec<u8>, number: u64) {
    out.extend_from_slice(decimal_digits(number, &mut [0u8; 20]));
}

/// The decimal digits of `number`, written at the end of `digits`.
fn decimal_digits(mut number: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    &digits[start..]
}

/// `prefix` then `number` in decimal then CRLF: a RESP header.
fn write_header(out: &mut Vec<u8>, prefix: u8, number: usize) {
    out.push(prefix);
    write_decimal(out, number as u64);
    out.extend_from_slice(b"\r\n");
}

fn write_bulk_bytes(out: &mut Vec<u8>, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
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

/// A non-negative integer argument, in decimal.
fn write_bulk_decimal(out: &mut Vec<u8>, number: u64) {
    write_bulk_bytes(out, decimal_digits(number, &mut [0u8; 20]));
}

/// One argument of a Redis command as RESP wants it: bytes as they are, text as UTF-8, integers in decimal.
fn write_bulk(out: &mut Vec<u8>, arg: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(bytes) = arg.cast::<PyBytes>() {
        write_bulk_bytes(out, bytes.as_bytes());
    } else if let Ok(string) = arg.cast::<PyString>() {
        write_bulk_bytes(out, string.to_cow()?.as_bytes());
    } else {
        let number = arg.extract::<i64>()?;
        match u64::try_from(number) {
            Ok(unsigned) => write_bulk_decimal(out, unsigned),
            Err(_) => write_bulk_bytes(out, number.to_string().as_bytes()),
        }
    }
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
        write_header(&mut out, b'*', command.len());
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

create_exception!(
    _native,
    RedisError,
    PyException,
    "Redis answered a command with an error reply."
);
create_exception!(
    _native,
    RedisRedirect,
    RedisError,
    "A Redis Cluster node answered MOVED or ASK: it executed nothing of the pipeline."
);

create_exception!(
    _native,
    RedisReadOnly,
    RedisError,
    "A node answered READONLY: a failover made it a replica, and it ran no write of the pipeline."
);
create_exception!(
    _native,
    ReplyTooLarge,
    PyException,
    "Redis's answer ran past the most the caller would read: the rest is unread, so the \
     connection is out of step and must be closed."
);

/// One RESP2 reply, its payloads borrowed from the receive buffer.
enum Reply<'a> {
    Bulk(&'a [u8]),
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Nil,
    Array(Vec<Reply<'a>>),
}

/// A reply that breaks RESP2: the connection can no longer be trusted.
fn protocol_error(message: &str) -> PyErr {
    PyConnectionError::new_err(format!("not a RESP2 reply: {message}"))
}

/// The line at `at` (without its CRLF) and where the next one starts; None until its CRLF arrived.
fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = at + buffer.get(at..)?.iter().position(|&b| b == b'\n')?;
    (end > at && buffer[end - 1] == b'\r').then(|| (&buffer[at..end - 1], end + 1))
}

fn decimal(text: &[u8]) -> PyResult<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol_error("a length or integer is not a number"))
}

/// The reply at `at` and where the next one starts; None while the buffer does not hold all of it.
/// Bulk payloads are skipped by their length, so a retry after more bytes arrive costs per element,
/// not per byte.
fn parse_reply(buffer: &[u8], at: usize) -> PyResult<Option<(Reply<'_>, usize)>> {
    let Some((header, next)) = line(buffer, at) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = header.split_first() else {
        return Err(protocol_error("an empty line"));
    };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(rest), next),
        b'-' => (Reply::Error(rest), next),
        b':' => (Reply::Integer(decimal(rest)?), next),
        b'$' => match usize::try_from(decimal(rest)?) {
            Err(_) => (Reply::Nil, next),
            Ok(size) => {
                let end = next + size;
                if buffer.len() < end + 2 {
                    return Ok(None);
                }
                if &buffer[end..end + 2] != b"\r\n" {
                    return Err(protocol_error("a bulk string overruns its length"));
                }
                (Reply::Bulk(&buffer[next..end]), end + 2)
            }
        },
        b'*' => match usize::try_from(decimal(rest)?) {
            Err(_) => (Reply::Nil, next),
            Ok(size) => {
                let mut items = Vec::with_capacity(size.min(4096));
                let mut position = next;
                for _ in 0..size {
                    let Some((item, after)) = parse_reply(buffer, position)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    position = after;
                }
                (Reply::Array(items), position)
            }
        },
        _ => return Err(protocol_error("an unknown reply type")),
    }))
}

fn to_python<'py>(py: Python<'py>, reply: &Reply<'_>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match reply {
        Reply::Bulk(data) | Reply::Simple(data) => PyBytes::new(py, data).into_any(),
        Reply::Error(message) => RedisError::new_err(String::from_utf8_lossy(message).into_owned())
            .into_value(py)
            .into_bound(py)
            .into_any(),
        Reply::Integer(value) => value.into_pyobject(py)?.into_any(),
        Reply::Nil => py.None().into_bound(py),
        Reply::Array(items) => {
            let converted = items
                .iter()
                .map(|item| to_python(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            pyo3::types::PyList::new(py, converted)?.into_any()
        }
    })
}

/// A pipeline's replies as Python values; RedisRedirect when a node sent any of them elsewhere
/// (`MOVED` or `ASK`: in a cluster it then ran nothing of ours, a MULTI it answers with EXECABORT),
/// RedisReadOnly when a node that became a replica refused a write (`READONLY`).
fn replies_to_python<'py>(
    py: Python<'py>,
    replies: &[Reply<'_>],
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    check_routing(replies)?;
    replies.iter().map(|reply| to_python(py, reply)).collect()
}

/// RedisRedirect when a node sent any of `replies` elsewhere, RedisReadOnly when it is a replica.
fn check_routing(replies: &[Reply<'_>]) -> PyResult<()> {
    for reply in replies {
        if let Reply::Error(message) = reply {
            let text = || String::from_utf8_lossy(message).into_owned();
            if message.starts_with(b"MOVED ") || message.starts_with(b"ASK ") {
                return Err(RedisRedirect::new_err(text()));
            }
            if message.starts_with(b"READONLY ") {
                return Err(RedisReadOnly::new_err(text()));
            }
        }
    }
    Ok(())
}

/// The `count` replies at the start of `data`, which must hold nothing else; None while incomplete.
fn parse_replies(data: &[u8], count: usize) -> PyResult<Option<Vec<Reply<'_>>>> {
    let mut replies = Vec::with_capacity(count);
    let mut position = 0;
    for _ in 0..count {
        let Some((reply, after)) = parse_reply(data, position)? else {
            return Ok(None);
        };
        replies.push(reply);
        position = after;
    }
    if position != data.len() {
        return Err(protocol_error("bytes beyond the replies of the pipeline"));
    }
    Ok(Some(replies))
}

/// The `count` replies a pipeline gets, decoded from `buffer` (bytes, or a bytearray that grows as
/// more arrives); None while it does not hold them all yet. Error replies become RedisError values
/// in place, but a redirect (`MOVED`, `ASK`) raises RedisRedirect and `READONLY` RedisReadOnly;
/// bytes beyond the last reply, or anything that is not RESP2, raise ConnectionError.
#[pyfunction]
pub fn decode_replies<'py>(
    py: Python<'py>,
    buffer: &Bound<'py, PyAny>,
    count: usize,
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let owned;
    let data: &[u8] = if let Ok(bytes) = buffer.cast::<PyBytes>() {
        bytes.as_bytes()
    } else {
        let array = buffer.cast::<pyo3::types::PyByteArray>()?;
        // SAFETY: no Python code runs while the bytearray is borrowed (the completeness check calls
        // none), so it cannot be resized under us; the replies are then decoded from a copy.
        if parse_replies(unsafe { array.as_bytes() }, count)?.is_none() {
            return Ok(None);
        }
        owned = array.to_vec();
        &owned
    };
    let Some(replies) = parse_replies(data, count)? else {
        return Ok(None);
    };
    replies_to_python(py, &replies).map(Some)
}

/// Writes `request` to the connected socket `fd` and reads until the `count` replies are in.
/// The socket is blocking with the kernel's timeouts (SO_SNDTIMEO, SO_RCVTIMEO), so a Redis that
/// stops answering ends the wait with TimeoutError. A signal that interrupts the wait runs its
/// Python handler at once, as Python's own socket calls do: Ctrl-C does not wait for the timeout.
/// ReplyTooLarge once more than `max_bytes` have arrived.
fn exchange(fd: RawFd, request: &[u8], count: usize, max_bytes: usize) -> PyResult<Vec<u8>> {
    // SAFETY: the caller keeps `fd` open for the call; ManuallyDrop never closes it.
    let mut socket = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let timed_out = |error: std::io::Error| match error.kind() {
        ErrorKind::WouldBlock => PyTimeoutError::new_err("redis did not answer in time"),
        _ => PyErr::from(error),
    };
    let closed = || PyConnectionError::new_err("redis closed the connection");
    let signalled = || Python::attach(|py| py.check_signals());
    let mut written = 0;
    while written < request.len() {
        match socket.write(&request[written..]) {
            Ok(0) => return Err(closed()),
            Ok(size) => written += size,
            Err(error) if error.kind() == ErrorKind::Interrupted => signalled()?,
            Err(error) => return Err(timed_out(error)),
        }
    }
    // Read straight into the answer. 4 KiB holds the replies of every single operation and costs
    // nothing to zero; a longer answer (a batch get) grows it to 64 KiB, then by doubling.
    let mut received = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if filled == received.len() {
            received.resize((2 * filled).max(1 << 16), 0);
        }
        filled += match socket.read(&mut received[filled..]) {
            Ok(0) => return Err(closed()),
            Ok(size) => size,
            Err(error) if error.kind() == ErrorKind::Interrupted => {
                signalled()?;
                continue;
            }
            Err(error) => return Err(timed_out(error)),
        };
        if filled > max_bytes {
            return Err(ReplyTooLarge::new_err(format!(
                "redis answered more than the {max_bytes} bytes asked for"
            )));
        }
        if parse_replies(&received[..filled], count)?.is_some() {
            received.truncate(filled);
            return Ok(received);
        }
    }
}

/// A pipeline's round trip on a plain TCP connection in one call: `request` written to the socket
/// `fd`, its `count` replies read and decoded as `decode_replies` does, the GIL released while it
/// waits. OSError (TimeoutError when the kernel's timeout ran out) when the connection fails;
/// ReplyTooLarge when the answer runs past `max_bytes`.
#[pyfunction]
pub fn roundtrip<'py>(
    py: Python<'py>,
    fd: RawFd,
    request: &[u8],
    count: usize,
    max_bytes: usize,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let received = py.detach(|| exchange(fd, request, count, max_bytes))?;
    let replies = parse_replies(&received, count)?.expect("exchange read every reply");
    replies_to_python(py, &replies)
}
