"""Building vocabularies both ways, reading caption files, and `streamcap tokenizer build`."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import BertWordPieceTokenizer

from streamcap.cli import app
from streamcap.entrypoint import run_app
from streamcap.text.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer
from streamcap.text.vocab import CorpusError, count_words, read_captions, train_vocab, vocab_from_base

COMMON = "a an the dog dogs cat on in near with under red blue running café über naïve 猫".split()
# Made-up words sharing stems and endings: enough distinct words to fill a few hundred pieces.
STEMS = "bar cor dun fel gim hol jur kan lom mir nop pal quin ros sut tev".split()
ENDINGS = ["", "s", "ing", "ed", "er", "ly", "ness", "ful"]
WORDS = COMMON + [stem + ending for stem in STEMS for ending in ENDINGS] + [a + b for a in STEMS[:8] for b in STEMS[8:]]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]  # Zipf-like, as in real captions
    return [
        " ".join(rng.choices(WORDS, weights, k=rng.randint(4, 12))).capitalize() + rng.choice([".", "!", ""])
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory) -> WordPieceTokenizer:
    """A 'bert-like' base vocabulary trained with `tokenizers` on a broader corpus."""
    hf = BertWordPieceTokenizer(lowercase=True)
    hf.train_from_iterator(
        captions(3000, seed=1) + ["zebra quokka xylophone jazz"] * 5, vocab_size=600, show_progress=False
    )
    tokens = [t for t, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1])]
    return WordPieceTokenizer.from_vocab(tokens)


def test_trained_vocab_layout_and_coverage():
    counts = count_words(captions(2000))
    tokens = train_vocab(counts, size=300)
    assert tokens[:5] == list(SPECIAL_TOKENS) and len(tokens) == 300 and len(set(tokens)) == 300
    tok = WordPieceTokenizer.from_vocab(tokens)
    assert all(tok.wordpiece(w) != (tok.unk_id,) for w in counts)  # every corpus word is spelled
    assert {"the", "dog", "running", "##s", "##ing"} <= set(tokens)  # frequent words and endings
    assert train_vocab(counts, size=300) == tokens  # deterministic


def test_training_stops_when_no_pair_is_frequent_enough():
    tokens = train_vocab(Counter({"ab": 1, "cd": 1}), size=100, min_frequency=2)
    assert tokens == list(SPECIAL_TOKENS) + ["##b", "##d", "a", "c"]
    with pytest.raises(ValueError, match="--size 6 is too small"):
        train_vocab(Counter({"abcdef": 3}), size=6)


def test_vocab_from_base_keeps_specials_characters_and_frequent_pieces(base_tokenizer):
    corpus = captions(500, seed=2)
    counts = count_words(corpus)
    tokens = vocab_from_base(counts, base_tokenizer, size=200)
    assert len(tokens) == 200 and tokens[:5] == list(SPECIAL_TOKENS)
    base_ids = [base_tokenizer.token_to_id(t) for t in tokens]
    assert base_ids == sorted(base_ids)  # the base order is kept
    chars = {ch for w in counts for ch in w}
    assert all(ch in tokens for ch in chars if base_tokenizer.token_to_id(ch) is not None)
    assert "zebra" not in tokens and "##x" not in tokens  # not needed by this corpus
    reduced = WordPieceTokenizer.from_vocab(tokens)
    for word in counts:  # nothing the base spells is lost
        if base_tokenizer.wordpiece(word) != (base_tokenizer.unk_id,):
            assert reduced.wordpiece(word) != (reduced.unk_id,)
    # The most frequent pieces under the base vocab are all kept.
    freq = Counter(p for w, n in counts.items() for p in base_tokenizer.wordpiece(w) for _ in range(n))
    top = [base_tokenizer.vocab[i] for i, _ in freq.most_common(20)]
    assert set(top) <= set(tokens)


def test_reading_parquet_jsonl_and_txt(tmp_path):
    pq.write_table(
        pa.table({"url": ["u1", "u2", "u3"], "llava_caption": ["A dog. It runs. Fast.", None, "A cat."]}),
        tmp_path / "a.parquet",
    )
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"caption": "Two birds."}) + "\n\n" + json.dumps({"caption": ""}) + "\n"
    )
    (tmp_path / "c.txt").write_text("A tree.\n\n  \nA red car. Parked.\n")
    assert list(read_captions([tmp_path], sentences=2)) == [
        "A dog. It runs.",
        "A cat.",
        "Two birds.",
        "A tree.",
        "A red car. Parked.",
    ]
    with pytest.raises(CorpusError, match="no column 'alt' \\(columns: url, llava_caption\\)"):
        list(read_captions([tmp_path / "a.parquet"], column="alt"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(CorpusError, match="bad.jsonl:1: not valid JSON"):
        list(read_captions([tmp_path / "bad.jsonl"]))
    with pytest.raises(CorpusError, match="no such file or directory"):
        list(read_captions([tmp_path / "nope.txt"]))


def test_build_command_both_ways(tmp_path, capsys, base_tokenizer):
    (tmp_path / "caps.txt").write_text("\n".join(captions(300)) + "\n")
    base_tokenizer.save(tmp_path / "base.txt")
    assert (
        run_app(
            app, ["tokenizer", "build", str(tmp_path / "caps.txt"), "--out", str(tmp_path / "v1.txt"), "--size", "150"]
        )
        == 0
    )
    assert "150 tokens (trained from the corpus; 300 captions" in capsys.readouterr().out
    assert (
        run_app(
            app,
            [
                "tokenizer",
                "build",
                str(tmp_path / "caps.txt"),
                "--out",
                str(tmp_path / "v2.txt"),
                "--size",
                "120",
                "--base",
                str(tmp_path / "base.txt"),
                "--json",
            ],
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (summary["method"], summary["tokens"], summary["captions"]) == ("from-base", 120, 300)
    assert len(WordPieceTokenizer.from_file(tmp_path / "v2.txt")) == 120
    assert run_app(app, ["tokenizer", "build", str(tmp_path / "none.txt"), "--out", str(tmp_path / "v3.txt")]) == 1
    assert capsys.readouterr().err.strip() == f"streamcap: error: {tmp_path / 'none.txt'}: no such file or directory"
    assert run_app(app, ["tokenizer", "encode", "--vocab", str(tmp_path / "v1.txt"), "Dogs run!", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decoded"] == "dogs run!"
