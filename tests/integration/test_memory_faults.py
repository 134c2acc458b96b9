"""Concurrency and faults against real redis-servers: no lost update, no half batch, 503 then recovery."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from aiinfra.memory.resp import RedisUnavailable
from aiinfra.memory.schema import index_key, memory_key
from aiinfra.memory.store import Condition, MemoryStore, PreconditionFailed, ValuesTooLarge, memory_store
from fastapi.testclient import TestClient

from tests.support.endpoint import Endpoint
from tests.support.memory import memory_app, memory_settings_for
from tests.support.redis_server import RedisServer, free_port


def test_read_modify_write_with_if_match_loses_no_increment(store: MemoryStore, agent: str) -> None:
    store.put(agent, "counter", b"0", 600, Condition())
    threads, increments = 8, 25
    conflicts = [0] * threads

    def worker(slot: int) -> None:
        for _ in range(increments):
            while True:
                current = store.get(agent, "counter")
                value = int(current.value_json) + 1
                try:
                    store.put(agent, "counter", b"%d" % value, 600, Condition("match", current.version))
                    break
                except PreconditionFailed:
                    conflicts[slot] += 1

    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert int(store.get(agent, "counter").value_json) == threads * increments
    assert sum(conflicts) > 0  # the threads really raced; If-Match turned every race into a retry


def test_batch_put_interrupted_by_killing_redis_leaves_none_of_its_items(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory()
    store = memory_store(memory_settings_for(server.url, keyring_uri, timeout=10))
    store.put(agent, "before", b'"kept"', 600, Condition())
    items = [(f"item-{i:04d}", orjson.dumps({"i": i, "pad": "x" * 2000}), 600) for i in range(1000)]
    outcome: list[BaseException] = []

    def batch() -> None:
        try:
            store.batch_put(agent, items)
        except BaseException as error:
            outcome.append(error)

    server.pause()  # the batch is sent but never executed: then the server dies under it
    thread = threading.Thread(target=batch)
    thread.start()
    time.sleep(0.5)
    server.kill()
    thread.join(timeout=20)
    assert len(outcome) == 1 and isinstance(outcome[0], RedisUnavailable)

    server.start()  # same port and data directory: the AOF holds everything acknowledged
    raw = redis.Redis.from_url(server.url)
    assert raw.get(memory_key(agent, "before")) is not None
    assert raw.mget([memory_key(agent, key) for key, _, _ in items]) == [None] * len(items)
    assert raw.zrange(index_key(agent), 0, -1) == [b"before"]
    # The same store instance writes the whole batch once Redis is back.
    assert len(store.batch_put(agent, items)) == 1000
    assert None not in raw.mget([memory_key(agent, key) for key, _, _ in items])
    raw.close()


def test_redis_down_is_503_with_retry_after_and_the_same_app_recovers(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory()
    client = TestClient(memory_app(memory_settings_for(server.url, keyring_uri, timeout=0.5)))
    url = f"/agents/{agent}/memories/k"
    assert client.put(url, json={"value": 1}).status_code == 201
    server.kill()
    for method, path, body in [
        ("GET", url, None),
        ("PUT", url, {"value": 2}),
        ("DELETE", url, None),
        ("GET", f"/agents/{agent}/memories", None),
        ("POST", f"/agents/{agent}/batch-put", {"items": [{"key": "b", "value": 1}]}),
        ("POST", f"/agents/{agent}/batch-get", {"keys": ["k"]}),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, (method, path)
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "service_unavailable"
    server.start()
    assert client.get(url).json()["value"] == 1  # the PUT during the outage wrote nothing
    assert client.put(url, json={"value": 3}).status_code == 200


def test_a_full_redis_refuses_writes_with_503_writes_nothing_and_still_reads_lists_and_deletes(
    redis_factory: Callable[..., RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    settings = memory_settings_for(server.url, keyring_uri)
    client = TestClient(memory_app(settings))
    url = f"/agents/{agent}/memories/k"
    assert client.put(url, json={"value": 1}).status_code == 201
    raw = redis.Redis.from_url(server.url)
    filled = 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        while True:  # until Redis refuses even a small write
            raw.set(f"fill:{filled}", b"x" * 500)
            filled += 1
    for method, path, body in [
        ("PUT", f"/agents/{agent}/memories/new", {"value": 2}),
        ("PUT", url, {"value": 2}),
        (
            "POST",
            f"/agents/{agent}/batch-put",
            {"items": [{"key": "b1", "value": 1}, {"key": "b2", "value": 2}]},
        ),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["retry-after"] == "1"
    created_only = client.put(
        f"/agents/{agent}/memories/new", json={"value": 2}, headers={"if-none-match": "*"}
    )
    assert created_only.status_code == 503  # the script of a conditional put is refused as well
    store = memory_store(settings)
    for write in (
        lambda: store.put(agent, "new", b"2", 60),
        lambda: store.batch_put(agent, [("b1", b"1", 60), ("b2", b"2", 60)]),
    ):
        with pytest.raises(RedisUnavailable, match="refused a transaction: OOM"):  # the cause, not EXECABORT
            write()
    assert raw.zrange(index_key(agent), 0, -1) == [b"k"]  # nothing of the refused writes
    assert not raw.exists(*(memory_key(agent, key) for key in ("new", "b1", "b2")))
    assert client.get(url).json()["value"] == 1
    assert client.get(f"/agents/{agent}/memories").json()["keys"] == ["k"]
    assert client.post(f"/agents/{agent}/batch-get", json={"keys": ["k"]}).status_code == 200
    assert client.delete(url).status_code == 204  # a delete frees memory, so Redis lets it run
    raw.config_set("maxmemory", "64mb")  # room again: the same app writes at once
    assert client.put(url, json={"value": 3}).status_code == 201
    raw.close()


def _until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_after_a_failover_the_same_store_writes_to_the_new_primary(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    servers = [redis_factory(), redis_factory()]
    raws = [redis.Redis(port=server.port) for server in servers]
    raws[1].replicaof("127.0.0.1", servers[0].port)
    endpoint = Endpoint(servers[0].port)  # the name the store is given, as ElastiCache's primary endpoint
    store = memory_store(memory_settings_for(f"redis://127.0.0.1:{endpoint.port}/0", keyring_uri))
    store.put(agent, "first", b"0", 600, Condition())
    primary, written = 0, ["first"]

    def fail_over(repoint: bool = True) -> None:
        nonlocal primary
        old, new = primary, 1 - primary
        _until(lambda: raws[new].exists(memory_key(agent, written[-1])))  # replicated, then switched
        raws[new].replicaof("no", "one")
        raws[old].replicaof("127.0.0.1", servers[new].port)
        primary = new
        if repoint:
            endpoint.repoint(servers[new].port)

    # Redis keeps a demoted primary's clients connected: each write meets READONLY on the store's
    # pooled connection first, and still succeeds at once, on the new primary.
    writes: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: store.put(agent, "put", b"1", 600, Condition())),
        ("if-none-match", lambda: store.put(agent, "if-none-match", b"2", 600, Condition("absent"))),
        ("batch", lambda: store.batch_put(agent, [("batch", b"3", 600), ("batch-2", b"4", 600)])),
    ]
    for key, write in writes:
        fail_over()
        write()
        assert raws[primary].exists(memory_key(agent, key))
        written.append(key)
    # Before the name is repointed, a write is a 503 that writes nothing; after, it goes through.
    fail_over(repoint=False)
    with pytest.raises(RedisUnavailable, match="read-only replica"):
        store.put(agent, "early", b"5", 600, Condition())
    endpoint.repoint(servers[primary].port)
    store.put(agent, "early", b"5", 600, Condition())
    assert [store.get(agent, key).value_json for key in written] == [b"0", b"1", b"2", b"3"]
    endpoint.close()
    for raw in raws:
        raw.close()


def test_a_hung_redis_is_503_after_the_timeout(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory()
    client = TestClient(memory_app(memory_settings_for(server.url, keyring_uri, timeout=0.3)))
    url = f"/agents/{agent}/memories/k"
    assert client.put(url, json={"value": 1}).status_code == 201
    server.pause()
    started = time.monotonic()
    response = client.get(url)
    assert response.status_code == 503 and time.monotonic() - started < 2
    server.resume()
    assert client.get(url).json()["value"] == 1


def test_a_signal_interrupts_the_wait_for_a_hung_redis_at_once(
    redis_factory: Callable[[], RedisServer], keyring_uri: str, agent: str
) -> None:
    # Ctrl-C, or any signal whose handler raises, must not wait out the Redis timeout.
    server = redis_factory()
    store = memory_store(memory_settings_for(server.url, keyring_uri, timeout=5.0))
    store.put(agent, "k", b"1", 60)

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    server.pause()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            store.get(agent, "k")
        assert time.monotonic() - started < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.resume()
    assert store.get(agent, "k").value_json == b"1"  # the interrupted connection was dropped, not reused


def test_redis_url_with_acl_user_and_password(
    redis_factory: Callable[..., RedisServer], keyring_uri: str, agent: str
) -> None:
    server = redis_factory("--user", "app", "on", ">s3cr%t", "~*", "&*", "+@all", "--user", "default", "off")
    url = f"redis://app:s3cr%25t@127.0.0.1:{server.port}/3"
    store = memory_store(memory_settings_for(url, keyring_uri))
    store.put(agent, "k", b"1", 60, Condition())
    assert store.get(agent, "k").value_json == b"1"
    assert redis.Redis(port=server.port, username="app", password="s3cr%t", db=3).exists(
        memory_key(agent, "k")
    )
    wrong = memory_store(memory_settings_for(url.replace("s3cr%25t", "nope"), keyring_uri))
    with pytest.raises(RedisUnavailable, match="refused the connection set-up"):
        wrong.get(agent, "k")


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_redis_url_forms(scheme: str) -> None:
    from aiinfra.memory.resp import RedisAddress

    address = RedisAddress.from_url(f"{scheme}://app%40x:p%3Ass@cache.example:6380/2")
    assert (address.host, address.port, address.db) == ("cache.example", 6380, 2)
    assert (address.username, address.password, address.tls) == ("app@x", "p:ss", scheme == "rediss")


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1, made by openssl."""
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for command in (
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca",
        "req -newkey rsa:2048 -nodes -keyout s.key -out s.csr -subj /CN=localhost",
        "x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out s.pem -days 1 -extfile san.ext",
    ):
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True, cwd=directory)
    return directory / "ca.pem", directory / "s.pem", directory / "s.key"


