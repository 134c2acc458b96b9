"""A lean Redis client (RESP2 over the standard library's socket and ssl): pipelines and Lua scripts.

Why not redis-py: it costs ~100 ms of import on a function whose whole init budget is 350 ms,
and a memory request needs only "send these commands, read these replies". Connections are
pooled per process and reused across invocations; a broken one is dropped and the next call
dials again, so a warm instance recovers by itself when Redis comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from aiinfra._native import encode_commands, key_slot

Arg = bytes | str | int


class RedisError(Exception):
    """Redis answered a command with an error reply."""


class RedisUnavailable(Exception):
    """Redis could not be reached, or the connection broke before every reply arrived."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    db: int

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """`redis://` or `rediss://` (TLS), with optional `user:password@` and `/db`."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("a Redis URL starts with redis:// or rediss://")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(path) if path else 0,
        )


class _Connection:
    def __init__(self, address: RedisAddress, timeout: float) -> None:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
        self._sock = sock
        self._reader: BinaryIO = sock.makefile("rb")
        setup: list[list[Arg]] = []
        if address.password is not None:
            auth: list[Arg] = ["AUTH", address.password]
            setup.append(auth if address.username is None else ["AUTH", address.username, address.password])
        if address.db:
            setup.append(["SELECT", address.db])
        for reply in self.roundtrip(setup) if setup else ():
            if isinstance(reply, RedisError):
                self.close()
                raise RedisUnavailable(f"redis refused the connection set-up: {reply}")

    def roundtrip(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        self._sock.sendall(encode_commands(commands))
        return [self._read() for _ in commands]

    def _read(self) -> Any:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._reader.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("redis closed the connection")
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode(errors="replace"))
        raise ConnectionError(f"not a RESP2 reply: {line[:20]!r}")

    def close(self) -> None:
        for closable in (self._reader, self._sock):
            with contextlib.suppress(OSError):
                closable.close()


class Script:
    """A Lua script run by EVALSHA, loaded with EVAL when the server does not hold it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


Node = tuple[str, int]
MAX_REDIRECTS = 3


class RedisClient:
    """Pooled connections to one Redis, or to the nodes of a Redis Cluster, shared by the threads of
    one process. In a cluster a command goes to the node that last claimed its key's slot (MOVED
    replies teach the map); each pipeline of ours touches one agent, so one hash-tag slot, one node."""

    def __init__(self, url: str, timeout: float) -> None:
        self.address = RedisAddress.from_url(url)
        self.timeout = timeout
        self._idle: dict[Node, list[_Connection]] = {}
        self._slots: dict[int, Node] = {}
        self._lock = threading.Lock()

    def pipeline(self, commands: Sequence[Sequence[Arg]], key: Arg | None = None) -> list[Any]:
        """Sends every command at once (all about `key`'s slot) and answers their replies; error
        replies come back as RedisError values in place, so the caller sees which command failed."""
        node = (self.address.host, self.address.port)
        if key is not None:
            node = self._slots.get(key_slot(key if isinstance(key, bytes) else str(key).encode()), node)
        for _ in range(MAX_REDIRECTS + 1):
            replies = self._roundtrip(node, commands)
            # A MOVED reply means that node executed nothing of ours (a MULTI it answers with EXECABORT).
            moved = next(
                (str(r) for r in replies if isinstance(r, RedisError) and str(r).startswith("MOVED ")), ""
            )
            if not moved:
                return replies
            _, slot, target = moved.split(" ")
            host, _, port = target.rpartition(":")
            node = (host or self.address.host, int(port))
            with self._lock:
                self._slots[int(slot)] = node
        raise RedisUnavailable(f"redis cluster redirected a command more than {MAX_REDIRECTS} times")

    def _roundtrip(self, node: Node, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        with self._lock:
            idle = self._idle.setdefault(node, [])
            connection = idle.pop() if idle else None
        try:
            if connection is None:
                connection = _Connection(
                    dataclasses.replace(self.address, host=node[0], port=node[1]), self.timeout
                )
            replies = connection.roundtrip(commands)
        except (OSError, ValueError) as error:
            if connection is not None:
                connection.close()
            raise RedisUnavailable(
                f"redis at {node[0]}:{node[1]} is unavailable: {error.__class__.__name__}"
            ) from None
        with self._lock:
            self._idle[node].append(connection)
        return replies

    def call(self, *args: Arg) -> Any:
        """One command (routed by its first key); an error reply raises RedisError."""
        reply = self.pipeline([args], args[1] if len(args) > 1 else None)[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        key = keys[0] if keys else None
        reply = self.pipeline([["EVALSHA", script.sha, len(keys), *keys, *args]], key)[0]
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            reply = self.pipeline([["EVAL", script.source, len(keys), *keys, *args]], key)[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for connection in idle:
                connection.close()
