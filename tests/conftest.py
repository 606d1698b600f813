"""Shared fixtures: a real redis-server for the whole session, a fresh namespace per test.

Tests may kill and restart the server (`redis_server.kill()`, `redis_server.start()`): it comes
back on the same port with the same AOF, and the next test gets a running server regardless.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# Nothing phones home from tests: albumentations checks PyPI on import, W&B would sync.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from streamcap import bus  # noqa: E402
from streamcap.bus.embedded import EmbeddedRedis  # noqa: E402

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its directory: unit/, integration/, e2e/."""
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(_TESTS.resolve())
        if rel.parts and rel.parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server (AOF on) on a free 127.0.0.1 port for the whole session."""
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:  # a previous test killed it
        redis_server.start()
    return redis_server.url


@pytest.fixture
def keys() -> bus.Keys:
    """A namespace no other test uses."""
    return bus.Keys(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def r(redis_url: str):
    client = bus.connect(redis_url)
    yield client
    client.close()
