"""Warmup + inverse-square-root learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from streamcap.trainer.schedule import make_scheduler, warmup_inverse_sqrt


@pytest.mark.parametrize("step, expected", [(1, 0.001), (500, 0.5), (1000, 1.0), (4000, 0.5), (100_000, 0.1)])
def test_values(step, expected):
    assert math.isclose(warmup_inverse_sqrt(step, 1000), expected, rel_tol=1e-9)


def test_rises_then_decays():
    values = [warmup_inverse_sqrt(s, 100) for s in range(1, 1000)]
    peak = values.index(max(values)) + 1
    assert peak == 100
    assert all(a < b for a, b in zip(values[:99], values[1:100]))
    assert all(a > b for a, b in zip(values[99:], values[100:]))


def test_scheduler_scales_every_group_and_resumes_exactly():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam([{"params": [params[0]], "lr": 1e-5}, {"params": [params[1]], "lr": 1e-4}])
    sched = make_scheduler(opt, warmup_steps=10)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0][1], 1e-4 * 0.1) and math.isclose(lrs[0][0], 1e-5 * 0.1)  # step 1 of 10
    assert math.isclose(lrs[9][1], 1e-4)  # step 10: peak
    # a fresh optimizer + scheduler loaded from the state continue identically
    opt2 = torch.optim.Adam([{"params": [params[0]], "lr": 1e-5}, {"params": [params[1]], "lr": 1e-4}])
    sched2 = make_scheduler(opt2, warmup_steps=10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
