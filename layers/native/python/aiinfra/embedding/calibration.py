"""Per-channel activation peaks of the fp32 graph, for SmoothQuant, measured on random text.

BERT's outlier channels come from its weights, not from what it reads, so sentences of
random vocabulary words reveal them as well as a corpus would, and the build needs no
data set. The seed is fixed: rebuilding on the same machine gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from aiinfra.embedding.graph import ATTENTION_MASK, INPUT_IDS

SEED = 20240611
TEXTS = 64
CHUNK = 16  # texts per run: bounds the probe's memory (every activation is an output)
WORDS = (8, 64)  # words per calibration text: short and long rows both get measured


def random_texts(tokenizer: Tokenizer) -> list[str]:
    """Sentences of random vocabulary entries (no special tokens, no word pieces)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha())
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(WORDS[0], WORDS[1], TEXTS)
    return [" ".join(words[i] for i in rng.integers(0, len(words), n)) for n in lengths]


def activation_peaks(
    model: onnx.ModelProto, names: Sequence[str], tokenizer: Tokenizer, texts: Sequence[str]
) -> dict[str, np.ndarray]:
    """Max |value| per channel of each named activation over the real (unpadded) tokens."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), CHUNK):
        encodings = tokenizer.encode_batch(list(texts[start : start + CHUNK]))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        values = session.run(list(names), {INPUT_IDS: ids, ATTENTION_MASK: mask})
        for name, value in zip(names, values, strict=True):
            peak = np.abs(value[mask.astype(bool)]).max(axis=0)
            peaks[name] = np.maximum(peaks.get(name, peak), peak)
    return peaks
