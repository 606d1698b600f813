"""eval.ptb against the COCO evaluation's own caption normalisation (Java PTBTokenizer).

The oracle is pycocoevalcap's PTBTokenizer run live where `java` exists; where it does not,
the expected tokenizations it produced, committed in tests/fixtures/ptb/expected.json
(regenerate with `.venv/bin/python tests/fixtures/ptb/captions.py`). Either way the test
compares every caption and can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streamcap.eval.ptb import normalize, ptb_tokenize

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptb" / "expected.json"


def java_tokenize(captions: list[str]) -> list[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(captions)})
    return [out[str(i)][0] for i in range(len(captions))]


@pytest.fixture(scope="module")
def cases() -> list[dict[str, str]]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_fixture_covers_a_few_hundred_captions(cases):
    assert len(cases) >= 300
    assert len({c["caption"] for c in cases}) == len(cases)


def test_matches_the_java_ptb_tokenizer(cases):
    captions = [c["caption"] for c in cases]
    if shutil.which("java"):
        expected = java_tokenize(captions)
        # The committed fixture must be what Java says today, or the fallback would drift.
        assert expected == [c["tokens"] for c in cases], "fixture is stale: rerun tests/fixtures/ptb/captions.py"
    else:
        expected = [c["tokens"] for c in cases]
    mismatches = [(c, want, normalize(c)) for c, want in zip(captions, expected) if normalize(c) != want]
    assert mismatches == []


@pytest.mark.parametrize(
    ("caption", "tokens"),
    [
        (
            "A man's dog, running (fast) in the park.",
            ["a", "man", "'s", "dog", "running", "-lrb-", "fast", "-rrb-", "in", "the", "park"],
        ),
        (
            "He can't see the U.S. flag... isn't it?",
            ["he", "ca", "n't", "see", "the", "u.s.", "flag", "is", "n't", "it"],
        ),
        ("Mr. Smith's 3-year-old cannot wait!!", ["mr.", "smith", "'s", "3-year-old", "can", "not", "wait", "!!"]),
        ("“Curly” quotes – and dashes — go", ["curly", "quotes", "and", "dashes", "go"]),
        (
            "The dogs' toys (2 of them) cost $5.",
            ["the", "dogs", "toys", "-lrb-", "2", "of", "them", "-rrb-", "cost", "$", "5"],
        ),
        ("", []),
        ("...", []),
    ],
)
def test_examples(caption, tokens):
    assert ptb_tokenize(caption) == tokens
