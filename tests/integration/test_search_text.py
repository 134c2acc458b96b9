"""Text items and text queries, embedded in-process by the layer's model (built by `make build`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiinfra.config import embed_settings
from aiinfra.embedding.catalog import ModelCatalog
from aiinfra.vectors.store import FileStore

from tests.support.search import SearchClient

TEXTS = {
    "cat": "A small domesticated feline that purrs and chases mice.",
    "bank": "A financial institution that accepts deposits and lends money.",
    "rain": "Water falling in drops from clouds in the sky.",
    "guitar": "A stringed musical instrument played by strumming or plucking.",
}


def test_text_upsert_and_query_use_the_layer_embedder(
    model_dir: Path, search_client: SearchClient, file_store: FileStore
) -> None:
    client = search_client(file_store)
    assert client.put("/indexes/words", json={"dimension": 384, "metric": "cosine"}).status_code == 201
    items = [{"id": key, "text": text, "metadata": {"len": len(text)}} for key, text in TEXTS.items()]
    assert client.post("/indexes/words/upsert", json={"items": items}).status_code == 200
    answer = client.post("/indexes/words/query", json={"text": "an animal that meows", "k": 2}).json()
    assert answer["matches"][0]["id"] == "cat"
    money = client.post("/indexes/words/query", json={"text": "where I keep my savings", "k": 1}).json()
    assert money["matches"][0]["id"] == "bank"
    settings = embed_settings()
    embedder = ModelCatalog(settings.model_dir, settings.default_model, settings.threads).get()
    vector = embedder.embed([TEXTS["rain"]]).vectors[0]
    same = client.post("/indexes/words/query", json={"vector": vector.tolist(), "k": 1}).json()["matches"][0]
    assert same["id"] == "rain" and same["score"] == pytest.approx(1.0, abs=1e-5)
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


def test_text_needs_a_384_dimension_index(
    model_dir: Path, search_client: SearchClient, file_store: FileStore
) -> None:
    client = search_client(file_store)
    assert client.put("/indexes/small", json={"dimension": 8}).status_code == 201
    answer = client.post("/indexes/small/query", json={"text": "hello"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "text needs an index of dimension 384, this one has 8"
