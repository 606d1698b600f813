"""BLEU-1..4, CIDEr-D and ROUGE-L, computed exactly as the COCO caption evaluation does.

Written from the definitions, with the COCO evaluation's conventions (pycocoevalcap) kept
wherever they change a number, so that the scores here can be compared with published ones:

- captions are normalised by `eval.ptb` (the COCO evaluation's PTB tokenizer, in Python);
- BLEU: corpus-level modified n-gram precision with the 'closest' reference length (the
  shorter one on a tie), the brevity penalty, and the 1e-15 / 1e-9 smoothing constants;
  per-image BLEU uses the same formula on one image;
- CIDEr-D: TF-IDF n-gram vectors (n = 1..4) whose document frequencies come from the
  references of the evaluated set, clipped cosine similarity, a Gaussian length penalty
  (sigma 6) on the bigram counts, averaged over n and references, times 10;
- ROUGE-L: LCS-based F-measure with beta 1.2, best precision and best recall over the
  references taken separately.

    >>> from streamcap.eval.metrics import score
    >>> s = score({"1": "A dog runs on the grass."}, {"1": ["A dog running on grass.", "a brown dog runs"]})
    >>> sorted(s)
    ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'CIDEr', 'ROUGE-L']

`score` takes raw captions; `score_tokenized` takes captions already normalised (what
pycocoevalcap's scorers take) and also returns per-image scores.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

from streamcap.eval.ptb import normalize

MAX_N = 4
BLEU_KEYS = tuple(f"BLEU-{n}" for n in range(1, MAX_N + 1))
METRICS = (*BLEU_KEYS, "CIDEr", "ROUGE-L")

CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2
_TINY, _SMALL = 1e-15, 1e-9  # BLEU's smoothing, as in the reference implementation


class ScoringError(ValueError):
    """Candidates and references cannot be scored together; the message says why."""


@dataclass(frozen=True)
class Scores:
    """Corpus scores (`METRICS` -> value) and the same metrics for each image id."""

    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]]


def score(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4, CIDEr (CIDEr-D) and ROUGE-L of raw captions, keyed by image id."""
    return score_captions(candidates, references).corpus


