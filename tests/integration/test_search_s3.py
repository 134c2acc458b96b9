"""The s3:// index store against moto_server over HTTP: moto 5.2.5 honours If-Match and
If-None-Match on PutObject (checked here directly), and the search API runs on it end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiinfra.vectors.reader import IndexRegistry
from aiinfra.vectors.store import IndexPath, ManifestConflict, S3Store, tenant_folder
from aiinfra.vectors.writer import IndexWriter
from botocore.exceptions import ClientError

from tests.support.moto import MotoServer
from tests.support.search import (
    SearchClient,
    new_bucket,
    orphan_segment,
    s3_client,
    shard_path,
    wait_for_compaction,
)


def test_moto_server_honours_conditional_puts(moto_endpoint: str) -> None:
    s3 = s3_client(moto_endpoint)
    bucket = new_bucket(moto_endpoint)
    first = s3.put_object(Bucket=bucket, Key="m", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket=bucket, Key="m", Body=b"2", IfNoneMatch="*")
    assert exists.value.response["Error"]["Code"] == "PreconditionFailed"
    second = s3.put_object(Bucket=bucket, Key="m", Body=b"2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        s3.put_object(Bucket=bucket, Key="m", Body=b"3", IfMatch=first["ETag"])
    assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="m")["ETag"] == second["ETag"]
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"2"


def test_store_swaps_the_manifest_only_from_the_version_it_read(s3_store: S3Store) -> None:
    shard = IndexPath("tenant", "idx").shard(0)
    s3_store.write_manifest(shard, b"v1", None)
    with pytest.raises(ManifestConflict):
        s3_store.write_manifest(shard, b"again", None)
    body, tag = s3_store.read_manifest(shard) or (b"", "")
    assert body == b"v1"
    s3_store.write_manifest(shard, b"v2", tag)
    with pytest.raises(ManifestConflict):
        s3_store.write_manifest(shard, b"lost", tag)
    assert (s3_store.read_manifest(shard) or (b"",))[0] == b"v2"
    s3_store.write_manifest(IndexPath("tenant", "no-shard-0").shard(1), b"v1", None)
    assert s3_store.list_indexes(tenant_folder("tenant")) == ["idx"]
    assert s3_store.list_indexes(tenant_folder("another")) == []


def test_search_api_on_s3(search_client: SearchClient, s3_store: S3Store) -> None:
    client = search_client(s3_store)
    assert client.put("/indexes/s3", json={"dimension": 3, "metric": "ip"}).status_code == 201
    items = [{"id": f"i{i}", "vector": [float(i), 1.0, 0.0], "metadata": {"i": i}} for i in range(10)]
    assert client.post("/indexes/s3/upsert", json={"items": items}).status_code == 200
    assert client.post("/indexes/s3/delete", json={"ids": ["i9"]}).status_code == 200
    assert client.post("/indexes/s3/compact").status_code == 202
    assert wait_for_compaction(client, "s3")["count"] == 9
    fresh = search_client(s3_store)  # a cold instance: loads from the bucket
    answer = fresh.post(
        "/indexes/s3/query", json={"vector": [1.0, 0.0, 0.0], "k": 2, "filter": {"i": {"$lt": 8}}}
    )
    assert answer.json()["matches"] == [{"id": "i7", "score": 7.0}, {"id": "i6", "score": 6.0}]
    assert fresh.delete("/indexes/s3").status_code == 204
    assert client.get("/indexes/s3").status_code == 404


def test_an_instance_keeps_only_the_segments_its_index_names_in_its_cache(
    search_client: SearchClient, s3_store: S3Store
) -> None:
    client = search_client(s3_store)
    assert client.put("/indexes/kept", json={"dimension": 2, "metric": "l2"}).status_code == 201
    for i in range(3):
        items = [{"id": f"i{i}", "vector": [float(i), 1.0]}]
        assert client.post("/indexes/kept/upsert", json={"items": items}).status_code == 200
    cached = s3_store.cache_dir / shard_path("kept")

    def named() -> set[str]:
        manifest = json.loads((s3_store.read_manifest(shard_path("kept")) or (b"{}",))[0])
        return {segment["id"] for segment in manifest["segments"]}

    assert len(named()) == 3 and {p.name for p in cached.iterdir()} == named()
    assert client.post("/indexes/kept/compact").status_code == 202
    assert wait_for_compaction(client, "kept")["count"] == 3
    assert len(named()) == 1 and {p.name for p in cached.iterdir()} == named()
    query = client.post("/indexes/kept/query", json={"vector": [2.0, 1.0], "k": 1})
    assert query.json()["matches"] == [{"id": "i2", "score": 0.0}]
    assert client.delete("/indexes/kept").status_code == 204
    assert list(cached.iterdir()) == []


def test_a_sweep_deletes_the_segments_no_manifest_names_from_s3(
    search_client: SearchClient, s3_store: S3Store
) -> None:
    client = search_client(s3_store)
    assert client.put("/indexes/swept", json={"dimension": 2}).status_code == 201
    assert (
        client.post("/indexes/swept/upsert", json={"items": [{"id": "a", "vector": [1.0, 0.0]}]}).status_code
        == 200
    )
    shard = shard_path("swept")
    orphan_segment(s3_store, shard, "c" * 32)
    writer = IndexWriter(s3_store, IndexRegistry(s3_store, 0.0), orphan_grace_seconds=0.0)
    manifest, _ = writer.manifest(shard)
    assert writer.sweep(shard, manifest) == ["c" * 32]
    assert set(s3_store.segment_ages(shard)) == {ref.id for ref in manifest.segments}
    assert (
        client.post("/indexes/swept/query", json={"vector": [1.0, 0.0], "k": 1}).json()["matches"][0]["id"]
        == "a"
    )


def test_an_s3_outage_keeps_reads_on_the_last_version_and_refuses_writes_with_503(
    search_client: SearchClient, tmp_path: Path
) -> None:
    server = MotoServer(tmp_path / "moto.log")
    server.start()
    try:
        store = S3Store(
            new_bucket(server.url), "p", client=s3_client(server.url), cache_dir=tmp_path / "cache"
        )
        client = search_client(store)
        assert client.put("/indexes/out", json={"dimension": 2}).status_code == 201
        items = [{"id": "a", "vector": [1.0, 0.0]}]
        assert client.post("/indexes/out/upsert", json={"items": items}).status_code == 200
    finally:
        server.stop()
    query = client.post("/indexes/out/query", json={"vector": [1.0, 0.0], "k": 1})
    assert query.status_code == 200 and query.json()["matches"][0]["id"] == "a"
    write = client.post("/indexes/out/upsert", json={"items": [{"id": "b", "vector": [0.0, 1.0]}]})
    assert write.status_code == 503
    assert write.headers["retry-after"] == "1"
    assert write.json()["error"]["type"] == "service_unavailable"
