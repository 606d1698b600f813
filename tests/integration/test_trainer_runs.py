"""Whole training runs on CPU against a real redis-server: DDP with 2 gloo ranks, starting with no
shards, exact resume, and a SIGTERM'd multi-worker run that resumes without re-reading."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamcap import bus
from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.metrics_sink import read_metrics
from tests.support import timing
from tests.support.fleet import children, heartbeat_records
from tests.support.pipeline import wait_until

ROOT = Path(__file__).resolve().parents[2]
ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def make_shards(r, keys, shard_dir: Path, sizes: list[int], seed: int = 1, start_part: int = 0) -> list[str]:
    names, row = [], start_part * 1000
    for i, n in enumerate(sizes):
        part = start_part + i
        stats = add_part(r, keys, shard_dir, "demo", part, demo_samples(seed, row, n, image_size=40))
        names.append(stats.shards[0].name)
        row += n
    return names


def vocab(path: Path) -> Path:
    demo_tokenizer(demo_samples(1, 0, 200, image_size=8)).save(path)
    return path


def train_args(redis_url: str, keys, tmp_path: Path, **extra) -> list[str]:
    values = {
        "--redis-url": redis_url,
        "--namespace": keys.namespace,
        "--shard-dir": tmp_path / "shards",
        "--checkpoint-dir": tmp_path / "ck",
        "--tokenizer": tmp_path / "vocab.txt",
        "--preset": "tiny",
        "--image-size": 32,
        "--batch-size": 4,
        "--shuffle-buffer": 8,
        "--fresh-wait-ms": 300,
        "--log-every": 1,
        "--sample-every": 0,
        "--histogram-every": 0,
        "--checkpoint-every": 1000,
        "--warmup-steps": 2,
    } | {f"--{k.replace('_', '-')}": v for k, v in extra.items()}
    return [str(x) for flag, value in values.items() for x in ((flag,) if value is True else (flag, value))]


def start(args: list[str], log: Path, torchrun: int = 0) -> subprocess.Popen:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.Popen(
        [*launcher, "-m", "streamcap.trainer", *args],
        cwd=ROOT,
        env=os.environ | ENV,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """The trainer exits 0 within `timeout` s of a quiet machine (timing.wait), else its log."""
    try:
        rc = timing.wait(proc, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("trainer did not finish:\n" + log.read_text()[-4000:]) from None
    assert rc == 0, log.read_text()[-4000:]


def reads(run_dir: Path, rank: int = 0) -> list[dict]:
    path = run_dir / f"reads-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_step(run_dir: Path) -> int:
    records = read_metrics(run_dir / "metrics.jsonl")
    return int(records[-1]["step"]) if records else 0


def test_two_gloo_ranks_read_disjoint_fresh_shards_and_stay_identical(redis_url, keys, r, tmp_path):
    names = make_shards(r, keys, tmp_path / "shards", [6, 6, 6, 6, 6, 6, 150])  # one much larger shard
    vocab(tmp_path / "vocab.txt")
    log = tmp_path / "train.log"
    proc = start(
        train_args(
            redis_url,
            keys,
            tmp_path,
            run_id="ddp",
            max_steps=6,
            loader_workers=1,
            freeze_encoder_steps=2,
            checkpoint_every=3,
        ),
        log,
        torchrun=2,
    )
    finish(proc, log, timeout=150)
    run_dir = tmp_path / "ck" / "ddp"
    state = torch.load(run_dir / "step-00000006.train.pt", weights_only=False)
    digests = [rank["param_digest"] for rank in state["ranks"]]
    assert len(digests) == 2 and digests[0] == digests[1]  # identical parameters after 6 DDP steps
    held: dict[int, set[str]] = {}
    for rank in (0, 1):  # fresh shards each rank finished, plus those its worker still holds
        pending = r.xpending_range(keys.shards, "train:ddp", "-", "+", 100, consumername=f"ddp-r{rank}-w0")
        ids = {p["message_id"] for p in pending}
        held[rank] = {e["shard"] for e in reads(run_dir, rank) if e["fresh"]} | {
            bus.decode(fields)["name"] for entry_id, fields in r.xrange(keys.shards) if entry_id in ids
        }
    assert held[0] and held[1] and not held[0] & held[1]
    assert held[0] | held[1] <= set(names)
    beats = {b.rank: b for b in heartbeat_records(r, keys, bus.ROLE_TRAINER)}
    assert beats[0].step == beats[1].step == 6  # neither rank hung on the big shard


def test_training_starts_with_no_shards_and_replays_when_the_writer_pauses(redis_url, keys, r, tmp_path):
    vocab(tmp_path / "vocab.txt")
    log, run_dir = tmp_path / "train.log", tmp_path / "ck" / "live"
    proc = start(train_args(redis_url, keys, tmp_path, run_id="live", max_steps=40, loader_workers=1), log)
    try:
        wait_until(lambda: r.hget(keys.runs, "live"), 60, "the run to register", proc, log)
        waiting = wait_until(lambda: heartbeat_records(r, keys, bus.ROLE_TRAINER), 60, "a heartbeat", proc, log)
        assert waiting[0].step == 0 and waiting[0].data_wait_pct == 100.0  # waiting, and saying so
        assert waiting[0].state == "waiting_for_data"
        assert last_step(run_dir) == 0  # nothing to train on yet
        written = make_shards(r, keys, tmp_path / "shards", [8], start_part=0)
        wait_until(lambda: last_step(run_dir) >= 2, 60, "the first steps", proc, log)
        written += make_shards(r, keys, tmp_path / "shards", [8], start_part=1)  # while training runs
        wait_until(lambda: last_step(run_dir) >= 10, 60, "more steps", proc, log)
        written += make_shards(r, keys, tmp_path / "shards", [8], start_part=2)
        finish(proc, log)  # the writer pauses: the remaining steps replay
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = reads(run_dir)
    fresh = [e["shard"] for e in events if e["fresh"]]
    assert sorted(fresh) == sorted(written)  # each new shard picked up once
    assert any(not e["fresh"] for e in events)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert sum(rec["fresh_samples"] for rec in records) == 24
    assert sum(rec["replay_samples"] for rec in records) == 40 * 4 - 24
    assert sum(rec["fresh_wait_s"] for rec in records) > 0
    beat = heartbeat_records(r, keys, bus.ROLE_TRAINER)[0]
    assert beat.fresh == 24 and beat.replay == 136 and beat.step == 40 and beat.state == "finished"
    assert "waiting for the first one" in log.read_text()
    reads_counted = {k: int(v) for k, v in r.hgetall(keys.shard_reads("live")).items()}
    assert set(reads_counted) == set(written) and sum(reads_counted.values()) == len(events)
    assert json.loads(r.hget(keys.runs, "live"))["state"] == "finished"


def settings(redis_url: str, keys, tmp_path: Path, **overrides) -> TrainerSettings:
    values = dict(
        redis_url=redis_url,
        namespace=keys.namespace,
        shard_dir=tmp_path / "shards",
        checkpoint_dir=tmp_path / "ck",
        tokenizer=tmp_path / "vocab.txt",
        preset="tiny",
        image_size=32,
        batch_size=4,
        shuffle_buffer=8,
        loader_workers=0,
        fresh_wait_ms=200,
        log_every=1,
        sample_every=0,
        histogram_every=0,
        checkpoint_every=1000,
        warmup_steps=2,
        lr=1e-3,
        aug_ramp_steps=4,
        seed=5,
    )
    return TrainerSettings(**(values | overrides))


def test_interrupted_and_resumed_run_reproduces_the_losses(redis_url, keys, r, tmp_path):
    from streamcap.trainer.train import run

    make_shards(r, keys, tmp_path / "shards", [7, 9, 8])  # 24 samples: the last steps replay
    vocab(tmp_path / "vocab.txt")
    assert run(settings(redis_url, keys, tmp_path, run="whole", max_steps=9)) == 0
    assert run(settings(redis_url, keys, tmp_path, run="split", max_steps=4)) == 0
    assert run(settings(redis_url, keys, tmp_path, run="split", max_steps=9, resume=True)) == 0
    whole = {rec["step"]: rec for rec in read_metrics(tmp_path / "ck" / "whole" / "metrics.jsonl")}
    split = {rec["step"]: rec for rec in read_metrics(tmp_path / "ck" / "split" / "metrics.jsonl")}
    assert sorted(split) == sorted(whole) == list(range(1, 10))
    assert sum(whole[s]["replay_samples"] for s in whole) > 0
    for step in range(1, 10):
        for name in ("loss", "loss/ce", "loss/eos", "grad_norm"):
            assert split[step][name] == pytest.approx(whole[step][name], rel=1e-5, abs=1e-7), (step, name)
    assert split[9]["aug_level"] == whole[9]["aug_level"] > 0


def test_stops_and_resumes_with_a_loader_worker_and_augmentation_are_bit_identical(redis_url, keys, r, tmp_path):
    # A loader worker builds batches ahead of training: the level of each batch must come from
    # the step that trains on it, not from the level the training process had set by then.
    from streamcap.trainer.train import run

    make_shards(r, keys, tmp_path / "shards", [7, 9, 8])  # 24 samples: the last steps replay
    vocab(tmp_path / "vocab.txt")
    common = dict(loader_workers=1, aug_ramp_steps=8, aug_max=1.0, grad_accum=2)
    assert run(settings(redis_url, keys, tmp_path, run="whole", max_steps=9, **common)) == 0
    for stop in (2, 5, 9):
        resume = stop > 2
        assert run(settings(redis_url, keys, tmp_path, run="split", max_steps=stop, resume=resume, **common)) == 0
    whole = {rec["step"]: rec for rec in read_metrics(tmp_path / "ck" / "whole" / "metrics.jsonl")}
    split = {rec["step"]: rec for rec in read_metrics(tmp_path / "ck" / "split" / "metrics.jsonl")}
    assert sorted(split) == sorted(whole) == list(range(1, 10))
    assert sum(whole[s]["replay_samples"] for s in whole) > 0
    for step in range(1, 10):
        assert split[step]["aug_level"] == whole[step]["aug_level"], step
        for name in ("loss", "loss/ce", "loss/eos", "grad_norm"):
            assert split[step][name] == whole[step][name], (step, name)
    whole_ck = torch.load(tmp_path / "ck" / "whole" / "step-00000009.pt", weights_only=False)
    split_ck = torch.load(tmp_path / "ck" / "split" / "step-00000009.pt", weights_only=False)
    for name, tensor in whole_ck["state_dict"].items():
        assert torch.equal(tensor, split_ck["state_dict"][name]), name


def test_sigterm_then_resume_with_workers_rereads_no_acknowledged_shard(redis_url, keys, r, tmp_path):
    names = make_shards(r, keys, tmp_path / "shards", [6] * 8)
    vocab(tmp_path / "vocab.txt")
    log, run_dir = tmp_path / "train.log", tmp_path / "ck" / "sig"
    args = dict(run_id="sig", loader_workers=2, shuffle_buffer=4)
    proc = start(train_args(redis_url, keys, tmp_path, max_steps=500, **args), log)
    wait_until(lambda: sum(e["fresh"] for e in reads(run_dir)) >= 3, 90, "three fresh shards read", proc, log)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log)
    stopped_at = json.loads((run_dir / "latest.json").read_text())["step"]
    assert f"checkpoint {run_dir}" in log.read_text() and stopped_at < 500
    before = {e["shard"] for e in reads(run_dir) if e["fresh"]}
    acked = set(names) - {
        bus.decode(f)["name"] for i, f in r.xrange(keys.shards) if bus.delivery_count(r, keys.shards, "train:sig", i)
    }
    assert before and before <= acked

    proc = start(
        train_args(redis_url, keys, tmp_path, max_steps=stopped_at + 16, resume=True, **args), tmp_path / "resume.log"
    )
    finish(proc, tmp_path / "resume.log")
    events = reads(run_dir)
    resumed_fresh = [e["shard"] for e in events if e["fresh"] and e["step"] > stopped_at]
    assert not before & set(resumed_fresh)  # nothing acknowledged was read fresh again
    assert sorted(before | set(resumed_fresh)) == sorted(names) and len(resumed_fresh) == len(set(resumed_fresh))
    assert "resuming at step %d" % stopped_at in (tmp_path / "resume.log").read_text()


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def start_node(node_rank: int, port: int, args: list[str], log: Path) -> subprocess.Popen:
    """One torchrun launcher of a two-node job on this machine (its own session, to kill it whole)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank)]
    launcher += ["--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    launcher += ["--rdzv-id", "two-nodes"]
    return subprocess.Popen(
        [*launcher, "-m", "streamcap.trainer", *args],
        cwd=ROOT,
        env=os.environ | ENV,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_two_nodes_share_fresh_shards_stay_identical_and_survive_a_killed_node(redis_url, keys, r, tmp_path):
    from streamcap.bus.embedded import free_port

    names = make_shards(r, keys, tmp_path / "shards", [6] * 12)
    vocab(tmp_path / "vocab.txt")
    run_dir = tmp_path / "ck" / "nodes"

    def both(max_steps: int, tag: str, **extra) -> list[tuple[subprocess.Popen, Path]]:
        port = free_port()
        args = train_args(redis_url, keys, tmp_path, run_id="nodes", max_steps=max_steps, loader_workers=1, **extra)
        return [
            (start_node(n, port, args, tmp_path / f"{tag}-node{n}.log"), tmp_path / f"{tag}-node{n}.log")
            for n in (0, 1)
        ]

    for proc, log in both(6, "first", checkpoint_every=3):
        finish(proc, log, timeout=240)
    state = torch.load(run_dir / "step-00000006.train.pt", weights_only=False)
    digests = [rank["param_digest"] for rank in state["ranks"]]
    assert len(digests) == 2 and digests[0] == digests[1]  # identical parameters on both nodes
    fresh = {rank: [e["shard"] for e in reads(run_dir, rank) if e["fresh"]] for rank in (0, 1)}
    assert fresh[0] and fresh[1] and not set(fresh[0]) & set(fresh[1])  # each fresh shard read by one node
    assert all(len(f) == len(set(f)) for f in fresh.values()) and set(fresh[0]) | set(fresh[1]) <= set(names)
    beats = {b.rank: b for b in heartbeat_records(r, keys, bus.ROLE_TRAINER)}
    assert beats[0].step == beats[1].step == 6

    # Kill one whole node mid-run (launcher, rank and loader worker: torchrun starts each rank in
    # a session of its own): the other must exit, not hang in a collective.
    nodes = both(10_000, "second", checkpoint_every=2, resume=True)
    try:
        wait_until(lambda: last_step(run_dir) >= 9, 240, "the resumed job past step 9", nodes[0][0], nodes[0][1])
        for pid in [nodes[1][0].pid, *descendants(nodes[1][0].pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nodes[1][0].wait()
        try:
            assert timing.wait(nodes[0][0], 180) != 0
        except subprocess.TimeoutExpired:
            raise AssertionError("the surviving node hung:\n" + nodes[0][1].read_text()[-4000:]) from None
    finally:
        for proc, _ in nodes:
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    resumed_at = json.loads((run_dir / "latest.json").read_text())["step"]
    assert resumed_at >= 8

    logs = []
    for proc, log in both(resumed_at + 4, "third", checkpoint_every=2, resume=True):
        finish(proc, log, timeout=240)
        logs.append(log.read_text())
    assert any(f"resuming at step {resumed_at}" in text for text in logs)  # rank 0 says it, on either node
    state = torch.load(run_dir / f"step-{resumed_at + 4:08d}.train.pt", weights_only=False)
    digests = [rank["param_digest"] for rank in state["ranks"]]
    assert digests[0] == digests[1]
    done = {e["shard"] for rank in (0, 1) for e in reads(run_dir, rank) if e["fresh"]}
    pending = {p["message_id"] for p in r.xpending_range(keys.shards, "train:nodes", "-", "+", 100)}
    held = {bus.decode(fields)["name"] for entry_id, fields in r.xrange(keys.shards) if entry_id in pending}
    assert done | held == set(names)  # every fresh shard read or still held: none lost to the kill
