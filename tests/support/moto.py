"""A real moto server (moto in server mode) as a subprocess on a free port, reached over HTTP.

It is moto's own server application, run as `moto_server` runs it but answering one request at a
time: moto checks a PutObject's If-Match / If-None-Match and then writes, with nothing between the
two, so on `moto_server`'s threads two racing conditional writes can both pass the check and one
is lost, which S3 never allows. Served one at a time, moto's conditional writes are atomic as S3's
are, and the race tests test our writers, not moto's threads. (Without threads the server speaks
HTTP/1.0: a connection per request, so no client holds it.)

The session fixture yields the endpoint URL and sets nothing global: each test builds its boto3
client with `endpoint_url=` (and any region and dummy credentials), so S3, KMS and Secrets Manager
tests share one server without touching the environment. Fault tests start a `MotoServer` of
their own and stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.moto", str(self.port)],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log_path.read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def serve(port: int) -> None:
    """moto's server application on 127.0.0.1:`port`, one request at a time (see the module)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))  # as moto_server sets it
    application = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, application, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
