"""A checkpoint announcement Redis was down for is retried, in order, once Redis answers."""

from __future__ import annotations

import socket
from pathlib import Path

from streamcap import bus
from streamcap.formats.records import CheckpointRecord
from streamcap.trainer.checkpointing import Announcer


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_announcement_is_kept_and_retried(r, keys, tmp_path):
    down = bus.connect(f"redis://127.0.0.1:{unused_port()}/0", retries=0, connect_timeout=0.5)
    announcer = Announcer(down, keys, "run")
    announcer.add(tmp_path / "step-00000010.pt", 10)
    announcer.add(tmp_path / "step-00000020.pt", 20)
    assert [step for _, step in announcer.owed] == [10, 20]
    announcer.r = r  # Redis is back
    announcer.retry(force=True)
    records = [CheckpointRecord.from_message(bus.decode(f)) for _, f in r.xrange(keys.checkpoints)]
    assert [(Path(c.path).name, c.step) for c in records] == [("step-00000010.pt", 10), ("step-00000020.pt", 20)]
    assert announcer.owed == []
