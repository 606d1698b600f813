"""The captioning model's tokenizer: BERT basic tokenization + greedy longest-match WordPiece.

    tok = WordPieceTokenizer.from_file("vocab.txt")          # a BERT vocab.txt, or one we built
    tok.encode("A dog runs on the beach.", add_special_tokens=True)
    # [101, 1037, 3899, 3216, 2006, 1996, 3509, 1012, 102]   ([CLS] ... [SEP] with bert-base-uncased)
    tok.decode(ids)                                          # 'a dog runs on the beach.'

Ids are identical to Hugging Face `tokenizers`' BertWordPieceTokenizer (lowercase, clean text,
CJK handling, accent stripping) on the same vocab, with one deliberate difference: text that
spells a special token inside a caption (`[CLS]`, `[SEP]`, `[MASK]`, ...) is ordinary text
here, tokenized like any other brackets and letters, never the special token. Captions come
from the web; they must not be able to inject control tokens into training.

Written from scratch (no `tokenizers` at run time): the downloader image and the trainer's
DataLoader workers only need this file. Speed comes from an ASCII fast path and a per-word
cache; `benchmarks/tokenizer.py` measures it against `tokenizers`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamcap.common.files import atomic_write_text
from streamcap.text.bert_chars import char_class, is_nonspacing_mark, is_punctuation

PAD, UNK, BOS, EOS, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, MASK)
REQUIRED_TOKENS = (PAD, UNK, BOS, EOS)
CONTINUATION = "##"
MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: longer words become [UNK]

# ASCII control characters clean-text drops (tab, newline and CR are whitespace).
_ASCII_CONTROLS = {cp: None for cp in (*range(0, 9), 11, 12, *range(14, 32), 127)}
# In lowercased, cleaned ASCII every non-alphanumeric printable character is BERT punctuation.
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_WORD_CACHE_LIMIT = 500_000


class VocabError(ValueError):
    """A vocabulary file or token list is unusable; the message says why."""


def basic_tokenize(text: str) -> list[str]:
    """BERT basic tokenization: clean, isolate CJK, strip accents, lowercase, split punctuation."""
    if text.isascii():
        return _ASCII_WORDS.findall(text.translate(_ASCII_CONTROLS).lower())
    return _split_words(_normalize(text))


def _normalize(text: str) -> str:
    """The BertNormalizer steps, in `tokenizers`' order: clean, CJK, strip accents, lowercase."""
    out = []
    for ch in text:
        kind = char_class(ch)
        if kind == "plain":
            out.append(ch)
        elif kind == "space":
            out.append(" ")
        elif kind == "cjk":
            out.append(f" {ch} ")
    stripped = "".join(c for c in unicodedata.normalize("NFD", "".join(out)) if not is_nonspacing_mark(c))
    # Per character, as Rust's char::to_lowercase: no final-sigma context rule (str.lower has one).
    return "".join(map(str.lower, stripped))


def _split_words(text: str) -> list[str]:
    words: list[str] = []
    for chunk in text.split(" "):
        if not chunk:
            continue
        if chunk.isalnum():  # letters and digits are never punctuation: the common case
            words.append(chunk)
            continue
        start = 0
        for i, ch in enumerate(chunk):
            if is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


class WordPieceTokenizer:
    """A WordPiece vocabulary with BERT's special tokens; [CLS] is BOS and [SEP] is EOS."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.vocab: list[str] = list(tokens)
        self._ids: dict[str, int] = {}
        for i, token in enumerate(self.vocab):
            if token in self._ids:
                raise VocabError(f"token {token!r} appears twice in the vocabulary (ids {self._ids[token]} and {i})")
            if not token or any(ch.isspace() for ch in token):
                raise VocabError(f"token {i} ({token!r}) is empty or contains whitespace")
            self._ids[token] = i
        missing = [t for t in REQUIRED_TOKENS if t not in self._ids]
        if missing:
            raise VocabError(f"the vocabulary lacks the special token(s) {', '.join(missing)}")
        self.pad_id, self.unk_id = self._ids[PAD], self._ids[UNK]
        self.bos_id, self.eos_id = self._ids[BOS], self._ids[EOS]
        self.special_ids = frozenset(self._ids[t] for t in SPECIAL_TOKENS if t in self._ids)
        self._max_piece = max(len(t) for t in self.vocab)
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # --- construction and storage ------------------------------------------------------------

    @classmethod
    def from_vocab(cls, tokens: Iterable[str]) -> WordPieceTokenizer:
        return cls(list(tokens))

    @classmethod
    def from_file(cls, vocab_path: str | os.PathLike) -> WordPieceTokenizer:
        """Load a BERT-style vocab.txt: one token per line, the line number is the id."""
        path = Path(vocab_path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise VocabError(f"cannot read vocabulary {path}: {e}") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            return cls([line.rstrip("\r") for line in lines])
        except VocabError as e:
            raise VocabError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write vocab.txt atomically (a temp file in the same directory, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join(self.vocab) + "\n")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    # --- encoding ----------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of `text` as strings (no special tokens added)."""
        return [self.vocab[i] for i in self.encode(text)]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with add_special_tokens, wrapped in BOS ... EOS."""
        ids = [self.bos_id] if add_special_tokens else []
        cache = self._word_cache
        for word in basic_tokenize(text):
            pieces = cache.get(word)
            if pieces is None:
                pieces = self.wordpiece(word)
                if len(cache) >= _WORD_CACHE_LIMIT:
                    cache.clear()
                cache[word] = pieces
            ids.extend(pieces)
        if add_special_tokens:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first pieces of one basic token; [UNK] if any part cannot match."""
        n = len(word)
        if n > MAX_WORD_CHARS:
            return (self.unk_id,)
        ids, start, vocab = [], 0, self._ids
        while start < n:
            end = min(n, start + self._max_piece)
            piece_id = None
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                piece_id = vocab.get(piece)
                if piece_id is not None:
                    break
                end -= 1
            if piece_id is None:
                return (self.unk_id,)
            ids.append(piece_id)
            start = end
        return tuple(ids)

    # --- decoding ----------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text: special tokens ([UNK] too) dropped, ## pieces joined, punctuation attached."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i in self.special_ids or not 0 <= i < len(self.vocab):
                continue
            token = self.vocab[i]
            if token.startswith(CONTINUATION) and len(token) > 2 and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return detokenize(words)


# No space before these, and none after the openers.
_CLOSERS = frozenset(".,!?;:%)]}…")
_OPENERS = frozenset("([{$#")
_JOINERS = frozenset("-/@_~")
_CLITICS = frozenset({"s", "t", "re", "ve", "ll", "d", "m"})


def detokenize(words: Sequence[str]) -> str:
    """Join basic tokens the way English is written: 'a dog ' s toy ( red )' -> "a dog's toy (red)"."""
    out, glue_next, open_quote = "", True, False
    for i, word in enumerate(words):
        prev = words[i - 1] if i else ""
        if word == '"':
            open_quote = not open_quote
            out += ("" if glue_next else " ") + word if open_quote else word
            glue_next = open_quote
            continue
        glue = glue_next or word in _CLOSERS or word in _JOINERS
        if prev == "'" and word in _CLITICS:
            glue = True
        elif word == "'" and i + 1 < len(words) and words[i + 1] in _CLITICS and prev.isalnum():
            glue = True
        out += word if glue else " " + word
        glue_next = word in _OPENERS or word in _JOINERS
    return out.strip()
