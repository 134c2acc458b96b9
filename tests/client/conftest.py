"""The real app under uvicorn over HTTP (a subprocess on a free port) for the client and its adapters."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiinfra_client import AsyncClient, Client, Retry

# Tests that provoke 503s set their own policy; elsewhere a retry would only hide a failure.
NO_RETRY = Retry(attempts=1)


@pytest.fixture(scope="session")
def api_url(local_api_url: str) -> str:
    """Every route in one app (`create_local_app`, what `make serve` runs) over the session's Redis."""
    return local_api_url


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
