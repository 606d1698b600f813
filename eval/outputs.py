"""What an evaluation leaves behind, and where.

    <out-dir>/results.jsonl                     one EvalResult per line (`eval run` and `eval watch`)
    <out-dir>/metrics.png                       each metric over training steps, one line per run
    <out-dir>/best.pt, best.json                the best checkpoint by --metric (a hard link or copy)
    <out-dir>/<run>/step-<step>/predictions.json   {"image id": "caption"}
    <out-dir>/<run>/step-<step>/references.json    {"image id": ["reference", ...]} (for `eval score`)
    <out-dir>/<run>/step-<step>/scores.json        corpus and per-image scores
    <out-dir>/<run>/step-<step>/report.html        metrics table and gallery, self-contained

The same EvalResult dict is the payload of the `evals` stream entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcap.common.files import atomic_write_text, fsync_dir

RESULTS_FILE = "results.jsonl"
PLOT_FILE = "metrics.png"
BEST_CHECKPOINT = "best.pt"
BEST_INFO = "best.json"


@dataclass
class EvalResult:
    """One evaluated (or failed) checkpoint."""

    checkpoint: str
    step: int
    run: str
    status: str = "ok"  # ok | failed
    error: str = ""  # why, when failed
    dataset: str = ""  # e.g. dataset_flickr30k.json:test
    images: int = 0
    scores: dict[str, float] = field(default_factory=dict)  # BLEU-1..4, CIDEr, ROUGE-L (+ METEOR)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason (SPICE, METEOR)
    metric: str = "CIDEr"  # what "best" is judged by
    empty_share: float = 0.0  # share of images captioned with nothing (see `may_be_best`)
    settings: dict[str, Any] = field(default_factory=dict)  # beam, alpha, max_tokens, ...
    seconds: float = 0.0
    created: float = 0.0
    report: str = ""
    predictions: str = ""
    entry: str = ""  # id of the `checkpoints` stream entry, when watched
    evaluator: str = ""

    @property
    def value(self) -> float | None:
        return self.scores.get(self.metric)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# A checkpoint whose captions are mostly empty is never kept as best, whatever its score: on a
# young model (or a broken one) CIDEr can rank it first while it says nothing. Beam search already
# refuses empty captions (`streamcap.model.decoding`), so a share above this means the model emits
# nothing but special tokens: a model to look at, not to ship.
MAX_EMPTY_SHARE_FOR_BEST = 0.5


def empty_share(predictions: dict[str, str]) -> float:
    """The share of captions that are empty (or only whitespace)."""
    return sum(1 for caption in predictions.values() if not caption.strip()) / len(predictions) if predictions else 0.0


def may_be_best(result: EvalResult) -> bool:
    """Whether a result may become the best: evaluated, scored, and not mostly empty captions."""
    return result.status == "ok" and result.value is not None and result.empty_share <= MAX_EMPTY_SHARE_FOR_BEST


def evaluation_dir(out_dir: Path, run: str, step: int) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "-", run) or "unnamed"
    return out_dir / safe_run / f"step-{step:09d}"


def append_result(out_dir: Path, result: EvalResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / RESULTS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(out_dir: Path) -> list[EvalResult]:
    """Successful results, one per (run, step): the last line wins (a re-evaluation after a crash)."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], EvalResult] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            result = EvalResult.from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by a crash
        if result.status == "ok":
            latest[(result.run, result.step)] = result
    return sorted(latest.values(), key=lambda r: (r.run, r.step))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False)
    atomic_write_text(path, text)


def keep_best(out_dir: Path, result: EvalResult) -> Path:
    """Make <out-dir>/best.pt this result's checkpoint: a hard link (same file system) or a copy.

    A link, not a symlink: the trainer may delete old checkpoints, the best one must survive.
    """
    target = out_dir / BEST_CHECKPOINT
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{BEST_CHECKPOINT}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    # A link is not written content, so not `atomic_writer`: the same rename, with the same cleanup.
    try:
        try:
            os.link(result.checkpoint, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(result.checkpoint, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    write_json(out_dir / BEST_INFO, result.to_json())
    return target
