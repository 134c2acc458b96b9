"""SnapStart hooks of the memory function: no Redis socket in the snapshot, fresh ones after a restore."""

from __future__ import annotations

import time

import pytest
import redis
from aiinfra import snapstart
from aiinfra.config import MemorySettings
from fastapi.testclient import TestClient

from tests.support.memory import memory_app


def _clients(raw_redis: redis.Redis, expected: int | None = None) -> int:
    """How many clients the server lists; with `expected`, once it lists that many (or after 2 s): the
    server learns of a closed socket on its next turn of the event loop, not when close() returns."""
    deadline = time.monotonic() + 2.0
    while (count := len(raw_redis.client_list())) != expected and expected is not None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return count


def test_memory_drops_its_connections_before_the_snapshot_and_serves_after_restore(
    monkeypatch: pytest.MonkeyPatch, memory_settings: MemorySettings, raw_redis: redis.Redis, agent: str
) -> None:
    hooks = snapstart.SnapshotHooks()
    monkeypatch.setattr(snapstart, "HOOKS", hooks)
    client = TestClient(memory_app(memory_settings))
    path = f"/agents/{agent}/memories/note"
    assert client.put(path, json={"value": "before"}).status_code in (200, 201)
    with_function = _clients(raw_redis)

    hooks.run_before_snapshot()
    assert _clients(raw_redis, with_function - 1) == with_function - 1

    hooks.run_after_restore()
    answer = client.get(path)
    assert answer.status_code == 200 and answer.json()["value"] == "before"
    assert _clients(raw_redis, with_function) == with_function
