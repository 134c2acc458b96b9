"""Powertools Logger and Metrics, set up once per function.

Logs are structured JSON with the Lambda request id, the API Gateway request id as
correlation id and the cold start flag; metrics are CloudWatch EMF in namespace `aiinfra`.
"""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "aiinfra"

__all__ = ["MetricUnit", "logger", "metrics"]


@cache
def logger() -> Logger:
    return Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "aiinfra"))


@cache
def metrics() -> Metrics:
    return Metrics(namespace=NAMESPACE, service=os.environ.get("POWERTOOLS_SERVICE_NAME", "aiinfra"))
