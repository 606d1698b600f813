"""Parity with Hugging Face `tokenizers` (BertWordPieceTokenizer) on the same vocabulary.

The vocabulary is trained here with `tokenizers` on an in-test corpus (no downloads). The one
deliberate difference: text spelling a special token ("[CLS]") is ordinary text for streamcap,
while BertWordPieceTokenizer turns it into the special token.
"""

from __future__ import annotations

import random
import unicodedata

import pytest
from tokenizers import BertWordPieceTokenizer, Tokenizer, models, normalizers, pre_tokenizers

from streamcap.text.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer, basic_tokenize

FRAGMENTS = [
    # accents, case, ligatures, full-width, Turkish/German/Greek specials
    "Café",
    "naïve",
    "résumé",
    "Ångström",
    "e\u0301",
    "ÉCOLE",
    "İstanbul",
    "ß",
    "ẞ",
    "ΟΔΟΣ",
    "ﬁne",
    "Ｆｕｌｌ",
    "ǅ",
    "Ω",
    "Ⅻ",
    "½",
    "²",
    "x̧̌",
    # CJK and other scripts
    "猫",
    "東京タワー",
    "한국어",
    "中文字符",
    "𠀋",
    "\U0002b820",
    "\U0002b920",
    "ひらがな",
    "Привет",
    "שלום",
    "مرحبا",
    "नमस्ते",
    "ภาษาไทย",
    "ქართული",
    "ꓘ",
    # emoji: plain, modifiers, ZWJ sequences, flags, keycaps, variation selectors
    "🐶",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "1️⃣",
    "❤️",
    "🦩",
    "🫨",
    "©",
    "™",
    # control, format and zero-width characters
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\ue000",
    "\U000e0001",
    "\ufffd",
    "\u0378",
    "\u180e",
    # whitespace of every kind
    "\t",
    "\n",
    "\r\n",
    "\x0b",
    "\x0c",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\u2028",
    "\u2029",
    "\u202f",
    "\x1c",
    # punctuation runs and symbols
    "!!!",
    "...",
    "?!",
    "—",
    "–",
    "«»",
    "“quoted”",
    "‘single’",
    "(parens)",
    "[brackets]",
    "{braces}",
    "$5.99",
    "100%",
    "a+b=c",
    "^_^",
    "~",
    "|",
    "`tick`",
    "<b>bold</b>",
    "&amp;",
    "\\path\\to",
    "@user",
    "#hashtag",
    "e.g.",
    "U.S.A.",
    "3:45pm",
    "1,000,000",
    "-42",
    "¿Qué?",
    "¡Hola!",
    "⁂",
    "※",
    "〜",
    "、",
    "。",
    # WordPiece edge cases: a literal ##, prefixes, very long words
    "##",
    "##ing",
    "#",
    "un##able",
    "a" * 99,
    "b" * 100,
    "c" * 101,
    "supercalifragilistic" * 6,
    "dog" * 40,
    "x",
    # special-token text (handled separately below)
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "[cls]",
]
WORDS = (
    "a dog runs on the beach near two people with a red umbrella and some old buildings in the "
    "background while a man in a white shirt is playing guitar under the bright blue sky"
).split()


def tricky_inputs() -> list[str]:
    rng = random.Random(1234)
    cases = ["", " ", "   \t\n  ", "\u00a0\u3000", *FRAGMENTS]
    cases += [f"{a} {b}" for a, b in zip(FRAGMENTS, reversed(FRAGMENTS))]
    cases += [f"{a}{b}" for a, b in zip(FRAGMENTS, FRAGMENTS[1:])]
    for _ in range(300):
        parts = rng.choices(FRAGMENTS + WORDS * 2, k=rng.randint(1, 12))
        seps = rng.choices(["", " ", "  ", "\t", "\u00a0", "\u200b", ",", "-", "\n"], k=len(parts))
        cases.append("".join(p + s for p, s in zip(parts, seps)).capitalize())
    return cases


def corpus() -> list[str]:
    rng = random.Random(7)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + "." for _ in range(400)]
    return lines + FRAGMENTS * 3 + tricky_inputs()


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    hf = BertWordPieceTokenizer(lowercase=True)
    hf.train_from_iterator(corpus(), vocab_size=1500, min_frequency=2, limit_alphabet=400, show_progress=False)
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text(
        "\n".join(t for t, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1])) + "\n", encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def hf_bert(vocab_file):
    return BertWordPieceTokenizer(str(vocab_file), lowercase=True, clean_text=True, handle_chinese_chars=True)


@pytest.fixture(scope="module")
def hf_plain(vocab_file):
    """The same pipeline without the special tokens registered as added tokens."""
    vocab = {t: i for i, t in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def test_the_trained_vocab_covers_the_inputs(vocab_file):
    # Otherwise most words would be [UNK] and the comparison would prove little.
    ours = WordPieceTokenizer.from_file(vocab_file)
    ids = [i for text in tricky_inputs() for i in ours.encode(text)]
    assert len(tricky_inputs()) >= 500
    assert sum(i == ours.unk_id for i in ids) / len(ids) < 0.1


def test_ids_identical_to_bert_wordpiece_tokenizer(vocab_file, hf_bert, hf_plain):
    ours = WordPieceTokenizer.from_file(vocab_file)
    mismatches = []
    for text in tricky_inputs():
        mine = ours.encode(text, add_special_tokens=True)
        if mine != [ours.bos_id, *hf_plain.encode(text).ids, ours.eos_id]:
            mismatches.append(("plain", text))
        if not any(s in text for s in SPECIAL_TOKENS) and mine != hf_bert.encode(text).ids:
            mismatches.append(("bert", text))
    assert mismatches == []


def test_special_token_text_is_the_deliberate_difference(vocab_file, hf_bert):
    ours = WordPieceTokenizer.from_file(vocab_file)
    for special in SPECIAL_TOKENS:
        text = f"a dog {special} on the beach"
        special_id = ours.token_to_id(special)
        assert special_id in hf_bert.encode(text, add_special_tokens=False).ids  # HF: the control token
        assert special_id not in ours.encode(text)  # streamcap: plain text


def test_decode_matches_the_text_hf_decodes(vocab_file, hf_bert):
    ours = WordPieceTokenizer.from_file(vocab_file)
    for text in ("a dog runs on the beach.", "two people with a red umbrella", "playing guitar"):
        ids = ours.encode(text, add_special_tokens=True)
        assert ours.decode(ids) == hf_bert.decode(ids) == text


@pytest.mark.parametrize("planes", [(0x0000, 0x10000), (0x10000, 0x20000)], ids=["BMP", "SMP"])
def test_every_code_point_is_classified_like_tokenizers(planes):
    """Each code point between two letters: same words after normalisation and pre-tokenization."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    diffs = []
    for cp in range(*planes):
        # Unassigned in this Python's Unicode database (or, for U+11938, decomposed by it but
        # not by `tokenizers`' older tables): newer case/decomposition data, nothing to compare.
        if 0xD800 <= cp <= 0xDFFF or cp == 0x11938 or unicodedata.category(chr(cp)) == "Cn":
            continue
        text = f"a{chr(cp)}b"
        theirs = [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))]
        if basic_tokenize(text) != theirs:
            diffs.append(hex(cp))
    assert diffs == []
