//! RESP2 on the wire: a pipeline's request bytes, its replies parsed, its round trip on a plain TCP
//! socket, the Redis Cluster slot a key routes to, and the Python exceptions for what Redis answers.
use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyException, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

mod reply;

pub(crate) use reply::{parse_replies, protocol_error, replies_complete, Reply};

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
pub(crate) fn write_header(out: &mut Vec<u8>, prefix: u8, number: usize) {
    out.push(prefix);
    write_decimal(out, number as u64);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn write_bulk_bytes(out: &mut Vec<u8>, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A non-negative integer argument, in decimal.
pub(crate) fn write_bulk_decimal(out: &mut Vec<u8>, number: u64) {
    write_bulk_bytes(out, decimal_digits(number, &mut [0u8; 20]));
}

/// One argument of a Redis command as RESP wants it: bytes as they are, text as UTF-8, integers in decimal.
pub(crate) fn write_bulk(out: &mut Vec<u8>, arg: &Bound<'_, PyAny>) -> PyResult<()> {
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
fn encode_commands<'py>(
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
fn key_slot(key: &[u8]) -> u16 {
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
pub(crate) fn check_routing(replies: &[Reply<'_>]) -> PyResult<()> {
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

/// The `count` replies a pipeline gets, decoded from `buffer` (bytes, or a bytearray that grows as
/// more arrives); None while it does not hold them all yet. Error replies become RedisError values
/// in place, but a redirect (`MOVED`, `ASK`) raises RedisRedirect and `READONLY` RedisReadOnly;
/// bytes beyond the last reply, or anything that is not RESP2, raise ConnectionError.
#[pyfunction]
fn decode_replies<'py>(
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
        if !replies_complete(unsafe { array.as_bytes() }, count)? {
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

/// A write that takes longer is not a healthy one: the round trip's deadline starts to apply.
const SLOW_WRITE: Duration = Duration::from_millis(10);

/// One deadline for a whole round trip: the socket's own timeout, counted from the start. The
/// kernel's timeout alone restarts with every read, so a peer that trickles bytes could keep the
/// call for ever; a round trip of one write and one read (nearly all) never looks at the clock
/// again, nor changes the socket's timeouts.
struct Deadline {
    started: Instant,
    /// The socket's timeout (SO_RCVTIMEO, which the caller set equal to SO_SNDTIMEO), once read.
    timeout: Option<Option<Duration>>,
}

impl Deadline {
    /// Before another read or write: the time left becomes the socket's timeout; TimeoutError
    /// once none is left.
    fn arm(&mut self, socket: &TcpStream) -> PyResult<()> {
        let timeout = match self.timeout {
            Some(timeout) => timeout,
            None => *self.timeout.insert(socket.read_timeout()?),
        };
        let Some(timeout) = timeout else {
            return Ok(());
        };
        let left = (timeout.checked_sub(self.started.elapsed()))
            .filter(|left| !left.is_zero())
            .ok_or_else(|| PyTimeoutError::new_err("redis did not answer in time"))?;
        socket.set_read_timeout(Some(left))?;
        socket.set_write_timeout(Some(left))?;
        Ok(())
    }

    /// The socket's own timeouts back, for its next round trip.
    fn disarm(self, socket: &TcpStream) -> PyResult<()> {
        if let Some(timeout) = self.timeout {
            socket.set_read_timeout(timeout)?;
            socket.set_write_timeout(timeout)?;
        }
        Ok(())
    }
}

/// Writes `request` to the connected socket `fd` and reads until the `count` replies are in.
/// The socket is blocking with the kernel's timeouts (SO_SNDTIMEO, SO_RCVTIMEO, set equal), and
/// the whole round trip must end within that timeout too: TimeoutError when Redis stops answering
/// or answers too slowly. A signal that interrupts the wait runs its Python handler at once, as
/// Python's own socket calls do: Ctrl-C does not wait for the timeout. ReplyTooLarge once more than
/// `max_bytes` have arrived; ConnectionError when the answer breaks RESP2 or its bounds.
pub(crate) fn exchange(
    fd: RawFd,
    request: &[u8],
    count: usize,
    max_bytes: usize,
) -> PyResult<Vec<u8>> {
    // SAFETY: the caller keeps `fd` open for the call; ManuallyDrop never closes it.
    let mut socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    let mut deadline = Deadline {
        started: Instant::now(),
        timeout: None,
    };
    let timed_out = |error: std::io::Error| match error.kind() {
        ErrorKind::WouldBlock => PyTimeoutError::new_err("redis did not answer in time"),
        _ => PyErr::from(error),
    };
    let closed = || PyConnectionError::new_err("redis closed the connection");
    let signalled = || Python::attach(|py| py.check_signals());
    let mut written = 0;
    while written < request.len() {
        if written > 0 {
            deadline.arm(&socket)?;
        }
        match socket.write(&request[written..]) {
            Ok(0) => return Err(closed()),
            Ok(size) => written += size,
            Err(error) if error.kind() == ErrorKind::Interrupted => signalled()?,
            Err(error) => return Err(timed_out(error)),
        }
    }
    if deadline.timeout.is_some() || deadline.started.elapsed() > SLOW_WRITE {
        deadline.arm(&socket)?;
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
        // Every complete answer ends in CRLF: parsing from the start after each read only then keeps
        // a long answer (an HGETALL of thousands of fields) linear in its size.
        if received[..filled].ends_with(b"\r\n") && replies_complete(&received[..filled], count)? {
            received.truncate(filled);
            deadline.disarm(&socket)?;
            return Ok(received);
        }
        deadline.arm(&socket)?;
    }
}

/// A pipeline's round trip on a plain TCP connection in one call: `request` written to the socket
/// `fd`, its `count` replies read and decoded as `decode_replies` does, the GIL released while it
/// waits. OSError (TimeoutError when the timeout ran out) when the connection fails or the answer
/// breaks RESP2 (ConnectionError);
/// ReplyTooLarge when the answer runs past `max_bytes`.
#[pyfunction]
fn roundtrip<'py>(
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

/// RedisError with the first error reply among `replies`, if there is one.
pub(crate) fn first_error(replies: &[Reply<'_>]) -> Option<PyErr> {
    replies.iter().find_map(|reply| match reply {
        Reply::Error(message) => Some(RedisError::new_err(
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => None,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_commands, m)?)?;
    m.add_function(wrap_pyfunction!(decode_replies, m)?)?;
    m.add_function(wrap_pyfunction!(roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(key_slot, m)?)?;
    let py = m.py();
    m.add("RedisError", py.get_type::<RedisError>())?;
    m.add("RedisRedirect", py.get_type::<RedisRedirect>())?;
    m.add("RedisReadOnly", py.get_type::<RedisReadOnly>())?;
    m.add("ReplyTooLarge", py.get_type::<ReplyTooLarge>())?;
    Ok(())
}
