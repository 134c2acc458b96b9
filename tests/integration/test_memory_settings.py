"""REDIS_URL and REDIS_PASSWORD_SECRET: a cache user's password from Secrets Manager (moto_server),
read during the init; a malformed URL fails the init naming the setting and repeating none of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from aiinfra.api.memory import create_memory_app
from aiinfra.config import ConfigError, memory_settings
from fastapi.testclient import TestClient

from tests.integration.test_memory_keys import aws_environment
from tests.support.redis_server import RedisServer, free_port

# Every character a URL gives a meaning to, in the password the secret holds.
PASSWORD = "p/ss@w:rd%2F?#[x]"


def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MEMORY_KEYS", f"file://{tmp_path / 'keyring.json'}")


def test_the_password_in_the_secret_opens_a_server_whose_default_user_is_off(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(
        "--user", "default", "off", "--user", "memory", "on", f">{PASSWORD}", "~*", "+@all"
    )
    aws_environment(monkeypatch, moto_endpoint)
    secret = f"cache-user-{tmp_path.name}"
    boto3.client("secretsmanager").create_secret(
        Name=secret, SecretString=json.dumps({"username": "memory", "password": PASSWORD})
    )
    url = f"redis://memory@127.0.0.1:{server.port}/0"
    _environment(monkeypatch, tmp_path, url)

    # Without the secret the function connects as `memory` without a password: Redis refuses it.
    refused = TestClient(create_memory_app()).put("/agents/a/memories/k", json={"value": 1})
    assert refused.status_code == 503
    assert PASSWORD not in refused.text

    monkeypatch.setenv("REDIS_PASSWORD_SECRET", secret)
    client = TestClient(create_memory_app())
    assert client.put("/agents/a/memories/k", json={"value": 1}).status_code == 201
    assert client.get("/agents/a/memories/k").json()["value"] == 1


def test_an_unreadable_secret_fails_the_init_naming_the_setting(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    aws_environment(monkeypatch, moto_endpoint)
    _environment(monkeypatch, tmp_path, "redis://memory@127.0.0.1:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD_SECRET", "no-such-secret")
    with pytest.raises(ConfigError) as refused:
        memory_settings()
    assert str(refused.value) == "REDIS_PASSWORD_SECRET could not be read: ResourceNotFoundException"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr/et@cache.internal:6379/0",  # a password holding / unencoded
        "redis://alice:s3cret@cache.internal:63a9/0",  # a port that is no number
        "redis://alice:s3cret@cache.internal:99999/0",  # a port out of range
        "redis://alice:s3cr#et@cache.internal:6379/0",  # a password holding # unencoded
        "redis://alice:s3cr?et@cache.internal:6379/0",  # a password holding ? unencoded
        "redis://alice:s3cret@cache.internal:6379/zero",  # a database that is no number
        "http://alice:s3cret@cache.internal:6379/0",  # not Redis
    ],
)
def test_a_malformed_redis_url_fails_the_init_repeating_none_of_it(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _environment(monkeypatch, tmp_path, url)
    with pytest.raises(ConfigError) as refused:
        create_memory_app()
    message = str(refused.value)
    assert message.startswith("REDIS_URL is malformed")
    for part in ("s3cr", "et@", "cache.internal", "alice", "63a9", "99999", "zero"):
        assert part not in message, part


def test_an_unreachable_redis_is_a_503_naming_neither_its_address_nor_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    _environment(monkeypatch, tmp_path, f"redis://memory:s3cret-pw@127.0.0.1:{port}/0")
    client = TestClient(create_memory_app())
    for answer in (
        client.put("/agents/a/memories/k", json={"value": 1}),
        client.get("/agents/a/memories/k"),
        client.get("/agents/a/memories"),
    ):
        assert answer.status_code == 503
        assert answer.json()["error"]["message"] in (
            "the memory store is unavailable, retry shortly",
            "the memory keyring is unavailable, retry shortly",
        )
        for internal in (str(port), "s3cret-pw", "127.0.0.1", "memory:", str(tmp_path)):
            assert internal not in answer.text, internal


def test_the_recall_settings_default_as_deployed_and_refuse_what_they_cannot_read(
    monkeypatch: pytest.MonkeyPatch, keyring_uri: str
) -> None:
    monkeypatch.setenv("MEMORY_KEYS", keyring_uri)
    for name in ("MEMORY_MAX_RECALL_PER_AGENT", "MEMORY_RECALL_WARM"):
        monkeypatch.delenv(name, raising=False)
    settings = memory_settings()
    assert (settings.max_recall_per_agent, settings.recall_warm) == (10_000, False)
    monkeypatch.setenv("MEMORY_RECALL_WARM", "true")
    monkeypatch.setenv("MEMORY_MAX_RECALL_PER_AGENT", "0")
    assert (memory_settings().max_recall_per_agent, memory_settings().recall_warm) == (0, True)
    for name, value in (("MEMORY_RECALL_WARM", "yes"), ("MEMORY_MAX_RECALL_PER_AGENT", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            memory_settings()
        monkeypatch.delenv(name)
