"""The embed function served over real HTTP: the official openai client works unchanged (the README's
examples run in test_readme.py)."""

from __future__ import annotations

import numpy as np
from openai import OpenAI


def test_openai_client_works_unchanged(embed_server: str, reference: tuple[list[str], np.ndarray]) -> None:
    texts, expected = reference
    client = OpenAI(base_url=f"{embed_server}/v1", api_key="unused")
    # The client asks for base64 by default and decodes it itself.
    answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[:40])
    vectors = np.array([item.embedding for item in answer.data], dtype=np.float32)
    cosines = (vectors * expected[:40]).sum(axis=1)
    assert cosines.min() >= 0.9999
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 40
    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(as_floats.data[0].embedding, vectors[0], atol=1e-7)
    assert [model.id for model in client.models.list()] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]
