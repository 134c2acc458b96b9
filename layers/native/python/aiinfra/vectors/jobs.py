"""Compaction jobs and where they run: a background worker of this process (`make serve`, tests), or
an asynchronous invocation (`InvocationType=Event`) of the indexer function named by a setting.

A job carries the lease token it was queued under (see `manifest.Compaction`): whoever runs it,
only the job whose token the manifest still names may start, and may swap in what it built.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from aiinfra.observability import logger
from aiinfra.vectors.errors import IndexUnavailable
from aiinfra.vectors.store import IndexPath

JOB_EVENT = "compact"


@dataclass(frozen=True)
class CompactionJob:
    """One shard's compaction, as queued: `token` is the lease it was queued under."""

    tenant: str
    name: str
    shard: int
    incarnation: str
    token: str

    @property
    def index(self) -> IndexPath:
        return IndexPath(self.tenant, self.name)

    def to_event(self) -> dict[str, Any]:
        return {"aiinfra": JOB_EVENT, **self.__dict__}

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> CompactionJob:
        """The job an indexer event carries; ValueError when the event is not one."""
        if not isinstance(event, dict) or event.get("aiinfra") != JOB_EVENT:
            raise ValueError("not a compaction job event")
        try:
            return cls(
                tenant=str(event["tenant"]),
                name=str(event["name"]),
                shard=int(event["shard"]),
                incarnation=str(event["incarnation"]),
                token=str(event["token"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a compaction job event without {error}") from None


class JobObsolete(Exception):
    """The job's index was dropped or re-created, or another job holds the shard's lease: it stops
    without changing anything."""


class BackgroundCompactions:
    """Runs jobs one at a time on a daemon thread of this process, started with the first job."""

    def __init__(self, run: Callable[[CompactionJob], object]) -> None:
        self._run = run
        self._jobs: queue.Queue[CompactionJob] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, job: CompactionJob) -> None:
        self._jobs.put(job)
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="compactions", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._run(job)
            except Exception as error:  # the job records its own outcome; this keeps the worker alive
                logger().error("compaction job crashed", extra={"index": job.name, "problem": str(error)})


class LambdaCompactions:
    """Hands each job to the indexer function as an asynchronous invocation (Lambda queues it and
    retries a failed one; the lease makes a duplicate harmless)."""

    def __init__(self, function_name: str, client: Any = None) -> None:
        self.function_name = function_name
        self._client = client

    def __call__(self, job: CompactionJob) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            import boto3

            self._client = boto3.client("lambda")
        try:
            self._client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=orjson.dumps(job.to_event()),
            )
        except (BotoCoreError, ClientError) as error:
            raise IndexUnavailable(
                "the compaction could not be queued, retry shortly",
                detail=f"Lambda Invoke of the indexer failed: {error.__class__.__name__}",
            ) from None
