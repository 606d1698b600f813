"""Evaluator settings: one frozen dataclass, defaults < STREAMCAP_* variables < CLI flags.

    cfg = EvalSettings(data=Path("flickr30k/dataset_flickr30k.json"), split="test", beam=5)
    cfg = EvalSettings(redis_url="redis://localhost:6379/0", data=Path("f30k.json"), exit_when_empty=True)

Imports no torch: `streamcap --help` loads this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamcap.common.settings import (
    DEVICES,
    CommonSettings,
    ProgressSettings,
    at_least,
    between,
    directory_path,
    fail,
    one_of,
    optional,
    setting,
)
from streamcap.common.wandb_mode import WANDB_MODES
from streamcap.eval.metrics import METRICS
from streamcap.model.config import MAX_LEN

# Upper bounds of the counts and sizes, past which a value is a slip rather than a plan.
MAX_BEAM = 64  # hypotheses kept per image; quality stops improving long before
MAX_BATCH_SIZE = 1024  # images per batch, each with --beam hypotheses on the device
MAX_GALLERY = 1000  # images embedded in one HTML report


@dataclass(frozen=True, kw_only=True)
class EvalSettings(CommonSettings, ProgressSettings, env_prefix="STREAMCAP_EVAL_"):
    """Everything `streamcap eval score|run|watch` accept."""

    # --- the evaluation set ---
    data: Path | None = setting(None)
    """Evaluation set: a Karpathy-split json (dataset_flickr30k.json) or a jsonl of {"image": path, "references":
    [...]}."""
    images: Path | None = setting(None)
    """Directory the set's image paths are relative to (default: the data file's directory)."""
    split: str = setting("test")
    """Split of a Karpathy json to evaluate: test, val, train or restval."""
    limit: int | None = setting(None, check=optional(at_least(1)))
    """Evaluate only the first N images of the split (quick checks)."""
    # --- decoding ---
    beam: int = setting(5, check=between(1, MAX_BEAM))
    """Beam size (1: greedy-like beam search)."""
    alpha: float = setting(0.6, check=between(0, 5))
    """Length normalisation of beam search: ((5+|Y|)/6)^alpha."""
    max_tokens: int = setting(30, check=between(1, MAX_LEN))
    """Longest caption generated, in tokens (capped by the model's max_len)."""
    min_tokens: int = setting(0, check=between(0, MAX_LEN))
    """Shortest caption generated, in tokens (EOS is forbidden before)."""
    no_repeat_ngram: int = setting(0, check=between(0, MAX_LEN))
    """Forbid repeating any n-gram of this size (0: off)."""
    batch_size: int = setting(32, check=between(1, MAX_BATCH_SIZE))
    """Images per beam-search batch."""
    device: str = setting("auto", check=one_of(*DEVICES))
    """cuda when available under auto."""
    # --- outputs ---
    out_dir: Path = setting(Path("evals"), check=directory_path, env="STREAMCAP_EVAL_DIR")
    """Predictions, HTML reports, results.jsonl, the metric plot and `best` go here."""
    metric: str = setting("CIDEr", check=one_of(*METRICS))
    """Metric that decides the best checkpoint."""
    meteor: bool = setting(True, flag="--meteor/--no-meteor")
    """Also compute METEOR with pycocoevalcap's Java scorer when java is installed."""
    gallery: int = setting(24, check=between(0, MAX_GALLERY))
    """Images in the report's gallery: half the best, half the worst by CIDEr."""
    # --- the watcher ---
    exit_when_empty: bool = setting(False)
    """eval watch: exit once no checkpoint is waiting (burst mode)."""
    reclaim_after_s: float = setting(120.0, check=at_least(1))
    """eval watch: take over a checkpoint whose evaluator stopped refreshing it this long ago."""
    wandb_project: str = setting("streamcap", env="STREAMCAP_WANDB_PROJECT")
    """Weights & Biases project."""
    wandb_mode: str = setting("auto", check=one_of(*WANDB_MODES), env="STREAMCAP_WANDB_MODE")
    """auto: online with an API key, offline without; WANDB_MODE=disabled turns it off."""

    def validate(self) -> None:
        if self.min_tokens > self.max_tokens:
            fail(self, "min_tokens", f"at most --max-tokens ({self.max_tokens})", self.min_tokens)
        if not self.split:
            fail(self, "split", "a split name such as test or val", self.split)

    def require_data(self) -> Path:
        """The evaluation set path, or a one-line error saying how to give one."""
        if self.data is None:
            fail(self, "data", "an evaluation set (Karpathy json or jsonl)", None)
        if not self.data.is_file():  # type: ignore[union-attr]
            fail(self, "data", "an existing file", str(self.data))
        return self.data  # type: ignore[return-value]
