"""--keep-checkpoints: the newest N stay, and so does everything the evaluator or --resume needs."""

from __future__ import annotations

import json

from streamcap import bus
from streamcap.formats.heartbeats import EvaluatorHeartbeat
from streamcap.trainer.checkpointing import model_path, publish
from streamcap.trainer.retention import evaluator_needs
from tests.integration.test_trainer_runs import make_shards, settings, vocab
from tests.support.heartbeats import record


def _steps(run_dir) -> list[int]:
    return sorted(int(p.name[5:13]) for p in run_dir.glob("step-*[0-9].pt"))


def test_keeps_the_newest_three_plus_best_and_in_evaluation_and_resumes(redis_url, keys, r, tmp_path):
    from streamcap.trainer.train import run

    make_shards(r, keys, tmp_path / "shards", [8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    run_dir = (tmp_path / "ck" / "keep").resolve()
    # The evaluator marked step 2 best and is evaluating step 4 (its heartbeat says so).
    r.hset(keys.evals_best, mapping={"checkpoint": str(model_path(run_dir, 2)), "step": "2", "metric": "CIDEr"})
    evaluating = record(EvaluatorHeartbeat, state="captioning", checkpoint=str(model_path(run_dir, 4)))
    bus.write_heartbeat(r, keys, "ev-a", evaluating)
    cfg = settings(redis_url, keys, tmp_path, run="keep", max_steps=8, checkpoint_every=1, keep_checkpoints=3)
    assert run(cfg) == 0
    assert _steps(run_dir) == [2, 4, 6, 7, 8]
    assert not (run_dir / "step-00000005.train.pt").exists() and (run_dir / "step-00000008.train.pt").exists()
    beat = next(b.record for b in bus.read_heartbeats(r, keys, bus.ROLE_TRAINER) if b.record.rank == 0)
    assert beat.checkpoints_freed_bytes > 0
    # Resume works from what was kept, and retention goes on (the evaluator still at step 4).
    bus.write_heartbeat(r, keys, "ev-a", evaluating)
    assert run(settings(redis_url, keys, tmp_path, run="keep", max_steps=10, checkpoint_every=1, resume=True)) == 0
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 10
    assert _steps(run_dir) == [2, 4, 8, 9, 10]


def test_a_checkpoint_delivered_to_an_evaluator_is_protected_and_redis_down_deletes_nothing(r, keys, tmp_path):
    path = tmp_path / "step-00000001.pt"
    path.write_bytes(b"x")
    bus.ensure_group(r, keys.checkpoints, bus.GROUP_EVALUATORS)
    assert evaluator_needs(r, keys) == set()
    publish(r, keys, path, 1, "run")
    r.xreadgroup(bus.GROUP_EVALUATORS, "ev-a", {keys.checkpoints: ">"}, count=1)  # delivered, not acknowledged
    assert evaluator_needs(r, keys) == {str(path.resolve())}
    down = bus.connect("redis://127.0.0.1:1/0", retries=0, connect_timeout=0.2)
    assert evaluator_needs(down, keys) is None
