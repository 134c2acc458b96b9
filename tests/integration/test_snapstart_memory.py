"""SnapStart hooks of the memory function: no Redis socket in the snapshot, fresh ones after a restore."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import redis
from aiinfra import snapstart
from aiinfra.api.encoder import lazy_text_encoder
from aiinfra.api.memory import RECALL_MODEL, create_memory_app
from aiinfra.config import MemorySettings
from fastapi.testclient import TestClient

from tests.support.memory import NO_AUTH, memory_app


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


@pytest.mark.parametrize("warm", [True, False])
def test_the_recall_model_loads_in_the_warm_up_only_when_the_setting_asks(
    monkeypatch: pytest.MonkeyPatch, memory_settings: MemorySettings, agent: str, warm: bool
) -> None:
    hooks = snapstart.SnapshotHooks()
    monkeypatch.setattr(snapstart, "HOOKS", hooks)
    model = lazy_text_encoder(RECALL_MODEL)
    embedded: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        embedded.append(texts)
        return model(texts)

    settings = dataclasses.replace(memory_settings, recall_warm=warm)
    client = TestClient(create_memory_app(settings=settings, auth=NO_AUTH, encode=encode))
    assert embedded == []  # never during the init itself
    hooks.run_before_snapshot()
    assert embedded == ([["SnapStart warm-up"]] if warm else [])
    hooks.run_after_restore()
    path = f"/agents/{agent}/memories/note"
    assert client.put(path, json={"value": 1, "text": "kept after the restore"}).status_code == 201
    found = client.post(f"/agents/{agent}/recall", json={"query": "kept after the restore"}).json()
    assert [m["key"] for m in found["matches"]] == ["note"]
