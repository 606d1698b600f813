"""Augmentation: exponential ramp, level 0 is a plain centre crop, reproducible, no flips,
each batch's level is that of the step that trains on it, and the cheaper noise transform gives
albumentations' GaussNoise images."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest

from streamcap.trainer import augment
from streamcap.trainer.augment import Augmenter, LevelSchedule, build_pipeline, ramp_level
from tests.support.images import photo


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


def test_a_batch_gets_the_level_of_the_step_that_trains_on_it():
    ramp = LevelSchedule(ramp_steps=100, max_level=0.9, grad_accum=3)
    assert [ramp.step_of(i) for i in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert ramp.level(50) == ramp_level(16, 100, 0.9)
    # A loader started by a resumed run numbers its batches from 0 again, at the resumed step.
    resumed = LevelSchedule(ramp_steps=100, max_level=0.9, grad_accum=3, start_step=10)
    assert [resumed.level(i) for i in range(9)] == [ramp.level(30 + i) for i in range(9)]
    assert LevelSchedule(max_level=0.4).level(12345) == 0.4


def run(transform, image: np.ndarray, seed: int) -> np.ndarray:
    pipeline = A.Compose([transform])
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline(image=image)["image"]


@pytest.mark.parametrize("std_range", [(0.0, 0.08), (0.2, 0.44)])
def test_uint8_noise_is_albumentations_gauss_noise(std_range):
    """Same seed, same image: the same noisy pixels (float32 against float64 noise may differ by
    one level where a value sits on an integer boundary, about once in ten million)."""
    image = np.asarray(photo(96, 64, seed=4))
    differ = total = 0
    for seed in range(30):
        ours = run(augment._UInt8GaussNoise(std_range=std_range, p=1.0), image, seed)
        theirs = run(A.GaussNoise(std_range=std_range, p=1.0), image, seed)
        assert ours.dtype == np.uint8 and ours.shape == image.shape
        assert np.abs(ours.astype(int) - theirs).max() <= 1
        differ, total = differ + int((ours != theirs).sum()), total + ours.size
    assert differ <= total * 1e-5
    # and it is noise: zero-mean, of the drawn strength
    noise = run(augment._UInt8GaussNoise(std_range=(0.05, 0.05), p=1.0), image, 0).astype(float) - image
    assert abs(noise.mean()) < 0.5 and noise.std() == pytest.approx(0.05 * 255, rel=0.1)


def test_full_pipeline_matches_the_albumentations_one(monkeypatch):
    """The pipeline at full strength against the same pipeline built with A.GaussNoise."""
    image = np.asarray(photo(120, 90, seed=8))
    ours = build_pipeline(1.0, 48)
    assert isinstance(ours.transforms[-1], augment._UInt8GaussNoise)
    monkeypatch.setattr(augment, "_UInt8GaussNoise", A.GaussNoise)
    theirs = build_pipeline(1.0, 48)
    monkeypatch.setattr(augment, "_UInt8GaussNoise", lambda **_: A.NoOp())
    quiet = build_pipeline(1.0, 48)
    noisy = 0
    for seed in range(40):
        out = []
        for pipeline in (ours, theirs, quiet):
            pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out.append(pipeline(image=image)["image"].astype(int))
        assert np.abs(out[0] - out[1]).max() <= 1 and (out[0] != out[1]).mean() < 1e-3
        noisy += bool((out[0] != out[2]).any())
    assert 4 <= noisy <= 24  # the noise fired on about 30 % of the images


def test_opencv_runs_one_thread_per_process():
    assert cv2.getNumThreads() == 1  # set when trainer.augment is imported, before any worker forks
