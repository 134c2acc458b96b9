//! RESP2 replies parsed from a receive buffer, within bounds no answer of ours comes near: a peer
//! that breaks them (or the protocol) is not Redis, and its connection can no longer be trusted.
use pyo3::exceptions::PyConnectionError;
use pyo3::prelude::*;

/// One RESP2 reply, its payloads borrowed from the receive buffer.
pub(crate) enum Reply<'a> {
    Bulk(&'a [u8]),
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Nil,
    Array(Vec<Reply<'a>>),
}

/// A reply that breaks RESP2: the connection can no longer be trusted.
pub(crate) fn protocol_error(message: &str) -> PyErr {
    PyConnectionError::new_err(format!("not a RESP2 reply: {message}"))
}

/// How deep arrays nest in a reply. Ours nest at most four deep (CLUSTER SLOTS); a peer nesting
/// deeper is not Redis answering us, and parsing it without a bound would overflow the stack.
const MAX_DEPTH: usize = 8;
/// The most values (each array, string and integer) in one pipeline's replies: more than any
/// answer of ours holds, few enough that converting them to Python cannot exhaust the memory.
const MAX_VALUES: usize = 1 << 20;
/// The most bytes of one pipeline's replies: more than any answer of ours (the largest, a page of
/// rewrap's MGET, is 500 values of the largest size); a peer claiming more is not Redis.
const MAX_REPLY_BYTES: usize = 256 << 20;
/// The longest line: a type and a length, or a status or error message, is far shorter.
const MAX_LINE: usize = 64 << 10;

/// The line at `at` (without its CRLF) and where the next one starts; None until its CRLF arrived.
fn line(buffer: &[u8], at: usize) -> PyResult<Option<(&[u8], usize)>> {
    let pending = buffer.get(at..).unwrap_or_default();
    let Some(end) = pending.iter().position(|&b| b == b'\n') else {
        if pending.len() > MAX_LINE {
            return Err(protocol_error("a line longer than any Redis sends"));
        }
        return Ok(None);
    };
    if end == 0 || pending[end - 1] != b'\r' {
        return Err(protocol_error("a line not ended by CRLF"));
    }
    Ok(Some((&pending[..end - 1], at + end + 1)))
}

fn decimal(text: &[u8]) -> PyResult<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol_error("a length or integer is not a number"))
}

/// A bulk string's or an array's length: None for -1 (nil), at most `limit`.
fn length(text: &[u8], limit: usize) -> PyResult<Option<usize>> {
    match decimal(text)? {
        -1 => Ok(None),
        size => usize::try_from(size)
            .ok()
            .filter(|&size| size <= limit)
            .map(Some)
            .ok_or_else(|| protocol_error("a length out of range")),
    }
}

/// Parses replies from one buffer within the bounds above, counting the values it has read. With
/// `keep` false it only checks them (arrays stay empty): how a receive loop asks whether all arrived.
struct Parser<'a> {
    buffer: &'a [u8],
    values: usize,
    keep: bool,
}

impl<'a> Parser<'a> {
    /// The reply at `at`, nested `depth` arrays deep, and where the next one starts; None while the
    /// buffer does not hold all of it. Bulk payloads are skipped by their length, so a retry after
    /// more bytes arrive costs per element, not per byte.
    fn reply(&mut self, at: usize, depth: usize) -> PyResult<Option<(Reply<'a>, usize)>> {
        let buffer = self.buffer;
        let Some((header, next)) = line(buffer, at)? else {
            return Ok(None);
        };
        let Some((&kind, rest)) = header.split_first() else {
            return Err(protocol_error("an empty line"));
        };
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(protocol_error("more values than any reply of ours"));
        }
        Ok(Some(match kind {
            b'+' => (Reply::Simple(rest), next),
            b'-' => (Reply::Error(rest), next),
            b':' => (Reply::Integer(decimal(rest)?), next),
            b'$' => match length(rest, MAX_REPLY_BYTES)? {
                None => (Reply::Nil, next),
                Some(size) => {
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
            b'*' if depth == MAX_DEPTH => return Err(protocol_error("arrays nested too deep")),
            b'*' => match length(rest, MAX_VALUES - self.values)? {
                None => (Reply::Nil, next),
                Some(size) => {
                    let mut items = Vec::with_capacity(if self.keep { size.min(4096) } else { 0 });
                    let mut position = next;
                    for _ in 0..size {
                        let Some((item, after)) = self.reply(position, depth + 1)? else {
                            return Ok(None);
                        };
                        if self.keep {
                            items.push(item);
                        }
                        position = after;
                    }
                    (Reply::Array(items), position)
                }
            },
            _ => return Err(protocol_error("an unknown reply type")),
        }))
    }
}

/// The `count` replies at the start of `data`, which must hold nothing else; None while incomplete.
/// ConnectionError as soon as `data` breaks RESP2 or a bound above: a peer that does is not Redis.
pub(crate) fn parse_replies(data: &[u8], count: usize) -> PyResult<Option<Vec<Reply<'_>>>> {
    parse(data, count, true)
}

/// Whether `data` holds all of `count` replies, checked as `parse_replies` does, none of them kept.
pub(crate) fn replies_complete(data: &[u8], count: usize) -> PyResult<bool> {
    parse(data, count, false).map(|replies| replies.is_some())
}

fn parse(data: &[u8], count: usize, keep: bool) -> PyResult<Option<Vec<Reply<'_>>>> {
    if data.len() > MAX_REPLY_BYTES {
        return Err(protocol_error("more bytes than any reply of ours"));
    }
    let mut parser = Parser {
        buffer: data,
        values: 0,
        keep,
    };
    let mut replies = Vec::with_capacity(if keep { count.min(4096) } else { 0 });
    let mut position = 0;
    for _ in 0..count {
        let Some((reply, after)) = parser.reply(position, 0)? else {
            return Ok(None);
        };
        if keep {
            replies.push(reply);
        }
        position = after;
    }
    if position != data.len() {
        return Err(protocol_error("bytes beyond the replies of the pipeline"));
    }
    Ok(Some(replies))
}
