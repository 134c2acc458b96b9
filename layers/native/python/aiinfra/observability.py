"""Powertools Logger and Metrics, set up once per function.

Logs are structured JSON with the Lambda request id, the API Gateway request id as
correlation id and the cold start flag; metrics are CloudWatch EMF in namespace `aiinfra`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from functools import cache
from typing import Any

import orjson
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "aiinfra"

__all__ = ["MetricUnit", "log_request", "logger", "metrics"]


@cache
def logger() -> Logger:
    return Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "aiinfra"))


@cache
def metrics() -> Metrics:
    # Most requests add no metric of their own: Powertools would warn of that on each (a stray
    # non-JSON line in the function's log, once per instance). Its documentation silences it so.
    warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
    return Metrics(namespace=NAMESPACE, service=os.environ.get("POWERTOOLS_SERVICE_NAME", "aiinfra"))


def _timestamp(now: float) -> str:
    """The Logger's own format: `2026-11-27 14:13:19,242+0000`."""
    local = time.localtime(now)
    milliseconds = int(now % 1 * 1000)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', local)},{milliseconds:03d}{time.strftime('%z', local)}"


def log_request(**fields: Any) -> None:
    """Writes the one `request` line of an invocation: the Logger's JSON shape and keys (service,
    request id, correlation id, cold start, X-Ray trace) to the Logger's stream, serialized with
    orjson. Through `logging` and the Powertools formatter the same line costs a noticeable share of
    a whole memory put; every other line goes through the Logger."""
    log = logger()
    if log.log_level > logging.INFO:
        return
    now = time.time()
    line = {
        **log.get_current_keys(),
        "level": "INFO",
        "location": "handler",
        "message": "request",
        "timestamp": _timestamp(now),
        **fields,
    }
    trace = os.environ.get("_X_AMZN_TRACE_ID")
    if trace and "xray_trace_id" not in line:
        line["xray_trace_id"] = trace.split(";")[0].removeprefix("Root=")
    text = orjson.dumps({key: value for key, value in line.items() if value is not None}, default=str)
    handler = log.registered_handler
    if isinstance(handler, logging.StreamHandler):
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(text.decode() + "\n")
            handler.stream.flush()
