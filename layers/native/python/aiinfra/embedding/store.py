"""Model files kept in S3 (`MODEL_STORE`) for models too large to ship in the layer.

Lambda caps a function plus its layers at 250 MB unzipped; the fp32 graph does not fit
beside the native libraries, so the function fetches it during init (SnapStart snapshots it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MODEL_FILE = "model.onnx"
CACHE_DIR = Path(tempfile.gettempdir()) / "aiinfra-models"


def _bucket_and_key(store: str, model_id: str) -> tuple[str, str]:
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    return bucket, "/".join(part for part in (prefix.strip("/"), model_id, MODEL_FILE) if part)


def fetch_model(store: str, model_id: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The local path of `model_id`'s graph, downloaded from `store` once per instance."""
    target = cache_dir / model_id / MODEL_FILE
    if target.is_file():
        return target
    import boto3

    bucket, key = _bucket_and_key(store, model_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".part{os.getpid()}")
    boto3.client("s3").download_file(bucket, key, str(partial))
    partial.replace(target)  # a reader never sees half a model
    return target


def publish_models(model_dir: Path, store: str, model_ids: tuple[str, ...]) -> list[str]:
    """Uploads the built graphs of `model_ids` to `store`; returns their s3:// addresses."""
    import boto3

    client = boto3.client("s3")
    published = []
    for model_id in model_ids:
        bucket, key = _bucket_and_key(store, model_id)
        client.upload_file(str(model_dir / model_id / MODEL_FILE), bucket, key)
        published.append(f"s3://{bucket}/{key}")
    return published
