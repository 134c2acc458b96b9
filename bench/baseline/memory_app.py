"""The straightforward memory handler: FastAPI + Mangum + redis-py + AES-GCM, written the usual way.

What the memory function is measured against through the handler (same events, same Redis).
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, HTTPException
from mangum import Mangum
from pydantic import BaseModel

client = redis.Redis.from_url(os.environ["REDIS_URL"])
aead = AESGCM(bytes.fromhex(os.environ["BASELINE_KEY_HEX"]))
app = FastAPI()


class PutMemory(BaseModel):
    value: Any
    ttl: int = 3600


class BatchPut(BaseModel):
    items: list[dict[str, Any]]


class BatchGet(BaseModel):
    keys: list[str]


def _seal(name: str, value: Any) -> bytes:
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, json.dumps(value).encode(), name.encode())


def _open(name: str, blob: bytes) -> Any:
    return json.loads(aead.decrypt(blob[:12], blob[12:], name.encode()))


@app.put("/agents/{agent_id}/memories/{key}")
def put_memory(agent_id: str, key: str, body: PutMemory) -> dict[str, Any]:
    name = f"mem:{agent_id}:{key}"
    client.set(name, _seal(name, body.value), ex=body.ttl)
    return {"agent_id": agent_id, "key": key}


@app.get("/agents/{agent_id}/memories/{key}")
def get_memory(agent_id: str, key: str) -> dict[str, Any]:
    name = f"mem:{agent_id}:{key}"
    blob = client.get(name)
    if blob is None:
        raise HTTPException(404)
    return {"agent_id": agent_id, "key": key, "value": _open(name, blob)}


@app.post("/agents/{agent_id}/batch-put")
def batch_put(agent_id: str, body: BatchPut) -> dict[str, Any]:
    pipe = client.pipeline(transaction=True)
    for item in body.items:
        name = f"mem:{agent_id}:{item['key']}"
        pipe.set(name, _seal(name, item["value"]), ex=item.get("ttl", 3600))
    pipe.execute()
    return {"items": [{"key": item["key"]} for item in body.items]}


@app.post("/agents/{agent_id}/batch-get")
def batch_get(agent_id: str, body: BatchGet) -> dict[str, Any]:
    names = [f"mem:{agent_id}:{key}" for key in body.keys]
    blobs = client.mget(names)
    items = [
        {"key": key, "value": _open(name, blob)}
        for key, name, blob in zip(body.keys, names, blobs, strict=True)
        if blob is not None
    ]
    return {"items": items}


handler = Mangum(app, lifespan="off")
