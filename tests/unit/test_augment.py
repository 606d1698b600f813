"""Augmentation: exponential ramp, level 0 is a plain centre crop, reproducible, no flips,
and the level reaches another process."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from streamcap.trainer.augment import Augmenter, SharedLevel, ramp_level


def test_ramp_goes_from_zero_to_max_exponentially():
    levels = [ramp_level(s, 1000, 0.8) for s in range(0, 1001, 50)]
    assert levels[0] == 0.0 and levels[-1] == pytest.approx(0.8)
    assert all(a < b for a, b in zip(levels, levels[1:]))
    steps = np.diff(levels)
    assert all(a < b for a, b in zip(steps, steps[1:]))  # convex: slow start, fast finish
    assert ramp_level(5000, 1000, 0.8) == 0.8
    assert ramp_level(10, 0, 0.5) == 0.5 and ramp_level(10, 100, 0.0) == 0.0


def striped(height: int = 90, width: int = 160) -> np.ndarray:
    """Left third red, right third blue, middle grey."""
    img = np.full((height, width, 3), 128, np.uint8)
    img[:, : width // 3] = (220, 30, 30)
    img[:, -width // 3 :] = (30, 30, 220)
    return img


def test_level_zero_is_a_centre_crop_of_the_requested_size():
    out = Augmenter(48)(striped(), 0.0, seed=1)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    # the centre 90x90 square of the 160-wide image, resized: grey middle, red/blue edges cropped off mostly
    assert abs(int(out[24, 24, 0]) - 128) < 10
    assert (out == Augmenter(48)(striped(), 0.0, seed=2)).all()  # no randomness at level 0


def test_same_seed_same_output_and_strength_grows():
    aug = Augmenter(48)
    a, b = aug(striped(), 1.0, seed=7), aug(striped(), 1.0, seed=7)
    assert (a == b).all()
    base = aug(striped(), 0.0, seed=0).astype(float)
    weak = np.mean([np.abs(aug(striped(), 0.1, seed=s).astype(float) - base).mean() for s in range(20)])
    strong = np.mean([np.abs(aug(striped(), 1.0, seed=s).astype(float) - base).mean() for s in range(20)])
    assert strong > weak


def test_never_flips_left_and_right():
    aug = Augmenter(48)
    for seed in range(40):
        out = aug(striped(), 1.0, seed=seed).astype(int)
        left, right = out[:, :8], out[:, -8:]
        # red stays left of blue: more red than blue on the left, more blue than red on the right
        assert (left[..., 0] - left[..., 2]).mean() > (right[..., 0] - right[..., 2]).mean(), seed


def _read_level(level: SharedLevel, out: multiprocessing.Queue) -> None:
    out.put(level.get())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shared_level_reaches_a_worker_process(method):
    if method not in multiprocessing.get_all_start_methods():
        method = multiprocessing.get_start_method()
    level = SharedLevel()
    level.set(0.37)
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    proc = ctx.Process(target=_read_level, args=(level, out))
    proc.start()
    try:
        assert out.get(timeout=60) == pytest.approx(0.37)
    finally:
        proc.join(timeout=60)
