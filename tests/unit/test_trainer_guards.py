"""The step guard and the trainer's fault hooks: counting, the stop line, non-finite tensors."""

from __future__ import annotations

import pytest
import torch

from streamcap.trainer.faults import CUDA_OOM, NAN_LOSS, TrainerFaults
from streamcap.trainer.guards import RunFailed, StepGuard, describe_nonfinite, nonfinite_tensor


def test_the_guard_stops_at_max_bad_steps_in_a_row_only():
    guard = StepGuard(3, total=2, advice="lower --lr")
    for step in (10, 11):
        guard.record(step, "loss nan", ["s.tar/k"])
        guard.check()
    guard.record(12, None, [])  # a good step ends the streak
    for step in (13, 14):
        guard.record(step, "loss nan", [])
        guard.check()
    guard.record(15, "grad norm inf", [])
    with pytest.raises(
        RunFailed, match=r"^stopping: 3 non-finite steps in a row \(grad norm inf at step 15\): lower --lr$"
    ):
        guard.check()
    assert guard.fields("nonfinite") == {"nonfinite_steps": 7, "nonfinite_in_a_row": 3}


def test_describe_and_find_non_finite_tensors():
    assert describe_nonfinite(float("nan"), 1.0) == "loss nan"
    assert describe_nonfinite(1.0, float("inf")) == "grad norm inf"
    assert describe_nonfinite(1.0, 2.0) == "another rank's loss or grad norm"
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    assert nonfinite_tensor(model, opt) is None
    opt.state[model[0].bias]["exp_avg"][0] = float("inf")
    assert nonfinite_tensor(model, opt) == "optimizer exp_avg of 0.bias"
    model[1].running_var[1] = float("nan")
    assert nonfinite_tensor(model, opt) == "1.running_var"


def test_fault_hooks_fire_on_their_steps_and_rank_once(monkeypatch):
    monkeypatch.setenv("STREAMCAP_FAULT", "nan_loss,after_rename")
    monkeypatch.setenv("STREAMCAP_FAULT_STEPS", "2-3,7")
    monkeypatch.setenv("STREAMCAP_FAULT_RANK", "1")
    faults = TrainerFaults.from_env()
    assert [s for s in range(1, 9) if faults.fire(NAN_LOSS, s, rank=1)] == [2, 3, 7]
    assert not faults.fire(NAN_LOSS, 2, rank=1)  # once per step
    assert not faults.fire(NAN_LOSS, 4, rank=0) and not faults.fire(CUDA_OOM, 2, rank=1)
    monkeypatch.delenv("STREAMCAP_FAULT")
    assert not TrainerFaults.from_env().fire(NAN_LOSS, 2, rank=0)
