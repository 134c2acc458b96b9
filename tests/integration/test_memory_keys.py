"""Keyrings from file:// and secretsmanager:// (moto_server); rotation and rewrap. The kms://
keyring's custody (S3, encryption context, fail-closed, reload, retire) is in
test_memory_keyring_custody.py."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import boto3
import pytest
import redis
from aiinfra.cli import main
from aiinfra.config import MemorySettings
from aiinfra.memory.envelope import key_id_of
from aiinfra.memory.keyring import Keyring, KeyringError, load_keyring, rotate_keyring
from aiinfra.memory.resp import RedisClient
from aiinfra.memory.schema import memory_key
from aiinfra.memory.store import Condition, MemoryStore, memory_store

from tests.support.memory import memory_settings_for
from tests.support.redis_server import RedisServer


def aws_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """boto3 configured the way a Lambda function is: from the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    aws_environment(monkeypatch, moto_endpoint)
    return moto_endpoint


def _keys(uri: str) -> MemorySettings:
    """Settings naming only a keyring source: file:// and secretsmanager:// never ask Redis."""
    return memory_settings_for("redis://127.0.0.1:1/0", uri)


def _no_memories() -> bool:
    return False


def test_file_keyring_is_created_on_first_use_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nested" / "keyring.json"
    settings = _keys(f"file://{path}")
    with caplog.at_level(logging.WARNING):
        keyring = load_keyring(settings, _no_memories)
    [record] = [r for r in caplog.records if "memory keyring created" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.__dict__["current_key_id"] == keyring.current
    assert json.loads(path.read_text())["current"] == keyring.current
    assert path.stat().st_mode & 0o777 == 0o600
    logged = repr([r.__dict__ for r in caplog.records])
    assert not any(
        key.hex() in logged or base64.b64encode(key).decode() in logged for key in keyring.keys.values()
    )
    assert load_keyring(settings, _no_memories) == keyring  # the second use reads it back
    path.write_text('{"current": "k", "keys": {"k": "c2hvcnQ="}}')
    with pytest.raises(KeyringError, match="32 bytes"):
        load_keyring(settings, _no_memories)
    with pytest.raises(KeyringError, match="Not a directory"):
        load_keyring(_keys(f"file://{path}/inside-a-file.json"), _no_memories)


def test_rotation_then_rewrap(tmp_path: Path, redis_server: RedisServer, agent: str) -> None:
    uri = f"file://{tmp_path / 'keyring.json'}"
    settings = memory_settings_for(redis_server.url, uri)
    store = memory_store(settings)
    old_key = store.codec.current_key_id
    written = {f"k{i}": store.put(agent, f"k{i}", b"%d" % i, 600, Condition())[0] for i in range(30)}
    raw = redis.Redis.from_url(redis_server.url)
    ttl_before = raw.pttl(memory_key(agent, "k0"))

    new_key = rotate_keyring(settings).current
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
    rotated = rotate_keyring(_keys(uri))
    store.reload_keyring()
    assert store.codec.current_key_id == rotated.current
    assert store.get(agent, "k").value_json == b'"via secrets manager"'
    with pytest.raises(KeyringError, match="secretsmanager://missing"):
        load_keyring(_keys("secretsmanager://missing"), _no_memories)


def test_an_instance_with_a_stale_keyring_reads_what_a_rotated_one_wrote(
    tmp_path: Path, redis_server: RedisServer, agent: str
) -> None:
    uri = f"file://{tmp_path / 'keyring.json'}"
    settings = memory_settings_for(redis_server.url, uri)
    # Reloaded on schedule only after an hour: what reaches it here is the reload on a failed open.
    stale = MemoryStore(
        RedisClient(settings.redis_url, 2),
        lambda: load_keyring(settings, _no_memories).codec(),
        keyring_reload_seconds=3600,
        integrity_reload_seconds=0.0,
    )
    fresh = memory_store(memory_settings_for(redis_server.url, uri))
    stale.put(agent, "before", b"1", 600, Condition())
    rotate_keyring(settings)
    fresh.reload_keyring()
    fresh.put(agent, "after", b"2", 600, Condition())
    assert stale.get(agent, "after").value_json == b"2"  # reloaded the keyring once, no restart
    assert stale.codec.current_key_id == fresh.codec.current_key_id
