"""The metrics sink: a resumed run's W&B history gets no step twice; metrics.jsonl gets them all."""

from __future__ import annotations

from streamcap.trainer.metrics_sink import MetricsSink, read_metrics


class RecordingRun:
    """What the sink uses of a wandb Run: `log` and `finish`."""

    def __init__(self) -> None:
        self.logged, self.data, self.finished = [], {}, False

    def log(self, data, step):
        self.logged.append(step)
        self.data[step] = data

    def finish(self):
        self.finished = True


def test_resumed_run_logs_to_wandb_only_past_the_steps_it_has(tmp_path):
    # Checkpoint at step 5, crash after step 7 was logged: W&B's next step is 8.
    wandb_run = RecordingRun()
    sink = MetricsSink(tmp_path, wandb_run, wandb_from=8)
    for step in range(6, 11):
        sink.log(step, {"loss": 1.0 / step})
    sink.close()
    assert wandb_run.logged == [8, 9, 10] and wandb_run.finished
    assert [rec["step"] for rec in read_metrics(tmp_path / "metrics.jsonl")] == [6, 7, 8, 9, 10]


def test_non_finite_values_are_written_not_dropped(tmp_path):
    wandb_run = RecordingRun()
    sink = MetricsSink(tmp_path, wandb_run)
    sink.log(3, {"loss": float("nan"), "grad_norm": float("inf"), "skipped": 1}, {"nonfinite_keys": ["a.tar/k1"]})
    sink.log(4, {"loss": 2.0, "grad_norm": 1.0})
    sink.close()
    first, second = read_metrics(tmp_path / "metrics.jsonl")
    assert first["loss"] == "nan" and first["grad_norm"] == "inf" and first["nonfinite_keys"] == ["a.tar/k1"]
    assert second["loss"] == 2.0
    assert sink.history["loss"] == [(4, 2.0)]  # the curve leaves NaN out


def test_resumed_run_sends_wandb_the_checkpointed_steps_it_lost_from_metrics_jsonl(tmp_path):
    # Checkpoint at step 6, crash at step 9; the killed W&B process had committed only steps 1-3.
    first = MetricsSink(tmp_path, RecordingRun())
    for step in range(1, 10):
        first.log(step, {"loss": 1.0 / step, "grad_norm": float("nan") if step == 5 else 2.0}, {"skipped_keys": ["k"]})
    first._file.close()  # the crash: no finish
    resumed = RecordingRun()
    sink = MetricsSink(tmp_path, resumed, wandb_from=4)
    sink._send_logged(6)
    for step in range(7, 11):
        sink.log(step, {"loss": 1.0 / step})
    sink.close()
    assert resumed.logged == [4, 5, 6, 7, 8, 9, 10]  # each step once, none before what W&B has
    assert resumed.data[6] == {"loss": 1.0 / 6, "grad_norm": 2.0}  # scalars only: the extras stay in the log
    assert str(resumed.data[5]["grad_norm"]) == "nan"
