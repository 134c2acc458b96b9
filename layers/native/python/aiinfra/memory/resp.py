"""A lean Redis client (RESP2 over the standard library's socket and ssl): pipelines and Lua scripts.

Why not redis-py: its import alone would spend much of the function's cold-start budget, and a
memory request needs only "send these commands, read these replies". Connections are
pooled per process and reused across invocations; a broken one is dropped and the next call
dials again, so a warm instance recovers by itself when Redis comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from aiinfra._native import (
    RedisError,
    RedisReadOnly,
    RedisRedirect,
    ReplyTooLarge,
    decode_replies,
    encode_commands,
    key_slot,
    roundtrip,
)

Arg = bytes | str | int
T = TypeVar("T")
RECEIVE_BYTES = 1 << 16
UNLIMITED = sys.maxsize  # no limit of the caller's on the bytes of an answer (the parser has its own)
# A check of a pipeline's replies (error replies among them) before they count as its answer.
Expect = Callable[[list[Any]], bool]


class RedisUnavailable(Exception):
    """Redis could not be reached, the connection broke before every reply arrived, or what answered
    was not Redis answering the commands sent (garbage, a reply of the wrong shape, a redirect out of
    the cluster)."""


def is_ok(reply: Any) -> bool:
    return isinstance(reply, bytes) and reply == b"OK"


def is_bulk(reply: Any) -> bool:
    """A value or nil: what GET answers."""
    return reply is None or isinstance(reply, bytes)


def is_bulk_list(reply: Any) -> bool:
    return isinstance(reply, list) and all(is_bulk(item) for item in reply)


def single(expect: Callable[[Any], bool]) -> Expect:
    """The check of a one-command pipeline whose reply is `expect`ed, or an error reply."""
    return lambda replies: isinstance(replies[0], RedisError) or expect(replies[0])


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
    """One connection to one node. `roundtrip(request, count, max_bytes)` sends a pipeline and
    answers its `count` replies (see `decode_replies`); OSError when the connection fails,
    ReplyTooLarge when the answer runs past `max_bytes`. `fd` is its plain TCP socket (None over
    TLS), for native calls that do their round trip themselves."""

    roundtrip: Callable[[bytes, int, int], list[Any]]
    fd: int | None = None

    def __init__(self, address: RedisAddress, timeout: float) -> None:
        self._timeout = timeout
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
            self.roundtrip = self._tls_roundtrip
        else:
            # Plain TCP: the whole round trip is one native call on the socket's descriptor (write,
            # wait with the GIL released, read, decode). The kernel keeps the timeout (SO_RCVTIMEO /
            # SO_SNDTIMEO on a blocking socket, the same for both, and the round trip's deadline);
            # Python's own would poll() before every send and recv. Not over TLS: there Python
            # retries a read that timed out this way, forever.
            sock.settimeout(None)
            limit = struct.pack("ll", *divmod(round(timeout * 1e6), 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            self.fd = sock.fileno()
            self.roundtrip = functools.partial(roundtrip, self.fd)
        self._sock = sock
        setup: list[list[Arg]] = []
        if address.password is not None:
            auth: list[Arg] = ["AUTH", address.password]
            setup.append(auth if address.username is None else ["AUTH", address.username, address.password])
        if address.db:
            setup.append(["SELECT", address.db])
        try:
            replies = self.roundtrip(encode_commands(setup), len(setup), UNLIMITED) if setup else []
        except BaseException:
            self.close()
            raise
        for reply in replies:
            if not is_ok(reply):
                self.close()
                cause = str(reply).split(" ")[0] if isinstance(reply, RedisError) else "not OK"
                raise RedisUnavailable(f"redis refused the connection set-up: {cause}")

    def _tls_roundtrip(self, request: bytes, count: int, max_bytes: int) -> list[Any]:
        """As the native `roundtrip`, over TLS: one deadline for the whole round trip, so a peer that
        trickles bytes cannot keep it past the timeout."""
        deadline = time.monotonic() + self._timeout
        self._sock.settimeout(self._timeout)
        self._sock.sendall(request)  # its timeout bounds the whole call, not each chunk
        received: bytes | bytearray = self._receive(deadline)
        while len(received) <= max_bytes:
            if (replies := decode_replies(received, count)) is not None:
                return replies
            if isinstance(received, bytes):
                received = bytearray(received)  # a long reply: grow one buffer, never re-copy it whole
            received += self._receive(deadline)
        raise ReplyTooLarge(f"redis answered more than the {max_bytes} bytes asked for")

    def _receive(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("redis did not answer in time")
        self._sock.settimeout(left)
        chunk = self._sock.recv(RECEIVE_BYTES)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        return chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class Script:
    """A Lua script run by EVALSHA; a server without it (restarted, failed over) gets the same
    request as an EVAL, which carries the source and caches it for the next EVALSHA."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._evalsha_head = b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % self.sha.encode()
        self._eval_head = b"$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (len(source.encode()), source.encode())

    def request(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        """The EVALSHA that runs the script on `keys` and `args`."""
        return encode_commands([["EVALSHA", self.sha, len(keys), *keys, *args]])

    def as_eval(self, request: bytes) -> bytes:
        """`request`, an EVALSHA of this script, as the same command by EVAL. The head comes first
        in the request (after the array's length), so nothing past it is replaced."""
        return request.replace(self._evalsha_head, self._eval_head, 1)


Node = tuple[str, int]
MAX_REDIRECTS = 3
_ASKING = encode_commands([["ASKING"]])
_CLUSTER_NODES = encode_commands([["CLUSTER", "NODES"]])


def _cluster_nodes(listing: bytes, own_host: str) -> set[Node]:
    """Every node's address in a CLUSTER NODES listing: one line per node, its second field
    `<ip>:<port>@<bus port>[,<hostname>[,<aux>=<value>...]]`; an empty ip is `own_host`'s."""
    nodes: set[Node] = set()
    for line in listing.decode(errors="replace").splitlines():
        fields = line.split(" ")
        if len(fields) < 2:
            continue
        address, _, extras = fields[1].partition(",")
        host, _, port = address.partition("@")[0].rpartition(":")
        if not port.isdigit():
            continue
        nodes.add((host or own_host, int(port)))
        hostname = extras.split(",")[0]
        if hostname and "=" not in hostname:
            nodes.add((hostname, int(port)))
    return nodes


class RedisClient:
    """Pooled connections to one Redis, or to the nodes of a Redis Cluster, shared by the threads of
    one process. In a cluster a command goes to the node that last claimed its key's slot (MOVED
    replies teach the map); each pipeline of ours touches one agent, so one hash-tag slot, one node.
    A redirect is followed only to a node of the configured endpoint's cluster (the endpoint itself,
    or a node its CLUSTER NODES lists): never is AUTH, or anything else, sent to another host."""

    def __init__(self, url: str, timeout: float) -> None:
        self.address = RedisAddress.from_url(url)
        self.timeout = timeout
        self._home: Node = (self.address.host, self.address.port)
        self._idle: dict[Node, list[_Connection]] = {}
        self._slots: dict[int, Node] = {}
        self._members: frozenset[Node] = frozenset([self._home])
        self._lock = threading.Lock()

    def send(
        self,
        request: bytes,
        count: int,
        key: Arg | None = None,
        max_bytes: int = UNLIMITED,
        expect: Expect | None = None,
    ) -> list[Any]:
        """Sends `request`, the RESP bytes of one command or of one MULTI..EXEC (`count` replies, all
        about `key`'s slot), and answers their replies; error replies come back as RedisError values
        in place, so the caller sees which command failed. ReplyTooLarge when the answer runs past
        `max_bytes`: then no more of it is read, and its connection is closed. RedisUnavailable, the
        connection closed, when the replies fail `expect`: not the answer to the commands sent.

        In a cluster, `MOVED` teaches the slot map and the request goes to the new owner. While a
        slot migrates, `ASK` sends it once to the importing node, after ASKING. There Redis refuses
        (TRYAGAIN) a request whose keys are not all in, so an agent's entries are never split.
        After a failover, see `_after_failover`."""
        node, args = self._node(key), (request, count, max_bytes)
        try:
            return self._pipeline(node, args, expect)
        except RedisRedirect as redirect:
            return self._redirected(node, redirect, args, expect)
        except RedisReadOnly:
            return self._after_failover(node, args, expect)

    def on_socket(self, key: Arg, work: Callable[..., T], *args: Any) -> T:
        """`work(fd, *args)` on a pooled plain TCP connection to the node of `key`'s slot, `fd` its
        socket: for a native call that writes its request and reads every reply itself, in one call
        from Python (see `EnvelopeCodec.put_on_socket`). Not over TLS, where Python's ssl does the
        I/O. A redirect or READONLY from `work` passes on to the caller, whose `send` then follows
        it; the connection is kept or closed as by `send`."""
        if self.address.tls:
            raise ValueError("a TLS connection has no socket to hand to native code")
        node = self._node(key)
        answer: T = self._on_connection(node, work, args)
        return answer

    def _node(self, key: Arg | None) -> Node:
        """The node that last claimed `key`'s slot (the slot map is empty until a cluster redirects us)."""
        if key is None or not self._slots:
            return self._home
        return self._slots.get(key_slot(key if isinstance(key, bytes) else str(key).encode()), self._home)

    def _pipeline(self, node: Node, args: tuple[bytes, int, int], expect: Expect | None) -> list[Any]:
        """`(request, count, max_bytes)` sent to `node` as by `send`."""
        replies: list[Any] = self._on_connection(node, None, args, expect)
        return replies

    def _after_failover(self, node: Node, args: tuple[bytes, int, int], expect: Expect | None) -> list[Any]:
        """`READONLY`: a failover made the node a replica, and our pooled connections still reach it
        (Redis keeps a demoted primary's clients connected). They are all dropped and the request,
        of which the replica ran no write, is sent once more on a new connection: that dials the
        endpoint again, which names the new primary once the failover is through. Until then,
        RedisUnavailable."""
        self._drop(node)
        try:
            return self._pipeline(node, args, expect)
        except RedisReadOnly:
            self._drop(node)
            raise RedisUnavailable(
                f"redis at {node[0]}:{node[1]} is a read-only replica: a failover is under way"
            ) from None

    def _drop(self, node: Node) -> None:
        """Closes the idle connections to `node`; the next request there dials it again."""
        for connection in self._idle.pop(node, []):
            connection.close()

    def _redirected(
        self, origin: Node, redirect: RedisRedirect, args: tuple[bytes, int, int], expect: Expect | None
    ) -> list[Any]:
        # A redirect means that node executed nothing of ours (a MULTI it answers with EXECABORT).
        request, count, max_bytes = args
        for _ in range(MAX_REDIRECTS):
            kind, slot, node = self._redirect_target(origin, redirect)
            try:
                if kind == "ASK":
                    asked = None if expect is None else lambda replies: expect(replies[1:])
                    return self._pipeline(node, (_ASKING + request, count + 1, max_bytes), asked)[1:]
                with self._lock:
                    self._slots[slot] = node
                return self._pipeline(node, args, expect)
            except RedisRedirect as again:
                origin, redirect = node, again
        raise RedisUnavailable(f"redis cluster redirected a command more than {MAX_REDIRECTS} times")

    def _redirect_target(self, origin: Node, redirect: RedisRedirect) -> tuple[str, int, Node]:
        """`MOVED|ASK <slot> <host>:<port>` from `origin` as (kind, slot, node); RedisUnavailable,
        `origin`'s connections closed, when it is malformed or names a node outside the endpoint's
        cluster: that is no node of ours answering."""
        try:
            kind, slot, target = str(redirect).split(" ")
            host, _, port = target.rpartition(":")
            node, slot_number = (host or self.address.host, int(port)), int(slot)
        except ValueError:
            self._drop(origin)
            raise RedisUnavailable("redis answered a malformed redirect") from None
        if node not in self._members and node not in self._learn_members():
            self._drop(origin)
            raise RedisUnavailable(
                f"redis redirected to {node[0]}:{node[1]}, not a node of the cluster at "
                f"{self._home[0]}:{self._home[1]}: not followed"
            )
        return kind, slot_number, node

    def _learn_members(self) -> frozenset[Node]:
        """The nodes of the endpoint's cluster as the endpoint lists them (CLUSTER NODES, not CLUSTER
        SLOTS: a node that owns no slot yet, the target of a first migration, is asked for too); the
        endpoint alone when it is no cluster."""
        [listing] = self._pipeline(self._home, (_CLUSTER_NODES, 1, UNLIMITED), single(is_bulk))
        nodes = _cluster_nodes(listing, self._home[0]) if isinstance(listing, bytes) else set()
        members = frozenset([self._home, *nodes])
        self._members = members
        return members

    def _on_connection(
        self,
        node: Node,
        native: Callable[..., Any] | None,
        args: tuple[Any, ...],
        expect: Expect | None = None,
    ) -> Any:
        """On a pooled connection to `node` (a new one when none is idle): `native(fd, *args)` on its
        socket when given (see `on_socket`), else its `roundtrip(*args)`, whose replies must pass
        `expect`. The connection goes back to the pool unless it broke; RedisUnavailable when it did,
        or when the replies failed `expect` (then it is closed too: it reached no Redis of ours)."""
        # list.pop and list.append are atomic, so threads share the idle lists without a lock.
        idle = self._idle.get(node) or self._idle.setdefault(node, [])
        try:
            connection: _Connection | None = idle.pop()
        except IndexError:
            connection = None
        try:
            if connection is None:
                connection = _Connection(
                    dataclasses.replace(self.address, host=node[0], port=node[1]), self.timeout
                )
            try:
                answer = connection.roundtrip(*args) if native is None else native(connection.fd, *args)
            except RedisReadOnly:
                connection.close()  # it reaches a replica: see `send`
                raise
            except RedisError:
                idle.append(connection)  # a redirect or a refusal: every reply arrived, it stays good
                raise
            except ReplyTooLarge:
                connection.close()  # the rest of the answer is unread: the connection is out of step
                raise
            if expect is not None and not expect(answer):
                connection.close()
                raise RedisUnavailable(
                    f"redis at {node[0]}:{node[1]} answered with a reply of the wrong shape"
                )
        except (OSError, ValueError) as error:
            if connection is not None:
                connection.close()
            if native is not None and not isinstance(error, OSError):
                raise  # the caller's input (a key that is not UTF-8), refused before a byte went out
            raise RedisUnavailable(
                f"redis at {node[0]}:{node[1]} is unavailable: {error.__class__.__name__}"
            ) from None
        idle.append(connection)
        return answer

    def call(
        self, *args: Arg, max_bytes: int = UNLIMITED, expect: Callable[[Any], bool] | None = None
    ) -> Any:
        """One command (routed by its first key); an error reply raises RedisError, an answer longer
        than `max_bytes` ReplyTooLarge, a reply that is not `expect`ed RedisUnavailable."""
        key = args[1] if len(args) > 1 else None
        checked = None if expect is None else single(expect)
        reply = self.send(encode_commands([args]), 1, key, max_bytes, checked)[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def run(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        expect: Callable[[Any], bool] | None = None,
        max_bytes: int = UNLIMITED,
    ) -> Any:
        """Runs `script` on `keys` and `args`; an error reply raises RedisError, an answer longer than
        `max_bytes` ReplyTooLarge, a reply that is not `expect`ed RedisUnavailable."""
        key = keys[0] if keys else None
        return self.run_encoded(script, script.request(keys, args), key, expect, max_bytes)

    def run_encoded(
        self,
        script: Script,
        request: bytes,
        key: Arg | None,
        expect: Callable[[Any], bool] | None = None,
        max_bytes: int = UNLIMITED,
    ) -> Any:
        """`run` for `request`, an EVALSHA of `script` already encoded."""
        checked = None if expect is None else single(expect)
        reply = self.send(request, 1, key, max_bytes, checked)[0]
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            reply = self.send(script.as_eval(request), 1, key, max_bytes, checked)[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for connection in idle:
                connection.close()


__all__ = [
    "UNLIMITED",
    "Arg",
    "Expect",
    "RedisAddress",
    "RedisClient",
    "RedisError",
    "RedisReadOnly",
    "RedisRedirect",
    "RedisUnavailable",
    "ReplyTooLarge",
    "Script",
    "is_bulk",
    "is_bulk_list",
    "is_ok",
    "single",
]
