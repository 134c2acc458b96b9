"""Fixtures for the embed function: its Lambda module, the reference vectors, a live server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import uvicorn

from tests.conftest import SHARED_FIXTURES
from tests.support.functions import load_function
from tests.support.redis_server import free_port


@pytest.fixture(scope="session")
def embed_function(model_dir: Path) -> ModuleType:
    return load_function("embed")


@pytest.fixture(scope="session")
def reference() -> tuple[list[str], np.ndarray]:
    """The 252 texts and the vectors sentence-transformers gives for them."""
    folder = SHARED_FIXTURES / "embeddings"
    texts = json.loads((folder / "minilm_public.texts.json").read_text())
    vectors = np.load(folder / "minilm_public.vectors.npy")
    return texts, vectors


@pytest.fixture(scope="session")
def embed_server(embed_function: ModuleType) -> Iterator[str]:
    """The embed ASGI app served by uvicorn over real HTTP; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(embed_function.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
