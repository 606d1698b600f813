"""Training augmentation (albumentations 2.x) whose strength ramps up with the step.

    level = ramp_level(step, ramp_steps=10_000, max_level=1.0)   # 0 at step 0, max at the end
    schedule = LevelSchedule(ramp_steps=10_000, max_level=1.0, grad_accum=2, start_step=40)
    schedule.level(batch_index)                                   # the level of the step that trains on it
    augment = Augmenter(image_size=224)
    out = augment(image_hwc_uint8, level, seed=1234)              # image_size x image_size x 3 uint8

The pipeline: random resized crop, small rotation, colour jitter, blur and noise. No flips:
captions say "left" and "right". At level 0 it is a plain centre crop at full scale (what the
evaluator sees); every range and probability grows linearly with the level.

A loader worker computes the level of each batch it builds from the optimizer step that will
train on that batch (`LevelSchedule`), not from state shared with the training process: workers
build batches ahead, so a shared level lagged a few steps in a running job and not in a resumed
one, and a resumed run diverged from an uninterrupted one at its first step.
Pipelines are cached per level rounded to 1/LEVEL_STEPS, so a ramp rebuilds them a few dozen
times, not every step.

The pipeline crops and resizes first, so every later op works on the training-size image. Gaussian
noise is `GaussNoise` made cheaper (`_UInt8GaussNoise`): the same draws from OpenCV's generator, the
same truncation towards zero and clipping as albumentations 2.x applies to uint8 images (the
outputs are identical to within one pixel value in ~10^7), without the float64 buffer, the float
copies of the image and the clip passes around them: 1.4-1.8 ms instead of 3-3.9 ms per noisy
384 px image, one thread.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home from a worker
import albumentations as A
import cv2

# OpenCV runs its ops on a pool of one thread per core, in every process: N loader workers would
# each spin up a pool as wide as the machine (oversubscribed, and busy-waiting between ops). One
# thread per worker, set here, at import, before any DataLoader forks: cv2.setNumThreads() called in
# a forked worker can hang on the pool state it inherited from a parent that had used it.
cv2.setNumThreads(1)

LEVEL_STEPS = 50
RAMP_SHARPNESS = 4.0  # level grows like exp(4 t): slow start, most of the strength late


def ramp_level(step: int, ramp_steps: int, max_level: float) -> float:
    """Exponential ramp from 0 (step 0) to `max_level` (step >= ramp_steps)."""
    if max_level <= 0:
        return 0.0
    if ramp_steps <= 0 or step >= ramp_steps:
        return max_level
    t = max(step, 0) / ramp_steps
    return max_level * (math.exp(RAMP_SHARPNESS * t) - 1) / (math.exp(RAMP_SHARPNESS) - 1)


@dataclass(frozen=True)
class LevelSchedule:
    """The augmentation level of each batch a rank's loader makes, numbered from 0 in the order
    the training loop takes them (the DataLoader hands them over worker by worker, round robin)."""

    ramp_steps: int = 0
    max_level: float = 0.0  # with ramp_steps 0: this level for every batch
    grad_accum: int = 1
    start_step: int = 0  # the step the loader's first batch trains (a resumed run's step)

    def step_of(self, batch_index: int) -> int:
        return self.start_step + batch_index // self.grad_accum

    def level(self, batch_index: int) -> float:
        return ramp_level(self.step_of(batch_index), self.ramp_steps, self.max_level)


class _UInt8GaussNoise(A.GaussNoise):
    """A.GaussNoise (per-channel, full-scale noise) for uint8 images, in two OpenCV passes.

    albumentations draws float noise with cv2.randn (seeded from the transform's generator),
    truncates it towards zero and adds it to the image with clipping; this draws the same numbers
    into float32, truncates by casting to int16, and adds with saturation. Other inputs: as GaussNoise.
    """

    def _plain(self, image: np.ndarray) -> bool:
        return image.dtype != np.uint8 or image.ndim != 3 or not self.per_channel or self.noise_scale_factor != 1

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image = data.get("image")
        if image is None or self._plain(image):
            return super().get_params_dependent_on_data(params, data)
        sigma = self.py_random.uniform(*self.std_range)  # the draws GaussNoise makes, in its order
        mean = self.py_random.uniform(*self.mean_range)
        cv2.setRNGSeed(int(self.random_generator.integers(0, 2**16)))
        channels = image.shape[2]
        noise = np.empty(image.shape, np.float32)
        cv2.randn(noise, np.full(channels, 255.0 * mean), np.full(channels, 255.0 * sigma))
        return {"noise_map": noise.astype(np.int16)}  # C cast: truncates towards zero, as albucore does

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params) -> np.ndarray:
        if noise_map.dtype == np.int16:
            return cv2.add(img, noise_map, dtype=cv2.CV_8U)  # saturates to [0, 255]
        return super().apply(img, noise_map, **params)


def build_pipeline(level: float, image_size: int) -> A.Compose:
    """The augmentation at strength `level` in [0, 1], ending at image_size x image_size."""
    size = (image_size, image_size)
    lv = min(max(level, 0.0), 1.0)
    transforms: list = [
        A.RandomResizedCrop(
            size=size, scale=(1.0 - 0.6 * lv, 1.0), ratio=(1.0 - 0.25 * lv, 1.0 + 0.33 * lv), area_for_downscale="image"
        ),
    ]
    if lv > 0:
        transforms += [
            A.Affine(rotate=(-10 * lv, 10 * lv), border_mode=cv2.BORDER_REFLECT_101, p=0.5 * lv),
            A.ColorJitter(brightness=0.4 * lv, contrast=0.4 * lv, saturation=0.4 * lv, hue=0.05 * lv, p=0.8 * lv),
            A.GaussianBlur(sigma_limit=(0.1, 0.1 + 1.9 * lv), p=0.3 * lv),
            _UInt8GaussNoise(std_range=(0.0, 0.08 * lv), p=0.3 * lv),
        ]
    return A.Compose(transforms)


class Augmenter:
    """Applies the pipeline of the current level with a per-sample seed (reproducible)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._pipelines: dict[int, A.Compose] = {}

    def pipeline(self, level: float) -> A.Compose:
        rounded = round(min(max(level, 0.0), 1.0) * LEVEL_STEPS)
        if rounded not in self._pipelines:
            self._pipelines[rounded] = build_pipeline(rounded / LEVEL_STEPS, self.image_size)
        return self._pipelines[rounded]

    def __call__(self, image: np.ndarray, level: float, seed: int) -> np.ndarray:
        pipeline = self.pipeline(level)
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return pipeline(image=image)["image"]
