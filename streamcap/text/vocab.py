"""Building a WordPiece vocabulary from captions, both ways (`streamcap tokenizer build`).

    captions = read_captions(["relaion.parquet"], column="llava_caption", sentences=2)
    counts = count_words(captions)                                   # basic tokens -> frequency
    tokens = vocab_from_base(counts, WordPieceTokenizer.from_file("bert-base-uncased/vocab.txt"), 15000)
    tokens = train_vocab(counts, 15000)                              # no base vocab at hand
    WordPieceTokenizer.from_vocab(tokens).save("vocab.txt")

(a) `vocab_from_base` is the original model's way: tokenize the corpus with a base vocab
(bert-base-uncased), keep its special tokens, every single-character piece the corpus needs
(so no word that the base vocab could spell becomes [UNK]) and the most frequent other pieces
up to `size`. Tokens keep the base vocab's order, so [PAD] [UNK] [CLS] [SEP] [MASK] come first.

(b) `train_vocab` learns pieces from the corpus alone (offline, the demo), the way WordPiece
trainers usually do: start from the characters (word-initial `c`, continuation `##c`) and
repeatedly merge the most frequent adjacent pair within words until the vocabulary is full.
Pair counts are updated incrementally, so a merge touches only the words that contain it.

Both produce [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4, the layout ModelConfig expects.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from streamcap.common.logs import first_line
from streamcap.formats.columns import ColumnError, check_header, require_text_column, text_values
from streamcap.formats.jsonlines import iter_objects
from streamcap.text.captions import CAPTION_COLUMNS, process_caption
from streamcap.text.tokenizer import CONTINUATION, SPECIAL_TOKENS, WordPieceTokenizer, basic_tokenize

# The formats `streamcap enqueue` reads (.csv .tsv .jsonl .ndjson .parquet), plus .json lines and .txt.
CAPTION_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt")
# Caption columns tried in order when none is named: enqueue's, then LAION's and Flickr30K's names.
DEFAULT_COLUMNS = (*CAPTION_COLUMNS, "TEXT", "raw")
_CSV_BLOCK_BYTES = 1 << 22


class CorpusError(ValueError):
    """A caption file cannot be read as asked; the message names the file."""


# --- reading captions --------------------------------------------------------------------------


def caption_files(paths: Iterable[str | Path]) -> list[Path]:
    """The caption files named, directories expanded (sorted, by suffix)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in CAPTION_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"{p}: no such file or directory")
    if not files:
        raise CorpusError(f"no caption files found (expected {', '.join(CAPTION_SUFFIXES)})")
    return files


