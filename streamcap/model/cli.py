"""`streamcap caption`: caption image files with a checkpoint.

    streamcap caption runs/r1/step-001000.pt photo.jpg album/ 'shots/*.png' [--beam 5] [--json]

torch loads inside the command body only: `streamcap --help` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamcap.common.commands import JsonFlag, error, print_json


def caption_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file written by the trainer.")],
    images: Annotated[list[str], typer.Argument(help="Image files, directories or globs ('shots/*.jpg').")],
    beam: Annotated[int, typer.Option("--beam", min=1, help="Beam size.")] = 5,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, help="Length normalisation ((5+|Y|)/6)^alpha.")] = 0.6,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Longest caption, in tokens (capped by the model's max_len).")
    ] = 30,
    min_tokens: Annotated[int, typer.Option("--min-tokens", min=0, help="Shortest caption, in tokens.")] = 0,
    no_repeat_ngram: Annotated[
        int, typer.Option("--no-repeat-ngram", min=0, help="Forbid repeating any n-gram of this size (0 = off).")
    ] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images decoded together.")] = 16,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: JsonFlag = False,
) -> int:
    """Print a caption for each image; an unreadable file is reported and the others still run."""
    try:
        from streamcap.model.checkpoint import CheckpointError, load_checkpoint
        from streamcap.model.inference import DecodeOptions, caption_images, expand_image_args, pick_device
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
    options = DecodeOptions(
        beam=beam,
        alpha=alpha,
        max_len=max_tokens,
        min_len=min_tokens,
        no_repeat_ngram=no_repeat_ngram,
        batch_size=batch_size,
    )
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


def register(app: typer.Typer) -> None:
    """Add `caption` to the root CLI."""
    app.command("caption")(caption_command)
