"""WordPieceTokenizer behaviour on small hand-made vocabularies (parity with HF is in test_tokenizer_parity.py)."""

from __future__ import annotations

import pytest

from streamcap.text.tokenizer import VocabError, WordPieceTokenizer, basic_tokenize, detokenize

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "a",
    "dog",
    "run",
    "##s",
    "##ning",
    "on",
    "the",
    "beach",
    ".",
    ",",
    "!",
    "'",
    "s",
    "t",
    "don",
    "black",
    "-",
    "and",
    "white",
    "(",
    ")",
    "cafe",
    "猫",
    "[",
    "]",
    "cl",
    "##s",
    "c",
    "##l",
]


@pytest.fixture
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab(SPECIALS + list(dict.fromkeys(WORDS)))


def test_special_ids_follow_bert_names(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == len(tok.vocab) == len(tok)


def test_encode_wordpieces_and_special_tokens(tok):
    assert tok.tokenize("A dog runs on the beach.") == ["a", "dog", "run", "##s", "on", "the", "beach", "."]
    ids = tok.encode("Dogs running", add_special_tokens=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.tokenize("Dogs running") == ["dog", "##s", "run", "##ning"]


def test_unmatchable_and_overlong_words_become_unk(tok):
    assert tok.tokenize("dogz") == ["[UNK]"]  # no piece for the tail: the whole word is [UNK]
    assert tok.tokenize("a" * 100) == ["[UNK]"]  # 100 characters: still tried, but 'a'+'##a' fails
    assert tok.encode("a" * 101) == [tok.unk_id]  # over 100 characters: [UNK] without trying


def test_basic_tokenization_cleans_splits_and_strips_accents():
    assert basic_tokenize("  Café\u00a0au\tlait!!\u200b ") == ["cafe", "au", "lait", "!", "!"]
    assert basic_tokenize("猫が好き") == ["猫", "か", "好", "き"]  # ideographs alone; が loses its dakuten
    assert basic_tokenize("x\x00y\x7fz") == ["xyz"]
    assert basic_tokenize("ΟΔΟΣ") == ["οδοσ"]  # per-character lowercase: no final sigma
    assert basic_tokenize("") == [] and basic_tokenize(" \t\n ") == []


def test_special_token_text_is_ordinary_text(tok):
    # Web captions must not inject control tokens: "[CLS]" is brackets and letters here.
    assert tok.tokenize("[CLS]") == ["[", "cl", "##s", "]"]
    assert tok.bos_id not in tok.encode("[CLS] [SEP] [PAD]")
    assert tok.tokenize("[MASK]") == ["[", "[UNK]", "]"]


def test_decode_reads_naturally(tok):
    ids = tok.encode("A dog's black-and-white toy (on the beach), don't!", add_special_tokens=True)
    assert tok.decode(ids) == "a dog's black-and-white (on the beach), don't!"  # [UNK] 'toy' dropped
    assert tok.decode([tok.pad_id, tok.bos_id, tok.eos_id]) == ""


def test_detokenize_quotes_and_punctuation():
    assert detokenize(["a", "sign", "saying", '"', "open", '"', "."]) == 'a sign saying "open".'
    assert detokenize(["50", "%", "off", "!", "$", "5"]) == "50% off! $5"


def test_save_and_load_round_trip(tok, tmp_path):
    path = tmp_path / "sub" / "vocab.txt"
    tok.save(path)
    again = WordPieceTokenizer.from_file(path)
    assert again.vocab == tok.vocab
    assert again.encode("the dog runs") == tok.encode("the dog runs")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.txt"]  # no temp file left


def test_bad_vocabularies_are_rejected_with_a_reason(tmp_path):
    with pytest.raises(VocabError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\]"):
        WordPieceTokenizer.from_vocab(["[PAD]", "[UNK]", "a"])
    with pytest.raises(VocabError, match="appears twice"):
        WordPieceTokenizer.from_vocab(SPECIALS + ["a", "a"])
    with pytest.raises(VocabError, match="cannot read vocabulary"):
        WordPieceTokenizer.from_file(tmp_path / "missing.txt")
