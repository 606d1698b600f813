"""Settings of `streamcap demo` (the whole pipeline on one machine, no internet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamcap.common.settings import Settings, between, fail, one_of, setting

# Upper bounds: the demo runs the whole pipeline on one machine, in minutes at the defaults; these
# are about an hour or more of it.
MAX_ROWS = 100_000
MAX_EVAL_IMAGES = 10_000
MAX_STEPS = 100_000
MAX_BATCH_SIZE = 1024
MAX_CHECKPOINTS = 100  # each one is evaluated


@dataclass(frozen=True, kw_only=True)
class DemoSettings(Settings, env_prefix="STREAMCAP_DEMO_"):
    """How big `streamcap demo` runs: rows, evaluation images, steps, checkpoints, seed, folder."""

    workdir: Path = setting(Path("demo-output"), env="STREAMCAP_DEMO_DIR")
    """Where the demo keeps its data, shards, checkpoints and report (run state is reset each run)."""
    rows: int = setting(3000, check=between(100, MAX_ROWS))
    """url+caption rows to download and train on."""
    eval_images: int = setting(100, check=between(10, MAX_EVAL_IMAGES))
    """Held-out images of the Flickr30K-format evaluation set."""
    steps: int = setting(600, check=between(10, MAX_STEPS))
    """Training steps of the tiny model."""
    batch_size: int = setting(32, check=between(2, MAX_BATCH_SIZE))
    """Training batch size."""
    checkpoints: int = setting(3, check=between(1, MAX_CHECKPOINTS))
    """Checkpoints published during training (each is evaluated)."""
    seed: int = setting(0)
    """Seed of the generated world and of training."""
    s3: bool = setting(False)
    """Shards in a bucket of a SeaweedFS S3 server the demo starts on 127.0.0.1 (`weed`, from the dev extra), not in a
    folder: the downloader uploads through a spool, the trainer reads through a shard cache."""

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
