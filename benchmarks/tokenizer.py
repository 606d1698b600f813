"""streamcap's WordPiece tokenizer vs Hugging Face `tokenizers` (Rust) on generated captions.

    .venv/bin/python benchmarks/tokenizer.py                  # 100,000 captions
    .venv/bin/python benchmarks/tokenizer.py --captions 20000

Both tokenizers get the same vocabulary (trained with `tokenizers` on the captions) and the
same captions, with BOS/EOS. Parity comes first: the script counts captions whose ids differ
(expected: 0) before it reports speed. streamcap is timed cold (a new tokenizer, empty word
cache) and warm (a DataLoader worker's steady state); `tokenizers` one caption at a time
(`encode`, one thread, like a DataLoader worker) and in one `encode_batch` call (all cores).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import BertWordPieceTokenizer

from streamcap.text.tokenizer import WordPieceTokenizer

SUBJECTS = (
    "a man",
    "a woman",
    "two children",
    "an old dog",
    "a black cat",
    "three people",
    "a young girl",
    "a group of tourists",
    "a cyclist",
    "the chef",
    "a café owner",
    "an elderly couple",
    "a surfer",
)
VERBS = (
    "is standing",
    "walks",
    "sits",
    "is playing",
    "runs",
    "poses",
    "is cooking",
    "rides a bike",
    "is reading a book",
    "looks at the camera",
    "jumps",
    "waits",
    "is smiling",
)
PLACES = (
    "on a sandy beach",
    "in a busy street",
    "near a wooden fence",
    "under a blue sky",
    "in the park",
    "next to a red car",
    "inside a small kitchen",
    "at the train station",
    "by the river",
    "in front of an old building",
    "on a snowy mountain",
    "at a market in São Paulo",
)
EXTRAS = (
    "",
    "",
    "",
    " while it rains",
    " at sunset",
    " with a colorful umbrella",
    ", holding a sign",
    " wearing sunglasses",
    " (black-and-white photo)",
    " — the 2nd time today!",
    " in 1998",
    "'s backyard",
)


# A long tail of made-up content words (2-4 syllables), Zipf-distributed like real captions,
# so that WordPiece has rare words to split; some get accents or non-Latin script.
SYLLABLES = "ba ko ri mu sel tan dor fi gra lo ven pu zeh qua mi nor sto kle".split()


def tail_words(rng: random.Random, n: int) -> list[str]:
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) for _ in range(n)]
    for i in range(0, n, 23):
        words[i] = words[i].replace("e", "é").replace("o", "ö")
    for i in range(7, n, 97):
        words[i] = "東京" if i % 2 else "Москва"
    return words


def make_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    tail = tail_words(rng, 5000)
    weights = [1 / (rank + 1) for rank in range(len(tail))]
    out = []
    for _ in range(n):
        detail = " ".join(rng.choices(tail, weights, k=rng.randint(1, 3)))
        caption = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} with {detail}{rng.choice(EXTRAS)}."
        if rng.random() < 0.4:  # LLaVA-style second sentence
            caption += f" The image shows {rng.choice(SUBJECTS)} {rng.choice(PLACES)}."
        out.append(caption[0].upper() + caption[1:])
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    captions = make_captions(args.captions, seed=0)

    hf_trainer = BertWordPieceTokenizer(lowercase=True)
    hf_trainer.train_from_iterator(captions[:20_000], vocab_size=args.vocab_size, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = os.path.join(tmp, "vocab.txt")
        ordered = sorted(hf_trainer.get_vocab().items(), key=lambda kv: kv[1])
        Path(vocab_path).write_text("\n".join(t for t, _ in ordered) + "\n", encoding="utf-8")
        hf = BertWordPieceTokenizer(vocab_path, lowercase=True)
        ours = WordPieceTokenizer.from_file(vocab_path)

    cold_s, ours_ids = timed(lambda: ours.encode_batch(captions, add_special_tokens=True))
    warm_s, _ = timed(lambda: ours.encode_batch(captions, add_special_tokens=True))
    one_s, hf_ids = timed(lambda: [hf.encode(c).ids for c in captions])
    batch_s, _ = timed(lambda: hf.encode_batch(captions))
    differ = sum(a != b for a, b in zip(ours_ids, hf_ids))
    tokens = sum(map(len, ours_ids))

    print(
        f"{len(captions):,} captions, {tokens:,} tokens, vocab {ours.vocab_size}; "
        f"captions whose ids differ from tokenizers: {differ}"
    )
    rows = [
        ("streamcap, cold cache", cold_s),
        ("streamcap, warm cache", warm_s),
        ("tokenizers encode (1 thread)", one_s),
        (f"tokenizers encode_batch ({os.cpu_count()} cores)", batch_s),
    ]
    for name, seconds in rows:
        print(f"{name:34s} {seconds:7.3f} s {len(captions) / seconds:12,.0f} sentences/s")
    print(f"streamcap / tokenizers encode:       {one_s / cold_s:.2f}x cold, {one_s / warm_s:.2f}x warm")
    print(f"streamcap / tokenizers encode_batch: {batch_s / cold_s:.2f}x cold, {batch_s / warm_s:.2f}x warm")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
