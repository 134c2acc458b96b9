"""Python client for the aiinfra APIs: embeddings, search indexes and agent memory, sync and async.

from aiinfra_client import Client
with Client("https://api.example.com", token=jwt) as client:
    vectors = client.embeddings.create(["hello", "world"]).vectors
"""

from aiinfra_client._core import Call, Retry
from aiinfra_client.client import AsyncClient, Client
from aiinfra_client.embeddings import EmbeddingList, Model
from aiinfra_client.errors import (
    AiinfraError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from aiinfra_client.indexes import CompactResult, IndexInfo, IndexItem, Match, QueryResult, WriteResult
from aiinfra_client.memories import (
    BatchRead,
    KeyPage,
    Memory,
    MemoryItem,
    PutResult,
    RecallMatch,
    Written,
)

__all__ = [
    "AiinfraError",
    "AsyncClient",
    "BatchRead",
    "Call",
    "Client",
    "CompactResult",
    "Conflict",
    "EmbeddingList",
    "Forbidden",
    "IndexInfo",
    "IndexItem",
    "InvalidRequest",
    "KeyPage",
    "Match",
    "Memory",
    "MemoryItem",
    "Model",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PutResult",
    "QueryResult",
    "RateLimited",
    "RecallMatch",
    "Retry",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WriteResult",
    "Written",
]
