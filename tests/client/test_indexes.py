"""The client's index methods against the real app: create, upsert (vector, text), query, compact."""

from __future__ import annotations

import math

import httpx
import pytest
from aiinfra_client import AsyncClient, Client, Conflict, IndexItem, InvalidRequest, NotFound

POINTS: list[IndexItem] = [
    {"id": "east", "vector": [1.0, 0.0, 0.0], "metadata": {"side": "east", "rank": 1}},
    {"id": "north", "vector": [0.0, 1.0, 0.0], "metadata": {"side": "north", "rank": 2}},
    {"id": "north-east", "vector": [1.0, 1.0, 0.0], "metadata": {"side": "east", "rank": 3}},
]


def test_index_lifecycle(api: Client, index_name: str) -> None:
    info = api.indexes.create(index_name, dimension=3, metric="cosine")
    assert (info.name, info.dimension, info.metric, info.factory, info.count) == (
        index_name,
        3,
        "cosine",
        "Flat",
        0,
    )
    assert (
        api.indexes.create(index_name, dimension=3).version == info.version
    )  # the same definition: as it is
    with pytest.raises(Conflict) as clash:
        api.indexes.create(index_name, dimension=4)
    assert clash.value.status == 409 and "dimension 3" in clash.value.message

    written = api.indexes.upsert(index_name, POINTS)
    assert written.count == 3 and written.version > info.version
    described = api.indexes.describe(index_name)
    assert described.count == 3 and described.details["segments"] >= 1

    found = api.indexes.query(index_name, vector=[1.0, 0.2, 0.0], k=2, include_metadata=True)
    assert [m.id for m in found.matches] == ["east", "north-east"]
    assert found.matches[0].score == pytest.approx(1 / math.sqrt(1.04), rel=1e-5)
    assert found.matches[0].metadata == {"side": "east", "rank": 1}
    assert found.partial is False and found.version == written.version

    filtered = api.indexes.query(index_name, vector=[0.0, 1.0, 0.0], k=3, filter={"side": "east"})
    assert [m.id for m in filtered.matches] == ["north-east", "east"] and filtered.matches[0].metadata is None
    many = api.indexes.query(index_name, vectors=[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], k=1)
    assert [[m.id for m in result] for result in many.results] == [["north"], ["east"]]

    assert api.indexes.delete(index_name, ["east"]).count == 1
    assert [m.id for m in api.indexes.query(index_name, vector=[1.0, 0.0, 0.0], k=3).matches] == [
        "north-east",
        "north",
    ]
    compacted = api.indexes.compact(index_name)
    # The answer as the route sent it, status and body, whichever the service version answers.
    raw = httpx.get(f"{api.base_url}/indexes/{index_name}").json()
    assert compacted.status in (200, 202) and compacted["name"] == index_name
    assert raw["count"] == 2 and api.indexes.describe(index_name).count == 2

    api.indexes.drop(index_name)
    with pytest.raises(NotFound) as gone:
        api.indexes.describe(index_name)
    assert gone.value.status == 404 and gone.value.type == "not_found" and index_name in gone.value.message


def test_text_items_are_embedded_by_the_service(api: Client, index_name: str) -> None:
    api.indexes.create(index_name, dimension=384)
    texts = {
        "cat": "a cat sleeps on the sofa",
        "car": "the car needs new tyres",
        "tea": "green tea is bitter",
    }
    api.indexes.upsert(index_name, [{"id": key, "text": text} for key, text in texts.items()])
    # Nearest to the service's own embedding of the text: the item itself, score 1.
    vector = api.embeddings.create(texts["car"]).vectors[0]
    by_vector = api.indexes.query(index_name, vector=vector, k=1).matches[0]
    assert by_vector.id == "car" and by_vector.score == pytest.approx(1.0, abs=1e-3)
    by_text = api.indexes.query(index_name, text="my kitten naps on the couch", k=1)
    assert by_text.matches[0].id == "cat"
    with pytest.raises(InvalidRequest) as refused:
        api.indexes.upsert(index_name, [{"id": "both", "text": "x", "vector": vector}])
    assert "exactly one of vector or text" in refused.value.message


@pytest.mark.anyio
async def test_async_index_methods(async_api: AsyncClient, index_name: str) -> None:
    created = await async_api.indexes.create(index_name, dimension=3, metric="l2", factory="HNSW16")
    assert (created.metric, created.factory) == ("l2", "HNSW16")
    await async_api.indexes.upsert(index_name, POINTS)
    found = await async_api.indexes.query(index_name, vector=[0.9, 0.0, 0.0], k=2, ef_search=32)
    assert [m.id for m in found.matches] == ["east", "north-east"]
    assert [m.score for m in found.matches] == pytest.approx([0.01, 1.01], abs=1e-6)  # squared distances
    assert (await async_api.indexes.delete(index_name, ["north"])).count == 1
    assert (await async_api.indexes.describe(index_name)).count == 2
    assert (await async_api.indexes.compact(index_name)).status in (200, 202)
    await async_api.indexes.drop(index_name)
    with pytest.raises(NotFound):
        await async_api.indexes.query(index_name, vector=[1.0, 0.0, 0.0])
