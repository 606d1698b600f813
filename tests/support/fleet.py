"""Real service processes of one pipeline: downloaders (and trainers) started, killed, awaited.

    fleet = Fleet(redis_url, keys, shard_dir, log_dir)     # the `fleets` fixture closes it
    victim = fleet.start("--exit-when-empty")               # `streamcap download DOWNLOAD_ARGS ...`
    fleet.kill(victim)                                      # SIGKILL
    rescuer = fleet.start("--exit-when-empty", *lease())    # a lease a loaded machine keeps
    fleet.wait_all(90)                                      # every process left exits 0 (else: its log)
    ran = download(redis_url, keys, shard_dir, log, "--allow-private")   # one run to the end, peak RSS

Processes get the pipeline's settings through the environment, as compose gives them. Every
bound in seconds here is one of a quiet machine, scaled to the load (tests/support/timing.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamcap import bus
from streamcap.shardwriter import commit, faults
from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]
STREAMCAP = [sys.executable, "-m", "streamcap"]
# Small, reproducible downloads: tiny images, one image worker, no retries. The loopback host
# answers at once, so its rows never time out, even on a loaded machine (where a 3 s budget did:
# the rows ended as `timeout` failures instead of samples), and no row is deferred as a straggler
# (a retry part would change what the tests count): outcomes do not depend on the machine's speed.
DOWNLOAD_ARGS = tuple(
    "--image-workers 1 --image-size 64 --min-size 32 --total-timeout 60 "
    "--connect-timeout 30 --read-timeout 30 --retries 0 --straggler-seconds 0".split()
)
COMMIT_SHA = hashlib.sha1(commit._COMMIT.encode()).hexdigest()  # what EVALSHA of the part commit names


def service_env(
    redis_url: str, keys: bus.Keys, shard_dir: Path, extra: dict | None = None, allow_private: bool = True
) -> dict[str, str]:
    """The environment of a service process: the pipeline's settings, no fault armed, nothing phoning home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_FAULT")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "STREAMCAP_NAMESPACE": keys.namespace,
            "STREAMCAP_SHARD_DIR": str(shard_dir),
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled",
            "NO_ALBUMENTATIONS_UPDATE": "1",
        }
    )
    if allow_private:  # the image host is on loopback
        env["STREAMCAP_ALLOW_PRIVATE"] = "1"
    env.update(extra or {})
    return env


class Fleet:
    """`streamcap download` processes of one pipeline, each logging to its own file.

    Tests must `close()` it (the `fleets` fixture does): no process outlives its test.
    """

    def __init__(
        self,
        redis_url: str,
        keys: bus.Keys,
        shard_dir: Path,
        log_dir: Path,
        args: tuple[str, ...] = DOWNLOAD_ARGS,
        allow_private: bool = True,
    ) -> None:
        self.redis_url, self.keys, self.shard_dir, self.log_dir, self.args = redis_url, keys, shard_dir, log_dir, args
        self.allow_private = allow_private
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        *args: str,
        env: dict | None = None,
        command: str = "download",
        log: Path | None = None,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.Popen:
        """`streamcap <command> ...`; `prefix` runs it through a wrapper (e.g. `unshare -m ...`)."""
        log = log or self.log_dir / f"{command}-{len(self.procs)}.log"
        full = [*prefix, *STREAMCAP, command, *(self.args if command == "download" else ()), *args]
        proc_env = service_env(self.redis_url, self.keys, self.shard_dir, env, self.allow_private)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                full, cwd=ROOT, env=proc_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            timing.wait(proc, 10)
            self.killed.add(proc.pid)

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait_all(self, timeout: float) -> None:
        """Every process not killed by the test exits 0 within `timeout` s of a quiet machine (a
        `timing.Deadline`), else: its log."""
        deadline = timing.Deadline(timeout)
        for proc in self.procs:
            code = proc.poll()
            while code is None and not deadline.passed():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(max(0.05, min(deadline.left(), 5.0)))
            if code is None:
                raise AssertionError(
                    f"{' '.join(proc.args[3:5])} still running after {deadline.describe()}:\n" + self.tail(proc)
                )
            if proc.pid not in self.killed:
                assert code == 0, f"{proc.args[3]} exited {code}:\n" + self.tail(proc)

    def tail(self, proc: subprocess.Popen, chars: int = 4000) -> str:
        return proc.log.read_text(errors="replace")[-chars:]  # type: ignore[attr-defined]

    def logs(self) -> str:
        return "".join(p.log.read_text(errors="replace") for p in self.procs)  # type: ignore[attr-defined]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies only once resumed
                proc.kill()
                timing.wait(proc, 10)


def lease(quiet_s: float = 1.0) -> tuple[str, str]:
    """`--lease-seconds` for a downloader that must keep the parts it works on: `quiet_s` on a quiet
    machine, scaled to the load. A process starved past its lease has its part redelivered (to
    itself, when alone), and a test that counts deliveries would count one more."""
    return ("--lease-seconds", f"{timing.scaled(quiet_s):.1f}")


