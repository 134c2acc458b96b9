"""Fixtures for the memory function: an app over the session's redis-server, raw Redis access."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiinfra.api.memory import create_memory_app
from aiinfra.config import AuthSettings, MemorySettings
from aiinfra.memory.store import MemoryStore, memory_store
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.redis_server import RedisServer

NO_AUTH = AuthSettings(mode="none", agent_claim="agents")


def memory_settings_for(redis_url: str, keys_uri: str, *, timeout: float = 2.0) -> MemorySettings:
    return MemorySettings(
        redis_url=redis_url,
        keys_uri=keys_uri,
        default_ttl=3600,
        max_value_bytes=256 * 1024,
        redis_timeout=timeout,
    )


def memory_app(settings: MemorySettings, auth: AuthSettings = NO_AUTH) -> FastAPI:
    return create_memory_app(settings=settings, auth=auth)


@pytest.fixture(scope="session")
def keyring_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"file://{tmp_path_factory.mktemp('keyring') / 'keyring.json'}"


@pytest.fixture
def agent() -> str:
    """A fresh agent id per test: tests share one redis-server without seeing each other."""
    return f"agent-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def memory_settings(redis_server: RedisServer, keyring_uri: str) -> MemorySettings:
    return memory_settings_for(redis_server.url, keyring_uri)


@pytest.fixture
def store(memory_settings: MemorySettings) -> Iterator[MemoryStore]:
    built = memory_store(memory_settings)
    yield built
    built.redis.close()


@pytest.fixture
def client(memory_settings: MemorySettings) -> TestClient:
    return TestClient(memory_app(memory_settings))


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """An independent client (redis-py) to look at and tamper with what the data plane stored."""
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def keyring_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))
