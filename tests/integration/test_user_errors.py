"""User errors are one line, not a traceback (docs/testing.md, attack 21), and the demo keeps
what it did not make.

Each case runs the real `streamcap` command in a subprocess and expects exit code 1, exactly
one stderr line starting `streamcap: error:` that names the culprit, and no traceback. Beside
them: a `unix://` REDIS_URL works, `streamcap redis` refuses a data dir another live server
holds, and `streamcap demo` refuses a folder it did not create.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap.bus.embedded import EmbeddedRedis, find_redis_server
from streamcap.demo.synthetic import add_part, demo_samples
from tests.integration.test_orphan_ranks import alive
from tests.support import timing
from tests.support.fleet import STREAMCAP
from tests.support.pipeline import wait_until

ENV = {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}


def streamcap(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (), timeout: float = 120):
    return subprocess.run(
        [*prefix, *STREAMCAP, *args],
        env=os.environ | ENV | (env or {}),
        capture_output=True,
        text=True,
        timeout=timing.scaled(timeout),
    )


def assert_one_error_line(out: subprocess.CompletedProcess, *names: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in lines if line.startswith("streamcap: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    # Log lines (the service's settings) may come first; nothing but the error after them.
    assert all(not line.startswith(("streamcap:", " ")) for line in lines[:-1]), lines
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def http_port() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1: what a REDIS_URL with a wrong port may point at."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Ctx:
    tmp: Path
    redis_url: str
    namespace: str
    redis_port: int
    stack: contextlib.ExitStack

    def common(self, url: str | None = None) -> list[str]:
        return ["--redis-url", url or self.redis_url, "--namespace", self.namespace, "--shard-dir", str(self.shards)]

    @property
    def shards(self) -> Path:
        return self.tmp / "shards"

    @property
    def a_file(self) -> Path:
        path = self.tmp / "a-file"
        path.write_text("not a directory\n")
        return path


def _url(ctx: Ctx, tail: str) -> str:
    return ctx.redis_url.rsplit("/", 1)[0] + tail


def _http(ctx: Ctx) -> list[str]:
    port = ctx.stack.enter_context(http_port())
    return ["status", *ctx.common(f"redis://127.0.0.1:{port}/0")]


def _mixed_parquet(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "mixed"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["http://127.0.0.1/a.jpg"], "caption": ["a cat"]}), folder / "a.parquet")
    pq.write_table(pa.table({"url": ["http://127.0.0.1/b.jpg"], "alt_txt": ["a dog"]}), folder / "b.parquet")
    return ["enqueue", str(folder), *ctx.common()]


def _csv(ctx: Ctx) -> Path:
    path = ctx.tmp / "rows.csv"
    path.write_text("url,caption\nhttp://127.0.0.1/a.jpg,a cat\n")
    return path


def _tokenizer_out_dir(ctx: Ctx) -> list[str]:
    (ctx.tmp / "out").mkdir()
    return ["tokenizer", "build", str(_csv(ctx)), "--out", str(ctx.tmp / "out")]


# id -> (the command for a context, what its error line must name)
CASES: dict[str, tuple[Callable[[Ctx], list[str]], tuple[str, ...]]] = {
    "db index 99": (lambda c: ["status", *c.common(_url(c, "/99"))], ("db index",)),
    "db index abc": (lambda c: ["status", *c.common(_url(c, "/abc"))], ("REDIS_URL", "db index")),
    "url at an http port": (_http, ("REDIS_URL", "Redis server")),
    "shard dir under /proc": (
        lambda c: ["download", "--exit-when-empty", *c.common(), "--shard-dir", "/proc/streamcap-shards"],
        ("/proc/streamcap-shards",),
    ),
    "redis port in use": (lambda c: ["redis", "--data-dir", str(c.tmp / "r"), "--port", str(c.redis_port)], ("port",)),
    "redis port 70000": (lambda c: ["redis", "--data-dir", str(c.tmp / "r"), "--port", "70000"], ("--port",)),
    "redis data dir a file": (lambda c: ["redis", "--data-dir", str(c.a_file)], ("a-file",)),
    "verify quarantine dir a file": (
        lambda c: ["shards", "verify", *c.common(), "--quarantine", "--quarantine-dir", str(c.a_file)],
        ("--quarantine-dir",),
    ),
    "eval out dir a file": (
        lambda c: ["eval", "run", str(c.tmp / "step.pt"), "--out-dir", str(c.a_file)],
        ("--out-dir",),
    ),
    "tokenizer out a folder": (_tokenizer_out_dir, ("--out",)),
    "train checkpoint dir a file": (
        lambda c: ["train", *c.common(), "--checkpoint-dir", str(c.a_file)],
        ("--checkpoint-dir",),
    ),
    "caption col is the url col": (
        lambda c: ["enqueue", str(_csv(c)), *c.common(), "--caption-col", "url"],
        ("--caption-col",),
    ),
    "source name not ascii": (lambda c: ["enqueue", str(_csv(c)), *c.common(), "--name", "ünï"], ("--name",)),
    "parquet files disagree on columns": (_mixed_parquet, ("b.parquet", "columns")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case, redis_server, redis_url, keys, tmp_path):
    make, names = CASES[case]
    with contextlib.ExitStack() as stack:
        ctx = Ctx(tmp_path, redis_url, keys.namespace, redis_server.port, stack)
        assert_one_error_line(streamcap(*make(ctx)), *names)


def test_a_unix_socket_url_works(tmp_path):
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, timeout=15, what="the unix socket", proc=server)
        out = streamcap("status", "--json", env={"REDIS_URL": f"unix://{sock}?db=0"})
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    finally:
        server.terminate()
        server.wait()


def test_shards_reconcile_on_a_read_only_dir_is_one_line(redis_url, keys, r, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) for a read-only bind mount")
    shards = tmp_path / "shards"
    add_part(r, keys, shards, "demo", 0, demo_samples(1, 0, 3, image_size=16))
    r.delete(*r.keys(f"{keys.namespace}:*"))  # Redis lost its data: reconcile must lock and register
    read_only = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    out = streamcap(
        "shards",
        "reconcile",
        "--redis-url",
        redis_url,
        "--namespace",
        keys.namespace,
        "--shard-dir",
        str(shards),
        prefix=("unshare", "-m", "sh", "-c", read_only, str(shards)),
    )
    assert_one_error_line(out, "Read-only file system")


def test_a_second_redis_on_a_held_data_dir_is_refused(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "redis") as first:
        out = streamcap("redis", "--data-dir", str(tmp_path / "redis"))
        assert_one_error_line(out, "in use", str(first.process.pid))
    # Stopped, it frees the dir for the next server.
    server = subprocess.Popen(
        [*STREAMCAP, "redis", "--data-dir", str(tmp_path / "redis")],
        env=os.environ | ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in server.stdout.readline()
    finally:
        server.terminate()
        timing.wait(server, 30)


def test_redis_data_dir_stays_held_when_its_launcher_is_sigkilled(tmp_path):
    launcher = subprocess.Popen(
        [*STREAMCAP, "redis", "--data-dir", str(tmp_path / "redis")],
        env=os.environ | ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert "listening" in launcher.stdout.readline()
    server_pid = int((tmp_path / "redis" / "streamcap-redis.lock").read_text())
    launcher.kill()  # the redis-server child lives on, on the same AOF
    launcher.wait()
    try:
        assert_one_error_line(streamcap("redis", "--data-dir", str(tmp_path / "redis")), "in use")
    finally:
        os.kill(server_pid, signal.SIGTERM)
        wait_until(lambda: not alive(server_pid), timeout=30, what="redis-server gone")


def test_demo_refuses_a_workdir_it_did_not_make(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "precious.tar").write_bytes(b"mine")
    (tmp_path / "checkpoints").mkdir()
    out = streamcap("demo", "--workdir", str(tmp_path))
    assert_one_error_line(out, "--workdir", str(tmp_path))
    assert (tmp_path / "shards" / "precious.tar").read_bytes() == b"mine" and (tmp_path / "checkpoints").is_dir()
    assert not (tmp_path / ".streamcap-demo").exists() and not (tmp_path / "redis").exists()


def test_tokenizer_build_reads_a_csv_column_as_enqueue_does(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("url,caption,other\n" + "".join(f"http://127.0.0.1/{i}.jpg,A cat sits.,zebra\n" for i in range(3)))
    picked = streamcap("tokenizer", "build", str(rows), "--out", str(tmp_path / "v1.txt"), "--size", "40", "--json")
    named = streamcap(
        "tokenizer",
        "build",
        str(rows),
        "--out",
        str(tmp_path / "v2.txt"),
        "--size",
        "40",
        "--column",
        "other",
        "--json",
    )
    assert picked.returncode == 0 and named.returncode == 0, picked.stderr + named.stderr
    # The caption column by enqueue's defaults (not the header or the URLs), then --column's.
    assert (json.loads(picked.stdout)["captions"], json.loads(picked.stdout)["distinct_words"]) == (3, 4)
    assert (json.loads(named.stdout)["captions"], json.loads(named.stdout)["distinct_words"]) == (3, 1)