def score_captions(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> Scores:
    """`score` plus per-image scores."""
    return score_tokenized(*normalize_pairs(candidates, references))


def normalize_pairs(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Candidates and references tokenized the way the COCO evaluation does (`eval.ptb`)."""
    return (
        {k: normalize(v) for k, v in candidates.items()},
        {k: [normalize(r) for r in refs] for k, refs in references.items()},
    )


def check_ids(candidates: Mapping[str, object], references: Mapping[str, Sequence[str]]) -> None:
    """Raise ScoringError unless both sides have the same ids and every id has references."""
    missing = sorted(set(candidates) - set(references))
    extra = sorted(set(references) - set(candidates))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) without references: {_shorten(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) without a prediction: {_shorten(extra)}")
        raise ScoringError("; ".join(parts))
    if not candidates:
        raise ScoringError("nothing to score: no captions given")
    empty = sorted(k for k, refs in references.items() if not refs)
    if empty:
        raise ScoringError(f"{len(empty)} id(s) with an empty reference list: {_shorten(empty)}")


def _shorten(ids: list[str], shown: int = 10) -> str:
    more = f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def score_tokenized(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> Scores:
    """Scores of normalised captions (tokens joined by single spaces), as pycocoevalcap takes them.

    BLEU and CIDEr split on any whitespace and ROUGE-L on single spaces, like the reference
    implementation; with `eval.ptb.normalize` output the two agree except on the rare token
    that holds a non-breaking space ("1 1/2").
    """
    check_ids(candidates, references)
    ids = list(candidates)
    cand_counts = {i: ngram_counts(candidates[i].split()) for i in ids}
    ref_counts = {i: [ngram_counts(r.split()) for r in references[i]] for i in ids}
    per_image: dict[str, dict[str, float]] = {i: {} for i in ids}
    corpus = bleu(ids, cand_counts, ref_counts, per_image)
    corpus["CIDEr"] = cider_d(ids, cand_counts, ref_counts, per_image)
    corpus["ROUGE-L"] = rouge_l(ids, candidates, references, per_image)
    return Scores(corpus={k: corpus[k] for k in METRICS}, per_image=per_image)


# --- n-grams ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NgramCounts:
    """Token count and the counts of its 1..4-grams (index n-1) of one caption.

    An n-gram is its tokens joined by spaces: tokens hold no spaces, so this is unambiguous,
    and a str caches its hash where a tuple recomputes it at every lookup.
    """

    length: int
    by_n: tuple[Counter, ...]


def ngram_counts(tokens: Sequence[str]) -> NgramCounts:
    grams, by_n = list(tokens), []
    for n in range(MAX_N):
        if n:
            grams = [g + " " + t for g, t in zip(grams, tokens[n:])]
        by_n.append(Counter(grams))
    return NgramCounts(len(tokens), tuple(by_n))


# --- BLEU ---------------------------------------------------------------------------------------


def bleu(
    ids: list[str],
    cands: Mapping[str, NgramCounts],
    refs: Mapping[str, list[NgramCounts]],
    per_image: dict[str, dict[str, float]],
) -> dict[str, float]:
    """Corpus BLEU-1..4; fills per_image[id]['BLEU-n']."""
    total_correct, total_guess = [0] * MAX_N, [0] * MAX_N
    total_test = total_ref = 0
    for i in ids:
        cand, image_refs = cands[i], refs[i]
        test_len = cand.length
        ref_len = min((abs(r.length - test_len), r.length) for r in image_refs)[1]
        correct = [_clipped_matches(cand.by_n[n], [r.by_n[n] for r in image_refs]) for n in range(MAX_N)]
        guess = [max(0, test_len - n) for n in range(MAX_N)]
        per_image[i].update(zip(BLEU_KEYS, _bleu_from_counts(correct, guess, test_len, ref_len)))
        total_test += test_len
        total_ref += ref_len
        for n in range(MAX_N):
            total_correct[n] += correct[n]
            total_guess[n] += guess[n]
    return dict(zip(BLEU_KEYS, _bleu_from_counts(total_correct, total_guess, total_test, total_ref)))


def _clipped_matches(cand: Counter, refs: list[Counter]) -> int:
    """Candidate n-grams matched, each capped at its largest count in any one reference."""
    matched = 0
    for gram, count in cand.items():
        best = 0
        for ref in refs:
            in_ref = ref.get(gram, 0)
            if in_ref > best:
                best = in_ref
        matched += count if count < best else best
    return matched


def _bleu_from_counts(correct: list[int], guess: list[int], test_len: float, ref_len: float) -> list[float]:
    scores, product = [], 1.0
    for n in range(MAX_N):
        product *= (float(correct[n]) + _TINY) / (float(guess[n]) + _SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


# --- CIDEr-D ------------------------------------------------------------------------------------


def cider_d(
    ids: list[str],
    cands: Mapping[str, NgramCounts],
    refs: Mapping[str, list[NgramCounts]],
    per_image: dict[str, dict[str, float]],
) -> float:
    """Corpus CIDEr-D (mean over images); fills per_image[id]['CIDEr']."""
    doc_freq: Counter = Counter()
    for i in ids:  # in how many images' reference sets each n-gram occurs
        doc_freq.update({gram for r in refs[i] for counts in r.by_n for gram in counts})
    log_images = math.log(float(len(ids)))
    # Document frequencies are small integers: one log per distinct value, then C-level mapping.
    idf_of_df = {df: log_images - math.log(max(1.0, df)) for df in set(doc_freq.values())}
    idf = dict(zip(doc_freq.keys(), map(idf_of_df.__getitem__, doc_freq.values())))
    penalty_scale = 2 * CIDER_SIGMA**2
    total = 0.0
    for i in ids:
        vec, norms, length = _tfidf(cands[i], idf, log_images)
        sims = [0.0] * MAX_N
        for ref in refs[i]:
            ref_vec, ref_norms, ref_length = _tfidf(ref, idf, log_images)
            penalty = math.exp(-(float(length - ref_length) ** 2) / penalty_scale)
            for n in range(MAX_N):
                cand_n, ref_n = vec[n], ref_vec[n]
                dot = 0.0
                for gram in cand_n.keys() & ref_n.keys():  # other n-grams add 0
                    weight, ref_weight = cand_n[gram], ref_n[gram]
                    dot += (weight if weight < ref_weight else ref_weight) * ref_weight  # clipping
                if norms[n] != 0 and ref_norms[n] != 0:
                    dot /= norms[n] * ref_norms[n]
                sims[n] += dot * penalty
        image_score = sum(sims) / MAX_N / len(refs[i]) * 10.0
        per_image[i]["CIDEr"] = image_score
        total += image_score
    return total / len(ids)


def _tfidf(counts: NgramCounts, idf: Mapping[str, float], log_images: float):
    """TF-IDF vector per n, its norms, and the length CIDEr-D's penalty uses.

    That length is the number of bigrams, max(0, tokens - 1), as in the reference implementation;
    length differences are then those of the token counts except against an empty caption.
    """
    vec, norms = [], []
    for grams in counts.by_n:  # weight = tf * idf; an n-gram no reference has gets log(images)
        weights = list(map(operator.mul, grams.values(), map(idf.get, grams, repeat(log_images))))
        vec.append(dict(zip(grams, weights)))
        norms.append(math.hypot(*weights))
    return vec, norms, sum(counts.by_n[1].values())


# --- ROUGE-L ------------------------------------------------------------------------------------


def rouge_l(
    ids: list[str],
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    per_image: dict[str, dict[str, float]],
) -> float:
    """Mean ROUGE-L F-measure over images; fills per_image[id]['ROUGE-L']."""
    beta2 = ROUGE_BETA**2
    total = 0.0
    for i in ids:
        cand = candidates[i].split(" ")
        masks = _position_masks(cand)
        best_prec = best_rec = 0.0
        for ref_text in references[i]:
            ref = ref_text.split(" ")
            lcs = _lcs_length(masks, len(cand), ref)
            best_prec = max(best_prec, lcs / float(len(cand)))
            best_rec = max(best_rec, lcs / float(len(ref)))
        if best_prec != 0 and best_rec != 0:
            f = ((1 + beta2) * best_prec * best_rec) / float(best_rec + beta2 * best_prec)
        else:
            f = 0.0
        per_image[i]["ROUGE-L"] = f
        total += f
    return total / len(ids)


def _position_masks(tokens: list[str]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for pos, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << pos)
    return masks


def _lcs_length(masks: dict[str, int], length: int, other: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro).

    Bit j of `row` is 0 where the LCS grows at token j of the first sequence; one pass of
    integer arithmetic per token of `other` replaces a row of the dynamic program.
    """
    full = (1 << length) - 1
    row = full
    for tok in other:
        match = row & masks.get(tok, 0)
        row = ((row + match) | (row - match)) & full
    return length - bin(row).count("1")
