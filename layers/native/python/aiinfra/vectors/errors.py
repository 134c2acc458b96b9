"""What can go wrong with an index, in the index's own terms; `aiinfra.api.search` maps each to HTTP.

Messages are written for the caller: they name the index and the problem, never a bucket, a path
or an endpoint. What the store itself said (which S3 call failed, which file is short) travels in
`IndexUnavailable.detail`, for the log line only.
"""

from __future__ import annotations


class IndexNotFound(Exception):
    """No index by that name (or it was dropped)."""


class IndexConflict(Exception):
    """The index exists with another definition, or changed under a write that required it not to."""


class InvalidIndexInput(ValueError):
    """The caller's input cannot apply to this index (a dimension, a factory string); `param` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class IndexUnavailable(Exception):
    """The index store cannot be reached, or the index cannot be loaded now: retry later."""

    def __init__(self, message: str, *, detail: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds


class IndexQuotaExceeded(Exception):
    """A bound that protects the service (indexes per tenant, rows per shard): `quota` names it."""

    def __init__(self, message: str, *, quota: str) -> None:
        super().__init__(message)
        self.quota = quota


class IndexBusy(Exception):
    """A shard holds as many delta segments as it may until its compaction, already queued, folds
    them: retry after `retry_after_seconds`."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def detail_of(error: Exception) -> str:
    """What the log says of `error`: the store's own detail where there is one."""
    return error.detail if isinstance(error, IndexUnavailable) else str(error)
