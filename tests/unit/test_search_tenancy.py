"""Search under AUTH_MODE=jwt, through the Lambda handler with the authorizer's claims: each tenant
sees only its own indexes; another tenant's index answers 404 on every route, as a missing one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiinfra.api.adapter import lambda_handler
from aiinfra.api.search import create_search_app
from aiinfra.config import AuthSettings
from aiinfra.vectors.store import FileStore

from tests.support.events import invoke, response_json

JWT = AuthSettings(mode="jwt", agent_claim="agents", tenant_claim="tenant")
DIM = 384  # text items and queries need the text model's dimension


def _encode(texts: list[str]) -> np.ndarray:
    """Text to vectors for this test: the routes' text path, without loading the model."""
    rows = [np.random.default_rng(list(text.encode())).normal(size=DIM) for text in texts]
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def call(tmp_path: Path) -> Any:
    handler = lambda_handler(create_search_app(FileStore(tmp_path / "indexes"), _encode, auth=JWT), "search")

    def request(tenant: str | None, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        claims = {"sub": "user", **({"tenant": tenant} if tenant is not None else {})}
        answer = invoke(handler, "http", method, path, body, claims=claims)
        return answer["statusCode"], response_json(answer) if answer.get("body") else None

    return request


def _item(item_id: str, seed: int) -> dict[str, Any]:
    return {
        "id": item_id,
        "vector": np.random.default_rng(seed).normal(size=DIM).tolist(),
        "metadata": {"s": seed},
    }


# Every search route, as another tenant would try it on "docs".
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/indexes/docs", None),
    ("POST", "/indexes/docs/upsert", {"items": [_item("intruder", 9)]}),
    ("POST", "/indexes/docs/delete", {"ids": ["a"]}),
    ("POST", "/indexes/docs/query", {"vector": _item("q", 1)["vector"], "k": 5, "include_metadata": True}),
    ("POST", "/indexes/docs/query", {"text": "what acme stored", "k": 5}),
    ("POST", "/indexes/docs/compact", None),
    ("DELETE", "/indexes/docs", None),
]


def _acme_docs(call: Any) -> None:
    assert call("acme", "PUT", "/indexes/docs", {"dimension": DIM})[0] == 201
    items = [_item("a", 1), _item("b", 2), {"id": "t", "text": "what acme stored", "metadata": {"s": 3}}]
    assert call("acme", "POST", "/indexes/docs/upsert", {"items": items})[0] == 200


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_another_tenants_index_answers_404_on_every_route(
    call: Any, method: str, path: str, body: Any
) -> None:
    _acme_docs(call)
    status, answer = call("globex", method, path, body)
    assert status == 404 and answer["error"]["type"] == "not_found"
    assert answer["error"]["message"] == "index 'docs' does not exist"  # as for a name nobody uses
    assert call("globex", method, path.replace("/docs", "/nobody"), body)[1] == answer | {
        "error": answer["error"] | {"message": "index 'nobody' does not exist"}
    }
    # acme's index is as it was: nothing written, dropped or compacted by globex.
    info = call("acme", "GET", "/indexes/docs")[1]
    assert info["count"] == 3 and info["compaction"]["state"] in ("idle", "queued", "running")
    found = call("acme", "POST", "/indexes/docs/query", {"vector": _item("q", 1)["vector"], "k": 5})[1]
    assert "intruder" not in {match["id"] for match in found["matches"]} and len(found["matches"]) == 3


def test_names_are_per_tenant_and_listing_shows_only_your_own(call: Any) -> None:
    _acme_docs(call)
    assert call("globex", "PUT", "/indexes/docs", {"dimension": 4, "metric": "l2"})[0] == 201
    assert (
        call("globex", "POST", "/indexes/docs/upsert", {"items": [{"id": "g", "vector": [1, 0, 0, 0]}]})[0]
        == 200
    )
    assert call("acme", "GET", "/indexes")[1] == {"indexes": ["docs"]}
    assert call("globex", "PUT", "/indexes/notes", {"dimension": 4})[0] == 201
    assert call("globex", "GET", "/indexes")[1] == {"indexes": ["docs", "notes"]}
    assert call("acme", "GET", "/indexes/docs")[1]["dimension"] == DIM
    assert call("globex", "GET", "/indexes/docs")[1]["dimension"] == 4
    globex = call("globex", "POST", "/indexes/docs/query", {"vector": [1, 0, 0, 0], "k": 10})[1]
    assert [match["id"] for match in globex["matches"]] == ["g"]
    assert call("acme", "DELETE", "/indexes/docs")[0] == 204
    assert call("globex", "GET", "/indexes/docs")[0] == 200  # globex's docs is another index


@pytest.mark.parametrize(("method", "path", "body"), [("GET", "/indexes", None), *ROUTES])
def test_a_token_without_the_tenant_claim_is_refused_on_every_route(
    call: Any, method: str, path: str, body: Any
) -> None:
    status, answer = call(None, method, path, body)
    assert status == 403 and "tenant" in answer["error"]["message"]


def test_tenant_ids_name_folders_by_digest_only(call: Any, tmp_path: Path) -> None:
    assert call("../../etc", "PUT", "/indexes/docs", {"dimension": 4})[0] == 201
    folders = [path.name for path in (tmp_path / "indexes").iterdir() if not path.name.startswith(".")]
    assert len(folders) == 1 and folders[0].startswith("t-") and len(folders[0]) == 34
    assert not (tmp_path / "etc").exists()
    assert json.dumps(call("../../etc", "GET", "/indexes")[1]) == '{"indexes": ["docs"]}'
