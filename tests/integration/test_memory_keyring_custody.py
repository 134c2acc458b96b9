"""Custody of a kms:// keyring: wrapped data keys in S3 (moto_server) under conditional writes, the KMS
encryption context, fail-closed when the document is lost over existing memories, reload on an
interval and after a SnapStart restore, retire-key; with real redis-servers."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import redis
from aiinfra import snapstart
from aiinfra.cli import main
from aiinfra.config import ConfigError, MemorySettings, memory_settings
from aiinfra.memory.envelope import IntegrityError, key_id_of
from aiinfra.memory.keyring import encryption_context, rotate_keyring
from aiinfra.memory.keyspace import agent_ids, count_sealed_with, holds_memories
from aiinfra.memory.schema import memory_key
from aiinfra.memory.store import Condition, memory_store
from fastapi.testclient import TestClient

from tests.integration.test_memory_keys import aws_environment
from tests.support.events import invoke, response_json
from tests.support.functions import load_function
from tests.support.memory import memory_app, memory_settings_for
from tests.support.redis_server import RedisServer

STACK = "aiinfra-test"
DOCUMENT = "keyring/memory.json"


@dataclasses.dataclass
class KmsKeyring:
    kms_key: str
    bucket: str
    s3: Any

    def settings(self, redis_url: str, reload_seconds: float = 300.0) -> MemorySettings:
        return dataclasses.replace(
            memory_settings_for(redis_url, f"kms://{self.kms_key}"),
            keyring_store=f"s3://{self.bucket}/{DOCUMENT}",
            keyring_reload_seconds=reload_seconds,
            stack_name=STACK,
        )

    def document(self) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=DOCUMENT)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def objects(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture
def kms_keyring(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, agent: str) -> KmsKeyring:
    """A KMS key and an empty bucket of this test's own, boto3 configured from the environment."""
    aws_environment(monkeypatch, moto_endpoint)
    kms_key = boto3.client("kms").create_key(Description="memory")["KeyMetadata"]["KeyId"]
    s3 = boto3.client("s3")
    bucket = f"keyring-{agent}"
    s3.create_bucket(Bucket=bucket)
    return KmsKeyring(kms_key, bucket, s3)


