"""`streamcap caption` and `streamcap tokenizer ...`: the model core's commands.

    streamcap caption runs/r1/step-001000.pt photo.jpg album/ 'shots/*.png' [--beam 5] [--json]
    streamcap tokenizer build captions.parquet --out vocab.txt --size 15000 --base bert/vocab.txt
    streamcap tokenizer build captions.jsonl --out vocab.txt --size 8000      # trained from the corpus
    streamcap tokenizer encode --vocab vocab.txt "A dog runs on the beach."

torch loads inside the command bodies only: `streamcap --help` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.cliutil import JsonFlag, error, print_json


def caption_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file written by the trainer.")],
    images: Annotated[list[str], typer.Argument(help="Image files, directories or globs ('shots/*.jpg').")],
    beam: Annotated[int, typer.Option("--beam", min=1, help="Beam size.")] = 5,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, help="Length normalisation ((5+|Y|)/6)^alpha.")] = 0.6,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1,
                                            help="Longest caption, in tokens (capped by the model's max_len).")] = 30,
    min_tokens: Annotated[int, typer.Option("--min-tokens", min=0, help="Shortest caption, in tokens.")] = 0,
    no_repeat_ngram: Annotated[int, typer.Option("--no-repeat-ngram", min=0,
                                                 help="Forbid repeating any n-gram of this size (0 = off).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images decoded together.")] = 16,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: JsonFlag = False,
) -> int:
    """Print a caption for each image; an unreadable file is reported and the others still run."""
    try:
        from streamcap.checkpoint import CheckpointError, load_checkpoint
        from streamcap.inference import DecodeOptions, caption_images, expand_image_args, pick_device
    except ModuleNotFoundError as e:  # the downloader-only install has no torch
        error(f"streamcap caption needs {e.name}: pip install 'streamcap[train]'")
        return 1

    if min_tokens > max_tokens:
        error(f"--min-tokens {min_tokens} is larger than --max-tokens {max_tokens}")
        return 1
    try:
        dev = pick_device(device)
        ckpt = load_checkpoint(checkpoint, map_location=dev)
    except (CheckpointError, ValueError) as e:
        error(str(e))
        return 1
    options = DecodeOptions(beam=beam, alpha=alpha, max_len=max_tokens, min_len=min_tokens,
                            no_repeat_ngram=no_repeat_ngram, batch_size=batch_size)
    results, failed = [], 0
    for result in caption_images(ckpt, expand_image_args(images), options, device=dev):
        failed += result.error is not None
        if as_json:
            results.append(result.to_json())
        elif result.error is not None:
            error(f"{result.path}: {result.error}")
        else:
            typer.echo(f"{result.path}\t{result.caption}")
    if as_json:
        print_json(results)
    return 1 if failed else 0


def build_command(
    captions: Annotated[list[Path], typer.Argument(help="Caption files (.parquet, .jsonl, .txt) or directories.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write vocab.txt.")],
    size: Annotated[int, typer.Option("--size", min=10, help="Vocabulary size, special tokens included.")] = 15000,
    base: Annotated[Optional[Path], typer.Option(
        "--base", help="A base vocab.txt (e.g. bert-base-uncased) to keep the corpus's most frequent pieces of; "
                       "without it, a vocabulary is trained from the corpus alone.")] = None,
    column: Annotated[Optional[str], typer.Option(
        "--column", help="Caption column (parquet) or field (jsonl); default: the first of llava_caption, "
                         "caption, text, alt_txt, ...")] = None,
    sentences: Annotated[int, typer.Option("--sentences", min=0,
                                           help="Keep each caption's first N sentences (0 = all).")] = 0,
    min_frequency: Annotated[int, typer.Option("--min-frequency", min=1,
                                               help="Training: merge only pairs seen this often.")] = 2,
    as_json: JsonFlag = False,
) -> int:
    """Build a WordPiece vocabulary from captions: from a base vocab, or trained from scratch."""
    from streamcap.tokenizer import VocabError
    from streamcap.vocab import CorpusError, build_vocab

    try:
        tok, summary = build_vocab(captions, size, base=base, column=column, sentences=sentences,
                                   min_frequency=min_frequency)
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
    from streamcap.tokenizer import VocabError, WordPieceTokenizer

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
    """Add `caption` and the `tokenizer` sub-app to the root CLI."""
    app.command("caption")(caption_command)
    tokenizer_app = typer.Typer(name="tokenizer", help="Build and inspect WordPiece vocabularies.",
                                no_args_is_help=True)
    tokenizer_app.command("build")(build_command)
    tokenizer_app.command("encode")(encode_command)
    app.add_typer(tokenizer_app, name="tokenizer")
