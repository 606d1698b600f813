"""Marks every test by its folder and registers the shared fixtures (tests/support/fixtures.py) and
the pytest-timeout that scales with the machine's load (tests/support/timing.py).

Tests never import fixtures: they ask for them by name (redis_server, redis_url, keys, r,
image_host, fleets); helpers come from their module in tests/support/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing phones home from tests: albumentations checks PyPI on import, W&B would sync.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One OpenMP thread per process, in the test process (set before anything imports torch) and in
# every process it starts: the cores are shared by a test's own processes and, on CI, by others',
# and OpenMP threads that spin at a barrier while one of them waits for a core crawl (four short
# CPU training runs took 122 s instead of 23 s beside a load of 10).
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.support.timing", "tests.support.fixtures"]

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its directory: unit/, integration/, e2e/."""
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(_TESTS.resolve())
        if rel.parts and rel.parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, rel.parts[0]))
