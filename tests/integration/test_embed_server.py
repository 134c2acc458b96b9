"""The embed function served over real HTTP: the openai client and the README's examples."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import numpy as np
from openai import OpenAI

from tests.conftest import REPO_ROOT


def readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    (block,) = [block for block in blocks if containing in block]
    return block


def test_openai_client_works_unchanged(embed_server: str, reference: tuple[list[str], np.ndarray]) -> None:
    texts, expected = reference
    client = OpenAI(base_url=f"{embed_server}/v1", api_key="unused")
    # The client asks for base64 by default and decodes it itself.
    answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[:40])
    vectors = np.array([item.embedding for item in answer.data], dtype=np.float32)
    cosines = (vectors * expected[:40]).sum(axis=1)
    assert cosines.min() >= 0.9999
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 40
    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(as_floats.data[0].embedding, vectors[0], atol=1e-7)
    assert [model.id for model in client.models.list()] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"]


def test_readme_curl_example(embed_server: str) -> None:
    command = readme_block("sh", "curl").replace("http://127.0.0.1:8000", embed_server)
    output = subprocess.run(
        shlex.split(command.replace("\\\n", " ")), capture_output=True, check=True, timeout=60
    ).stdout
    body = json.loads(output)
    assert [item["index"] for item in body["data"]] == [0, 1]
    english, german = (np.array(item["embedding"]) for item in body["data"])
    assert english.shape == german.shape == (384,)
    assert body["usage"]["prompt_tokens"] > 0


def test_readme_python_example(embed_server: str) -> None:
    code = readme_block("python", "OpenAI(").replace("http://127.0.0.1:8000", embed_server)
    namespace: dict[str, object] = {}
    exec(code, namespace)
    vector = namespace["vector"]
    assert isinstance(vector, list) and len(vector) == 384
