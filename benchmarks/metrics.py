"""Caption metrics: eval.metrics vs pycocoevalcap's scorers on identical tokens.

    .venv/bin/python benchmarks/metrics.py                 # 5,000 images x 5 references
    .venv/bin/python benchmarks/metrics.py --images 1000 --repeat 3

Both sides get the same normalised captions (tokens joined by spaces), so only scoring is
timed: pycocoevalcap's Bleu(4) + Cider + Rouge against `eval.metrics.score_tokenized`, which
computes the same six numbers plus per-image scores. Prints CPU seconds per side (best of
--repeat), the speed ratio (goal: >= 2x) and the largest relative difference of any corpus or
per-image value; exits 1 if any value differs by more than 1e-6 relative.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_metrics import reference_scores
from streamcap.eval.metrics import METRICS, score_tokenized

# A caption-like vocabulary: frequent function words and a Zipf-ish tail of content words.
FUNCTION_WORDS = "a the in on of with and is are at an to while near two his her their".split()
CONTENT_WORDS = [f"w{k}" for k in range(2_000)]


def make_caption(r: random.Random) -> str:
    words = []
    for _ in range(r.randint(6, 16)):
        if r.random() < 0.4:
            words.append(r.choice(FUNCTION_WORDS))
        else:
            words.append(CONTENT_WORDS[min(int(r.paretovariate(1.1)) - 1, len(CONTENT_WORDS) - 1)])
    return " ".join(words)


def make_set(images: int, refs: int, seed: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    r = random.Random(seed)
    references = {str(i): [make_caption(r) for _ in range(refs)] for i in range(images)}
    candidates = {}
    for i, image_refs in references.items():  # candidates share some words with their references
        base = r.choice(image_refs).split()
        candidates[i] = " ".join(w if r.random() < 0.6 else make_caption(r).split()[0] for w in base)
    return candidates, references


def timed(fn, repeat: int):
    """Best CPU time of `repeat` runs: both sides are single-threaded, and CPU time is what
    other processes on a shared machine disturb least."""
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def max_relative_difference(a: dict[str, float], b: dict[str, float]) -> float:
    worst = 0.0
    for k in a:
        if a[k] != b[k]:
            worst = max(worst, abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k])))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    candidates, references = make_set(args.images, args.refs, args.seed)
    theirs_s, (theirs, theirs_images) = timed(lambda: reference_scores(candidates, references), args.repeat)
    ours_s, ours = timed(lambda: score_tokenized(candidates, references), args.repeat)

    print(f"{args.images} images x {args.refs} references, identical tokens, best of {args.repeat}")
    print(f"{'metric':<8} {'pycocoevalcap':>14} {'eval.metrics':>14}")
    for m in METRICS:
        print(f"{m:<8} {theirs[m]:>14.10f} {ours.corpus[m]:>14.10f}")
    corpus_diff = max_relative_difference(theirs, ours.corpus)
    image_diff = max(max_relative_difference(theirs_images[k], ours.per_image[k]) for k in candidates)
    print(f"max relative difference: corpus {corpus_diff:.1e}, per image {image_diff:.1e}")
    print(f"pycocoevalcap (Bleu+Cider+Rouge): {theirs_s:.2f} s CPU")
    print(f"eval.metrics  (all six + per image): {ours_s:.2f} s CPU")
    print(f"ratio: {theirs_s / ours_s:.2f}x faster (goal >= 2x)")
    return 0 if max(corpus_diff, image_diff) <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