def read_captions(paths: Iterable[str | Path], column: str | None = None, sentences: int = 0) -> Iterator[str]:
    """Captions from parquet or csv/tsv (a column), jsonl (a field) or txt (one per line) files,
    cut to their first `sentences` sentences (0 keeps all), empty ones skipped."""
    for path in caption_files(paths):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            raw = _parquet_captions(path, column)
        elif suffix in (".csv", ".tsv"):
            raw = _csv_captions(path, column, delimiter="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".ndjson", ".json"):
            raw = _jsonl_captions(path, column)
        else:
            raw = _txt_captions(path)
        for text in raw:
            caption = process_caption(text, sentences=sentences)
            if caption:
                yield caption


def _pick_column(path: Path, names: list[str], column: str | None) -> str:
    if column is not None:
        if column not in names:
            raise CorpusError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
        return column
    for name in DEFAULT_COLUMNS:
        if name in names:
            return name
    raise CorpusError(f"{path}: no caption column found; pass --column (columns: {', '.join(names)})")


def _parquet_captions(path: Path, column: str | None) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet files
        raise CorpusError(f"{path}: not a readable parquet file ({e})") from None
    name = _pick_column(path, pf.schema_arrow.names, column)
    try:  # the rule `streamcap enqueue` reads the column by: text or UTF-8 binary, nothing else
        require_text_column(pf.schema_arrow.field(name).type, name, path)
    except ColumnError as e:
        raise CorpusError(str(e)) from None
    for batch in pf.iter_batches(columns=[name], batch_size=65536):
        yield from (v for v in text_values(batch.column(0)) if v is not None)


def _csv_captions(path: Path, column: str | None, delimiter: str) -> Iterator[str]:
    """One column of a csv/tsv with a header row, streamed, parsed as `streamcap enqueue` does."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def reader(columns: list[str] | None) -> Any:
        convert = (
            None
            if columns is None
            else pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.binary() for c in columns})
        )
        return pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, quote_char='"' if delimiter == "," else False
            ),
            convert_options=convert,
        )

    try:
        names = reader(None).schema.names
        check_header(path, names, delimiter)
        name = _pick_column(path, names, column)
        for batch in reader([name]):
            # As the downloader reads it: a value that is not UTF-8 is a missing caption.
            yield from (v for v in text_values(batch.column(0)) if v is not None)
    except ColumnError as e:
        raise CorpusError(str(e)) from None
    except CorpusError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is no csv
        raise CorpusError(f"{path}: not a readable {path.suffix[1:]} file ({first_line(e)})") from None


def _jsonl_captions(path: Path, column: str | None) -> Iterator[str]:
    for _, row in iter_objects(path, CorpusError):
        if column is None:
            column = _pick_column(path, list(row), None)
        value = row.get(column)
        if isinstance(value, str):
            yield value


def _txt_captions(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        yield from f


def count_words(captions: Iterable[str]) -> Counter[str]:
    """Frequency of every basic token (normalised, punctuation split) in the corpus."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(basic_tokenize(caption))
    return counts


# --- (a) from a base vocabulary ----------------------------------------------------------------


def vocab_from_base(word_counts: Counter[str], base: WordPieceTokenizer, size: int) -> list[str]:
    """Special tokens + needed characters + the most frequent pieces of the corpus, in base order."""
    specials = [t for t in base.vocab if t in SPECIAL_TOKENS]
    keep = set(specials)
    for ch in {ch for word in word_counts for ch in word}:
        keep.update(t for t in (ch, CONTINUATION + ch) if base.token_to_id(t) is not None)
    if len(keep) > size:
        raise ValueError(
            f"--size {size} is too small: the special tokens and the corpus's characters alone need {len(keep)} entries"
        )
    piece_counts: Counter[int] = Counter()
    for word, n in word_counts.items():
        for piece in base.wordpiece(word):
            piece_counts[piece] += n
    for piece, _ in sorted(piece_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= size:
            break
        token = base.vocab[piece]
        if piece != base.unk_id and token not in keep:
            keep.add(token)
    return [t for t in base.vocab if t in keep]


# --- (b) trained from the corpus alone ---------------------------------------------------------


def train_vocab(word_counts: Counter[str], size: int, min_frequency: int = 2) -> list[str]:
    """Specials + the corpus's characters + merged pieces until `size` tokens (or no pair is
    seen at least `min_frequency` times)."""
    words = [_symbols(w) for w in word_counts]
    freqs = list(word_counts.values())
    vocab = list(SPECIAL_TOKENS) + sorted({s for syms in words for s in syms})
    if len(vocab) > size:
        raise ValueError(
            f"--size {size} is too small: the special tokens and the corpus's characters "
            f"alone need {len(vocab)} entries"
        )
    merges = _PairMerger(words, freqs)
    known = set(vocab)
    while len(vocab) < size:
        pair = merges.best(min_frequency)
        if pair is None:
            break
        token = merges.merge(pair)
        if token not in known:
            known.add(token)
            vocab.append(token)
    return vocab


def _symbols(word: str) -> list[str]:
    return [word[0]] + [CONTINUATION + ch for ch in word[1:]]


def _join(a: str, b: str) -> str:
    return a + b[len(CONTINUATION) :]  # b always continues a word: drop its ## prefix


class _PairMerger:
    """Adjacent-pair counts over a word list, updated incrementally as pairs merge."""

    def __init__(self, words: list[list[str]], freqs: list[int]) -> None:
        self.words, self.freqs = words, freqs
        self.counts: Counter[tuple[str, str]] = Counter()
        self.where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        for i, syms in enumerate(words):
            for pair in zip(syms, syms[1:]):
                self.counts[pair] += freqs[i]
                self.where[pair].add(i)
        # Max-heap by count, ties broken by the pair itself so results are deterministic.
        self.heap = [(-n, pair) for pair, n in self.counts.items()]
        heapq.heapify(self.heap)

    def best(self, min_frequency: int) -> tuple[str, str] | None:
        while self.heap:
            neg, pair = self.heap[0]
            if self.counts.get(pair, 0) != -neg:  # stale entry: the count changed since
                heapq.heappop(self.heap)
                continue
            return pair if -neg >= max(min_frequency, 1) else None
        return None

    def merge(self, pair: tuple[str, str]) -> str:
        a, b = pair
        token, changed = _join(a, b), set()
        for i in self.where.pop(pair, ()):
            syms, f = self.words[i], self.freqs[i]
            for p in zip(syms, syms[1:]):
                self.counts[p] -= f
                changed.add(p)
            merged, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    merged.append(token)
                    j += 2
                else:
                    merged.append(syms[j])
                    j += 1
            self.words[i] = merged
            for p in zip(merged, merged[1:]):
                self.counts[p] += f
                self.where[p].add(i)
                changed.add(p)
        self.counts.pop(pair, None)
        for p in changed:
            n = self.counts.get(p, 0)
            if n > 0:
                heapq.heappush(self.heap, (-n, p))
            else:
                self.counts.pop(p, None)
        return token


def build_vocab(
    paths: Iterable[str | Path],
    size: int,
    base: Path | None = None,
    column: str | None = None,
    sentences: int = 0,
    min_frequency: int = 2,
) -> tuple[WordPieceTokenizer, dict]:
    """Read captions and build a vocabulary either way; returns it with a summary for the CLI."""
    captions = 0

    def counted() -> Iterator[str]:
        nonlocal captions
        for c in read_captions(paths, column=column, sentences=sentences):
            captions += 1
            yield c

    counts = count_words(counted())
    if not counts:
        raise CorpusError("the caption files hold no non-empty captions")
    if base is not None:
        tokens = vocab_from_base(counts, WordPieceTokenizer.from_file(base), size)
    else:
        tokens = train_vocab(counts, size, min_frequency=min_frequency)
    tok = WordPieceTokenizer.from_vocab(tokens)
    words = sum(counts.values())
    unk = pieces = 0
    for word, n in counts.items():
        split = tok.wordpiece(word)
        unk += n if split == (tok.unk_id,) else 0
        pieces += n * len(split)
    summary = {
        "method": "from-base" if base else "trained",
        "tokens": tok.vocab_size,
        "captions": captions,
        "words": words,
        "distinct_words": len(counts),
        "unk_word_rate": unk / words,
        "pieces_per_word": pieces / words,
    }
    return tok, summary
