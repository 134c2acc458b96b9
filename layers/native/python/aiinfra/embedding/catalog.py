"""The served model ids and their built files; loads each Embedder once, on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from aiinfra.config import EMBED_MODEL_IDS

if TYPE_CHECKING:
    from aiinfra.embedding.embedder import Embedder


class ModelCatalog:
    def __init__(self, model_dir: Path, default_model: str, threads: int) -> None:
        self.model_dir = model_dir
        self.default_model = default_model
        self.threads = threads
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    @property
    def model_ids(self) -> tuple[str, ...]:
        return EMBED_MODEL_IDS

    def get(self, model_id: str | None = None) -> Embedder:
        """The Embedder for `model_id` (default model when None), loaded once."""
        model_id = model_id or self.default_model
        embedder = self._loaded.get(model_id)
        if embedder is None:
            with self._lock:
                embedder = self._loaded.get(model_id)
                if embedder is None:
                    embedder = self._load(model_id)
                    self._loaded[model_id] = embedder
        return embedder

    def _load(self, model_id: str) -> Embedder:
        if model_id not in EMBED_MODEL_IDS:
            raise KeyError(model_id)
        from aiinfra.embedding.embedder import Embedder

        return Embedder(
            self.model_dir / model_id / "model.onnx",
            self.model_dir / "tokenizer.json",
            intra_op_threads=self.threads,
        )
