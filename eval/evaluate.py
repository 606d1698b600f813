"""Evaluate one checkpoint on one evaluation set: captions, scores, files, report.

    evalset = load_eval_set(cfg.require_data(), split=cfg.split, image_dir=cfg.images, limit=cfg.limit)
    result = evaluate_checkpoint(cfg, Path("checkpoints/r1/step-001000.pt"), evalset, device)
    result.scores["CIDEr"], result.report

Used by `streamcap eval run` (once) and by the watcher (per published checkpoint). Writes the
files listed in `eval.outputs` except `best`, which only the watcher keeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from streamcap.eval.config import EvalSettings
from streamcap.eval.datasets import EvalSet
from streamcap.eval.external import java_metrics
from streamcap.eval.metrics import normalize_pairs, score_tokenized
from streamcap.eval.outputs import (
    PLOT_FILE,
    EvalResult,
    append_result,
    empty_share,
    evaluation_dir,
    read_results,
    write_json,
)
from streamcap.eval.report import plot_history, write_report

log = logging.getLogger(__name__)

# Called with a stage name ("loading", "captioning", "scoring", "writing") and, while
# captioning, the images done and the total.
StageCallback = Callable[[str, int, int], None]


def evaluate_checkpoint(
    cfg: EvalSettings,
    checkpoint: Path,
    evalset: EvalSet,
    device,
    *,
    step: int | None = None,
    run: str | None = None,
    entry: str = "",
    evaluator: str = "",
    on_stage: StageCallback | None = None,
) -> EvalResult:
    """Caption every image with beam search, score, write predictions, scores and the report.

    `step`/`run` default to the checkpoint's own; the watcher passes the published ones.
    Raises CheckpointError / EvalSetError (one-line messages) when it cannot evaluate.
    """
    from streamcap.eval.captioner import caption_set
    from streamcap.model.checkpoint import load_checkpoint

    stage = on_stage or (lambda name, done, total: None)
    started = time.time()
    stage("loading", 0, len(evalset))
    ckpt = load_checkpoint(checkpoint, map_location=device)
    step = ckpt.step if step is None else step
    run = run or ckpt.run or "unnamed"
    log.info(
        "evaluating %s (run %s, step %d) on %s: %d images, beam %d, %s",
        checkpoint,
        run,
        step,
        evalset.name,
        len(evalset),
        cfg.beam,
        device,
    )
    predictions = caption_set(ckpt, evalset, cfg, device, on_batch=lambda done, total: stage("captioning", done, total))
    del ckpt  # free GPU memory before scoring

    stage("scoring", len(evalset), len(evalset))
    result = EvalResult(
        checkpoint=str(checkpoint),
        step=step,
        run=run,
        dataset=evalset.name,
        images=len(evalset),
        metric=cfg.metric,
        entry=entry,
        evaluator=evaluator,
        created=time.time(),
        empty_share=round(empty_share(predictions), 4),
        settings={
            "beam": cfg.beam,
            "alpha": cfg.alpha,
            "max_tokens": cfg.max_tokens,
            "min_tokens": cfg.min_tokens,
            "no_repeat_ngram": cfg.no_repeat_ngram,
            "device": str(device),
        },
    )
    per_image = _score(cfg, result, predictions, evalset.references)
    result.seconds = round(time.time() - started, 2)

    stage("writing", len(evalset), len(evalset))
    write_outputs(cfg, result, evalset, predictions, per_image)
    log.info("%s step %d: %s, empty captions %.1f%%", run, step, format_scores(result.scores), 100 * result.empty_share)
    return result


def _score(
    cfg: EvalSettings, result: EvalResult, predictions: dict[str, str], references: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    tokenized_preds, tokenized_refs = normalize_pairs(predictions, references)
    scores = score_tokenized(tokenized_preds, tokenized_refs)
    extra = java_metrics(tokenized_preds, tokenized_refs, meteor=cfg.meteor)
    result.scores = {**scores.corpus, **extra.scores}
    result.skipped = extra.skipped
    return scores.per_image


def write_outputs(
    cfg: EvalSettings,
    result: EvalResult,
    evalset: EvalSet,
    predictions: dict[str, str],
    per_image: dict[str, dict[str, float]],
) -> None:
    """predictions.json, references.json, scores.json, a results.jsonl line, the plot and report.html."""
    folder = evaluation_dir(cfg.out_dir, result.run, result.step)
    result.predictions = str(folder / "predictions.json")
    result.report = str(folder / "report.html")
    write_json(folder / "predictions.json", predictions)
    write_json(folder / "references.json", evalset.references)  # `eval score` can redo the numbers
    write_json(folder / "scores.json", {"corpus": result.scores, "skipped": result.skipped, "per_image": per_image})
    append_result(cfg.out_dir, result)
    plot = plot_history(read_results(cfg.out_dir), cfg.out_dir / PLOT_FILE)
    write_report(Path(result.report), result, evalset, predictions, per_image, gallery=cfg.gallery, plot=plot)


def format_scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
