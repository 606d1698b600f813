"""The evaluator's entry points, one per command; each returns the exit code.

    run(cfg)                                   # eval watch: the long-running service
    run_once(cfg, Path("step-001000.pt"))      # eval run: one checkpoint
    run_score(cfg, Path("pred.json"), Path("refs.json"))   # eval score: any captions

Bad input (a malformed set, a missing image, mismatched ids, a damaged checkpoint) is one line
on stderr and exit code 1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamcap.common.commands import error, print_json
from streamcap.common.logs import instance_id, setup_logging
from streamcap.common.progress import Progress
from streamcap.common.settings import to_json_text
from streamcap.eval.config import EvalSettings
from streamcap.eval.datasets import EvalSetError, load_eval_set
from streamcap.eval.external import java_metrics
from streamcap.eval.metrics import ScoringError, normalize_pairs, score_tokenized

log = logging.getLogger(__name__)


def run(cfg: EvalSettings) -> int:
    """`eval watch`: evaluate each published checkpoint until stopped (or idle, in burst mode)."""
    from streamcap import bus

    setup_logging("evaluator", cfg.log_level)
    shown = {k: v for k, v in json.loads(to_json_text(cfg)).items() if k != "redis_url"}  # may hold a password
    log.info("settings: %s", json.dumps(shown, sort_keys=True))
    r = bus.connect(cfg.require_redis(), keys=bus.Keys(cfg.namespace), who=f"evaluator {instance_id()}")
    try:
        evalset = load_eval_set(cfg.require_data(), split=cfg.split, image_dir=cfg.images, limit=cfg.limit)
    except EvalSetError as e:
        error(str(e))
        return 1
    from streamcap.eval.captioner import pick_device
    from streamcap.eval.watcher import Watcher

    watcher = Watcher(cfg, r, evalset, pick_device(cfg))
    watcher.install_signal_handlers()
    return watcher.run()


def run_once(cfg: EvalSettings, checkpoint: Path, *, as_json: bool = False) -> int:
    """`eval run`: evaluate one checkpoint file, print its scores, write predictions and report."""
    setup_logging("evaluator", cfg.log_level)
    try:  # a wrong set is reported before torch is even imported
        evalset = load_eval_set(cfg.require_data(), split=cfg.split, image_dir=cfg.images, limit=cfg.limit)
    except EvalSetError as e:
        error(str(e))
        return 1
    from streamcap.eval.captioner import pick_device
    from streamcap.eval.evaluate import evaluate_checkpoint
    from streamcap.model.checkpoint import CheckpointError

    try:
        with Progress("eval", unit="images", total=len(evalset), every=cfg.progress_every) as progress:
            result = evaluate_checkpoint(
                cfg,
                checkpoint,
                evalset,
                pick_device(cfg),
                on_stage=lambda stage, done, total: progress.update(done, total=total, note=stage),
            )
            progress.update(len(evalset), note="done")
    except (EvalSetError, CheckpointError) as e:
        error(str(e))
        return 1
    if as_json:
        print_json(result.to_json())
    else:
        _print_table(result.scores, result.skipped, sys.stdout)
        sys.stdout.write(f"predictions: {result.predictions}\nreport: {result.report}\n")
    return 0


def run_score(cfg: EvalSettings, predictions_path: Path, references_path: Path, *, as_json: bool = False) -> int:
    """`eval score`: BLEU/CIDEr/ROUGE-L (and METEOR where possible) of a predictions file."""
    try:
        predictions = _read_captions(predictions_path, list_values=False)
        references = _read_captions(references_path, list_values=True)
        tokenized_preds, tokenized_refs = normalize_pairs(predictions, references)
        scores = score_tokenized(tokenized_preds, tokenized_refs)
    except (ScoringError, ValueError) as e:
        error(str(e))
        return 1
    extra = java_metrics(tokenized_preds, tokenized_refs, meteor=cfg.meteor)
    corpus = {**scores.corpus, **extra.scores}
    if as_json:
        print_json({"images": len(predictions), "scores": corpus, "skipped": extra.skipped})
    else:
        _print_table(corpus, extra.skipped, sys.stdout)
    return 0


def _read_captions(path: Path, *, list_values: bool) -> dict[str, Any]:
    """{"id": "caption"} (predictions) or {"id": ["ref", ...]} (references), checked."""
    kind = "references" if list_values else "predictions"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read {kind} ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {kind} are not valid JSON ({e})") from None
    expected = '{"id": ["reference", ...]}' if list_values else '{"id": "caption"}'
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {kind} as {expected}, got a JSON {type(data).__name__}")
    for key, value in data.items():
        ok = (
            (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if list_values
            else isinstance(value, str)
        )
        if not ok:
            raise ValueError(f"{path}: {kind} of id {key!r} is not as {expected}")
    return data


def _print_table(scores: dict[str, float], skipped: dict[str, str], out) -> None:
    width = max(len(k) for k in (*scores, *skipped))
    for name, value in scores.items():
        out.write(f"{name:<{width}}  {value:.4f}\n")
    for name, reason in skipped.items():
        out.write(f"{name:<{width}}  skipped: {reason}\n")
