"""Models the layer does not carry come from MODEL_STORE (S3, here moto_server over HTTP)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiinfra.api.embed import create_embed_app
from aiinfra.cli import main
from aiinfra.embedding.catalog import ModelCatalog, ModelNotDeployed
from fastapi.testclient import TestClient

from tests.support.search import new_bucket

FP32, INT8 = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points boto3 (as the function runs it: from the environment) at moto; yields a new bucket."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    yield new_bucket(moto_endpoint)


@pytest.fixture
def layer_without_fp32(model_dir: Path, tmp_path: Path) -> Path:
    """A MODEL_DIR laid out as the deployed layer is: tokenizer and int8 model only."""
    layer = tmp_path / "opt-model"
    layer.mkdir()
    shutil.copy(model_dir / "tokenizer.json", layer)
    (layer / INT8).symlink_to(model_dir / INT8)
    return layer


def test_fp32_is_fetched_from_the_store_and_gives_the_same_vectors(
    s3: str, model_dir: Path, layer_without_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"s3://{s3}/models"
    assert main(["publish-model", "--to", store]) == 0
    assert capsys.readouterr().out.strip() == f"{store}/{FP32}/model.onnx"

    deployed = ModelCatalog(layer_without_fp32, INT8, 1, store, fetch_dir=tmp_path / "fetched")
    assert deployed.model_ids == (FP32, INT8)
    local = ModelCatalog(model_dir, FP32, 1)
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    fetched = deployed.get(FP32).embed(texts).vectors
    np.testing.assert_array_equal(fetched, local.get(FP32).embed(texts).vectors)
    assert (tmp_path / "fetched" / FP32 / "model.onnx").stat().st_size > 50_000_000


def test_without_a_store_only_the_layers_models_are_served(layer_without_fp32: Path) -> None:
    client = TestClient(create_embed_app(ModelCatalog(layer_without_fp32, INT8, 1)))
    assert [model["id"] for model in client.get("/v1/models").json()["data"]] == [INT8]
    refused = client.post("/v1/embeddings", json={"input": "hello", "model": FP32})
    assert refused.status_code == 404
    assert refused.json()["error"]["type"] == "not_found"
    assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200


def test_a_store_that_cannot_deliver_gives_503_naming_neither_bucket_nor_endpoint(
    s3: str, moto_endpoint: str, layer_without_fp32: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = ModelCatalog(layer_without_fp32, INT8, 1, f"s3://{s3}/empty", fetch_dir=tmp_path / "fetched")
    client = TestClient(create_embed_app(catalog))
    answer = client.post("/v1/embeddings", json={"input": "hello", "model": FP32})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["message"] == f"model {FP32!r} is not available right now, retry shortly"
    for internal in (s3, moto_endpoint, "s3://", str(tmp_path), "empty"):
        assert internal not in answer.text
    [logged] = [record for record in caplog.records if record.getMessage() == "model fetch failed"]
    assert s3 in logged.store and "404" in logged.reason  # the log line keeps where and why
    assert not (tmp_path / "fetched" / FP32 / "model.onnx").exists()


def test_a_preloading_catalog_has_its_default_model_when_the_app_is_made(layer_without_fp32: Path) -> None:
    catalog = ModelCatalog(layer_without_fp32, INT8, 1).preload()
    assert catalog.preloading
    client = TestClient(create_embed_app(catalog))
    assert not catalog.preloading  # the factory waited for the model: it was loaded during the "init"
    assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200


def test_a_default_model_that_fails_to_preload_fails_the_init(layer_without_fp32: Path) -> None:
    catalog = ModelCatalog(layer_without_fp32, FP32, 1).preload()  # fp32 is not in the layer, no store
    with pytest.raises(ModelNotDeployed, match="not deployed here"):
        create_embed_app(catalog)
