"""`streamcap tokenizer ...`: build and inspect WordPiece vocabularies (no torch needed).

streamcap tokenizer build captions.parquet --out vocab.txt --size 15000 --base bert/vocab.txt
streamcap tokenizer build captions.jsonl --out vocab.txt --size 8000      # trained from the corpus
streamcap tokenizer encode --vocab vocab.txt "A dog runs on the beach."
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamcap.common.commands import JsonFlag, error, print_json


def build_command(
    captions: Annotated[
        list[Path], typer.Argument(help="Caption files (.parquet, .csv, .tsv, .jsonl, .txt) or directories.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write vocab.txt.")],
    size: Annotated[int, typer.Option("--size", min=10, help="Vocabulary size, special tokens included.")] = 15000,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="A base vocab.txt (e.g. bert-base-uncased) to keep the corpus's most frequent pieces of; "
            "without it, a vocabulary is trained from the corpus alone.",
        ),
    ] = None,
    column: Annotated[
        str | None,
        typer.Option(
            "--column",
            help="Caption column (parquet, csv, tsv) or field (jsonl); default: the first of llava_caption, "
            "cogvlm_caption, alt_txt, caption, text, ... (as `streamcap enqueue`).",
        ),
    ] = None,
    sentences: Annotated[
        int, typer.Option("--sentences", min=0, help="Keep each caption's first N sentences (0 = all).")
    ] = 0,
    min_frequency: Annotated[
        int, typer.Option("--min-frequency", min=1, help="Training: merge only pairs seen this often.")
    ] = 2,
    as_json: JsonFlag = False,
) -> int:
    """Build a WordPiece vocabulary from captions: from a base vocab, or trained from scratch."""
    from streamcap.text.tokenizer import VocabError
    from streamcap.text.vocab import CorpusError, build_vocab

    if out.is_dir():  # found before the corpus is read, not after
        error(f"--out {out} is a directory; name the file to write, e.g. {out / 'vocab.txt'}")
        return 1
    try:
        tok, summary = build_vocab(
            captions, size, base=base, column=column, sentences=sentences, min_frequency=min_frequency
        )
    except (CorpusError, VocabError, ValueError, OSError) as e:
        error(str(e))
        return 1
    tok.save(out)
    summary["out"] = str(out)
    if as_json:
        print_json(summary)
    else:
        how = f"kept from {base}" if base else "trained from the corpus"
        typer.echo(
            f"wrote {out}: {summary['tokens']} tokens ({how}; {summary['captions']:,} captions, "
            f"{summary['distinct_words']:,} distinct words); [UNK] words {summary['unk_word_rate']:.2%}, "
            f"{summary['pieces_per_word']:.2f} pieces per word"
        )
    return 0


def encode_command(
    text: Annotated[str, typer.Argument(help="Text to tokenize.")],
    vocab: Annotated[Path, typer.Option("--vocab", help="A vocab.txt.")],
    as_json: JsonFlag = False,
) -> int:
    """Show the WordPiece tokens and ids of a text (BOS/EOS included) and its decoded form."""
    from streamcap.text.tokenizer import VocabError, WordPieceTokenizer

    try:
        tok = WordPieceTokenizer.from_file(vocab)
    except VocabError as e:
        error(str(e))
        return 1
    ids = tok.encode(text, add_special_tokens=True)
    tokens = [tok.vocab[i] for i in ids]
    if as_json:
        print_json({"ids": ids, "tokens": tokens, "decoded": tok.decode(ids)})
    else:
        typer.echo(" ".join(tokens))
        typer.echo(" ".join(map(str, ids)))
        typer.echo(tok.decode(ids))
    return 0


def register(app: typer.Typer) -> None:
    """Add the `tokenizer` sub-app to the root CLI."""
    tokenizer_app = typer.Typer(
        name="tokenizer", help="Build and inspect WordPiece vocabularies.", no_args_is_help=True
    )
    tokenizer_app.command("build")(build_command)
    tokenizer_app.command("encode")(encode_command)
    app.add_typer(tokenizer_app, name="tokenizer")
