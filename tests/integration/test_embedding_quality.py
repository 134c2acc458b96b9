"""The built models through `Embedder`: reference vectors, STS-B, batch invariance, token counts."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
from aiinfra.config import EMBED_MODEL_IDS
from aiinfra.embedding.build import default_weights_dir
from aiinfra.embedding.embedder import Embedder
from tokenizers import Tokenizer

from tests.conftest import SHARED_FIXTURES

FP32, INT8 = EMBED_MODEL_IDS
StsPairs = tuple[np.ndarray, list[str], list[str]]
MIXED_TEXTS = [
    "A man is playing a guitar.",
    " ".join(["The committee reviewed every clause of the agreement before the vote."] * 30),  # > 256 tokens
    "Hi",
    "Three children are building a sandcastle near the water while their parents watch from the shade.",
    "  surrounding whitespace\t\n",
    "Ünïcödé, 中文 and emoji 🙂 in one line.",
]


@pytest.fixture(scope="module")
def embedders(model_dir: Path) -> dict[str, Embedder]:
    tokenizer = model_dir / "tokenizer.json"
    return {m: Embedder(model_dir / m / "model.onnx", tokenizer, intra_op_threads=2) for m in EMBED_MODEL_IDS}


@pytest.fixture(scope="module")
def sts_pairs() -> StsPairs:
    """Gold scores and sentence pairs; some rows carry two extra source columns."""
    with (SHARED_FIXTURES / "sts" / "stsb-test.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 1379
    return np.array([float(r[4]) for r in rows]), [r[5] for r in rows], [r[6] for r in rows]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts - 1) / 2.0, counts)
    return ranks


def spearman_x100(a: np.ndarray, b: np.ndarray) -> float:
    return float(100 * np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def sts_score(embedder: Embedder, pairs: StsPairs) -> float:
    gold, first, second = pairs
    vectors = np.concatenate([embedder.embed(first[i : i + 32]).vectors for i in range(0, len(first), 32)])
    others = np.concatenate([embedder.embed(second[i : i + 32]).vectors for i in range(0, len(second), 32)])
    return spearman_x100(gold, np.sum(vectors * others, axis=1))


def test_spearman_averages_tied_ranks() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert spearman_x100(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(100)


@pytest.mark.parametrize(("model_id", "bar"), [(FP32, 0.9999), (INT8, 0.995)])
def test_reproduces_sentence_transformers(
    embedders: dict[str, Embedder], reference: tuple[list[str], np.ndarray], model_id: str, bar: float
) -> None:
    texts, expected = reference
    batch = embedders[model_id].embed(texts)
    assert batch.vectors.shape == expected.shape
    worst = cosines(batch.vectors, expected).min()
    assert worst >= bar, f"{model_id}: min cosine {worst:.6f}"


def test_int8_products_cannot_saturate_on_cpus_without_vnni(model_dir: Path) -> None:
    """onnxruntime's uint8 x int8 kernel without VNNI (AVX2) adds pairs of products in saturating
    int16: the int8 model's vectors are the same on every CPU only if no pair can pass 32767."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_dir / INT8 / "model.onnx"))
    weights = {t.name: t for t in model.graph.initializer}
    products = [node for node in model.graph.node if node.op_type == "MatMulIntegerToFloat"]
    assert len(products) == 6 * 6  # 6 layers: Q, K, V, attention output, intermediate, output
    for node in products:
        peak = int(np.abs(numpy_helper.to_array(weights[node.input[1]]).astype(np.int32)).max())
        assert 2 * 255 * peak <= 32767, (node.name, peak)


def test_fp32_sts_benchmark(embedders: dict[str, Embedder], sts_pairs: StsPairs) -> None:
    assert sts_score(embedders[FP32], sts_pairs) == pytest.approx(82.05, abs=0.05)


def test_int8_sts_benchmark_beats_plain_dynamic_quantization(
    embedders: dict[str, Embedder], sts_pairs: tuple
) -> None:
    score = sts_score(embedders[INT8], sts_pairs)
    assert score >= 81.6 and score > 81.63, score


def test_a_text_embeds_the_same_alone_and_in_a_mixed_batch(embedders: dict[str, Embedder]) -> None:
    for model_id, embedder in embedders.items():
        together = embedder.embed(MIXED_TEXTS).vectors
        alone = np.concatenate([embedder.embed([text]).vectors for text in MIXED_TEXTS])
        if model_id == FP32:
            assert np.abs(together - alone).max() <= 1e-5
        else:
            assert cosines(together, alone).min() >= 0.999


def test_token_counts_match_the_tokenizer_capped_at_256(embedders: dict[str, Embedder]) -> None:
    plain = Tokenizer.from_file(str(default_weights_dir() / "tokenizer.json"))
    plain.no_padding()
    plain.enable_truncation(256)
    expected = [len(plain.encode(text.strip()).ids) for text in MIXED_TEXTS]
    assert expected[1] == 256
    for embedder in embedders.values():
        assert embedder.embed(MIXED_TEXTS).token_counts.tolist() == expected


def test_vectors_are_unit_float32_rows_in_request_order(embedders: dict[str, Embedder]) -> None:
    embedder = embedders[FP32]
    batch = embedder.embed(MIXED_TEXTS)
    assert embedder.dimension == 384
    assert batch.vectors.dtype == np.float32 and batch.vectors.flags["C_CONTIGUOUS"]
    assert batch.vectors.shape == (len(MIXED_TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-6)
    reversed_batch = embedder.embed(MIXED_TEXTS[::-1])
    np.testing.assert_allclose(reversed_batch.vectors[::-1], batch.vectors, atol=1e-5)
    empty = embedder.embed([])
    assert empty.vectors.shape == (0, 384) and empty.token_counts.shape == (0,)


def test_concurrent_calls_get_their_own_rows(embedders: dict[str, Embedder]) -> None:
    embedder = embedders[INT8]
    requests = [MIXED_TEXTS[i:] + MIXED_TEXTS[:i] for i in range(len(MIXED_TEXTS))]
    expected = [embedder.embed(texts).vectors for texts in requests]
    results: list[tuple[int, np.ndarray]] = []

    def work(index: int) -> None:
        for _ in range(5):
            results.append((index, embedder.embed(requests[index]).vectors))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 5 * len(requests)
    for index, vectors in results:
        np.testing.assert_allclose(vectors, expected[index], atol=1e-6)
