"""The Lambda Invoke API in front of aws-lambda-rie, as Lambda's own service stands in front of a
function: `RequestResponse` goes straight through; `Event` (asynchronous) answers 202 at once and is
queued here, then run on the function in order, as Lambda's event queue runs it. aws-lambda-rie
serves one invocation at a time and only synchronously, so this queue is the harness's part
(architecture.md: "Event queued by the harness"); boto3's Lambda client reaches it by endpoint_url.
"""

from __future__ import annotations

import http.server
import queue
import threading
import urllib.request
from typing import Any

from tests.support.rie import INVOKE_PATH


class InvokeApi:
    """Serves `/2015-03-31/functions/<any name>/invocations` for one function behind `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.events: queue.Queue[bytes] = queue.Queue()
        self.answers: list[bytes] = []  # what each queued event's invocation answered, in order
        self._done = threading.Condition()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("x-amz-invocation-type") == "Event":
                    api.events.put(payload)
                    self._answer(202, b"")
                else:
                    self._answer(200, api.invoke(payload))

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._run_events, daemon=True).start()

    def invoke(self, payload: bytes) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.target_port}{INVOKE_PATH}", data=payload, method="POST"
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            answer: bytes = response.read()
            return answer

    def _run_events(self) -> None:
        while True:
            answer = self.invoke(self.events.get())
            with self._done:
                self.answers.append(answer)
                self._done.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[bytes]:
        """The answers of the first `count` queued events, once they all ran."""
        with self._done:
            assert self._done.wait_for(lambda: len(self.answers) >= count, timeout), self.answers
            return self.answers[:count]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
