"""A function under the real Lambda runtime: aws-lambda-rie running `python -m awslambdaric app.handler`.

As Lambda does: the working directory is the function's folder (/var/task), the layer's python/ is on
the path where /opt/python is, then what the managed runtime brings (/var/runtime: awslambdaric, boto3),
and the environment holds Lambda's variables plus the function's settings. With a python3.12 at hand
the layer is the cp312 one `make layer` built; without, .venv's interpreter and packages stand in.

`python -m tests.support.rie FUNCTION EVENT.json` (`make invoke`) sends one event and prints the answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL_DIR, REPO_ROOT
from tests.support.redis_server import free_port
from tests.support.template import function_environment, function_properties

RIE = REPO_ROOT / "build" / "tools" / "aws-lambda-rie"
LAYER = REPO_ROOT / "build" / "layer"
RUNTIME_DIR = REPO_ROOT / "build" / "lambda-runtime"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# Settings `make invoke` takes from the caller's environment, over template.yaml's.
PASSED_SETTINGS = (
    "EMBED_",
    "INDEX_",
    "MEMORY_",
    "REDIS_",
    "AUTH_",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY",
    "AWS_SECRET",
)
# This RIE build's REPORT line times the init inside `Duration`; its runtime log times each phase apart.
INIT_REPORT = re.compile(r"INIT REPORT\(durationMs: (?P<ms>[\d.]+)\)")
INVOKE_DONE = re.compile(r"INVOKE RTDONE\(status: \w+, produced bytes: \d+, duration: (?P<ms>[\d.]+)ms\)")


@dataclass(frozen=True)
class Runtime:
    """The interpreter and the path that stand for the managed runtime plus the layer."""

    python: str
    path: tuple[Path, ...]
    opt_model: Path
    label: str


def python312() -> str | None:
    found = shutil.which("python3.12")
    if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
        return found
    candidates = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    return str(candidates[-1]) if candidates else None


def lambda_runtime() -> Runtime:
    found = python312()
    if found and (LAYER / "python" / "aiinfra").is_dir():
        return Runtime(found, (LAYER / "python", RUNTIME_DIR), LAYER / "model", "python3.12, cp312 layer")
    return Runtime(str(REPO_ROOT / ".venv" / "bin" / "python"), (), MODEL_DIR, "python3.11, .venv")


@dataclass(frozen=True)
class Report:
    """What Lambda's REPORT line says: the init phase (on a cold start) and the invocation."""

    init_ms: float | None
    duration_ms: float


class LambdaEmulator:
    """One execution environment: inits on its first invocation, like a cold Lambda."""

    def __init__(
        self,
        function: str,
        settings: dict[str, str],
        *,
        runtime: Runtime | None = None,
        handler: str = "app.handler",
        task_root: Path | None = None,
        log_path: Path,
    ) -> None:
        self.function = function
        self.runtime = runtime or lambda_runtime()
        self.task_root = task_root or REPO_ROOT / "functions" / function
        self.handler = handler
        self.settings = settings
        self.log_path = log_path
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """Lambda's variables, then the function's from template.yaml (/opt: the layer), then `settings`."""
        properties = function_properties(self.function)
        from_template = {
            name: value.replace("/opt/model", str(self.runtime.opt_model))
            for name, value in function_environment(self.function).items()
        }
        name = f"aiinfra-{self.function}"
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(properties["MemorySize"]),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(properties["Timeout"]),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local/rie",
            "LAMBDA_TASK_ROOT": str(self.task_root),
            "LAMBDA_RUNTIME_DIR": str(RUNTIME_DIR),
            "_HANDLER": self.handler,
            "PYTHONPATH": ":".join(str(path) for path in self.runtime.path),
            # /var/task and /opt are read-only in Lambda: no bytecode is written beside the code.
            "PYTHONDONTWRITEBYTECODE": "1",
            **from_template,
            **self.settings,
        }

    def start(self) -> None:
        command = [
            str(RIE),
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{self.port}",
            "--runtime-api-address",
            f"127.0.0.1:{free_port()}",
            self.runtime.python,
            "-m",
            "awslambdaric",
            self.handler,
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.task_root,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"aws-lambda-rie exited:\n{self.output()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"aws-lambda-rie did not listen on {self.port}:\n{self.output()}")

    def invoke(self, event: Any, timeout: float = 120.0) -> tuple[int, Any]:
        """RIE's HTTP status and the function's decoded JSON answer (or error document)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{INVOKE_PATH}", data=json.dumps(event).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw else None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reports(self) -> list[Report]:
        output = self.output()
        inits = [float(match["ms"]) for match in INIT_REPORT.finditer(output)]
        durations = [float(match["ms"]) for match in INVOKE_DONE.finditer(output)]
        return [Report(inits[0] if i == 0 and inits else None, ms) for i, ms in enumerate(durations)]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> LambdaEmulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture
def lambda_function(tmp_path: Path) -> Iterator[Any]:
    """`start(function, settings)` -> a started LambdaEmulator, stopped at the end of the test."""
    started: list[LambdaEmulator] = []

    def start(function: str, settings: dict[str, str]) -> LambdaEmulator:
        emulator = LambdaEmulator(function, settings, log_path=tmp_path / f"{function}-{len(started)}.log")
        started.append(emulator)
        emulator.start()
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


def main(argv: list[str]) -> int:
    function, event_path = argv
    runtime = lambda_runtime()
    log = REPO_ROOT / "build" / f"invoke-{function}.log"
    settings = {name: value for name, value in os.environ.items() if name.startswith(PASSED_SETTINGS)}
    with LambdaEmulator(function, settings, runtime=runtime, log_path=log) as emulator:
        status, answer = emulator.invoke(json.loads(Path(event_path).read_text()))
    print(emulator.output(), file=sys.stderr)
    print(json.dumps(answer, indent=2))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
