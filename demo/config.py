"""Settings of `streamcap demo` (the whole pipeline on one machine, no internet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamcap.common.settings import Settings, at_least, between, fail, one_of, setting


@dataclass(frozen=True, kw_only=True)
class DemoSettings(Settings, env_prefix="STREAMCAP_DEMO_"):
    """How big `streamcap demo` runs: rows, evaluation images, steps, checkpoints, seed, folder."""

    workdir: Path = setting(Path("demo-output"), env="STREAMCAP_DEMO_DIR")
    """Where the demo keeps its data, shards, checkpoints and report (run state is reset each run)."""
    rows: int = setting(3000, check=at_least(100))
    """url+caption rows to download and train on."""
    eval_images: int = setting(100, check=at_least(10))
    """Held-out images of the Flickr30K-format evaluation set."""
    steps: int = setting(600, check=at_least(10))
    """Training steps of the tiny model."""
    batch_size: int = setting(32, check=at_least(2))
    """Training batch size."""
    checkpoints: int = setting(3, check=at_least(1))
    """Checkpoints published during training (each is evaluated)."""
    seed: int = setting(0)
    """Seed of the generated world and of training."""

    replay: str = setting("balanced", check=one_of("balanced", "uniform"))
    """The trainer's --replay rule (what a worker replays while fresh shards lag)."""
    download_latency: float = setting(0.1, check=between(0.0, 10.0))
    """Seconds the image server waits before each answer: larger throttles the downloader, so that more of what the
    trainer reads are replays."""

    def validate(self) -> None:
        if self.checkpoints > self.steps:
            fail(self, "checkpoints", f"at most --steps ({self.steps})", self.checkpoints)

    @property
    def checkpoint_every(self) -> int:
        return max(1, self.steps // self.checkpoints)
