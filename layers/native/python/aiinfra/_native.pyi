"""Typed face of the compiled extension `aiinfra._native`."""

from collections.abc import Sequence
from typing import Any

__version__: str

class MetadataColumns:
    """Columnar metadata of one index segment; `select` evaluates a compiled filter into a bitmap."""

    def __init__(
        self,
        rows: int,
        numeric: list[tuple[str, bytes]],
        tokens: list[tuple[str, list[str], bytes]],
    ) -> None: ...
    @property
    def rows(self) -> int: ...
    def select(self, program: list[tuple[int, str, list[float], list[str]]]) -> tuple[bytes, int]: ...

class HnswSq8Walk:
    """The search walk over a FAISS inner-product `HNSW..,SQ8` graph, re-ranked over flat vectors,
    reading the index's arrays in place (`aiinfra.vectors.segment.hnsw_sq8_walk` builds it)."""

    def __init__(
        self,
        owner: object,
        dimension: int,
        rows: int,
        neighbors: Any,
        offsets: Any,
        level_starts: list[int],
        codes: Any,
        vectors: Any,
        trained: list[float],
        entry: int,
        max_level: int,
    ) -> None: ...
    def search(self, queries: bytes, k: int, ef: int, refine: int, threads: int) -> tuple[bytes, bytes]: ...

class Memory:
    """One memory as stored: what a put answers (`value_json` empty) and what a get opens."""

    def __init__(self, key: str, version: int, expires_at_ms: int, value_json: bytes = b"") -> None: ...
    @property
    def key(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def expires_at_ms(self) -> int: ...
    @property
    def value_json(self) -> bytes: ...

class IntegrityError(ValueError):
    """A stored memory failed authentication: tampered, truncated, moved, or sealed with an unknown key."""

class EnvelopeCodec:
    """AES-256-GCM memory envelopes (format 1); the same bytes as `aiinfra.memory.envelope`."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None: ...
    @property
    def current_key_id(self) -> str: ...
    def seal(self, redis_key: bytes, version: int, expires_at_ms: int, plaintext: bytes) -> bytes: ...
    def open(self, redis_key: bytes, blob: bytes) -> tuple[int, int, bytes]: ...
    def seal_many(self, items: list[tuple[bytes, int, int, bytes]]) -> list[bytes]: ...
    def seal_command(
        self,
        head: Sequence[bytes | str | int],
        redis_key: bytes,
        expires_at_ms: int,
        plaintext: bytes,
        tail: Sequence[bytes | str | int],
    ) -> tuple[bytes, int]: ...
    def seal_batch_put(
        self,
        prefix: bytes,
        index_key: bytes,
        index_ttl_ms: int,
        now_ms: int,
        items: list[tuple[str, bytes, int]],
        answer_replaced: bool = False,
    ) -> tuple[bytes, int, list[Memory]]: ...
    def put_on_socket(
        self,
        fd: int,
        prefix: bytes,
        index_key: bytes,
        index_ttl_ms: int,
        now_ms: int,
        items: list[tuple[str, bytes, int]],
        answer_replaced: bool = False,
    ) -> tuple[list[Memory], list[bool]]:
        """`seal_batch_put` and its round trip on the connected plain TCP socket `fd` in one call (the
        GIL released while it waits): the memories as written and, with `answer_replaced`, whether
        each SET created its memory (else an empty list). RedisError naming the cause when Redis
        refused the transaction or a command in it; RedisRedirect or RedisReadOnly as `roundtrip`;
        ConnectionError when the replies are not those of the transaction sent."""
    def open_many(self, prefix: bytes, keys: list[str], blobs: list[bytes | None]) -> list[Memory | None]: ...
    def recall_best(
        self, prefix: bytes, entries: list[bytes], query: bytes, limit: int, min_score: float | None = None
    ) -> list[tuple[str, float, int, int]]:
        """The recall vectors in `entries` (name, blob, ...; each sealed under `<prefix><name>`)
        live now, scored against `query` (a unit float32 vector): the best `limit` as
        `(name, score, version, expires_at_ms)`, none under `min_score`.
        IntegrityError naming the key of any blob that fails authentication."""

INDEX_ENCODING_MEMBER: bytes
"""Added first to an agent's index by a batch put of many, and removed in the same transaction: it
turns a small index from a Redis listpack into a skiplist (see batch.rs)."""

def encode_commands(commands: Sequence[Sequence[bytes | str | int]]) -> bytes:
    """The RESP2 request bytes of a pipeline of Redis commands."""

class RedisError(Exception):
    """Redis answered a command with an error reply."""

class RedisRedirect(RedisError):
    """A Redis Cluster node answered MOVED or ASK: it executed nothing of the pipeline."""

def decode_replies(buffer: bytes | bytearray, count: int) -> list[Any] | None:
    """The `count` RESP2 replies of a pipeline in `buffer`, or None while it holds only part of them;
    error replies become RedisError values in place, but a redirect (MOVED, ASK) raises RedisRedirect
    and READONLY raises RedisReadOnly. ConnectionError, as soon as it shows, for anything that is not
    RESP2 or breaks the parser's bounds (arrays nested deeper than 8, more than 2**20 values, more
    than 256 MiB, a line over 64 KiB)."""

class RedisReadOnly(RedisError):
    """A node answered READONLY: a failover made it a replica, and it ran no write of the pipeline."""

class ReplyTooLarge(Exception):
    """Redis's answer ran past the most the caller would read: the rest is unread, so the connection
    is out of step and must be closed."""

def roundtrip(fd: int, request: bytes, count: int, max_bytes: int) -> list[Any]:
    """A pipeline's round trip on the connected plain TCP socket `fd`: `request` written, its `count`
    replies read and decoded as by `decode_replies`, the GIL released while it waits; ReplyTooLarge
    once more than `max_bytes` have arrived. The whole round trip ends within the socket's timeout
    (SO_RCVTIMEO, set equal to SO_SNDTIMEO), TimeoutError past it, however the bytes trickle in."""

def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of a key (CRC16 of its hash tag, mod 16384)."""
