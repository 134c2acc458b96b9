"""The README is the front door: every Python example in it runs, as written, against the app
`make serve` serves; and it names every API's routes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
SERVED_AT = "http://127.0.0.1:8000"


def test_the_readme_has_an_example_for_each_api() -> None:
    assert len(EXAMPLES) == 4
    for route in ("/v1", "/indexes/", "/agents/", "/recall"):
        assert any(route in example for example in EXAMPLES), route


@pytest.mark.parametrize("example", EXAMPLES, ids=["embed", "search", "memory", "recall"])
def test_a_readme_example_runs_against_the_served_app(example: str, local_api_url: str) -> None:
    assert SERVED_AT in example
    done = subprocess.run(
        [sys.executable, "-c", example.replace(SERVED_AT, local_api_url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_covers_every_route_prefix() -> None:
    for route in ("/v1/embeddings", "/indexes/{name}", "/agents/{agent_id}/memories"):
        assert route in README, route
