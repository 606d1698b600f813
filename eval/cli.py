"""`streamcap eval ...`: score captions, evaluate a checkpoint, watch for new checkpoints.

    streamcap eval score predictions.json references.json [--json]
    streamcap eval run checkpoints/r1/step-001000.pt --data flickr30k/dataset_flickr30k.json [--split test] [--beam 5]
    streamcap eval watch --data flickr30k/dataset_flickr30k.json [--exit-when-empty]

The commands only build EvalSettings and call `eval.service`; nothing here imports torch. Their
options are EvalSettings' fields (`settings_command`): a new setting needs no edit here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamcap.common.commands import JsonFlag, settings_command
from streamcap.eval.config import EvalSettings

eval_app = typer.Typer(
    name="eval",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Caption metrics (BLEU, CIDEr-D, ROUGE-L as the COCO evaluation computes them) and checkpoint evaluation.",
)

# What only the watcher uses: Redis, the queue's end and reclaiming, W&B.
WATCH_ONLY = ("redis_url", "namespace", "exit_when_empty", "reclaim_after_s", "wandb_project", "wandb_mode")


@eval_app.command("score")
@settings_command(EvalSettings, only=("meteor", "log_level"))
def score_command(
    predictions: Annotated[Path, typer.Argument(help='Predictions JSON: {"id": "caption", ...}.')],
    references: Annotated[Path, typer.Argument(help='References JSON: {"id": ["reference", ...], ...}.')],
    cfg: EvalSettings,
    as_json: JsonFlag = False,
) -> int:
    """Score captions against references: BLEU-1..4, CIDEr, ROUGE-L (+ METEOR with Java)."""
    from streamcap.eval.service import run_score

    return run_score(cfg, predictions, references, as_json=as_json)


@eval_app.command("run")
@settings_command(EvalSettings, exclude=("shard_dir", *WATCH_ONLY))
def run_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (.pt) written by the trainer.")],
    cfg: EvalSettings,
    as_json: JsonFlag = False,
) -> int:
    """Evaluate one checkpoint: captions by beam search, scores, predictions and an HTML report."""
    from streamcap.eval.service import run_once

    return run_once(cfg, checkpoint, as_json=as_json)


@eval_app.command("watch")
@settings_command(EvalSettings, exclude=("shard_dir",))
def watch_command(cfg: EvalSettings) -> int:
    """Evaluate every checkpoint the trainer publishes; keep the best one as <out-dir>/best.pt."""
    from streamcap.eval.service import run

    return run(cfg)


def register(app: typer.Typer) -> None:
    """Add the `eval` sub-app to the root CLI."""
    app.add_typer(eval_app, name="eval")
