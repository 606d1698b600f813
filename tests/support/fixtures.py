"""The pytest fixtures of every suite, registered by tests/conftest.py (`pytest_plugins`):
tests ask for them by name and never import them.

    redis_server   a real redis-server (AOF on) on a free 127.0.0.1 port, for the whole session;
                   tests may kill and restart it (`redis_server.kill()`, `.start()`): it comes back
                   on the same port with the same AOF, and the next test gets a running server
    redis_url      its URL, the server started again if a previous test killed it
    keys           a namespace no other test uses
    r              a client of it
    image_host     a loopback ImageServer stocked for `paced_rows`, one per test module
    fleets         fleets(redis_url, keys, shard_dir, name="logs") -> a Fleet closed when the test ends
    s3_server      a real SeaweedFS S3 server (streamcap.demo.seaweed) for the whole session; tests
                   may kill and restart it like redis_server
    bucket         a fresh, empty bucket's URL ("s3://t..."), with the AWS_* variables that reach
                   s3_server set for the test (subprocesses inherit them)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis
from streamcap.demo.seaweed import SeaweedS3
from tests.support.fleet import Fleet
from tests.support.http import ImageServer
from tests.support.pipeline import stock


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:  # a previous test killed it
        redis_server.start()
    return redis_server.url


@pytest.fixture
def keys() -> bus.Keys:
    return bus.Keys(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def r(redis_url: str):
    client = bus.connect(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield stock(server)


@pytest.fixture
def fleets(tmp_path: Path):
    made: list[Fleet] = []

    def make(redis_url: str, keys: bus.Keys, shard_dir: Path, name: str = "logs", **kwargs) -> Fleet:
        made.append(Fleet(redis_url, keys, shard_dir, tmp_path / name, **kwargs))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    if not s3_server.running:  # a previous test killed it
        s3_server.start()
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return s3_server.make_bucket(f"t{uuid.uuid4().hex[:12]}")