# --- one download run to the end ----------------------------------------------------------------------


@dataclass
class Ran:
    returncode: int
    log: str
    peak_rss: int  # bytes: VmHWM of the download process, sampled until it exited


def download(
    redis_url: str,
    keys: bus.Keys,
    shard_dir: Path,
    log_path: Path,
    *args: str,
    timeout: float = 90,
    env: dict[str, str] | None = None,
) -> Ran:
    """`streamcap download --exit-when-empty --image-workers 1 ARGS` to the end, as shipped (private
    addresses only with --allow-private in ARGS); killed if it overruns."""
    fleet = Fleet(
        redis_url,
        keys,
        shard_dir,
        log_path.parent,
        args=("--exit-when-empty", "--image-workers", "1"),
        allow_private=False,
    )
    proc = fleet.start(*args, env=env, log=log_path)
    peak, deadline = 0, timing.Deadline(timeout)
    try:
        while proc.poll() is None:
            peak = max(peak, peak_rss(proc.pid))
            assert not deadline.passed(), f"streamcap download ran past {deadline.describe()}:\n{log_path.read_text()}"
            time.sleep(0.05)  # the sampling interval of the peak memory
    finally:
        fleet.close()
    return Ran(proc.returncode, log_path.read_text(), peak)


# --- looking at processes ---------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The peak resident memory (VmHWM) of a live process, in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (e.g. a trainer's DataLoader workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def process_tree(pid: int) -> set[tuple[int, int]]:
    """Every live descendant of `pid` (children, theirs, ...), each as (pid, start time): the
    start time tells a process from a later one given the same pid."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), int(fields[19])))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def running(processes: set[tuple[int, int]]) -> list[int]:
    """The pids of `processes` (from process_tree) still running: not gone, not a zombie."""
    out = []
    for pid, started in processes:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[19]) == started:
            out.append(pid)
    return sorted(out)


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP connections a live process holds (from /proc: Linux only)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def redis_clients_of(r, pid: int) -> list[dict]:
    """The entries of CLIENT LIST that are connections of process `pid`."""
    ports = local_tcp_ports(pid)
    return [c for c in r.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]


def process_state(pid: int) -> str:
    """The kernel's state letter of a process (R, S, T for stopped, Z, ...); '' when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def fault_env(point: str, part: str | None = None, while_file: Path | None = None) -> dict[str, str]:
    """The environment that arms a shardwriter fault point (see shardwriter.faults)."""
    env = {faults.FAULT_ENV: point}
    if part:
        env[faults.FAULT_PART_ENV] = part
    if while_file:
        env[faults.FAULT_WHILE_ENV] = str(while_file)
    return env


# --- the trainer and the CLI ------------------------------------------------------------------------


def trainer_args(run: str, checkpoint_dir: Path, vocab: Path, **extra: object) -> list[str]:
    """`streamcap train` flags for a tiny CPU run (extra: flag name without dashes -> value)."""
    values = {
        "run-id": run,
        "checkpoint-dir": checkpoint_dir,
        "tokenizer": vocab,
        "preset": "tiny",
        "image-size": 32,
        "batch-size": 4,
        "shuffle-buffer": 8,
        "fresh-wait-ms": 300,
        "log-every": 1,
        "sample-every": 0,
        "histogram-every": 0,
        "checkpoint-every": 1000,
        "warmup-steps": 2,
        "loader-workers": 1,
        "no-pretrained": True,
    } | {k.replace("_", "-"): v for k, v in extra.items()}
    return [
        str(x) for flag, value in values.items() for x in ((f"--{flag}",) if value is True else (f"--{flag}", value))
    ]


def trainer_step(r, keys: bus.Keys) -> int:
    """The highest step any live trainer rank reports (-1 before the first heartbeat)."""
    return max((b.step for b in heartbeat_records(r, keys, bus.ROLE_TRAINER)), default=-1)


def heartbeat_records(r, keys: bus.Keys, role: str) -> list:
    """The heartbeat records of `role` (streamcap.formats.heartbeats); one that does not read
    fails the test with its reason."""
    beats = bus.read_heartbeats(r, keys, role)
    unreadable = [f"{b.id}: {b.problem}" for b in beats if b.record is None]
    assert not unreadable, unreadable
    return [b.record for b in beats]


def heartbeats(r, keys: bus.Keys) -> list:
    """The downloaders' heartbeat records (DownloaderHeartbeat)."""
    return heartbeat_records(r, keys, bus.ROLE_DOWNLOADER)


def cli_json(redis_url: str, keys: bus.Keys, shard_dir: Path, *args: str, ok: bool = True) -> dict:
    """Run `streamcap <args> --json` against the pipeline and return its JSON output."""
    out = subprocess.run(
        [
            *STREAMCAP,
            *args,
            "--json",
            "--redis-url",
            redis_url,
            "--namespace",
            keys.namespace,
            "--shard-dir",
            str(shard_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timing.scaled(60),
    )
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)
