"""A loader worker waits out a Redis outage, unless the training process that started it is gone."""

from __future__ import annotations

import pytest

from streamcap import bus
from streamcap.trainer.shardqueue import Orphaned, ShardQueue


def test_an_orphaned_worker_stops_waiting_for_redis(redis_url, keys, redis_server):
    plain = bus.connect(redis_url, retries=0)
    parent_gone = []
    queue = ShardQueue(plain, keys, "run", "run-r0-w0", orphaned=lambda: bool(parent_gone))
    queue.ensure_group()
    redis_server.kill()
    try:
        parent_gone.append(True)
        with pytest.raises(Orphaned):
            queue.next_fresh(block_ms=0)
    finally:
        redis_server.start()
