"""Texts in, L2-normalised sentence vectors out: tokenizer + onnxruntime session + batching.

A request's texts are tokenized once, sorted by length and run in sub-batches of similar
length (little padding), then put back in request order. The graph computes every row
from its own tokens only, so a text gets the same vector whatever it is batched with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# Measured best on 2 cores: small runs keep each layer's working set in cache, and the
# token bound also caps the arena (long texts: 2 x 256 per run instead of 8 x 256).
SUB_BATCH_TEXTS = 8
SUB_BATCH_TOKENS = 512


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: np.ndarray  # float32 (n, dimension), C-contiguous, unit rows, in request order
    token_counts: np.ndarray  # int64 (n,), tokens per text incl. [CLS]/[SEP], after truncation


class Embedder:
    """One model: thread-safe, `embed` may be called from several threads at once."""

    def __init__(
        self, model_path: Path, tokenizer_path: Path, *, intra_op_threads: int | None = None
    ) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        padding = self._tokenizer.padding
        if self._tokenizer.truncation is None or padding is None or padding["length"] is not None:
            raise ValueError(f"{tokenizer_path}: must truncate and pad to the longest text (run build-model)")
        self._session = ort.InferenceSession(
            str(model_path),
            sess_options=_session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
        self._output = self._session.get_outputs()[0].name
        self.dimension = int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        if not texts:
            return EmbeddingBatch(np.empty((0, self.dimension), np.float32), np.empty(0, np.int64))
        encodings = self._tokenizer.encode_batch([text.strip() for text in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        counts = mask.sum(axis=1)
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for rows in _sub_batches(counts):
            width = int(counts[rows].max())
            feed = {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width]}
            vectors[rows] = self._session.run([self._output], feed)[0]
        return EmbeddingBatch(vectors=vectors, token_counts=counts)


def _sub_batches(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Row indices, shortest texts first, in runs of similar length and bounded size."""
    order = np.argsort(counts, kind="stable")
    start = 0
    while start < len(order):
        stop = start + 1
        # Sorted ascending, so the last row of a run sets its padded width.
        while (
            stop < len(order)
            and stop - start < SUB_BATCH_TEXTS
            and (stop - start + 1) * counts[order[stop]] <= SUB_BATCH_TOKENS
        ):
            stop += 1
        yield order[start:stop]
        start = stop


def _session_options(intra_op_threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena stays on: without it every buffer is a fresh mmap, slower and with a higher peak
    # RSS; SUB_BATCH_TOKENS bounds the largest run, and so what the arena can hold.
    options.enable_cpu_mem_arena = True
    # Idle intra-op threads sleep instead of spinning: a spinning thread takes the core from a
    # concurrent request's (or, under Lambda's fractional vCPUs, from its own) work (docs/embed.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