def test_rediss_url_speaks_tls_verifies_the_server_and_times_out(
    redis_factory: Callable[..., RedisServer],
    keyring_uri: str,
    agent: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    server = redis_factory(
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
    )
    url = f"rediss://localhost:{tls_port}/0"
    untrusted = memory_store(memory_settings_for(url, keyring_uri))
    with pytest.raises(RedisUnavailable, match="SSLCertVerificationError"):
        untrusted.get(agent, "k")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # what a deployment's trust store would hold
    store = memory_store(memory_settings_for(url, keyring_uri, timeout=0.3))
    # Python's ssl does the I/O: the put is sealed natively, then sent as any pipeline is.
    assert store.put(agent, "k", b'"first"', 60, Condition())[1]  # created
    assert not store.put(agent, "k", b'"over tls"', 60, Condition())[1]  # replaced
    assert store.get(agent, "k").value_json == b'"over tls"'
    server.pause()  # a hung server: the socket's timeout holds over TLS too
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        store.get(agent, "k")
    assert time.monotonic() - started < 2
    server.resume()
    assert store.get(agent, "k").value_json == b'"over tls"'
    # An answer past its limit is cut off over TLS too, and the next one arrives in step.
    big = b'"%s"' % (b"x" * 300_000)
    store.batch_put(agent, [("big", big, 60)])
    with pytest.raises(ValuesTooLarge):
        store.batch_get(agent, ["big"], max_value_bytes=100_000)
    assert [memory.value_json for memory in store.batch_get(agent, ["big", "k"]) if memory] == [
        big,
        b'"over tls"',
    ]
