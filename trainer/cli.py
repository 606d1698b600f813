"""`streamcap train`: train the captioning model on shards as they land.

    streamcap train --tokenizer vocab.txt --preset tiny --max-steps 2000
    torchrun --standalone --nproc-per-node 8 -m streamcap.trainer --tokenizer vocab.txt   # the same command, DDP

Imports only typer and the settings; torch loads inside the command body. The options are
TrainerSettings' fields (`settings_command`): a new setting needs no edit here.
"""

from __future__ import annotations

import typer

from streamcap.common.commands import settings_command
from streamcap.trainer.config import TrainerSettings


@settings_command(TrainerSettings)
def train_command(cfg: TrainerSettings) -> int:
    """Train on the shards of the registry as they land (DDP under torchrun)."""
    from streamcap.trainer.train import run as run_training  # torch loads here, not at --help

    return run_training(cfg)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
