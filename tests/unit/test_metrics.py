"""eval.metrics against hand-checked numbers and against pycocoevalcap's own scorers.

Parity: identical tokenized captions go to both; every corpus and per-image value must agree
to 1e-6 relative. Cases: generated sets plus the edge cases the COCO evaluation is known to
be touchy about (a candidate equal to a reference, no overlap, one word, very long, repeated
words, an empty candidate, a single-image set).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from pycocoevalcap.rouge.rouge import my_lcs

from benchmarks.reference_metrics import reference_scores
from streamcap.eval.metrics import (
    METRICS,
    ScoringError,
    _lcs_length,
    _position_masks,
    score,
    score_captions,
    score_tokenized,
)

REL_TOL = 1e-6
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptb" / "expected.json"
VOCAB = "a the man woman dog runs on grass red blue shirt with in street two of is are sits".split()


def assert_parity(candidates: dict[str, str], references: dict[str, list[str]]) -> None:
    want_corpus, want_images = reference_scores(candidates, references)
    got = score_tokenized(candidates, references)
    for m in METRICS:
        assert math.isclose(got.corpus[m], want_corpus[m], rel_tol=REL_TOL), (m, got.corpus[m], want_corpus[m])
    for k in candidates:
        for m in METRICS:
            assert math.isclose(got.per_image[k][m], want_images[k][m], rel_tol=REL_TOL), (k, m)


def caption(r: random.Random, n: int | None = None) -> str:
    return " ".join(r.choice(VOCAB) for _ in range(n if n is not None else r.randint(1, 14)))


@pytest.mark.parametrize("seed", range(8))
def test_parity_on_generated_sets(seed):
    r = random.Random(seed)
    n = r.randint(2, 60)
    references = {f"img{i}": [caption(r) for _ in range(r.randint(1, 6))] for i in range(n)}
    candidates = {k: caption(r) for k in references}
    for k in list(candidates)[::3]:  # some candidates copy a reference, as good models do
        candidates[k] = r.choice(references[k])
    assert_parity(candidates, references)


EDGE_REFS = {
    "same": ["a dog runs on the grass", "a brown dog running", "the dog is on grass"],
    "none": ["a red car parked on the street", "a car near a curb"],
    "one": ["a man riding a horse", "a person on a horse"],
    "long": ["two women sit on a bench", "women on a bench in a park"],
    "repeat": ["a dog and a cat", "a dog with a cat on a sofa"],
    "empty": ["children play football", "kids playing soccer on a field"],
}
EDGE_CANDIDATES = {
    "same": "a dog runs on the grass",  # equal to a reference
    "none": "zebras graze quietly",  # no overlap at all
    "one": "horse",  # one word
    "long": " ".join(["two women sit on a bench in a sunny green park"] * 9),  # very long (90 words)
    "repeat": "a a a a a dog dog dog",  # repeated words
    "empty": "",  # nothing left after PTB
}


def test_parity_on_edge_cases():
    assert_parity(EDGE_CANDIDATES, EDGE_REFS)


@pytest.mark.parametrize("name", sorted(EDGE_CANDIDATES))
def test_parity_on_each_edge_case_with_others(name):
    # Each edge case also next to ordinary images, since CIDEr's document frequencies are per set.
    r = random.Random(name)
    references = {name: EDGE_REFS[name]} | {f"x{i}": [caption(r) for _ in range(5)] for i in range(5)}
    candidates = {name: EDGE_CANDIDATES[name]} | {f"x{i}": caption(r) for i in range(5)}
    assert_parity(candidates, references)


def test_single_image_set_matches_reference_cider_of_zero():
    # log(1 image) = 0 makes every CIDEr weight 0: the reference implementation says 0, so do we.
    candidates, references = {"a": "a dog runs"}, {"a": ["a dog runs", "the dog is running"]}
    assert_parity(candidates, references)
    assert score_tokenized(candidates, references).corpus["CIDEr"] == 0.0


def test_hand_checked_values():
    got = score_tokenized({"1": "a b c d", "2": "e f"}, {"1": ["a b x y"], "2": ["e f"]}).corpus
    # unigrams: 2 of 4 + 2 of 2 match; bigrams: 1 of 3 + 1 of 1; no length penalty (6 vs 6 tokens)
    assert got["BLEU-1"] == pytest.approx(4 / 6, abs=1e-8)
    assert got["BLEU-2"] == pytest.approx(math.sqrt(4 / 6 * 2 / 4), abs=1e-8)
    # ROUGE-L: image 1 has LCS 2 of 4 (P = R = 0.5, F = 0.5), image 2 is exact (F = 1)
    assert got["ROUGE-L"] == pytest.approx(0.75)


def test_identical_captions_score_the_maximum():
    refs = {f"{i}": [f"a photo number {i} of a dog", f"another caption {i}"] for i in range(4)}
    got = score_tokenized({k: v[0] for k, v in refs.items()}, refs).corpus
    assert got["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert got["ROUGE-L"] == pytest.approx(1.0)
    assert got["CIDEr"] > 1.0


def test_score_normalises_raw_captions_like_the_coco_evaluation():
    # The same captions, raw through `score` and pre-tokenized by the Java PTBTokenizer (the
    # committed fixture) through pycocoevalcap, give the same numbers.
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    rows = [row for row in fixture if row["tokens"]][:120]
    raw_refs = {f"{i}": [rows[(3 * i + j) % len(rows)]["caption"] for j in range(3)] for i in range(40)}
    java_refs = {f"{i}": [rows[(3 * i + j) % len(rows)]["tokens"] for j in range(3)] for i in range(40)}
    raw_cands = {f"{i}": rows[(7 * i + 1) % len(rows)]["caption"] for i in range(40)}
    java_cands = {f"{i}": rows[(7 * i + 1) % len(rows)]["tokens"] for i in range(40)}
    want, _ = reference_scores(java_cands, java_refs)
    got = score(raw_cands, raw_refs)
    for m in METRICS:
        assert math.isclose(got[m], want[m], rel_tol=REL_TOL), m
    assert set(score_captions(raw_cands, raw_refs).per_image) == set(raw_cands)


def test_mismatched_ids_are_listed():
    with pytest.raises(ScoringError) as e:
        score({"a": "x", "b": "y"}, {"b": ["y"], "c": ["z"], "d": ["w"]})
    assert str(e.value) == "1 id(s) without references: a; 2 id(s) without a prediction: c, d"


def test_empty_inputs_are_errors():
    with pytest.raises(ScoringError, match="nothing to score"):
        score({}, {})
    with pytest.raises(ScoringError, match="empty reference list: a"):
        score({"a": "x"}, {"a": []})


def test_bit_parallel_lcs_matches_the_dynamic_program():
    r = random.Random(3)
    for _ in range(300):
        a = [r.choice("abcde") for _ in range(r.randint(1, 70))]  # beyond 64 tokens too
        b = [r.choice("abcde") for _ in range(r.randint(1, 70))]
        assert _lcs_length(_position_masks(a), len(a), b) == my_lcs(a, b)
