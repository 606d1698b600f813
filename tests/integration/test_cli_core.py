"""`streamcap redis` and `streamcap status` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from streamcap import bus
from streamcap.bus.embedded import free_port
from streamcap.formats.heartbeats import DownloaderHeartbeat
from tests.support import timing
from tests.support.fleet import redis_clients_of
from tests.support.heartbeats import record
from tests.support.pipeline import wait_until

STREAMCAP = [sys.executable, "-m", "streamcap"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*STREAMCAP, *args], capture_output=True, text=True, env=full_env, timeout=timing.scaled(timeout)
    )


def test_status_json_reports_server_and_key_sizes(r, keys, redis_url):
    r.xadd(keys.parts, bus.encode({"part": 0}))
    r.sadd(keys.parts_done, "s:0")
    bus.write_heartbeat(r, keys, "w1", record(DownloaderHeartbeat, urls_per_s=1.0))
    out = run_cli("status", "--json", "--namespace", keys.namespace, env={"REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["redis"]["version"].startswith(("6.", "7.", "8."))
    assert report["redis"]["persistence"] == "aof"
    assert report["keys"]["parts"]["size"] == 1
    assert report["keys"]["parts:done"]["size"] == 1
    assert report["keys"]["shards"]["size"] == 0
    assert [w["id"] for w in report["workers"]] == ["w1"]


def test_status_table_for_people(redis_url, keys):
    out = run_cli("status", "--namespace", keys.namespace, env={"REDIS_URL": redis_url, "COLUMNS": "120"})
    assert out.returncode == 0, out.stderr
    assert "persistence" in out.stdout and "parts:dead" in out.stdout


def test_status_without_redis_url_says_what_to_do():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    out = subprocess.run([*STREAMCAP, "status"], capture_output=True, text=True, env=env, timeout=timing.scaled(60))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "streamcap: error: REDIS_URL is not set: run `streamcap redis` in another shell and export the "
        "REDIS_URL it prints, or pass --redis-url"
    ]


def test_status_with_redis_down_is_one_line_not_a_traceback():
    out = run_cli("status", env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0] and "Traceback" not in out.stderr


def test_wrong_setting_from_the_environment_names_it():
    out = run_cli("status", env={"REDIS_URL": "localhost:6379"})
    assert out.returncode == 1
    assert out.stderr.startswith("streamcap: error: --redis-url / REDIS_URL: expected a URL like redis://")


def test_version_and_help():
    assert run_cli("--version").stdout.strip().startswith("streamcap ")
    out = run_cli("--help", env={"COLUMNS": "120"})
    assert out.returncode == 0 and "status" in out.stdout and "redis" in out.stdout


def test_streamcap_redis_runs_a_server_in_the_foreground(tmp_path: Path):
    proc = subprocess.Popen(
        [*STREAMCAP, "redis", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = timing.Deadline(30)
        while not deadline.passed() and url is None:
            line = proc.stdout.readline()
            if line.startswith("export REDIS_URL="):
                url = line.strip().split("=", 1)[1]
        assert url, proc.stderr.read()
        out = run_cli("status", "--json", env={"REDIS_URL": url})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["redis"]["persistence"] == "aof"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert timing.wait(proc, 30) == 0
    assert (tmp_path / "data").exists()


def test_unknown_option_or_command_is_one_line_with_exit_code_2():
    for args, expected in (
        (["status", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
    ):
        out = run_cli(*args)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr and "Traceback" not in out.stderr


def test_a_value_of_the_wrong_type_names_the_option():
    out = run_cli("status", "--interval", "soon", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 1
    assert out.stderr.startswith("streamcap: error: ") and "--interval" in out.stderr and "Traceback" not in out.stderr


def test_status_watch_refreshes_until_interrupted(redis_url, keys, r):
    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "120"}
    proc = subprocess.Popen(
        [*STREAMCAP, "status", "--watch", "--interval", "0.3", "--namespace", keys.namespace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Refreshing: its connection to Redis, opened for the first view 2 s ago or more, was used
        # again within the last second (a view reads Redis; off a terminal nothing is printed yet).
        wait_until(
            lambda: any(int(c["age"]) >= 2 and int(c["idle"]) == 0 for c in redis_clients_of(r, proc.pid)),
            60,
            "status --watch to refresh",
            proc=proc,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timing.scaled(30))
    assert proc.returncode == 0, err
    assert "Queue (parts)" in out and "Trainer" in out
