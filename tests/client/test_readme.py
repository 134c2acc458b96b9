"""Every Python example in clients/python/README.md runs against the real app, as printed there."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "clients" / "python" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_an_example_per_api_and_adapter() -> None:
    text = "\n".join(EXAMPLES)
    for uses in (
        "client.embeddings",
        "client.indexes",
        "client.memories",
        "AsyncClient",
        "AiinfraStore",
        "AiinfraVectorStore",
        "AiinfraEmbeddings",
    ):
        assert uses in text, uses


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(example: str, api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(example, str(README), "exec"), {"BASE_URL": api_url, "TOKEN": None, "__name__": "readme"})
    printed = capsys.readouterr().out
    for line in re.findall(r"# (\[.*\])$", example, flags=re.MULTILINE):  # outputs the README shows
        assert line in printed
