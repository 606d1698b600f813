"""Evaluation scores to Weights & Biases: one W&B run per training run, logged at its step.

    logger = WandbLogger(cfg)      # nothing happens until the first result
    logger.log(result)             # eval/BLEU-4, eval/CIDEr, ... at step result.step
    logger.close()

Mode: `--wandb-mode auto` is online when an API key is configured, offline otherwise (sync
later with `wandb sync`); WANDB_MODE in the environment wins (the tests set `disabled`).
"""

from __future__ import annotations

import logging
from typing import Any

from streamcap.common.wandb_mode import resolve_wandb_mode
from streamcap.eval.config import EvalSettings
from streamcap.eval.outputs import EvalResult

log = logging.getLogger(__name__)


class WandbLogger:
    def __init__(self, cfg: EvalSettings) -> None:
        self.cfg = cfg
        self.mode = resolve_wandb_mode(cfg.wandb_mode)
        self.runs: dict[str, Any] = {}

    def log(self, result: EvalResult) -> None:
        if self.mode == "disabled" or result.status != "ok":
            return
        try:
            run = self.runs.get(result.run) or self._start(result.run)
            scores = {f"eval/{name}": value for name, value in result.scores.items()}
            run.log(scores | {"eval/empty_share": result.empty_share}, step=result.step)
        except Exception as e:  # W&B trouble must never stop the evaluator
            log.warning("W&B logging failed: %s", e)

    def _start(self, training_run: str) -> Any:
        import wandb

        self.cfg.out_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.cfg.wandb_project,
            id=f"{training_run}-eval",
            name=f"{training_run} eval",
            job_type="eval",
            resume="allow",
            mode=self.mode,
            dir=str(self.cfg.out_dir),
            reinit="create_new",
            config={
                "evalset": str(self.cfg.data),
                "split": self.cfg.split,
                "beam": self.cfg.beam,
                "metric": self.cfg.metric,
            },
        )
        log.info("Weights & Biases run %s-eval (%s mode)", training_run, self.mode)
        self.runs[training_run] = run
        return run

    def close(self) -> None:
        for run in self.runs.values():
            try:
                run.finish()
            except Exception as e:
                log.warning("W&B finish failed: %s", e)
        self.runs.clear()
