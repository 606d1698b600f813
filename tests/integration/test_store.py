"""The shard store against a real SeaweedFS (streamcap.demo.seaweed), and the local one beside it:
the same operations, the same answers, and one readable line when the bucket cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamcap.common.settings import CommonSettings, ConfigError
from streamcap.common.store import (
    LocalStore,
    S3Store,
    ShardStore,
    StoreCorrupt,
    StoreUnavailable,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> ShardStore:
    if request.param == "local":
        return LocalStore(tmp_path / "shards")
    return open_store(request.getfixturevalue("bucket") + "/run/a")


def test_put_get_head_list_move_delete(store: ShardStore, tmp_path: Path):
    local = tmp_path / "x.tar"
    local.write_bytes(os.urandom(3000))
    info = store.put_file(local, "src-000001-0000.tar")
    assert info.size == 3000
    store.write_bytes("src-000001.stats.json", b"{}")
    store.write_bytes("sources/src.json", b'{"id": "src"}')
    assert store.head("src-000001-0000.tar").size == 3000
    assert store.head("nope.tar") is None
    assert [i.name for i in store.list(suffix=".tar")] == ["src-000001-0000.tar"]
    assert [i.name for i in store.list()] == ["src-000001-0000.tar", "src-000001.stats.json"]  # one level
    assert [i.name for i in store.list("sources/", ".json")] == ["sources/src.json"]
    assert store.read_bytes("sources/src.json") == b'{"id": "src"}'
    assert store.read_bytes("missing.json") is None
    got = store.get_file("src-000001-0000.tar", tmp_path / "copy.tar")
    assert got is not None and (tmp_path / "copy.tar").read_bytes() == local.read_bytes()
    assert store.get_file("gone.tar", tmp_path / "gone.tar") is None and not (tmp_path / "gone.tar").exists()
    with store.local_copy("src-000001-0000.tar", tmp_path) as path:
        assert path is not None and path.read_bytes() == local.read_bytes()
    assert store.move("src-000001-0000.tar", "quarantine/src-000001-0000.tar")
    assert store.head("src-000001-0000.tar") is None
    assert [i.name for i in store.list("quarantine/")] == ["quarantine/src-000001-0000.tar"]
    assert not store.move("src-000001-0000.tar", "quarantine/again.tar")
    store.delete("quarantine/src-000001-0000.tar")
    store.delete("quarantine/src-000001-0000.tar")  # deleting what is gone is fine
    assert store.list("quarantine/") == []


def test_a_large_file_goes_up_in_parts(bucket: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("streamcap.common.store.MULTIPART_BYTES", 5 * 2**20)  # S3's smallest part
    local = tmp_path / "big.tar"
    local.write_bytes(os.urandom(12 * 2**20))
    store = open_store(bucket)
    store.put_file(local, "big.tar")
    etag = store.client.head_object(Bucket=store.bucket, Key="big.tar")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    store.get_file("big.tar", tmp_path / "back.tar")
    assert (tmp_path / "back.tar").read_bytes() == local.read_bytes()


def test_an_object_changed_behind_its_checksum_is_corrupt(bucket: str, tmp_path: Path):
    store = open_store(bucket)
    (tmp_path / "a.tar").write_bytes(b"a" * 1000)
    store.put_file(tmp_path / "a.tar", "a.tar")
    store.client.put_object(Bucket=store.bucket, Key="a.tar", Body=b"b" * 1000, Metadata={"crc32": "12345"})
    with pytest.raises(StoreCorrupt, match="CRC32"):
        store.get_file("a.tar", tmp_path / "a-copy.tar")
    assert not (tmp_path / "a-copy.tar").exists() and not list(tmp_path.glob(".get~*"))


def test_wrong_credentials_missing_bucket_and_no_server_are_one_line(bucket: str, tmp_path: Path, monkeypatch):
    (tmp_path / "a.tar").write_bytes(b"a")
    with pytest.raises(StoreUnavailable, match="bucket 'no-such-bucket' does not exist") as e:
        open_store("s3://no-such-bucket/p").put_file(tmp_path / "a.tar", "a.tar")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StoreUnavailable, match="credentials were refused") as e:
        open_store(bucket).put_file(tmp_path / "a.tar", "a.tar")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    store = S3Store(bucket, connect_timeout=1, attempts=1)
    with pytest.raises(StoreUnavailable, match="cannot upload a.tar") as e:
        store.put_file(tmp_path / "a.tar", "a.tar")
    assert "\n" not in str(e.value)


def test_settings_take_a_bucket_url_as_shard_dir(monkeypatch):
    assert CommonSettings(shard_dir="s3://bucket/run/a").shard_dir == "s3://bucket/run/a"
    monkeypatch.setenv("STREAMCAP_SHARD_DIR", "s3://bucket/")
    assert CommonSettings(shard_dir=Path("s3://bucket//x/")).shard_dir == "s3://bucket/x"  # as typer hands it over
    with pytest.raises(ConfigError, match="--shard-dir / STREAMCAP_SHARD_DIR: expected an S3 URL"):
        CommonSettings(shard_dir="s3://Not_A_Bucket/x")


def test_a_location_belongs_to_the_namespace_that_claimed_it_on_a_bucket_too(store: ShardStore):
    from streamcap.common import namespaces

    namespaces.claim(store, "exp1")
    namespaces.claim(store, "exp1")
    assert namespaces.owner(store.url) == "exp1"  # as a --shard-dir value names it
    with pytest.raises(
        ConfigError, match=f"^--shard-dir / STREAMCAP_SHARD_DIR: {store.url} belongs to namespace 'exp1'"
    ):
        namespaces.check(store.url, "exp2")
    assert store.list() == []  # the marker is in no listing
