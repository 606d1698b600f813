"""Week-long runs that cannot go wrong silently (issue 23): a non-finite step is skipped, counted and
shown; a diverged run stops with one line and a non-zero exit, leaving only finite checkpoints."""

from __future__ import annotations

import json
import re

import torch

from streamcap import bus
from streamcap.ops import status
from streamcap.trainer.metrics_sink import read_metrics
from tests.integration.test_trainer_runs import finish, make_shards, settings, start, train_args, vocab
from tests.support import timing

NAN_AT_STEP_3 = {"STREAMCAP_FAULT": "nan_loss", "STREAMCAP_FAULT_STEPS": "3"}


def _finite(path) -> bool:
    state = torch.load(path, weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_lr_1e9_diverges_and_stops_with_one_line_and_only_finite_checkpoints(redis_url, keys, r, tmp_path):
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    log, run_dir = tmp_path / "train.log", tmp_path / "ck" / "boom"
    args = train_args(redis_url, keys, tmp_path, run_id="boom", lr=1e9, max_steps=40, checkpoint_every=1)
    proc = start([*args, "--loader-workers", "0", "--progress-every", "0.1"], log)
    rc = timing.wait(proc, 180)
    text = log.read_text()
    assert rc == 1, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    # Progress in a log file: plain lines (rank 0), no carriage returns or escape codes.
    progress = [line for line in text.splitlines() if line.startswith("train: ")]
    assert progress and all(re.match(r"train: \d+/40 steps \(\d+\.\d %\), [\d.]+ steps/s", p) for p in progress)
    assert any("samples/s, data wait" in p for p in progress) and "\r" not in text and "\x1b" not in text
    stop_lines = [line for line in text.splitlines() if "stopping: 5 non-finite steps in a row" in line]
    assert len(stop_lines) == 1 and "resume from the last good checkpoint with --resume" in stop_lines[0], text
    records = read_metrics(run_dir / "metrics.jsonl")
    skipped = [rec for rec in records if rec.get("skipped")]
    assert len(skipped) == 5 and records[-1]["step"] < 40  # stopped early, not at --max-steps
    assert all(not torch.isfinite(torch.tensor([float(rec["loss"])])).all() for rec in skipped)
    assert all(rec["skipped_keys"] and "/" in rec["skipped_keys"][0] for rec in skipped)
    assert skipped[-1]["nonfinite_steps"] == skipped[-1]["nonfinite_in_a_row"] == 5
    checkpoints = sorted(run_dir.glob("step-*[0-9].pt"))
    assert checkpoints and all(_finite(path) for path in checkpoints)
    assert json.loads((run_dir / "latest.json").read_text())["step"] < skipped[-1]["step"]
    beat = bus.read_heartbeats(r, keys, bus.ROLE_TRAINER)[0].record
    assert beat.state == "failed" and beat.error.startswith("stopping: 5 non-finite steps")
    assert beat.nonfinite_steps == 5
    report = status.collect(r, keys)
    assert report["hints"][0].startswith("the trainer stopped itself: ") and "5 non-finite steps" in report["hints"][0]


def test_an_injected_nan_step_is_skipped_and_the_run_goes_on(redis_url, keys, r, tmp_path, monkeypatch, capfd):
    from streamcap.trainer.train import run

    for name, value in NAN_AT_STEP_3.items():
        monkeypatch.setenv(name, value)
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    assert run(settings(redis_url, keys, tmp_path, run="nan", max_steps=6, checkpoint_every=1, keep_checkpoints=0)) == 0
    run_dir = tmp_path / "ck" / "nan"
    records = {rec["step"]: rec for rec in read_metrics(run_dir / "metrics.jsonl")}
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    assert records[3]["skipped"] == 1 and records[3]["loss"] == "nan" and len(records[3]["skipped_keys"]) == 4
    assert [records[s]["nonfinite_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert records[4]["nonfinite_in_a_row"] == 0 and isinstance(records[4]["loss"], float)
    (line,) = [m for m in capfd.readouterr().err.splitlines() if "step 3 skipped" in m]
    assert "loss nan" in line and records[3]["skipped_keys"][0] in line
    # Step 3 left the weights as step 2 had them: no optimizer step.
    two, three, four = (torch.load(run_dir / f"step-0000000{s}.pt", weights_only=False) for s in (2, 3, 4))
    for name, tensor in two["state_dict"].items():
        assert torch.equal(tensor, three["state_dict"][name]), name
    assert any(not torch.equal(t, four["state_dict"][n]) for n, t in three["state_dict"].items())
    assert torch.load(run_dir / "step-00000006.train.pt", weights_only=False)["nonfinite_steps"] == 1


def test_a_checkpoint_with_non_finite_weights_is_refused(redis_url, keys, r, tmp_path, monkeypatch):
    from streamcap.trainer import train

    make_shards(r, keys, tmp_path / "shards", [8, 8])
    vocab(tmp_path / "vocab.txt")
    real = train.nonfinite_tensor
    _at = [0]

    def counting(model, opt):  # the check before the second checkpoint finds a NaN
        _at[0] += 1
        return "decoder.head.weight" if _at[0] >= 2 else real(model, opt)

    monkeypatch.setattr(train, "nonfinite_tensor", counting)
    assert train.run(settings(redis_url, keys, tmp_path, run="refuse", max_steps=4, checkpoint_every=1)) == 1
    run_dir = tmp_path / "ck" / "refuse"
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 1
    assert not (run_dir / "step-00000002.pt").exists()
    assert [int(bus.decode(f)["step"]) for _, f in r.xrange(keys.checkpoints)] == [1]  # nothing bad announced


def test_two_ranks_skip_together_when_one_rank_sees_nan(redis_url, keys, r, tmp_path, monkeypatch):
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    for name, value in (NAN_AT_STEP_3 | {"STREAMCAP_FAULT_RANK": "1"}).items():
        monkeypatch.setenv(name, value)
    log = tmp_path / "train.log"
    args = train_args(redis_url, keys, tmp_path, run_id="ddp", max_steps=4, checkpoint_every=4, loader_workers=0)
    proc = start(args, log, torchrun=2)
    finish(proc, log, timeout=180)
    run_dir = tmp_path / "ck" / "ddp"
    state = torch.load(run_dir / "step-00000004.train.pt", weights_only=False)
    assert state["ranks"][0]["param_digest"] == state["ranks"][1]["param_digest"]
    assert state["nonfinite_steps"] == 1
    records = {rec["step"]: rec for rec in read_metrics(run_dir / "metrics.jsonl")}
    assert records[3]["skipped"] == 1 and len(records[3]["skipped_keys"]) == 8  # both ranks' batches


def test_an_out_of_memory_step_is_skipped_and_three_in_a_row_stop_the_run(
    redis_url, keys, r, tmp_path, monkeypatch, capfd
):
    from streamcap.trainer.train import run

    make_shards(r, keys, tmp_path / "shards", [8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    monkeypatch.setenv("STREAMCAP_FAULT", "cuda_oom")
    monkeypatch.setenv("STREAMCAP_FAULT_STEPS", "2")
    assert run(settings(redis_url, keys, tmp_path, run="oom1", max_steps=4)) == 0
    records = {rec["step"]: rec for rec in read_metrics(tmp_path / "ck" / "oom1" / "metrics.jsonl")}
    assert records[2]["skipped"] == 1 and "out of memory" in records[2]["skip_cause"]
    assert [records[s]["oom_steps"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1] and records[4]["oom_in_a_row"] == 0
    assert "step 2 skipped (CUDA out of memory" in capfd.readouterr().err

    monkeypatch.setenv("STREAMCAP_FAULT_STEPS", "2-20")
    assert run(settings(redis_url, keys, tmp_path, run="oom3", max_steps=20)) == 1
    err = capfd.readouterr().err
    (line,) = [x for x in err.splitlines() if "stopping: 3 out-of-memory steps in a row" in x]
    assert "at step 4" in line and "--batch-size" in line and "--preset" in line and "--image-size" in line
    assert "Traceback" not in err
    assert read_metrics(tmp_path / "ck" / "oom3" / "metrics.jsonl")[-1]["step"] == 4


def test_an_out_of_memory_rank_joins_the_gradient_sync_and_both_skip(redis_url, keys, r, tmp_path, monkeypatch):
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    for name, value in {
        "STREAMCAP_FAULT": "cuda_oom",
        "STREAMCAP_FAULT_STEPS": "3",
        "STREAMCAP_FAULT_RANK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    log = tmp_path / "train.log"
    args = train_args(redis_url, keys, tmp_path, run_id="ddpoom", max_steps=4, checkpoint_every=4, loader_workers=0)
    finish(start(args, log, torchrun=2), log, timeout=180)  # no hang in the all-reduce of step 3
    run_dir = tmp_path / "ck" / "ddpoom"
    state = torch.load(run_dir / "step-00000004.train.pt", weights_only=False)
    assert state["ranks"][0]["param_digest"] == state["ranks"][1]["param_digest"]
    records = {rec["step"]: rec for rec in read_metrics(run_dir / "metrics.jsonl")}
    assert records[3]["skipped"] == 1 and records[3]["oom_steps"] == 1 and records[4]["oom_in_a_row"] == 0
