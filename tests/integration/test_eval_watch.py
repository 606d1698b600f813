"""`streamcap eval watch` against a real redis-server: delivery, best checkpoint, crash, two evaluators."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.eval.config import EvalSettings
from streamcap.eval.datasets import load_eval_set
from streamcap.eval.outputs import EvalResult
from streamcap.eval.watcher import Watcher
from tests.support import timing
from tests.support.evalsets import karpathy_set, publish, tiny_checkpoint
from tests.support.fleet import heartbeat_records
from tests.support.pipeline import wait_until

ROOT = Path(__file__).resolve().parents[2]
FAST = {"beam": 2, "max_tokens": 4, "min_tokens": 2, "meteor": False, "gallery": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("watch")
    data = karpathy_set(root, test=16, val=2, train=0)
    checkpoints = [
        tiny_checkpoint(root / "ckpt" / f"step-{100 * (i + 1)}.pt", seed=i, step=100 * (i + 1)) for i in range(4)
    ]
    return {"root": root, "data": data, "checkpoints": checkpoints}


def settings(world, redis_url: str, keys: bus.Keys, out_dir: Path, **over) -> EvalSettings:
    values = dict(
        redis_url=redis_url,
        namespace=keys.namespace,
        data=world["data"],
        images=world["root"] / "images",
        split="val",
        out_dir=out_dir,
        exit_when_empty=True,
        **FAST,
    )
    return EvalSettings(**{**values, **over})


def watch_in_process(cfg: EvalSettings, r, consumer: str) -> Watcher:
    evalset = load_eval_set(cfg.data, split=cfg.split, image_dir=cfg.images, limit=cfg.limit)
    watcher = Watcher(cfg, r, evalset, "cpu", consumer=consumer)
    assert watcher.run() == 0
    return watcher


def evals(r, keys) -> list[dict]:
    return [bus.decode(fields) for _, fields in r.xrange(keys.evals)]


def pending(r, keys) -> int:
    return r.xpending(keys.checkpoints, bus.GROUP_EVALUATORS)["pending"]


def test_watch_evaluates_each_checkpoint_once_and_keeps_the_best(world, redis_url, keys, r, tmp_path):
    entries = [publish(r, keys, path, 100 * (i + 1)) for i, path in enumerate(world["checkpoints"][:3])]
    watch_in_process(settings(world, redis_url, keys, tmp_path), r, "ev-a")

    results = evals(r, keys)
    assert [(e["entry"], e["status"], e["evaluator"]) for e in results] == [(x, "ok", "ev-a") for x in entries]
    assert pending(r, keys) == 0
    best = r.hgetall(keys.evals_best)
    top = max(results, key=lambda e: e["scores"]["CIDEr"])  # the first of equals stays best
    assert (best["metric"], float(best["value"]), best["entry"]) == ("CIDEr", top["scores"]["CIDEr"], top["entry"])
    assert json.loads(best["scores"]) == top["scores"]
    assert os.path.samefile(tmp_path / "best.pt", top["checkpoint"])  # a hard link: survives the trainer's cleanup
    assert json.loads((tmp_path / "best.json").read_text())["entry"] == top["entry"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
    assert all(Path(e["report"]).is_file() for e in results)
    assert r.exists(keys.heartbeat(bus.ROLE_EVALUATOR, "ev-a")) == 0  # removed on a clean exit

    # A checkpoint published later is evaluated by the next run; nothing is evaluated twice.
    publish(r, keys, world["checkpoints"][3], 400)
    watch_in_process(settings(world, redis_url, keys, tmp_path), r, "ev-b")
    assert [e["step"] for e in evals(r, keys)] == [100, 200, 300, 400]


def test_bad_messages_and_missing_files_are_recorded_not_retried(world, redis_url, keys, r, tmp_path):
    garbage = r.xadd(keys.checkpoints, {"json": '{"v": 1, "path": 5}'})
    missing = publish(r, keys, tmp_path / "gone.pt", 700)
    watch_in_process(settings(world, redis_url, keys, tmp_path), r, "ev-a")
    results = {e["entry"]: e for e in evals(r, keys)}
    assert results[garbage]["status"] == "failed" and results[garbage]["error"].startswith("bad message")
    assert results[missing]["status"] == "failed" and "no such checkpoint file" in results[missing]["error"]
    assert pending(r, keys) == 0 and not r.exists(keys.evals_best)


def start_watcher(world, redis_url: str, keys: bus.Keys, out_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        "--redis-url",
        redis_url,
        "--namespace",
        keys.namespace,
        "--data",
        str(world["data"]),
        "--images",
        str(world["root"] / "images"),
        "--out-dir",
        str(out_dir),
        "--no-meteor",
        "--beam",
        "2",
        "--max-tokens",
        "4",
        "--min-tokens",
        "2",
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "streamcap.eval", "watch", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_crash_mid_evaluation_leaves_the_checkpoint_to_another_evaluator(world, redis_url, keys, r, tmp_path):
    entry = publish(r, keys, world["checkpoints"][0], 100)
    # Slow enough to be caught mid-way: 16 images, one per batch, long captions, a wide beam.
    proc = start_watcher(
        world,
        redis_url,
        keys,
        tmp_path / "a",
        "--split",
        "test",
        "--batch-size",
        "1",
        "--beam",
        "5",
        "--max-tokens",
        "14",
        "--min-tokens",
        "14",
    )
    try:
        beat = wait_until(
            lambda: next(
                (b for b in heartbeat_records(r, keys, bus.ROLE_EVALUATOR) if b.state in ("loading", "captioning")),
                None,
            ),
            60,
            "the evaluator to work on the checkpoint",
            proc=proc,
            poll_s=0.02,
        )
        assert beat.checkpoint == str(world["checkpoints"][0].resolve()) and beat.step == 100
        assert beat.metric and beat.dataset and beat.device and beat.evaluated == 0
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        timing.wait(proc, 30)
        proc.stderr.close()
    assert evals(r, keys) == [] and pending(r, keys) == 1

    # The dead evaluator's entry must be stale (idle past --reclaim-after-s below) for "ev-b" to take it.
    wait_until(
        lambda: all(
            p["time_since_delivered"] > 1000
            for p in r.xpending_range(keys.checkpoints, bus.GROUP_EVALUATORS, "-", "+", 10)
        ),
        10,
        "the dead evaluator's entry to be idle for 1 s",
    )
    watch_in_process(settings(world, redis_url, keys, tmp_path / "b", reclaim_after_s=1.0), r, "ev-b")
    [result] = evals(r, keys)
    assert (result["entry"], result["status"], result["evaluator"]) == (entry, "ok", "ev-b")
    assert pending(r, keys) == 0


def test_two_evaluators_never_evaluate_the_same_checkpoint(world, redis_url, keys, r, tmp_path):
    # Two watchers at once (threads, each with its own connection), competing for four checkpoints.
    entries = {publish(r, keys, path, 100 * (i + 1)) for i, path in enumerate(world["checkpoints"])}
    errors: list[BaseException] = []

    def evaluator(name: str) -> None:
        client = bus.connect(redis_url)
        try:
            watch_in_process(settings(world, redis_url, keys, tmp_path / name), client, name)
        except BaseException as e:  # surfaced below: a thread's exception would be lost
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=evaluator, args=(name,)) for name in ("ev-a", "ev-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timing.scaled(100))
    assert errors == [] and not any(t.is_alive() for t in threads)
    results = evals(r, keys)
    assert sorted(e["entry"] for e in results) == sorted(entries)  # each once, none twice
    assert all(e["status"] == "ok" for e in results) and pending(r, keys) == 0
    lines = [
        line
        for name in ("ev-a", "ev-b")
        if (tmp_path / name / "results.jsonl").exists()
        for line in (tmp_path / name / "results.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 4


def crafted(world, cider: float, step: int, entry: str = "") -> EvalResult:
    return EvalResult(
        checkpoint=str(world["checkpoints"][0]),
        step=step,
        run="r1",
        entry=entry,
        scores={"CIDEr": cider, "BLEU-4": 0.1},
        metric="CIDEr",
        created=time.time(),
    )


def test_best_moves_only_to_a_better_score(world, redis_url, keys, r, tmp_path):
    watcher = Watcher(
        settings(world, redis_url, keys, tmp_path),
        r,
        load_eval_set(world["data"], split="val", image_dir=world["root"] / "images"),
        "cpu",
        consumer="ev-a",
    )
    for step, cider in ((100, 0.5), (200, 0.4), (300, 0.9), (400, 0.9)):
        assert watcher._commit(crafted(world, cider, step))
    best = r.hgetall(keys.evals_best)
    assert (best["step"], float(best["value"])) == ("300", 0.9)  # 0.4 is worse, an equal 0.9 is not better
    assert [e["step"] for e in evals(r, keys)] == [100, 200, 300, 400]


def test_a_checkpoint_of_mostly_empty_captions_is_never_kept_as_best(world, redis_url, keys, r, tmp_path):
    watcher = Watcher(
        settings(world, redis_url, keys, tmp_path),
        r,
        load_eval_set(world["data"], split="val", image_dir=world["root"] / "images"),
        "cpu",
        consumer="ev-a",
    )
    empty = crafted(world, 0.0, 100)  # the first result, all empty: nothing to compare with, still not best
    empty.empty_share = 1.0
    assert watcher._commit(empty)
    assert not r.exists(keys.evals_best) and not (tmp_path / "best.pt").exists()
    mostly = crafted(world, 2.0, 200)  # a high score over 60% empty captions
    mostly.empty_share = 0.6
    assert watcher._commit(mostly)
    assert not r.exists(keys.evals_best)
    half = crafted(world, 0.3, 300)  # at the threshold it may be best
    half.empty_share = 0.5
    assert watcher._commit(half)
    assert r.hget(keys.evals_best, "step") == "300" and (tmp_path / "best.pt").exists()
    assert [(e["step"], e["empty_share"]) for e in evals(r, keys)] == [(100, 1.0), (200, 0.6), (300, 0.5)]


def test_the_report_shows_the_share_of_empty_captions(world, redis_url, keys, r, tmp_path):
    publish(r, keys, world["checkpoints"][0], 100)
    watch_in_process(settings(world, redis_url, keys, tmp_path), r, "ev-a")
    (result,) = evals(r, keys)
    assert result["empty_share"] == 0.0  # beam search gives every image a caption
    assert "empty captions: 0.0% of images" in Path(result["report"]).read_text()


def test_a_result_for_an_entry_taken_over_by_another_evaluator_is_dropped(world, redis_url, keys, r, tmp_path):
    entry = publish(r, keys, world["checkpoints"][0], 100)
    bus.ensure_group(r, keys.checkpoints, bus.GROUP_EVALUATORS)
    r.xreadgroup(bus.GROUP_EVALUATORS, "ev-other", {keys.checkpoints: ">"}, count=1)  # now ev-other's
    watcher = Watcher(
        settings(world, redis_url, keys, tmp_path),
        r,
        load_eval_set(world["data"], split="val", image_dir=world["root"] / "images"),
        "cpu",
        consumer="ev-a",
    )
    assert watcher._commit(crafted(world, 0.5, 100, entry=entry)) is False
    assert evals(r, keys) == [] and pending(r, keys) == 1 and not r.exists(keys.evals_best)
