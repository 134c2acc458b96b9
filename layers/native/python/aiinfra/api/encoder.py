"""Text to vectors for the routes that take text (search's text items and queries, memory's texts
and recall): the layer's model, loaded on the first text only, so a function whose requests never
carry one never pays for it (nor imports onnxruntime)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiinfra.api.errors import Unavailable
from aiinfra.config import ConfigError, embed_settings
from aiinfra.observability import logger

if TYPE_CHECKING:
    import numpy as np

    from aiinfra.embedding.catalog import ModelCatalog

TEXT_DIMENSION = 384

TextEncoder = Callable[[list[str]], "np.ndarray"]


def lazy_text_encoder(model_id: str | None = None) -> TextEncoder:
    """Unit vectors of texts by `model_id` (the deployment's default model when None). A model that
    cannot be had (not configured, not fetched, failing to load) is a 503 that names it; the next
    text tries again."""
    catalogs: list[ModelCatalog] = []  # the catalog loads its model once, under its own lock

    def encode(texts: list[str]) -> np.ndarray:
        from aiinfra.embedding.catalog import ModelCatalog, ModelFetchFailed

        if not catalogs:
            try:
                catalogs.append(ModelCatalog.from_settings(embed_settings()))
            except ConfigError as exc:
                # The setting's value (a path) stays in the log.
                logger().warning("text embedding not configured", extra={"reason": str(exc)})
                raise Unavailable("text embedding is not available here", retry_after_seconds=60) from exc
        catalog = catalogs[0]
        name = model_id or catalog.default_model
        try:
            model = catalog.get(name)
        except ModelFetchFailed as exc:
            raise Unavailable(str(exc), retry_after_seconds=5) from exc
        except Exception as exc:  # onnxruntime and tokenizers raise their own types; each means "not here"
            logger().error("embedding model failed to load", extra={"model": name, "reason": str(exc)})
            raise Unavailable(
                f"the embedding model {name!r} failed to load, retry shortly", retry_after_seconds=30
            ) from exc
        vectors: np.ndarray = model.embed(texts).vectors
        return vectors

    return encode
