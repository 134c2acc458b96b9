"""What `make serve` serves: every function's routes in one app (`create_local_app`) under uvicorn,
a subprocess on a free port, reached over HTTP; its settings as `make serve` gives them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_DIR
from tests.support.redis_server import RedisServer, free_port

LOCAL_APP = "aiinfra.api.local:create_local_app"


@contextlib.contextmanager
def served(factory: str, redis_url: str, directory: Path) -> Iterator[str]:
    """`uvicorn --factory <factory>` on a free port over `redis_url`, its indexes and keyring in
    `directory`; yields its base URL once it answers, and stops it after."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "INDEX_STORE": f"file://{directory / 'indexes'}",
        "REDIS_URL": redis_url,
        "MEMORY_KEYS": f"file://{directory / 'keyring.json'}",
        "AUTH_MODE": "none",
        "MODEL_DIR": str(MODEL_DIR),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    log_path = directory / "uvicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"uvicorn exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"uvicorn did not answer: {log_path.read_text()[-2000:]}"
            try:
                httpx.get(f"{url}/openapi.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def local_api_url(
    redis_server: RedisServer, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of `make serve`'s app over the session's redis-server."""
    with served(LOCAL_APP, redis_server.url, tmp_path_factory.mktemp("local-api")) as url:
        yield url
