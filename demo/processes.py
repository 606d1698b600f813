"""Child processes of the demo: each service runs as its own `streamcap ...` command, as in compose.

    with Services(log_dir, env) as services:
        services.run("enqueue", ["enqueue", "src.parquet"])          # to completion, or ServiceFailed
        services.output("score", ["eval", "score", ..., "--json"])  # the same, returning its stdout
        trainer = services.start("trainer", ["train", ...])          # in the background
        services.check()                                             # ServiceFailed if any died badly

Output goes to <log_dir>/<name>.log; a failure quotes that log's tail, so the demo's screen stays
readable and the reason is still one glance away. On exit every process still running gets
SIGTERM (a graceful stop), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def flags(options: dict[str, object]) -> list[str]:
    """Command-line words of `options`, one pair per flag: True stands alone, False and None drop out.

    >>> flags({"--max-steps": 600, "--no-pretrained": True, "--seed": None})
    ['--max-steps', '600', '--no-pretrained']
    """
    words: list[str] = []
    for flag, value in options.items():
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return words


class ServiceFailed(RuntimeError):
    """A child service exited with an error; the message names it and quotes its log."""


class Services:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = log_dir, env
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, args: list[str], capture: bool = False) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamcap", *args],
            stdout=subprocess.PIPE if capture else log,
            stderr=log if capture else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def run(self, name: str, args: list[str], timeout_s: float = 600) -> None:
        proc = self.start(name, args)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise ServiceFailed(f"{name} did not finish within {timeout_s:.0f} s{self.tail(name)}") from None
        self.check()

    def output(self, name: str, args: list[str], timeout_s: float = 600) -> str:
        """Run to completion and return what it printed on stdout (its log gets stderr)."""
        proc = self.start(name, args, capture=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise ServiceFailed(f"{name} did not finish within {timeout_s:.0f} s{self.tail(name)}") from None
        self.check()
        return stdout.decode(errors="replace")

    def check(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                raise ServiceFailed(f"{name} exited with code {code}{self.tail(name)}")

    def running(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return f"; last lines of {self.log_path(name)}:\n  " + "\n  ".join(text)

    def stop(self, name: str, grace_s: float = 30) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)
