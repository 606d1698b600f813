"""The metrics sink: a resumed run's W&B history gets no step twice; metrics.jsonl gets them all."""

from __future__ import annotations

from streamcap.trainer.metrics_sink import MetricsSink, read_metrics


class RecordingRun:
    """What the sink uses of a wandb Run: `step` (the next step W&B accepts), `log`, `finish`."""

    def __init__(self, step: int) -> None:
        self.step, self.logged, self.finished = step, [], False

    def log(self, data, step):
        self.logged.append(step)

    def finish(self):
        self.finished = True


def test_resumed_run_logs_to_wandb_only_past_the_steps_it_has(tmp_path):
    # Checkpoint at step 5, crash after step 7 was logged: W&B's next step is 8.
    wandb_run = RecordingRun(step=8)
    sink = MetricsSink(tmp_path, wandb_run)
    for step in range(6, 11):
        sink.log(step, {"loss": 1.0 / step})
    sink.close()
    assert wandb_run.logged == [8, 9, 10] and wandb_run.finished
    assert [rec["step"] for rec in read_metrics(tmp_path / "metrics.jsonl")] == [6, 7, 8, 9, 10]


def test_non_finite_values_are_written_not_dropped(tmp_path):
    wandb_run = RecordingRun(step=0)
    sink = MetricsSink(tmp_path, wandb_run)
    sink.log(3, {"loss": float("nan"), "grad_norm": float("inf"), "skipped": 1}, {"nonfinite_keys": ["a.tar/k1"]})
    sink.log(4, {"loss": 2.0, "grad_norm": 1.0})
    sink.close()
    first, second = read_metrics(tmp_path / "metrics.jsonl")
    assert first["loss"] == "nan" and first["grad_norm"] == "inf" and first["nonfinite_keys"] == ["a.tar/k1"]
    assert second["loss"] == 2.0
    assert sink.history["loss"] == [(4, 2.0)]  # the curve leaves NaN out
