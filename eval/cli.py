"""`streamcap eval ...`: score captions, evaluate a checkpoint, watch for new checkpoints.

    streamcap eval score predictions.json references.json [--json]
    streamcap eval run checkpoints/r1/step-001000.pt --data flickr30k/dataset_flickr30k.json [--split test] [--beam 5]
    streamcap eval watch --data flickr30k/dataset_flickr30k.json [--exit-when-empty]

The commands only build EvalSettings and call `eval.service`; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.eval.config import EvalSettings
from streamcap.common.commands import JsonFlag, LogLevel, Namespace, RedisUrl, option
from streamcap.common.settings import build

eval_app = typer.Typer(
    name="eval", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Caption metrics (BLEU, CIDEr-D, ROUGE-L as the COCO evaluation computes them) and checkpoint evaluation.",
)


def _opt(name: str, type_: type = str):
    return Annotated[Optional[type_], option(EvalSettings, name)]


Data = _opt("data", Path)
Images = _opt("images", Path)
Split = _opt("split")
Limit = _opt("limit", int)
Beam = _opt("beam", int)
Alpha = _opt("alpha", float)
MaxTokens = _opt("max_tokens", int)
MinTokens = _opt("min_tokens", int)
NoRepeatNgram = _opt("no_repeat_ngram", int)
BatchSize = _opt("batch_size", int)
Device = _opt("device")
OutDir = _opt("out_dir", Path)
Metric = _opt("metric")
Meteor = _opt("meteor", bool)
Gallery = _opt("gallery", int)
ExitWhenEmpty = _opt("exit_when_empty", bool)
ReclaimAfter = _opt("reclaim_after_s", float)
WandbProject = _opt("wandb_project")
WandbMode = _opt("wandb_mode")


@eval_app.command("score")
def score_command(
    predictions: Annotated[Path, typer.Argument(help='Predictions JSON: {"id": "caption", ...}.')],
    references: Annotated[Path, typer.Argument(help='References JSON: {"id": ["reference", ...], ...}.')],
    meteor: Meteor = None,
    log_level: LogLevel = None,
    as_json: JsonFlag = False,
) -> int:
    """Score captions against references: BLEU-1..4, CIDEr, ROUGE-L (+ METEOR with Java)."""
    from streamcap.eval.service import run_score

    cfg = build(EvalSettings, meteor=meteor, log_level=log_level)
    return run_score(cfg, predictions, references, as_json=as_json)


@eval_app.command("run")
def run_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (.pt) written by the trainer.")],
    data: Data = None, images: Images = None, split: Split = None, limit: Limit = None,
    beam: Beam = None, alpha: Alpha = None, max_tokens: MaxTokens = None, min_tokens: MinTokens = None,
    no_repeat_ngram: NoRepeatNgram = None,
    batch_size: BatchSize = None, device: Device = None, out_dir: OutDir = None, metric: Metric = None,
    meteor: Meteor = None, gallery: Gallery = None, log_level: LogLevel = None, as_json: JsonFlag = False,
) -> int:
    """Evaluate one checkpoint: captions by beam search, scores, predictions and an HTML report."""
    from streamcap.eval.service import run_once

    cfg = build(EvalSettings, data=data, images=images, split=split, limit=limit, beam=beam, alpha=alpha,
                max_tokens=max_tokens, min_tokens=min_tokens,
                no_repeat_ngram=no_repeat_ngram, batch_size=batch_size, device=device,
                out_dir=out_dir, metric=metric, meteor=meteor, gallery=gallery, log_level=log_level)
    return run_once(cfg, checkpoint, as_json=as_json)


@eval_app.command("watch")
def watch_command(
    redis_url: RedisUrl = None, namespace: Namespace = None,
    data: Data = None, images: Images = None, split: Split = None, limit: Limit = None,
    beam: Beam = None, alpha: Alpha = None, max_tokens: MaxTokens = None, min_tokens: MinTokens = None,
    no_repeat_ngram: NoRepeatNgram = None,
    batch_size: BatchSize = None, device: Device = None, out_dir: OutDir = None, metric: Metric = None,
    meteor: Meteor = None, gallery: Gallery = None, exit_when_empty: ExitWhenEmpty = None,
    reclaim_after_s: ReclaimAfter = None, wandb_project: WandbProject = None, wandb_mode: WandbMode = None,
    log_level: LogLevel = None,
) -> int:
    """Evaluate every checkpoint the trainer publishes; keep the best one as <out-dir>/best.pt."""
    from streamcap.eval.service import run

    cfg = build(EvalSettings, redis_url=redis_url, namespace=namespace, data=data, images=images, split=split,
                limit=limit, beam=beam, alpha=alpha, max_tokens=max_tokens, min_tokens=min_tokens,
                no_repeat_ngram=no_repeat_ngram,
                batch_size=batch_size, device=device, out_dir=out_dir, metric=metric, meteor=meteor,
                gallery=gallery, exit_when_empty=exit_when_empty, reclaim_after_s=reclaim_after_s,
                wandb_project=wandb_project, wandb_mode=wandb_mode, log_level=log_level)
    return run(cfg)


def register(app: typer.Typer) -> None:
    """Add the `eval` sub-app to the root CLI."""
    app.add_typer(eval_app, name="eval")
