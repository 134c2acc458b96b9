"""A hostile or broken peer where Redis should be: every kind of bad answer closes the connection and
becomes RedisUnavailable (503 at the API) within the timeout; the process survives; a redirect is
followed only inside the endpoint's cluster. The peer is a real socket server on 127.0.0.x that
answers scripted bytes."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from aiinfra.memory.resp import RedisUnavailable
from aiinfra.memory.store import MemoryNotFound, MemoryStore, memory_store
from fastapi.testclient import TestClient

from tests.integration.test_memory_faults import _certificates
from tests.support.memory import memory_app, memory_settings_for

TIMEOUT = 0.5
# How long a call may take past the timeout before it counts as a hang: wide, the machine is shared.
SLACK = 1.5

# What the peer does for one command: bytes to send, a pause in seconds, or None to close.
Step = bytes | float | None
Script = Callable[[list[bytes]], Iterable[Step]]


def _command(buffer: bytearray) -> list[bytes] | None:
    """The first RESP command (an array of bulk strings) in `buffer`, taken out of it; None until whole."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, _, rest = bytes(buffer).partition(b"\r\n")
    args, at = [], 0
    for _ in range(int(head[1:])):
        end = rest.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(rest[at + 1 : end])
        if len(rest) < end + 2 + size + 2:
            return None
        args.append(rest[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    del buffer[: len(head) + 2 + at]
    return args


class HostilePeer:
    """A TCP server that answers each command it reads with the steps `script` gives for it. It
    records every command and counts the connections it accepted and those its client closed."""

    def __init__(self, script: Script, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.commands: list[list[bytes]] = []
        self.accepted = 0
        self.closed_by_client = 0
        self._tls = tls
        self._stop = threading.Event()
        self._listener = socket.create_server((host, 0))
        self.host, self.port = host, self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis{'s' if self._tls else ''}://{'localhost' if self._tls else self.host}:{self.port}/0"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._session, args=(connection,), daemon=True).start()

    def _session(self, connection: socket.socket) -> None:
        buffer = bytearray()
        try:
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_side=True)
            while not self._stop.is_set():
                while (command := _command(buffer)) is not None:
                    self.commands.append(command)
                    for step in self.script(command):
                        if step is None:
                            return
                        if isinstance(step, float):
                            time.sleep(step)
                        else:
                            connection.sendall(step)
                chunk = connection.recv(65536)
                if not chunk:
                    self.closed_by_client += 1
                    return
                buffer += chunk
        except OSError:
            self.closed_by_client += 1  # it reset the connection while we wrote
        finally:
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., HostilePeer]]:
    started: list[HostilePeer] = []

    def start(script: Script, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> HostilePeer:
        started.append(HostilePeer(script, host, tls))
        return started[-1]

    yield start
    for peer in started:
        peer.close()


def _once(hostile: Iterable[Step]) -> Script:
    """Answers the first GET (and the MULTI/EXEC around it) with `hostile`, then behaves: every
    later GET finds nothing."""
    steps = list(hostile)
    served = threading.Event()

    def script(command: list[bytes]) -> Iterable[Step]:
        if served.is_set():
            return [b"$-1\r\n"]
        served.set()
        return steps

    return script


def _trickle(data: bytes, pause: float) -> Iterator[Step]:
    for byte in data:
        yield bytes([byte])
        yield pause


# Each a hostile answer to a GET, by name: what a broken or malicious peer may send.
HOSTILE_GET_REPLIES: dict[str, list[Step]] = {
    "garbage": [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not redis at all\r\n"],
    "unknown reply type": [b"?what\r\n"],
    "a line without CRLF": [b"+OK\n"],
    "an endless line": [b"+" + b"x" * 200_000],
    "truncated bulk, then closed": [b"$100\r\nhalf of it", None],
    "truncated header, then closed": [b"$10", None],
    "closed before any reply": [None],
    "nested 200,000 arrays deep": [b"*1\r\n" * 200_000 + b":1\r\n"],
    "array count of 2**32": [b"*4294967296\r\n"],
    "array count past i64": [b"*99999999999999999999999\r\n"],
    "1.2 million values sent": [b"*2\r\n" + (b"*600000\r\n" + b":1\r\n" * 600_000) * 2],
    "bulk length $999999999999": [b"$999999999999\r\n"],
    "bulk length 2**63-1": [b"$9223372036854775807\r\n"],
    "negative bulk length": [b"$-2\r\n"],
    "bulk overruns its length": [b"$3\r\nabcdef\r\n"],
    "bytes beyond the reply": [b"$-1\r\n+extra\r\n"],
    "integer where GET wants a value": [b":1\r\n"],
    "array where GET wants a value": [b"*1\r\n$1\r\nx\r\n"],
    "slow trickle of a valid reply": list(_trickle(b"$300\r\n" + b"x" * 300 + b"\r\n", 0.05)),
    "malformed redirect": [b"-MOVED nonsense\r\n"],
}


def _store(url: str, keyring_uri: str) -> MemoryStore:
    return memory_store(memory_settings_for(url, keyring_uri, timeout=TIMEOUT))


@pytest.mark.parametrize("kind", list(HOSTILE_GET_REPLIES))
def test_a_hostile_reply_to_get_is_unavailable_quickly_and_the_connection_is_dropped(
    kind: str, peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    peer = peers(_once(HOSTILE_GET_REPLIES[kind]))
    store = _store(peer.url, keyring_uri)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        store.get("agent-1", "k")
    assert time.monotonic() - started < TIMEOUT + SLACK, "no hang past the timeout"
    # The poisoned connection was closed, never pooled: the next request dials anew and is answered.
    with pytest.raises(MemoryNotFound):
        store.get("agent-1", "k")
    assert peer.accepted == 2
    store.redis.close()


def test_the_api_answers_503_to_a_hostile_peer_and_keeps_serving(
    peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    replies = iter([b"*1\r\n" * 200_000 + b":1\r\n", b"$999999999999\r\n", b":1\r\n"])

    def script(command: list[bytes]) -> Iterable[Step]:
        return [next(replies, b"$-1\r\n")]

    peer = peers(script)
    client = TestClient(memory_app(memory_settings_for(peer.url, keyring_uri, timeout=TIMEOUT)))
    for _ in range(3):
        response = client.get("/agents/agent-1/memories/k")
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "service_unavailable"
    assert client.get("/agents/agent-1/memories/k").status_code == 404  # the same app, a sound answer


def _writes_then(final: bytes) -> Script:
    """Answers a MULTI/EXEC as Redis queues it (OK, QUEUED), but EXEC with `final`."""

    def script(command: list[bytes]) -> Iterable[Step]:
        name = command[0].upper()
        return [final if name == b"EXEC" else b"+OK\r\n" if name == b"MULTI" else b"+QUEUED\r\n"]

    return script


@pytest.mark.parametrize(
    "exec_reply",
    [
        b"+OK\r\n",
        b":3\r\n",
        b"*1\r\n$-1\r\n",
        b"*4\r\n:1\r\n:1\r\n:1\r\n:1\r\n",
        b"*3\r\n+OK\r\n:1\r\n:1\r\n",
    ],
    ids=[
        "EXEC answers OK",
        "EXEC answers an integer",
        "too few replies",
        "too many replies",
        "SET..GET not a value",
    ],
)
@pytest.mark.parametrize("route", ["put", "batch-put"])
def test_a_put_whose_exec_has_the_wrong_shape_is_503(
    exec_reply: bytes, route: str, peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    peer = peers(_writes_then(exec_reply))
    client = TestClient(memory_app(memory_settings_for(peer.url, keyring_uri, timeout=TIMEOUT)))
    if route == "put":
        response = client.put("/agents/agent-1/memories/k", json={"value": 1})
    else:
        items = [{"key": "a", "value": 1}, {"key": "b", "value": 2}]
        response = client.post("/agents/agent-1/batch-put", json={"items": items})
    assert response.status_code == 503, response.text
    # Our side closed the connection it could not trust; the peer's thread sees it a moment later.
    deadline = time.monotonic() + 5
    while peer.closed_by_client == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peer.closed_by_client == 1


@pytest.mark.parametrize(
    ("route", "reply"),
    [
        ("list", b":7\r\n"),
        ("list", b"*1\r\n:7\r\n"),
        ("delete", b"$1\r\nx\r\n"),
        ("batch-get", b"*1\r\n$-1\r\n"),
        ("recall", b"*2\r\n:1\r\n:2\r\n"),
        ("recall", b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"),
        ("recall", b"*2\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n"),
        ("recall", b"*2\r\n$1\r\na\r\n$-1\r\n"),
    ],
    ids=[
        "list answered an integer",
        "list of integers",
        "delete answered a value",
        "MGET of the wrong length",
        "HGETALL of integers",
        "HGETALL of an odd length",
        "HGETALL holding an array",
        "HGETALL holding a nil",
    ],
)
def test_scripts_and_mget_with_the_wrong_shape_are_503(
    route: str, reply: bytes, peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    peer = peers(lambda command: [reply])
    client = TestClient(memory_app(memory_settings_for(peer.url, keyring_uri, timeout=TIMEOUT)))
    response = {
        "list": lambda: client.get("/agents/agent-1/memories"),
        "delete": lambda: client.delete("/agents/agent-1/memories/k"),
        "batch-get": lambda: client.post("/agents/agent-1/batch-get", json={"keys": ["a", "b"]}),
        "recall": lambda: client.post("/agents/agent-1/recall", json={"query": "anything"}),
    }[route]()
    assert response.status_code == 503, response.text


def test_a_wrong_answer_to_auth_refuses_the_connection(
    peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    peer = peers(lambda command: [b":1\r\n"])
    store = _store(f"redis://:secret@127.0.0.1:{peer.port}/0", keyring_uri)
    with pytest.raises(RedisUnavailable, match="refused the connection set-up"):
        store.get("agent-1", "k")
    assert peer.commands == [[b"AUTH", b"secret"]]


def test_the_process_survives_a_reply_nested_200000_deep(
    peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    """Where the parser once recursed without a bound and the process died of SIGSEGV: in a process
    of its own, so a crash shows as its exit status, not as this test run's."""
    peer = peers(lambda command: [b"*1\r\n" * 200_000 + b":1\r\n"])
    code = (
        "import sys\n"
        "from aiinfra.memory.resp import RedisUnavailable\n"
        "from aiinfra.memory.store import memory_store\n"
        "from tests.support.memory import memory_settings_for\n"
        f"store = memory_store(memory_settings_for({peer.url!r}, {keyring_uri!r}, timeout={TIMEOUT}))\n"
        "try:\n"
        "    store.get('agent-1', 'k')\n"
        "except RedisUnavailable:\n"
        "    print('unavailable')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "unavailable\n"), done.stderr


def test_a_trickling_peer_over_tls_is_cut_off_at_the_timeout(
    peers: Callable[..., HostilePeer], keyring_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    peer = peers(_once(_trickle(b"$300\r\n" + b"x" * 300 + b"\r\n", 0.05)), tls=tls)
    store = _store(peer.url, keyring_uri)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        store.get("agent-1", "k")
    assert time.monotonic() - started < TIMEOUT + SLACK
    with pytest.raises(MemoryNotFound):
        store.get("agent-1", "k")


def _trap(peers: Callable[..., HostilePeer]) -> HostilePeer:
    """A listener on another loopback address, outside every cluster: it must never be dialled."""
    return peers(lambda command: [b"+OK\r\n"], host="127.0.0.2")


@pytest.mark.parametrize("kind", ["MOVED", "ASK"])
def test_a_redirect_to_a_host_outside_the_cluster_is_refused_and_auth_never_goes_there(
    kind: str, peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    trap = _trap(peers)

    def node(command: list[bytes]) -> Iterable[Step]:
        """A cluster node of one: it lists only itself, and sends every key elsewhere."""
        name = command[0].upper()
        if name == b"AUTH":
            return [b"+OK\r\n"]
        if command[:2] == [b"CLUSTER", b"NODES"]:
            listing = b"e7d1 127.0.0.1:%d@%d myself,master - 0 0 1 connected 0-16383\n" % (port, port + 1)
            return [b"$%d\r\n%s\r\n" % (len(listing), listing)]
        return [b"-%s 866 %s:%d\r\n" % (kind.encode(), trap.host.encode(), trap.port)]

    seed = peers(node)
    port = seed.port
    url = f"redis://:secret@127.0.0.1:{port}/0"
    store = _store(url, keyring_uri)
    client = TestClient(memory_app(memory_settings_for(url, keyring_uri, timeout=TIMEOUT)))
    with pytest.raises(RedisUnavailable, match="not a node of the cluster"):
        store.get("agent-1", "k")
    assert client.get("/agents/agent-1/memories/k").status_code == 503
    assert client.put("/agents/agent-1/memories/k", json={"value": 1}).status_code == 503
    assert trap.accepted == 0  # neither AUTH nor the request ever reached the foreign host
    assert [b"CLUSTER", b"NODES"] in seed.commands


def test_ask_to_a_node_the_cluster_lists_sends_asking_and_retries_once(
    peers: Callable[..., HostilePeer], keyring_uri: str
) -> None:
    """The control for the refusal above: a node CLUSTER NODES lists (one that owns no slot yet, as
    the target of a first migration) is asked, after ASKING, and only for that request."""
    target = peers(lambda command: [b"+OK\r\n" if command == [b"ASKING"] else b"$-1\r\n"])

    def seed(command: list[bytes]) -> Iterable[Step]:
        if command[:2] == [b"CLUSTER", b"NODES"]:
            listing = (
                b"e7d1 127.0.0.1:%d@1 myself,master - 0 0 1 connected 0-16383\n"
                b"9a3c 127.0.0.1:%d@1 master - 0 0 2 connected\n" % (port, target.port)
            )
            return [b"$%d\r\n%s\r\n" % (len(listing), listing)]
        return [b"-ASK 866 127.0.0.1:%d\r\n" % target.port]

    home = peers(seed)
    port = home.port
    store = _store(home.url, keyring_uri)
    for _ in range(2):
        with pytest.raises(MemoryNotFound):
            store.get("agent-1", "k")
    get = [b"GET", b"mem:{agent-1}:k"]
    assert target.commands == [[b"ASKING"], get] * 2  # ASK moves no slot: each request asks anew
    assert home.commands == [get, [b"CLUSTER", b"NODES"], get]  # the members learned once
