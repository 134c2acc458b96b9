"""The real app under uvicorn over HTTP (a subprocess on a free port) for the client and its adapters."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiinfra_client import AsyncClient, Client, Retry

from tests.conftest import MODEL_DIR
from tests.support.redis_server import RedisServer, free_port

# Tests that provoke 503s set their own policy; elsewhere a retry would only hide a failure.
NO_RETRY = Retry(attempts=1)


@contextlib.contextmanager
def served(factory: str, redis_url: str, directory: Path) -> Iterator[str]:
    """`uvicorn --factory aiinfra.api.<factory>` on a free port, its settings as `make serve` gives
    them; yields its base URL once it answers."""
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
def api_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every route in one app (`create_local_app`, what `make serve` runs) over the session's Redis."""
    with served(
        "aiinfra.api.local:create_local_app", redis_server.url, tmp_path_factory.mktemp("api")
    ) as url:
        yield url


@pytest.fixture
def api(api_url: str) -> Iterator[Client]:
    with Client(api_url, retry=NO_RETRY) as client:
        yield client


@pytest.fixture
async def async_api(api_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api_url, retry=NO_RETRY) as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def index_name() -> str:
    """A fresh index per test: tests share one index store without seeing each other."""
    return f"t-{uuid.uuid4().hex[:12]}"


class Gateway:
    """A stand-in for what sits in front of the functions (API Gateway): records each request's
    headers and answers the scripted (status, headers, body) in turn, then 200 with a model list."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gateway.requests.append({k.lower(): v for k, v in self.headers.items()})
                status, headers, body = gateway.script.pop(0) if gateway.script else (200, {}, MODELS_BODY)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}
).encode()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    stand_in = Gateway()
    yield stand_in
    stand_in.close()
