"""Shared test set-up: where the repository, the built model and the shared fixtures are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
MODEL_DIR = REPO_ROOT / "build" / "model"

os.environ.setdefault("MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("AUTH_MODE", "none")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "aiinfra")

# Fixture modules of each capability (real servers: redis-server, moto_server, aws-lambda-rie).
pytest_plugins: list[str] = [
    "tests.support.embed",
    "tests.support.redis_server",
    "tests.support.memory",
    "tests.support.moto",
    "tests.support.search",
    "tests.support.rie",
    "tests.support.local_server",
]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The models `make build` produced (built here when missing, cached by their inputs)."""
    from aiinfra.embedding.build import build_models, default_weights_dir

    build_models(default_weights_dir(), MODEL_DIR)
    return MODEL_DIR
