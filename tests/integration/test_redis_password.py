"""A Redis password with '/', '+' and '@' works when given on its own, and shows up nowhere."""

from __future__ import annotations

import os
import subprocess
import sys

from streamcap.bus.embedded import EmbeddedRedis
from tests.support import timing

PASSWORD = "k3/Yq+Zr@x9=="


def streamcap(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamcap", *args],
        capture_output=True,
        text=True,
        env=os.environ | env,
        timeout=timing.scaled(60),
    )


def test_status_reaches_a_password_protected_server_and_prints_no_password(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "redis", password=PASSWORD) as server:
        bare_url = f"redis://127.0.0.1:{server.port}/0"
        ok = streamcap(
            "status",
            "--json",
            "--shard-dir",
            str(tmp_path / "shards"),
            env={"REDIS_URL": bare_url, "REDIS_PASSWORD": PASSWORD},
        )
        assert ok.returncode == 0, ok.stderr
        assert PASSWORD not in ok.stdout + ok.stderr

        wrong = streamcap(
            "status",
            "--shard-dir",
            str(tmp_path / "shards"),
            env={"REDIS_URL": bare_url, "REDIS_PASSWORD": "not-" + PASSWORD},
        )
        assert wrong.returncode == 1
        assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert PASSWORD not in wrong.stderr
