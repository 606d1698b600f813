"""pycocoevalcap, the reference our metrics are held to, called the way COCO evaluation calls
it; shared by `benchmarks/metrics.py` and the parity tests (tests/unit/test_metrics.py)."""

from __future__ import annotations

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from streamcap.eval.metrics import BLEU_KEYS, METRICS


def reference_scores(candidates: dict[str, str], references: dict[str, list[str]]):
    """pycocoevalcap's numbers for tokenized captions: (corpus dict, per-image dict of dicts)."""
    res = {k: [v] for k, v in candidates.items()}
    bleu, bleu_images = Bleu(4).compute_score(references, res, verbose=0)
    cider, cider_images = Cider().compute_score(references, res)
    rouge, rouge_images = Rouge().compute_score(references, res)
    corpus = dict(zip(BLEU_KEYS, bleu)) | {"CIDEr": float(cider), "ROUGE-L": float(rouge)}
    columns = dict(zip(BLEU_KEYS, bleu_images)) | {"CIDEr": cider_images, "ROUGE-L": rouge_images}
    per_image = {k: {m: float(columns[m][j]) for m in METRICS} for j, k in enumerate(candidates)}
    return corpus, per_image
