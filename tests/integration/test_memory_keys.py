"""Keyrings from file://, kms:// and secretsmanager:// (moto_server); rotation and rewrap."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import boto3
import pytest
import redis
from aiinfra.cli import main
from aiinfra.memory.envelope import key_id_of
from aiinfra.memory.keyring import Keyring, KeyringError, load_keyring, rotate_keyring
from aiinfra.memory.resp import RedisClient
from aiinfra.memory.schema import KMS_DATA_KEYS, memory_key
from aiinfra.memory.store import Condition, MemoryStore, memory_store

from tests.support.events import invoke, response_json
from tests.support.functions import load_function
from tests.support.memory import memory_settings_for
from tests.support.redis_server import RedisServer


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3 configured the way a Lambda function is: from the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return moto_endpoint


def test_file_keyring_is_created_on_first_use_with_a_warning(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nested" / "keyring.json"
    redis_client = RedisClient(redis_server.url, 2)
    with caplog.at_level(logging.WARNING):
        keyring = load_keyring(f"file://{path}", redis_client)
    [record] = [r for r in caplog.records if "memory keyring created" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.__dict__["current_key_id"] == keyring.current
    assert json.loads(path.read_text())["current"] == keyring.current
    assert path.stat().st_mode & 0o777 == 0o600
    logged = repr([r.__dict__ for r in caplog.records])
    assert not any(
        key.hex() in logged or base64.b64encode(key).decode() in logged for key in keyring.keys.values()
    )
    assert load_keyring(f"file://{path}", redis_client) == keyring  # the second use reads it back
    path.write_text('{"current": "k", "keys": {"k": "c2hvcnQ="}}')
    with pytest.raises(KeyringError, match="32 bytes"):
        load_keyring(f"file://{path}", redis_client)
    with pytest.raises(KeyringError, match="Not a directory"):
        load_keyring(f"file://{path}/inside-a-file.json", redis_client)


def test_rotation_then_rewrap(tmp_path: Path, redis_server: RedisServer, agent: str) -> None:
    uri = f"file://{tmp_path / 'keyring.json'}"
    settings = memory_settings_for(redis_server.url, uri)
    store = memory_store(settings)
    old_key = store.codec.current_key_id
    written = {f"k{i}": store.put(agent, f"k{i}", b"%d" % i, 600, Condition())[0] for i in range(30)}
    raw = redis.Redis.from_url(redis_server.url)
    ttl_before = raw.pttl(memory_key(agent, "k0"))

    new_key = rotate_keyring(uri, store.redis).current
    assert new_key != old_key
    store.reload_keyring()
    for key in written:  # old entries read back under the new current key
        assert store.get(agent, key).value_json == b"%d" % int(key[1:])
    store.put(agent, "fresh", b"1", 600, Condition())
    assert key_id_of(raw.get(memory_key(agent, "fresh"))) == new_key
    assert key_id_of(raw.get(memory_key(agent, "k0"))) == old_key

    assert store.rewrap(agent) == 30
    assert store.rewrap(agent) == 0
    for key, memory in written.items():
        assert key_id_of(raw.get(memory_key(agent, key))) == new_key
        assert store.get(agent, key).version == memory.version  # ETags survive a rewrap
    assert 0 < ttl_before - raw.pttl(memory_key(agent, "k0")) < 60_000  # expiry kept

    # Once rewrapped, the old key can leave the keyring.
    keyring = Keyring.from_json(Path(uri.removeprefix("file://")).read_text(), uri)
    del keyring.keys[old_key]
    Path(uri.removeprefix("file://")).write_text(keyring.to_json())
    store.reload_keyring()
    assert store.get(agent, "k7").value_json == b"7"
    raw.close()


def test_rewrap_command(
    tmp_path: Path,
    redis_server: RedisServer,
    agent: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = f"file://{tmp_path / 'keyring.json'}"
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("MEMORY_KEYS", uri)
    store = memory_store(memory_settings_for(redis_server.url, uri))
    store.batch_put(agent, [(f"k{i}", b"1", 600) for i in range(5)])
    assert main(["rotate-key"]) == 0
    new_key = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["rewrap", "--agent", agent, "--agent", f"{agent}-empty"]) == 0
    out = capsys.readouterr().out
    assert f"{agent}: 5 entries re-sealed with key {new_key}" in out
    assert f"{agent}-empty: 0 entries" in out
    assert main(["rewrap", "--agent", "not an id"]) == 2


def test_secretsmanager_keyring(aws: str, redis_server: RedisServer, agent: str) -> None:
    secret_id = f"memory-keyring-{agent}"
    keyring = Keyring("", {}).rotated()
    boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString=keyring.to_json())
    uri = f"secretsmanager://{secret_id}"
    store = memory_store(memory_settings_for(redis_server.url, uri))
    store.put(agent, "k", b'"via secrets manager"', 600, Condition())
    assert store.codec.current_key_id == keyring.current
    rotated = rotate_keyring(uri, store.redis)
    store.reload_keyring()
    assert store.codec.current_key_id == rotated.current
    assert store.get(agent, "k").value_json == b'"via secrets manager"'
    with pytest.raises(KeyringError, match="secretsmanager://missing"):
        load_keyring("secretsmanager://missing", store.redis)


def test_kms_keyring_keeps_only_encrypted_data_keys_in_redis(
    aws: str, redis_factory: object, agent: str
) -> None:
    server = redis_factory()  # type: ignore[operator]
    kms_key = boto3.client("kms").create_key(Description="memory")["KeyMetadata"]["KeyId"]
    uri = f"kms://{kms_key}"
    store = memory_store(memory_settings_for(server.url, uri))
    store.put(agent, "k", b'"via kms"', 600, Condition())
    raw = redis.Redis.from_url(server.url)
    stored = raw.hgetall(KMS_DATA_KEYS)
    current = stored[b"current"].decode()
    assert current == store.codec.current_key_id
    plaintext_key = load_keyring(uri, store.redis).keys[current]
    assert len(plaintext_key) == 32 and plaintext_key not in stored[f"key:{current}".encode()]

    # A second instance (cold start elsewhere) agrees on the same data key.
    other = memory_store(memory_settings_for(server.url, uri))
    assert other.get(agent, "k").value_json == b'"via kms"'
    assert other.codec.current_key_id == current

    rotated = rotate_keyring(uri, store.redis)
    assert rotated.current != current and set(rotated.keys) == {current, rotated.current}
    store.reload_keyring()
    assert store.rewrap(agent) == 1
    assert key_id_of(raw.get(memory_key(agent, "k"))) == rotated.current
    raw.close()


def test_an_instance_with_a_stale_keyring_reads_what_a_rotated_one_wrote(
    tmp_path: Path, redis_server: RedisServer, agent: str
) -> None:
    uri = f"file://{tmp_path / 'keyring.json'}"
    settings = memory_settings_for(redis_server.url, uri)
    stale = MemoryStore(
        RedisClient(settings.redis_url, 2), lambda: load_keyring(uri, stale.redis).codec(), 0.0
    )
    fresh = memory_store(memory_settings_for(redis_server.url, uri))
    stale.put(agent, "before", b"1", 600, Condition())
    rotate_keyring(uri, fresh.redis)
    fresh.reload_keyring()
    fresh.put(agent, "after", b"2", 600, Condition())
    assert stale.get(agent, "after").value_json == b"2"  # reloaded the keyring once, no restart
    assert stale.codec.current_key_id == fresh.codec.current_key_id


def test_a_kms_keyring_waits_for_redis_when_redis_is_down_at_init(
    aws: str, redis_factory: object, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_factory()  # type: ignore[operator]
    server.kill()
    kms_key = boto3.client("kms").create_key(Description="memory")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("MEMORY_KEYS", f"kms://{kms_key}")
    monkeypatch.setenv("AUTH_MODE", "none")
    function = load_function("memory")  # the init survives: a Redis outage is not a misconfiguration
    path = f"/agents/{agent}/memories/k"
    down = invoke(function.handler, "http", "PUT", path, {"value": 1})
    assert down["statusCode"] == 503 and down["headers"]["retry-after"] == "1"
    server.restart()
    up = invoke(function.handler, "http", "PUT", path, {"value": 1})
    assert up["statusCode"] == 201, response_json(up)
    assert response_json(invoke(function.handler, "http", "GET", path))["value"] == 1
