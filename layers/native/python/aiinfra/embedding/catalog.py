"""The served model ids and their built files; loads each Embedder once, on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from aiinfra.config import EMBED_MODEL_IDS, EmbedSettings
from aiinfra.embedding.store import CACHE_DIR, fetch_model

if TYPE_CHECKING:
    from aiinfra.embedding.embedder import Embedder


class ModelNotDeployed(Exception):
    """A model id this deployment does not serve: not in MODEL_DIR and no MODEL_STORE."""


class ModelFetchFailed(Exception):
    """MODEL_STORE could not deliver a model's graph (S3 unreachable, object missing)."""


class ModelCatalog:
    def __init__(
        self,
        model_dir: Path,
        default_model: str,
        threads: int,
        model_store: str | None = None,
        fetch_dir: Path = CACHE_DIR,
    ) -> None:
        self.model_dir = model_dir
        self.fetch_dir = fetch_dir
        self.default_model = default_model
        self.threads = threads
        self.model_store = model_store
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        self._preloading: threading.Thread | None = None
        self._preload_error: Exception | None = None

    @classmethod
    def from_settings(cls, settings: EmbedSettings) -> ModelCatalog:
        return cls(settings.model_dir, settings.default_model, settings.threads, settings.model_store)

    def preload(self) -> ModelCatalog:
        """Starts loading the default model on a second thread and answers the catalog.

        onnxruntime builds its session without holding the GIL, so during an init the model loads
        while the web stack imports; `wait_for_preload` joins it before the init ends. The modules
        the model needs are imported here, on the calling thread: two threads never import at once.
        """
        import aiinfra.embedding.embedder  # noqa: F401

        def load() -> None:
            try:
                self.get()
            except Exception as error:  # handed to the init by wait_for_preload
                self._preload_error = error

        self._preloading = threading.Thread(target=load, name="model-preload", daemon=True)
        self._preloading.start()
        return self

    @property
    def preloading(self) -> bool:
        """Whether `preload` started a load that `wait_for_preload` has not joined yet."""
        return self._preloading is not None

    def wait_for_preload(self) -> None:
        """Joins the preload thread; raises what stopped it from loading the default model."""
        if self._preloading is not None:
            self._preloading.join()
            self._preloading = None
        if self._preload_error is not None:
            error, self._preload_error = self._preload_error, None
            raise error

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The models this deployment serves: in MODEL_DIR, or any of them with a MODEL_STORE."""
        if self.model_store is not None:
            return EMBED_MODEL_IDS
        return tuple(m for m in EMBED_MODEL_IDS if (self.model_dir / m / "model.onnx").is_file())

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
        if model_id not in self.model_ids:
            served = ", ".join(self.model_ids)
            raise ModelNotDeployed(f"model {model_id!r} is not deployed here; served: {served}")
        model_path = self.model_dir / model_id / "model.onnx"
        if not model_path.is_file():
            assert self.model_store is not None
            try:
                model_path = fetch_model(self.model_store, model_id, self.fetch_dir)
            except Exception as exc:  # boto3 raises many types; every one means "not now"
                from aiinfra.observability import logger

                # Where it was fetched from and why it failed are for the log, not the caller.
                where = {"model": model_id, "store": self.model_store, "reason": str(exc)}
                logger().warning("model fetch failed", extra=where)
                raise ModelFetchFailed(
                    f"model {model_id!r} is not available right now, retry shortly"
                ) from exc
        from aiinfra.embedding.embedder import Embedder

        return Embedder(model_path, self.model_dir / "tokenizer.json", intra_op_threads=self.threads)