def _function_env(monkeypatch: pytest.MonkeyPatch, keyring: KmsKeyring, redis_url: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MEMORY_KEYS", f"kms://{keyring.kms_key}")
    monkeypatch.setenv("MEMORY_KEYRING_STORE", f"s3://{keyring.bucket}/{DOCUMENT}")
    monkeypatch.setenv("AIINFRA_STACK", STACK)
    monkeypatch.setenv("AUTH_MODE", "none")


def test_data_keys_live_wrapped_in_s3_under_the_encryption_context(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    server = redis_factory()
    store = memory_store(kms_keyring.settings(server.url))
    store.put(agent, "k", b'"via kms"', 600, Condition())
    document = kms_keyring.document()
    assert document is not None and document["current"] == store.codec.current_key_id
    assert list(document["keys"]) == [document["current"]] and document["retired"] == []
    blob = base64.b64decode(document["keys"][document["current"]])
    kms = boto3.client("kms")
    plaintext = kms.decrypt(CiphertextBlob=blob, EncryptionContext=encryption_context(STACK))["Plaintext"]
    assert len(plaintext) == 32 and plaintext not in blob
    for context in ({}, encryption_context("another-stack"), {"aiinfra:stack": STACK}):
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
    # Redis holds the memory and its index, nothing of the keyring.
    raw = redis.Redis.from_url(server.url)
    assert sorted(raw.keys()) == sorted([memory_key(agent, "k"), f"idx:{{{agent}}}".encode()])
    raw.close()


def test_memories_still_open_after_redis_loses_everything_but_them(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    server = redis_factory()
    settings = kms_keyring.settings(server.url)
    memory_store(settings).batch_put(agent, [(f"k{i}", b"%d" % i, 600) for i in range(20)])
    raw = redis.Redis.from_url(server.url)
    raw.hset("aiinfra:memory:data-keys", "current", "k-old")  # what an older release kept in Redis
    raw.set("unrelated", "1")
    for name in raw.scan_iter():
        if not name.startswith(b"mem:"):
            raw.delete(name)
    assert len(raw.keys()) == 20  # only the memories are left, not even their index
    cold = memory_store(settings)  # a new instance, cold-started after the loss
    assert [cold.get(agent, f"k{i}").value_json for i in range(20)] == [b"%d" % i for i in range(20)]
    document = kms_keyring.document()
    assert document is not None and list(document["keys"]) == [cold.codec.current_key_id]
    raw.close()


def test_a_lost_keyring_document_over_memories_fails_closed(
    kms_keyring: KmsKeyring,
    redis_factory: Callable[..., RedisServer],
    agent: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_factory()
    memory_store(kms_keyring.settings(server.url)).put(agent, "k", b'"kept"', 600, Condition())
    saved = kms_keyring.s3.get_object(Bucket=kms_keyring.bucket, Key=DOCUMENT)["Body"].read()
    kms_keyring.s3.delete_object(Bucket=kms_keyring.bucket, Key=DOCUMENT)

    _function_env(monkeypatch, kms_keyring, server.url)
    with caplog.at_level(logging.ERROR):
        function = load_function("memory")  # the init survives: the requests answer for it
        path = f"/agents/{agent}/memories/k"
        capsys.readouterr()
        answers = [
            invoke(function.handler, "http", "GET", path),
            invoke(function.handler, "http", "PUT", f"/agents/{agent}/memories/new", {"value": 1}),
        ]
    assert [answer["statusCode"] for answer in answers] == [503, 503]
    assert [answer["headers"]["retry-after"] for answer in answers] == ["5", "5"]
    assert response_json(answers[0])["error"]["message"] == "the memory keyring is unavailable, retry shortly"
    failures = [r for r in caplog.records if r.getMessage() == "memory keyring unavailable"]
    assert len(failures) == 3 and all(r.levelno == logging.ERROR for r in failures)  # init + 2 requests
    assert "missing while Redis holds memories" in failures[-1].__dict__["reason"]
    emitted = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')
    ]
    # One failure counted at the init, one per request.
    assert sum(len(metric.get("MemoryKeyringFailures", [])) for metric in emitted) == 3
    assert kms_keyring.objects() == []  # no new key was made, not even a document
    raw = redis.Redis.from_url(server.url)
    assert raw.get(memory_key(agent, "new")) is None
    raw.close()

    kms_keyring.s3.put_object(Bucket=kms_keyring.bucket, Key=DOCUMENT, Body=saved)
    restored = invoke(function.handler, "http", "GET", path)
    assert restored["statusCode"] == 200 and response_json(restored)["value"] == "kept"


def test_a_kms_keyring_waits_for_redis_when_redis_is_down_at_init(
    kms_keyring: KmsKeyring,
    redis_factory: Callable[..., RedisServer],
    agent: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_factory()
    server.kill()
    _function_env(monkeypatch, kms_keyring, server.url)
    # No document yet: whether memories exist is Redis's to say, and Redis is down.
    function = load_function("memory")  # the init survives: a Redis outage is not a misconfiguration
    path = f"/agents/{agent}/memories/k"
    down = invoke(function.handler, "http", "PUT", path, {"value": 1})
    assert down["statusCode"] == 503 and down["headers"]["retry-after"] == "1"
    assert kms_keyring.objects() == []
    server.restart()
    up = invoke(function.handler, "http", "PUT", path, {"value": 1})
    assert up["statusCode"] == 201, response_json(up)
    assert response_json(invoke(function.handler, "http", "GET", path))["value"] == 1


def test_concurrent_cold_starts_agree_on_one_first_key(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    server = redis_factory()
    raw = redis.Redis.from_url(server.url)
    raw.set("unrelated", "1")  # not a memory: the first key may still be made
    settings = kms_keyring.settings(server.url)
    stores = [memory_store(settings) for _ in range(8)]
    start = threading.Barrier(len(stores))
    current: list[str] = []

    def cold_start(index: int) -> None:
        start.wait()
        stores[index].put(agent, f"k{index}", b"%d" % index, 600, Condition())
        current.append(stores[index].codec.current_key_id)

    threads = [threading.Thread(target=cold_start, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    document = kms_keyring.document()
    assert document is not None and len(set(current)) == 1 and list(document["keys"]) == current[:1]
    for store in stores:  # each reads what every other wrote
        assert [store.get(agent, f"k{i}").value_json for i in range(len(stores))] == [
            b"%d" % i for i in range(len(stores))
        ]
    raw.close()


def test_concurrent_rotations_lose_no_key(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    settings = kms_keyring.settings(redis_factory().url)
    first = memory_store(settings).codec.current_key_id
    start = threading.Barrier(4)
    added: list[str] = []

    def rotate() -> None:
        start.wait()
        added.append(rotate_keyring(settings).current)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    document = kms_keyring.document()
    assert document is not None and len(added) == 4
    assert set(document["keys"]) == {first, *added} and document["current"] in added


def test_rotation_reaches_a_warm_instance_within_the_reload_interval(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    server = redis_factory()
    reload_seconds = 1.0
    warm = memory_store(kms_keyring.settings(server.url, reload_seconds))
    warm.put(agent, "before", b"1", 600, Condition())
    old = warm.codec.current_key_id
    rotated = rotate_keyring(kms_keyring.settings(server.url))
    assert rotated.current != old and set(rotated.keys) == {old, rotated.current}
    time.sleep(reload_seconds + 0.2)
    # A put opens nothing, so no failed open made it reload: the interval did.
    warm.put(agent, "after", b"2", 600, Condition())
    raw = redis.Redis.from_url(server.url)
    assert key_id_of(raw.get(memory_key(agent, "after"))) == rotated.current  # type: ignore[arg-type]
    assert key_id_of(raw.get(memory_key(agent, "before"))) == old  # type: ignore[arg-type]
    assert warm.get(agent, "before").value_json == b"1"
    raw.close()


def test_rotation_reaches_an_instance_restored_from_a_snapshot(
    kms_keyring: KmsKeyring, redis_factory: Callable[..., RedisServer], agent: str
) -> None:
    server = redis_factory()
    settings = kms_keyring.settings(server.url)  # reloads on schedule only after 5 minutes
    client = TestClient(memory_app(settings))
    raw = redis.Redis.from_url(server.url)

    def sealed_with(key: str) -> str | None:
        assert client.put(f"/agents/{agent}/memories/{key}", json={"value": key}).status_code in (200, 201)
        return key_id_of(raw.get(memory_key(agent, key)))  # type: ignore[arg-type]

    old = sealed_with("snapshotted")
    rotated = rotate_keyring(settings).current
    assert sealed_with("still-warm") == old  # no restore yet, and the interval has not passed
    snapstart.HOOKS.run_after_restore()
    assert sealed_with("restored") == rotated
    assert client.get(f"/agents/{agent}/memories/snapshotted").json()["value"] == "snapshotted"
    raw.close()


def test_retire_key_refuses_while_envelopes_remain_and_succeeds_after_rewrap(
    kms_keyring: KmsKeyring,
    redis_factory: Callable[..., RedisServer],
    agent: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = redis_factory()
    _function_env(monkeypatch, kms_keyring, server.url)
    reload_seconds = 3
    monkeypatch.setenv("MEMORY_KEYRING_RELOAD_SECONDS", str(reload_seconds))
    settings = memory_settings()
    store = memory_store(settings)
    other = f"{agent}-other"
    store.batch_put(agent, [("a", b"1", 600), ("b", b"2", 600)])
    store.put(other, "c", b"3", 600, Condition())
    old = store.codec.current_key_id
    raw = redis.Redis.from_url(server.url)
    sealed_by_old = raw.get(memory_key(agent, "a"))

    def retire(key_id: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["retire-key", key_id])
        captured = capsys.readouterr()
        return code, captured.err + captured.out

    assert main(["rotate-key"]) == 0
    new = capsys.readouterr().out.strip().splitlines()[-1]
    assert retire(new) == (1, f"not retired: key {new} is the current key: rotate-key first\n")
    code, said = retire(old)
    assert code == 1 and "until they reload the keyring" in said  # rotated just now
    time.sleep(reload_seconds + 0.2)
    refusal = f"stored envelopes are still sealed with key {old}: run `aiinfra rewrap --all` first\n"
    assert retire(old) == (1, f"not retired: 3 {refusal}")
    assert main(["rewrap", "--agent", agent]) == 0
    assert retire(old) == (1, f"not retired: 1 {refusal}")
    capsys.readouterr()
    assert main(["rewrap", "--all"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [
        f"{agent}-other: 1 entries re-sealed with key {new}",
        f"{agent}: 0 entries re-sealed with key {new}",
    ]
    assert retire(old) == (0, f"{old} retired\n")
    document = kms_keyring.document()
    assert document is not None and list(document["keys"]) == [new] and document["retired"] == [old]
    assert retire(old) == (1, f"not retired: key {old} is retired already\n")

    # A retired key opens nothing: an envelope it sealed, put back, fails authentication.
    fresh = memory_store(settings)
    assert fresh.get(agent, "a").value_json == b"1"
    assert sealed_by_old is not None
    raw.set(memory_key(agent, "a"), sealed_by_old, keepttl=True)
    with pytest.raises(IntegrityError):
        fresh.get(agent, "a")
    raw.close()


def test_the_keyspace_walk_reaches_every_node_of_a_cluster(
    redis_cluster: list[RedisServer], keyring_uri: str
) -> None:
    store = memory_store(memory_settings_for(f"redis://127.0.0.1:{redis_cluster[0].port}/0", keyring_uri))
    assert not holds_memories(store.redis)
    agents = [f"cluster-agent-{i}" for i in range(30)]  # their slots fall on all three nodes
    for agent in agents:
        store.batch_put(agent, [("a", b"1", 600), ("b", b"2", 600)])
    nodes = [redis.Redis(port=node.port) for node in redis_cluster]
    assert all(node.dbsize() > 0 for node in nodes)
    assert holds_memories(store.redis)
    current = store.codec.current_key_id
    assert count_sealed_with(store.redis, current) == 2 * len(agents)
    assert count_sealed_with(store.redis, "another-key") == 0
    assert sorted(agent_ids(store.redis)) == sorted(agents)
    for node in nodes:
        node.close()


def test_a_kms_keyring_needs_its_store_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_KEYS", "kms://alias/memory")
    for value in ("", "s3://bucket", "s3://bucket/", "s3:///key.json", "file:///keyring.json"):
        monkeypatch.setenv("MEMORY_KEYRING_STORE", value)
        with pytest.raises(ConfigError, match=r"^MEMORY_KEYRING_STORE=.* must be s3://bucket/key\.json"):
            memory_settings()
    monkeypatch.setenv("MEMORY_KEYRING_STORE", "s3://bucket/keyring/memory.json")
    assert memory_settings().keyring_store == "s3://bucket/keyring/memory.json"


def test_a_kms_keyring_without_an_aws_region_fails_the_init_in_one_line(
    kms_keyring: KmsKeyring, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _function_env(monkeypatch, kms_keyring, redis_server.url)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    with pytest.raises(ConfigError, match=r"^MEMORY_KEYS=no kms client: NoRegionError$"):
        load_function("memory")
